//! The remote tier: lookups after local misses, uploads after puts, and
//! what keeps a bad remote from slowing the build by more than a bounded
//! amount (ARCHITECTURE.md, invariant 9). It knows nothing of the prefetch, which
//! sits in front of it ([`prefetch`](crate::prefetch)).
//!
//! Remote work runs on a small tokio runtime beside the engine's threads:
//!
//! - A local miss hands its ticket to [`Remote::look_up`] (through the
//!   prefetch), which returns at once; the reader never waits on the
//!   network. Gets of one action
//!   while its lookup runs join that lookup (one fetch per key). The lookup
//!   stores what it fetched in the local tier, which checks size and hash,
//!   keeping the original put time, and only then answers with a hit.
//! - A put, once stored locally and answered, is queued for upload
//!   ([`Remote::queue_upload`]). The queue is bounded: a full queue drops
//!   the upload (counted) rather than slow the build. Uploads run a few at
//!   a time, within a bound on the bytes they hold in memory.
//! - Every lookup has a deadline (--remote-timeout). A refused credential,
//!   or a few failures in a row, switch the remote off for the rest of the
//!   run, with one warning; so does lookups' total time passing
//!   --remote-budget. After that, misses are misses and uploads are dropped.
//! - With trusted keys (--trusted-keys), a record is used only if one of
//!   them signed its claim in the namespace it was read from
//!   ([`Remote::trusts`]); any other is a miss, counted as `untrusted`,
//!   with one warning. Lookups ask the run's own namespace and the ones it
//!   reads at once, and take the first trusted answer in that order.
//! - At close, lookups finish (each within its deadline), then uploads get
//!   --upload-deadline to drain; what is left is dropped and counted.
//!
//! The local tier's writes happen on the runtime's threads: writes of
//! fetched bodies into the page cache, as cheap as the reader's lookups.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use granary_id::Id;
use granary_protocol::Response;
use granary_remote::manifest::Seal;
use granary_remote::{
    ActionRecord, Fetched, Made, Namespace, RemoteCache, RemoteError, STREAM_ABOVE,
};
use granary_store::{ActionEntry, Hit, ObjectWriter, Store, StoreError};
use granary_trust::TrustedKeys;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::respond::{Ticket, answer_entry, answer_hit, disk_path};
use super::stats::{RemoteState, Stats, add};

/// How a remote is used, resolved from flags, variables and the config file.
#[derive(Debug)]
pub struct RemoteOptions {
    /// The remote in the namespace this run writes (and reads first).
    pub cache: RemoteCache,
    /// Namespaces read after the run's own, in order.
    pub read_namespaces: Vec<Namespace>,
    /// Keys whose signatures make a record trusted; `None`: every record is.
    pub trusted: Option<Arc<TrustedKeys>>,
    /// Read the remote, never write to it.
    pub read_only: bool,
    /// Deadline of one lookup, fetch included.
    pub timeout: Duration,
    /// Total time lookups that found nothing may keep gets waiting before
    /// the remote is switched off.
    pub budget: Duration,
    /// How long `close` waits for queued uploads.
    pub upload_deadline: Duration,
    /// The manifests to read and publish.
    pub scopes: Scopes,
}

/// Which manifests a run reads and publishes, for the prefetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// Where this run publishes, read first; qualified with the platform.
    pub scope: String,
    /// Read after it, in order; qualified likewise.
    pub fallbacks: Vec<String>,
    /// Whether to prefetch at start-up.
    pub prefetch: bool,
    /// Whether a local miss of an action that no manifest read names asks
    /// the remote; if not, it is a miss at once (once a manifest was read).
    pub look_up_unnamed: bool,
}

/// Failed remote requests in a row that switch the remote off.
const FAILURES_BEFORE_OFF: u32 = 5;
/// Characters of an error kept in the switch-off warning and the stats.
const MAX_REASON: usize = 400;
/// Uploads queued or running at most; more are dropped.
const UPLOAD_QUEUE: u64 = 4096;
/// Uploads running at once.
const UPLOADS_AT_ONCE: usize = 16;
/// Bodies held in memory by running uploads, in KiB; a larger body waits
/// until it can run alone.
const UPLOAD_MEMORY_KIB: u32 = 256 * 1024;
/// What a streamed upload holds in memory: S3's parts in flight and the
/// one being filled, or a few chunks of an HTTP body.
const STREAMED_UPLOAD_MEMORY: u64 = 32 << 20;
/// The slowest an upload may go, in bytes per second, beyond its
/// --remote-timeout.
const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// The remote tier of one run.
#[derive(Debug)]
pub struct Remote {
    /// The runtime the remote work runs on; the run owns the runtime
    /// itself and drops it at the end, on its own thread, which cancels
    /// whatever is left (tasks hold this remote, so it may outlive them).
    pub(super) runtime: Handle,
    pub(super) options: RemoteOptions,
    /// Why the remote was switched off, once it is.
    off: OnceLock<String>,
    failures_in_row: AtomicU32,
    /// A fetched output could not be stored, and the user was told.
    told_not_stored: AtomicBool,
    /// An untrusted record was refused, and the user was told.
    told_untrusted: AtomicBool,
    /// The remote in each namespace read: the run's own first.
    pub(super) reads: Vec<RemoteCache>,
    /// Total time lookups that found nothing kept gets waiting, in
    /// microseconds.
    wasted_us: AtomicU64,
    /// The tickets of gets waiting for each running lookup.
    waiting: Mutex<HashMap<Id, Vec<Ticket>>>,
    lookups: TaskTracker,
    uploads: TaskTracker,
    queue: Mutex<UploadQueue>,
    upload_slots: Arc<Semaphore>,
    upload_memory: Arc<Semaphore>,
    /// What this run used, for its manifest.
    pub(super) used: Mutex<Used>,
    /// The local tier, where what is fetched goes.
    pub(super) store: Store,
    pub(super) stats: Arc<Stats>,
}

/// The actions a run used, in order of first use, and what it knows of
/// how long their outputs took to build.
#[derive(Debug, Default)]
pub(super) struct Used {
    pub(super) order: Vec<Id>,
    pub(super) seen: HashSet<Id>,
    /// The actions answered as hits.
    hits: HashSet<Id>,
    /// How long outputs took to build where that was measured: here (a
    /// miss the go command then put), or by the runner that wrote the
    /// records and manifests read. Uploads, packs and manifests carry them
    /// on; hits count them as saved.
    pub(super) build_times: HashMap<Id, Duration>,
}

/// Build times a run keeps, at most (about 50 bytes each): `go build std`
/// has about 1,000 actions, a large module's job tens of thousands.
const KEPT_BUILD_TIMES: usize = 200_000;

impl Used {
    pub(super) fn insert(&mut self, action: Id) {
        if self.seen.insert(action) {
            self.order.push(action);
        }
    }

    fn hit(&mut self, action: Id) {
        self.insert(action);
        self.hits.insert(action);
    }

    /// Keeps how long `action` took to build, unless a time is known: the
    /// first source wins, and a run reads its own namespace and scope first.
    pub(super) fn note_build_time(&mut self, action: Id, took: Duration) {
        if self.build_times.len() < KEPT_BUILD_TIMES {
            self.build_times.entry(action).or_insert(took);
        }
    }

    /// The hits whose build time is known, and those times summed.
    pub(super) fn saved(&self) -> (u64, Duration) {
        self.hits
            .iter()
            .filter_map(|action| self.build_times.get(action))
            .fold((0, Duration::ZERO), |(hits, sum), took| {
                (hits + 1, sum + *took)
            })
    }
}

/// The count of uploads queued or running. Once `close` gives up on them,
/// they are `abandoned`: counted as dropped, whatever becomes of them.
#[derive(Debug, Default)]
struct UploadQueue {
    queued: u64,
    abandoned: bool,
}

/// A remote output now in the local tier.
#[derive(Debug)]
pub(super) struct Found {
    entry: ActionEntry,
    path: String,
}

/// Why a lookup gave no hit.
pub(super) enum Trouble {
    Remote(RemoteError),
    /// The local tier could not take the fetched output.
    Local(String),
}

impl From<RemoteError> for Trouble {
    fn from(e: RemoteError) -> Trouble {
        match e {
            // The remote answered; the local disk could not take it.
            RemoteError::Sink(e) => not_stored(&e),
            RemoteError::LocalFile(e) => Trouble::Local(e),
            e => Trouble::Remote(e),
        }
    }
}

/// Waits for a remote call at most `timeout`. A panic in it (a decoder
/// tripped by what the remote sent) is a failed request like any other:
/// never a lost answer, never a get left waiting.
pub(super) async fn within<T, E: Into<Trouble>>(
    timeout: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, Trouble> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Ok(Ok(result)) => result.map_err(Into::into),
        Ok(Err(panic)) => Err(Trouble::Remote(panicked(&*panic))),
        Err(_) => Err(Trouble::Remote(RemoteError::Failed(format!(
            "no answer within --remote-timeout ({})",
            humantime::format_duration(timeout)
        )))),
    }
}

/// A panic in remote work, as the failed request it stands for.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> RemoteError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    RemoteError::Failed(format!(
        "granary failed on what the remote sent (a bug; please report it): {message}"
    ))
}

/// A fetched output the local tier could not take.
pub(super) fn not_stored(e: &dyn std::fmt::Display) -> Trouble {
    Trouble::Local(format!(
        "cannot store an output fetched from the remote: {e}"
    ))
}

impl Remote {
    /// The remote tier, on a runtime of its own, returned for the run to
    /// own.
    pub fn start(
        options: RemoteOptions,
        store: Store,
        stats: Arc<Stats>,
    ) -> std::io::Result<(Remote, Runtime)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("granary-remote")
            .enable_all()
            .build()?;
        let reads = std::iter::once(options.cache.clone())
            .chain(
                options
                    .read_namespaces
                    .iter()
                    .filter(|namespace| *namespace != options.cache.namespace())
                    .map(|namespace| options.cache.in_namespace(namespace.clone())),
            )
            .collect();
        let remote = Remote {
            runtime: runtime.handle().clone(),
            reads,
            options,
            off: OnceLock::new(),
            failures_in_row: AtomicU32::new(0),
            told_not_stored: AtomicBool::new(false),
            told_untrusted: AtomicBool::new(false),
            wasted_us: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
            lookups: TaskTracker::new(),
            uploads: TaskTracker::new(),
            queue: Mutex::default(),
            upload_slots: Arc::new(Semaphore::new(UPLOADS_AT_ONCE)),
            upload_memory: Arc::new(Semaphore::new(UPLOAD_MEMORY_KIB as usize)),
            used: Mutex::default(),
            store,
            stats,
        };
        Ok((remote, runtime))
    }

    pub fn is_on(&self) -> bool {
        self.off.get().is_none()
    }

    pub fn state(&self) -> RemoteState {
        RemoteState {
            location: self.options.cache.location().to_string(),
            off: self.off.get().cloned(),
            scope: self.options.scopes.scope.clone(),
            saved: self
                .used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saved(),
        }
    }

    /// Switches the remote off for the rest of the run, with one warning.
    fn switch_off(&self, reason: String) {
        // One line, and not a whole XML error document.
        let mut reason = reason.replace('\n', " ");
        if let Some((cut, _)) = reason.char_indices().nth(MAX_REASON) {
            reason.truncate(cut);
            reason.push('…');
        }
        if self.off.set(reason.clone()).is_ok() {
            tracing::warn!(
                "the remote cache {} is off for the rest of this run: {reason}; \
                 the build goes on with the local cache",
                self.options.cache.location()
            );
        }
    }

    pub(super) fn succeeded(&self) {
        self.failures_in_row.store(0, Relaxed);
    }

    pub(super) fn failed(&self, error: &RemoteError) {
        if let RemoteError::Denied(_) = error {
            // The advice first: the error after it may be cut short.
            let cache = &self.options.cache;
            return self.switch_off(format!(
                "it refused our credentials; {} ({error})",
                cache.credentials_advice(!self.options.read_only)
            ));
        }
        let in_row = self.failures_in_row.fetch_add(1, Relaxed) + 1;
        tracing::debug!("remote request failed ({in_row} in a row): {error}");
        if in_row >= FAILURES_BEFORE_OFF {
            self.switch_off(format!(
                "{in_row} requests failed in a row, the last with: {error}"
            ));
        }
    }

    /// Counts a wait on the remote that found nothing against the budget.
    pub(super) fn wasted(&self, wait: Duration) {
        let wait = wait.as_micros() as u64;
        let total = self.wasted_us.fetch_add(wait, Relaxed) + wait;
        if Duration::from_micros(total) > self.options.budget {
            self.switch_off(format!(
                "lookups that found nothing kept the build waiting for {} in total, \
                 more than --remote-budget ({})",
                humantime::format_duration(Duration::from_millis(total / 1000)),
                humantime::format_duration(self.options.budget)
            ));
        }
    }
}

impl Remote {
    /// Looks `action` up in the remote, or joins the lookup of it under
    /// way. Returns at once.
    pub(super) fn look_up(self: &Arc<Self>, ticket: Ticket, action: Id) {
        match self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(action)
        {
            Entry::Occupied(mut waiting) => return waiting.get_mut().push(ticket),
            Entry::Vacant(slot) => {
                slot.insert(vec![ticket]);
            }
        }
        let remote = self.clone();
        self.lookups.spawn_on(
            async move {
                let found = remote.lookup(action).await;
                let tickets = remote
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&action)
                    .unwrap_or_default();
                for ticket in tickets {
                    remote.answer_remote(ticket, action, found.as_ref());
                }
            },
            &self.runtime,
        );
    }

    /// Answers a local miss of an action no manifest named as a miss,
    /// without asking the remote (`Scopes::look_up_unnamed`).
    pub(super) fn miss_unnamed(&self, ticket: Ticket, action: Id) {
        add(&self.stats.lookups_skipped, 1);
        self.stats.miss(action);
        let id = ticket.id();
        ticket.answer(Response::miss(id));
    }

    fn answer_remote(&self, ticket: Ticket, action: Id, found: Option<&Found>) {
        match found {
            Some(found) => {
                add(&self.stats.remote_hits, 1);
                self.answer_found(ticket, action, found);
            }
            None => {
                self.stats.miss(action);
                let id = ticket.id();
                ticket.answer(Response::miss(id));
            }
        }
    }

    /// Notes that this run put `action`, which took `build_time` to build
    /// if it was measured, for the manifest it publishes.
    pub(super) fn record_put(&self, action: Id, build_time: Option<Duration>) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.insert(action);
        if let Some(took) = build_time {
            // Measured here: fresher than what a record said.
            used.build_times.remove(&action);
            used.note_build_time(action, took);
        }
    }

    /// Keeps how long outputs took to build, by a record or manifest.
    pub(super) fn note_build_times(&self, times: impl IntoIterator<Item = (Id, Duration)>) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        for (action, took) in times {
            used.note_build_time(action, took);
        }
    }

    fn record_hit(&self, action: Id) {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hit(action);
    }

    /// Answers with an entry of the local tier, noting the use.
    pub(super) fn answer_local(&self, ticket: Ticket, action: Id, hit: Hit) {
        self.record_hit(action);
        answer_hit(&self.stats, ticket, hit);
    }

    /// Answers with an output fetched from the remote.
    pub(super) fn answer_found(&self, ticket: Ticket, action: Id, found: &Found) {
        self.record_hit(action);
        answer_entry(&self.stats, ticket, &found.entry, found.path.clone());
    }

    /// One lookup, within its deadline, with its outcome counted.
    async fn lookup(&self, action: Id) -> Option<Found> {
        if !self.is_on() {
            return None;
        }
        let started = Instant::now();
        let outcome = within(self.options.timeout, self.fetch(action)).await;
        let wait = started.elapsed();
        self.stats.remote_wait(wait);
        let stats = &self.stats;
        if !matches!(outcome, Ok(Some(_))) {
            self.wasted(wait);
        }
        match outcome {
            Ok(Some(found)) => {
                self.succeeded();
                return Some(found);
            }
            Ok(None) => {
                self.succeeded();
                add(&stats.remote_misses, 1);
            }
            Err(Trouble::Remote(e @ RemoteError::Damaged { .. })) => {
                self.succeeded();
                add(&stats.remote_misses, 1);
                add(&stats.remote_damaged, 1);
                tracing::info!("{e}; treated as a miss");
            }
            Err(Trouble::Remote(e)) => {
                add(&stats.remote_errors, 1);
                self.failed(&e);
            }
            Err(Trouble::Local(e)) => self.report_not_stored(&e),
        }
        None
    }

    /// Counts a fetched output the local tier could not take as an error.
    /// A full disk fails every one of them: the first says so, once.
    pub(super) fn report_not_stored(&self, e: &str) {
        add(&self.stats.errors, 1);
        if self.told_not_stored.swap(true, Relaxed) {
            tracing::debug!("{e}");
        } else {
            tracing::warn!(
                "{e}; the go command builds what granary cannot store \
                 (later failures to store count as errors in the statistics)"
            );
        }
    }

    /// Whether `record`, read from `cache`, may be used: without trusted
    /// keys every record may; with them, only one a trusted key signed for
    /// that namespace. A refusal is counted, and the first one told.
    pub(super) fn trusts(&self, cache: &RemoteCache, record: &ActionRecord) -> bool {
        self.trusts_all(cache, &[record])[0]
    }

    /// [`Remote::trusts`] of each record, their signatures checked together
    /// ([`TrustedKeys::check_all`]).
    pub(super) fn trusts_all(&self, cache: &RemoteCache, records: &[&ActionRecord]) -> Vec<bool> {
        let Some(trusted) = &self.options.trusted else {
            return vec![true; records.len()];
        };
        let namespace = cache.namespace();
        let claims: Vec<_> = records
            .iter()
            .map(|record| (record.claim(namespace.as_str()), record.signature.as_ref()))
            .collect();
        let checked = self.timed_check(|| trusted.check_all(&claims));
        let refuse = |record: &ActionRecord, why| {
            let key = cache.action_key(&record.action);
            self.refused(&format!("record {key} in {namespace}: {why}"));
            false
        };
        records
            .iter()
            .zip(checked)
            .map(|(record, checked)| checked.map_or_else(|why| refuse(record, why), |()| true))
            .collect()
    }

    /// Whether a manifest with `seal`, read from `cache`, may be used: as
    /// [`Remote::trusts`] for records.
    pub(super) fn trusts_manifest(&self, cache: &RemoteCache, seal: &Seal) -> bool {
        let Some(trusted) = &self.options.trusted else {
            return true;
        };
        let namespace = cache.namespace();
        let checked = self.timed_check(|| {
            trusted.check_manifest(namespace.as_str(), &seal.digest, seal.signature.as_ref())
        });
        match checked {
            Ok(()) => true,
            Err(why) => {
                self.refused(&format!("manifest in {namespace}: {why}"));
                false
            }
        }
    }

    /// Runs a signature check, counting the time it takes.
    fn timed_check<T>(&self, check: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let checked = check();
        let spent = start.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
        add(&self.stats.signature_check_us, spent);
        checked
    }

    /// Counts an untrusted record or manifest, and tells the first.
    fn refused(&self, what: &str) {
        add(&self.stats.untrusted, 1);
        if self.told_untrusted.swap(true, Relaxed) {
            tracing::debug!("refused the untrusted {what}");
        } else {
            tracing::warn!(
                "refused the untrusted {what}; records and manifests not signed by a key in \
                 --trusted-keys are not used (counted as `untrusted` in the statistics)"
            );
        }
    }

    /// The first trusted record of `action` in the namespaces read, asked
    /// all at once, and the remote it came from.
    async fn find(&self, action: Id) -> Result<Option<(&RemoteCache, Fetched)>, Trouble> {
        let answers =
            futures_util::future::join_all(self.reads.iter().map(|cache| cache.lookup(&action)))
                .await;
        let received = answers.iter().flatten().flatten().map(|f| f.transferred);
        add(&self.stats.remote_bytes_down, received.sum());
        let mut trouble = None;
        for (cache, answer) in self.reads.iter().zip(answers) {
            match answer {
                Ok(Some(fetched)) => {
                    if self.trusts(cache, &fetched.record) {
                        return Ok(Some((cache, fetched)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    trouble.get_or_insert(e);
                }
            }
        }
        match trouble {
            Some(e) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// Fetches the output of `action` into the local tier.
    pub(super) async fn fetch(&self, action: Id) -> Result<Option<Found>, Trouble> {
        let Some((cache, fetched)) = self.find(action).await? else {
            return Ok(None);
        };
        let record = fetched.record;
        let mut body = self
            .store
            .object_writer(&record.output)
            .map_err(|e| not_stored(&e))?;
        match fetched.inline {
            Some(inline) => body.write_all(&inline).map_err(|e| not_stored(&e))?,
            None => {
                let transferred = cache.fetch_object(&record, &mut body).await?;
                add(&self.stats.remote_bytes_down, transferred);
            }
        }
        self.keep(action, &record, body).map(Some)
    }

    /// Publishes a fetched output written to `body` in the local tier, if
    /// its size and hash match `record`.
    pub(super) fn keep(
        &self,
        action: Id,
        record: &ActionRecord,
        body: ObjectWriter,
    ) -> Result<Found, Trouble> {
        let cache = &self.options.cache;
        let output = record.output;
        if let Some(took) = record.build_time {
            self.note_build_times([(action, took)]);
        }
        let stored = self
            .store
            .put_as_of(&action, body, output, record.size, record.put_time)
            .map_err(|e| match e {
                StoreError::HashMismatch { .. } | StoreError::SizeMismatch { .. } => {
                    Trouble::Remote(RemoteError::Damaged {
                        key: cache.action_key(&action),
                        why: e.to_string(),
                    })
                }
                e => not_stored(&e),
            })?;
        let path = disk_path(stored.object).map_err(|e| not_stored(&e))?;
        Ok(Found {
            entry: ActionEntry {
                output_id: output,
                size: record.size,
                put_time: record.put_time,
            },
            path,
        })
    }

    /// Queues the upload of a put just stored locally, unless the remote is
    /// read-only. Never waits: a full queue drops the upload.
    pub(super) fn queue_upload(self: &Arc<Self>, made: Made, object: PathBuf) {
        if self.options.read_only {
            return;
        }
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let room = self.is_on() && !queue.abandoned && queue.queued < UPLOAD_QUEUE;
            queue.queued += u64::from(room);
            room
        };
        if !queued {
            tracing::debug!("the remote is off or the upload queue is full; dropped an upload");
            return add(&self.stats.uploads_dropped, 1);
        }
        let remote = self.clone();
        self.uploads.spawn_on(
            async move {
                let sent = remote.upload(&made, object).await;
                let mut queue = remote.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if !queue.abandoned {
                    queue.queued -= 1;
                    match sent {
                        Some(bytes) => {
                            add(&remote.stats.uploads, 1);
                            add(&remote.stats.remote_bytes_up, bytes);
                        }
                        None => add(&remote.stats.uploads_dropped, 1),
                    }
                }
            },
            &self.runtime,
        );
    }

    /// One upload, within its deadline. Returns the bytes sent, or `None`
    /// if it did not happen.
    async fn upload(&self, made: &Made, object: PathBuf) -> Option<u64> {
        let _slot = self.upload_slots.acquire().await.ok()?;
        let size = tokio::fs::metadata(&object)
            .await
            .inspect_err(|e| tracing::debug!("cannot upload {}: {e}", object.display()))
            .ok()?
            .len();
        // A streamed upload holds a few parts, whatever the output's size.
        let held = match size > STREAM_ABOVE {
            true => STREAMED_UPLOAD_MEMORY,
            false => size,
        };
        let kib = held.div_ceil(1024).clamp(1, UPLOAD_MEMORY_KIB.into()) as u32;
        let _memory = self.upload_memory.acquire_many(kib).await.ok()?;
        if !self.is_on() {
            return None;
        }
        // A large output takes time to send: the deadline grows with it.
        let deadline = self.options.timeout + Duration::from_secs(size / MIN_UPLOAD_RATE);
        let cache = &self.options.cache;
        let sent = within(deadline, cache.upload_file(made, &object, size)).await;
        match sent {
            Ok(sent) => {
                self.succeeded();
                Some(sent.transferred)
            }
            Err(Trouble::Remote(e)) => {
                add(&self.stats.remote_errors, 1);
                self.failed(&e);
                None
            }
            Err(Trouble::Local(e)) => {
                tracing::debug!("cannot upload: {e}");
                None
            }
        }
    }

    /// At close: lets lookups finish, then gives uploads until the deadline;
    /// what is still queued then is dropped and counted.
    pub(super) fn finish(self: &Arc<Self>, publish: impl Future<Output = ()>) {
        self.lookups.close();
        self.uploads.close();
        let deadline = self.options.upload_deadline;
        self.runtime.block_on(async {
            self.lookups.wait().await;
            let publish = async {
                if tokio::time::timeout(deadline, publish).await.is_err() {
                    tracing::warn!(
                        "publishing the manifest took longer than --upload-deadline ({}); \
                         gave up",
                        humantime::format_duration(deadline)
                    );
                }
            };
            let (_, uploaded) =
                tokio::join!(publish, tokio::time::timeout(deadline, self.uploads.wait()));
            if uploaded.is_err() {
                let left = {
                    let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    queue.abandoned = true;
                    queue.queued
                };
                add(&self.stats.uploads_dropped, left);
                tracing::warn!(
                    "{left} uploads to {} were still queued after --upload-deadline ({}); \
                     they were dropped",
                    self.options.cache.location(),
                    humantime::format_duration(deadline)
                );
            }
        });
    }
}
