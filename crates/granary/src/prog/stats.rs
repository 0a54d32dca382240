//! Counters of one `prog` run, and the stats file written at close.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use anyhow::Context;
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
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// The stats file: one JSON object, documented in the README, also kept as
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
}

impl Stats {
    pub fn summary(&self, started: SystemTime, elapsed: Duration) -> Summary {
        Summary {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: humantime::format_rfc3339_seconds(started).to_string(),
            gets: self.gets.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            puts: self.puts.load(Relaxed),
            hit_bytes: self.hit_bytes.load(Relaxed),
            put_bytes: self.put_bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            corrupt_entries: self.corrupt_entries.load(Relaxed),
            reused_objects: self.reused_objects.load(Relaxed),
            duration_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}

impl Summary {
    /// Writes the summary to `path` atomically: a reader sees the old file
    /// or the new one, never half of one.
    pub fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut json = serde_json::to_vec_pretty(self).context("encoding the statistics")?;
        json.push(b'\n');
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write the stats file in {}", dir.display()))?;
        std::io::Write::write_all(&mut file, &json)
            .and_then(|()| file.persist(path).map(drop).map_err(|e| e.error))
            .with_context(|| format!("cannot write the stats file {}", path.display()))
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
        format!(
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
        )
    }
}
