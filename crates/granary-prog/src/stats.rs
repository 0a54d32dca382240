//! Counters of one `prog` run, and the stats file written at close.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use granary_id::Id;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Live counters, shared by all workers.
#[derive(Debug, Default)]
pub struct Stats {
    pub gets: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub put_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub corrupt_entries: AtomicU64,
    pub reused_objects: AtomicU64,
    pub remote_hits: AtomicU64,
    pub remote_misses: AtomicU64,
    pub lookups_skipped: AtomicU64,
    pub remote_errors: AtomicU64,
    pub remote_damaged: AtomicU64,
    pub untrusted: AtomicU64,
    pub signature_check_us: AtomicU64,
    pub remote_bytes_down: AtomicU64,
    pub remote_bytes_up: AtomicU64,
    pub uploads: AtomicU64,
    pub uploads_dropped: AtomicU64,
    pub prefetch_named: AtomicU64,
    pub prefetch_fetched: AtomicU64,
    pub prefetch_missing: AtomicU64,
    pub prefetch_damaged: AtomicU64,
    pub prefetch_requests: AtomicU64,
    pub prefetch_bytes: AtomicU64,
    pub prefetch_waits: AtomicU64,
    pub prefetch_used: AtomicU64,
    pub prefetch_unused: AtomicU64,
    pub prefetch_ms: AtomicU64,
    pub manifest_entries: AtomicU64,
    pub manifest_earlier: AtomicU64,
    pub manifest_unchanged: AtomicU64,
    pub packs_uploaded: AtomicU64,
    pub pack_bytes_up: AtomicU64,
    pub swept: AtomicU64,
    /// How long each remote lookup kept a get waiting, in microseconds.
    pub remote_waits: Mutex<Vec<u64>>,
    /// When the go command was told each action was a miss: the put that
    /// follows, once it has rebuilt the output, tells what a miss costs.
    missed_at: Mutex<HashMap<Id, Instant>>,
    /// Every action answered as a miss, when the run lists them
    /// (`Options::misses_file`).
    missed: Mutex<Option<Vec<Id>>>,
    rebuilds: AtomicU64,
    rebuild_us: AtomicU64,
}

/// Misses whose rebuild is timed, at most: a bound on the memory it takes
/// (`go build std` has about 1,000 actions).
const TIMED_MISSES: usize = 100_000;
/// Misses listed for `Options::misses_file`, at most (32 bytes each).
const LISTED_MISSES: usize = 1_000_000;

/// The remote's side of a run, for the summary.
#[derive(Debug, Default)]
pub struct RemoteState {
    /// Where the remote is.
    pub location: String,
    /// Why it was switched off, if it was.
    pub off: Option<String>,
    /// The scope of the manifests it read and published.
    pub scope: String,
    /// Hits whose build time a record or manifest carried, or this run
    /// measured, and those times summed.
    pub saved: (u64, Duration),
}

/// A file of the run's statistics that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}: {source}", path.display())]
pub struct FileError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl FileError {
    pub(crate) fn new(what: &'static str, path: &Path, source: io::Error) -> FileError {
        FileError {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// The stats file: one JSON object, documented in docs/reference.md, also kept as
/// one line per run in the history. Fields are only ever added, so that
/// scripts keep working; missing ones read as zero.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Summary {
    /// granary's version.
    pub version: String,
    /// When the run started, RFC 3339 in UTC.
    pub started: String,
    /// `get` requests answered.
    pub gets: u64,
    /// Gets answered with an output.
    pub hits: u64,
    /// Gets answered with a miss (including unusable entries).
    pub misses: u64,
    /// Puts stored.
    pub puts: u64,
    /// Bytes of the outputs of hits.
    pub hit_bytes: u64,
    /// Bytes of the bodies of stored puts.
    pub put_bytes: u64,
    /// Requests answered with an error (bad requests, failed writes).
    pub errors: u64,
    /// Entries found damaged (garbled, truncated, unreadable) and treated as misses.
    pub corrupt_entries: u64,
    /// Puts whose object was already present and valid, so not rewritten.
    pub reused_objects: u64,
    /// Time from start to close, in milliseconds.
    pub duration_ms: u64,
    /// The remote cache, if one was set (`s3://bucket/prefix`).
    pub remote: String,
    /// Why the remote was switched off for the rest of the run; empty if
    /// it was not.
    pub remote_off: String,
    /// The scope whose manifest the run read first and published.
    pub scope: String,
    /// Hits answered from the local tier (`hits` = `local_hits` + `remote_hits`).
    pub local_hits: u64,
    /// Hits fetched from the remote after a local miss.
    pub remote_hits: u64,
    /// Local misses the remote had no (valid) entry for.
    pub remote_misses: u64,
    /// Local misses of actions no manifest named, answered as misses
    /// without asking the remote (`--lookups named`).
    pub lookups_skipped: u64,
    /// Remote requests that failed or timed out (lookups and uploads).
    pub remote_errors: u64,
    /// Remote entries found damaged (bad record, truncated or altered
    /// body); each was a miss and nothing of it was kept.
    pub remote_damaged: u64,
    /// Remote records refused because no trusted key signed them (with
    /// --trusted-keys); each was a miss.
    pub untrusted: u64,
    /// Time spent checking the signatures of records and manifests (with
    /// --trusted-keys), in microseconds.
    pub signature_check_us: u64,
    /// Bytes received from the remote (compressed, as transferred).
    pub remote_bytes_down: u64,
    /// Bytes sent to the remote (compressed, as transferred).
    pub remote_bytes_up: u64,
    /// Puts uploaded to the remote.
    pub uploads: u64,
    /// Puts not uploaded: queue full, remote failing or off, or still
    /// queued when --upload-deadline ran out.
    pub uploads_dropped: u64,
    /// Percentiles of how long a remote lookup kept a get waiting, in
    /// microseconds.
    pub remote_p50_us: u64,
    pub remote_p90_us: u64,
    pub remote_p99_us: u64,
    pub remote_max_us: u64,
    /// Entries the manifests of the run's scopes named.
    pub prefetch_named: u64,
    /// Entries the prefetch stored in the local tier.
    pub prefetch_fetched: u64,
    /// Named entries the remote did not have (or no longer had).
    pub prefetch_missing: u64,
    /// Packs, batches or manifests found damaged and ignored (with a warning).
    pub prefetch_damaged: u64,
    /// Requests the prefetch made: manifests, packs, batches, single lookups.
    pub prefetch_requests: u64,
    /// Bytes the prefetch received.
    pub prefetch_bytes: u64,
    /// Gets that waited for a prefetch transfer under way instead of asking the remote.
    pub prefetch_waits: u64,
    /// Prefetched entries a get then used: each saved a remote lookup.
    pub prefetch_used: u64,
    /// Prefetched entries no get asked for: fetched in vain.
    pub prefetch_unused: u64,
    /// Time from start-up to the end of the prefetch, in milliseconds.
    pub prefetch_ms: u64,
    /// Entries in the manifest published at close (0: none published).
    pub manifest_entries: u64,
    /// Of those, entries only the job before this one used, kept for this
    /// job's commands still to come.
    pub manifest_earlier: u64,
    /// 1 if this run's manifest was the one a run of this machine had
    /// published within the hour, so it was not sent again.
    pub manifest_unchanged: u64,
    /// Packs uploaded at close.
    pub packs_uploaded: u64,
    /// Bytes of those packs.
    pub pack_bytes_up: u64,
    /// Packs and manifests too old to be used that this run deleted from the bucket.
    pub swept: u64,
    /// Misses the go command then rebuilt and put, and the time from each
    /// miss to its put, in milliseconds: what a miss costs, so what a hit
    /// saves.
    pub rebuilds: u64,
    pub rebuild_ms: u64,
    /// Hits whose output's build time was known (measured where it was
    /// built, carried by its record or the manifest), and those build
    /// times summed, in milliseconds: what these hits saved.
    pub saved_hits: u64,
    pub saved_ms: u64,
}

impl Stats {
    pub fn summary(&self, started: SystemTime, elapsed: Duration, remote: RemoteState) -> Summary {
        let mut waits = self
            .remote_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        waits.sort_unstable();
        let percentile = |p: usize| match waits.len() {
            0 => 0,
            n => waits[(n * p).div_ceil(100).clamp(1, n) - 1],
        };
        let hits = self.hits.load(Relaxed);
        let remote_hits = self.remote_hits.load(Relaxed);
        Summary {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: humantime::format_rfc3339_seconds(started).to_string(),
            gets: self.gets.load(Relaxed),
            hits,
            misses: self.misses.load(Relaxed),
            puts: self.puts.load(Relaxed),
            hit_bytes: self.hit_bytes.load(Relaxed),
            put_bytes: self.put_bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            corrupt_entries: self.corrupt_entries.load(Relaxed),
            reused_objects: self.reused_objects.load(Relaxed),
            duration_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
            remote: remote.location,
            remote_off: remote.off.unwrap_or_default(),
            scope: remote.scope,
            // Derived, so that a local hit costs no extra counter.
            local_hits: hits.saturating_sub(remote_hits),
            remote_hits,
            remote_misses: self.remote_misses.load(Relaxed),
            lookups_skipped: self.lookups_skipped.load(Relaxed),
            remote_errors: self.remote_errors.load(Relaxed),
            remote_damaged: self.remote_damaged.load(Relaxed),
            untrusted: self.untrusted.load(Relaxed),
            signature_check_us: self.signature_check_us.load(Relaxed),
            remote_bytes_down: self.remote_bytes_down.load(Relaxed),
            remote_bytes_up: self.remote_bytes_up.load(Relaxed),
            uploads: self.uploads.load(Relaxed),
            uploads_dropped: self.uploads_dropped.load(Relaxed),
            remote_p50_us: percentile(50),
            remote_p90_us: percentile(90),
            remote_p99_us: percentile(99),
            remote_max_us: waits.last().copied().unwrap_or(0),
            prefetch_named: self.prefetch_named.load(Relaxed),
            prefetch_fetched: self.prefetch_fetched.load(Relaxed),
            prefetch_missing: self.prefetch_missing.load(Relaxed),
            prefetch_damaged: self.prefetch_damaged.load(Relaxed),
            prefetch_requests: self.prefetch_requests.load(Relaxed),
            prefetch_bytes: self.prefetch_bytes.load(Relaxed),
            prefetch_waits: self.prefetch_waits.load(Relaxed),
            prefetch_used: self.prefetch_used.load(Relaxed),
            prefetch_unused: self.prefetch_unused.load(Relaxed),
            prefetch_ms: self.prefetch_ms.load(Relaxed),
            manifest_entries: self.manifest_entries.load(Relaxed),
            manifest_earlier: self.manifest_earlier.load(Relaxed),
            manifest_unchanged: self.manifest_unchanged.load(Relaxed),
            packs_uploaded: self.packs_uploaded.load(Relaxed),
            pack_bytes_up: self.pack_bytes_up.load(Relaxed),
            swept: self.swept.load(Relaxed),
            rebuilds: self.rebuilds.load(Relaxed),
            rebuild_ms: self.rebuild_us.load(Relaxed) / 1000,
            saved_hits: remote.saved.0,
            saved_ms: remote.saved.1.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// Counts a miss answered for `action`, and notes when.
    pub fn miss(&self, action: Id) {
        add(&self.misses, 1);
        let mut missed = self
            .missed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if missed.len() < TIMED_MISSES {
            missed.insert(action, Instant::now());
        }
        drop(missed);
        if let Some(listed) = self
            .missed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            && listed.len() < LISTED_MISSES
        {
            listed.push(action);
        }
    }

    /// Keeps the ID of every miss from now on, for [`Stats::take_misses`].
    pub fn list_misses(&self) {
        *self.missed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vec::new());
    }

    /// The misses kept since [`Stats::list_misses`].
    pub fn take_misses(&self) -> Vec<Id> {
        self.missed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    /// A put of `action`: if this run answered it as a miss, the go command
    /// has just rebuilt it, and the time since, returned, is what that miss
    /// cost.
    pub fn put_after_miss(&self, action: &Id) -> Option<Duration> {
        let missed = self
            .missed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(action)?;
        let took = missed.elapsed();
        add(&self.rebuilds, 1);
        add(
            &self.rebuild_us,
            took.as_micros().try_into().unwrap_or(u64::MAX),
        );
        Some(took)
    }

    /// Records how long a remote lookup kept a get waiting.
    pub fn remote_wait(&self, wait: Duration) {
        self.remote_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(wait.as_micros().try_into().unwrap_or(u64::MAX));
    }
}

impl Summary {
    /// Writes the summary to `path` atomically: a reader sees the old file
    /// or the new one, never half of one.
    pub fn write_to(&self, path: &Path) -> Result<(), FileError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut json = serde_json::to_vec_pretty(self).expect("a summary always serializes");
        json.push(b'\n');
        let write = |e| FileError::new("write the stats file", path, e);
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
        io::Write::write_all(&mut file, &json)
            .and_then(|()| file.persist(path).map(drop).map_err(|e| e.error))
            .map_err(write)
    }

    /// Hits per get, in percent.
    pub fn hit_rate(&self) -> f64 {
        if self.gets == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.gets as f64
        }
    }

    /// Whether the run served any request: runs that did not are not
    /// worth a line in the history.
    pub fn served(&self) -> bool {
        self.gets + self.puts + self.errors > 0
    }

    /// The one line printed at close with `--verbose`.
    pub fn line(&self) -> String {
        let rate = self.hit_rate();
        let mut line = format!(
            "granary: {} gets, {} hits ({rate:.1}%, {}), {} misses, {} puts ({}), {} errors, {} corrupt entries, {} ms",
            self.gets,
            self.hits,
            ByteSize(self.hit_bytes).display().iec(),
            self.misses,
            self.puts,
            ByteSize(self.put_bytes).display().iec(),
            self.errors,
            self.corrupt_entries,
            self.duration_ms
        );
        if !self.remote.is_empty() {
            line += &format!(
                "; remote {}: {} hits, {} misses, {} errors, {} damaged, {} untrusted, {} down, {} uploads ({} up), {} dropped, p50 {:.1} ms, p99 {:.1} ms",
                self.remote,
                self.remote_hits,
                self.remote_misses,
                self.remote_errors,
                self.remote_damaged,
                self.untrusted,
                ByteSize(self.remote_bytes_down).display().iec(),
                self.uploads,
                ByteSize(self.remote_bytes_up).display().iec(),
                self.uploads_dropped,
                self.remote_p50_us as f64 / 1000.0,
                self.remote_p99_us as f64 / 1000.0,
            );
            if self.prefetch_named > 0 {
                line += &format!(
                    "; prefetch: {} named, {} fetched ({}, {} requests, {} ms), {} used, {} in vain, {} missing",
                    self.prefetch_named,
                    self.prefetch_fetched,
                    ByteSize(self.prefetch_bytes).display().iec(),
                    self.prefetch_requests,
                    self.prefetch_ms,
                    self.prefetch_used,
                    self.prefetch_unused,
                    self.prefetch_missing,
                );
            }
            if self.lookups_skipped > 0 {
                line += &format!(
                    "; {} misses of actions no manifest named not looked up",
                    self.lookups_skipped
                );
            }
            if self.signature_check_us > 0 {
                line += &format!(
                    "; signatures checked in {:.1} ms",
                    self.signature_check_us as f64 / 1000.0
                );
            }
            if self.manifest_entries > 0 {
                line += &format!(
                    "; published a manifest of {} entries ({} from the job before, {} new packs, {})",
                    self.manifest_entries,
                    self.manifest_earlier,
                    self.packs_uploaded,
                    ByteSize(self.pack_bytes_up).display().iec(),
                );
            }
            if self.manifest_unchanged > 0 {
                line += "; its manifest was published already";
            }
            if !self.remote_off.is_empty() {
                line += &format!("; switched off: {}", self.remote_off);
            }
        }
        line
    }
}
