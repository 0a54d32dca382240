//! Manifests, prefetch and packs: what takes the remote's round trips off
//! a fresh runner's critical path.
//!
//! - Every run records the actions it used (hits and puts), in order of
//!   first use ([`Used`]).
//! - Right after the handshake, a task reads the manifests of the run's
//!   scope and fallback scopes, and fetches what they name and the local
//!   tier lacks: packs from object storage, batches from a cache server
//!   (one by one from a server without a batch endpoint), a few transfers
//!   at a time. Every entry to fetch is *planned*: a get for it waits for
//!   its transfer instead of asking the remote again, and once the transfer
//!   is over, gets it did not serve go on to an ordinary lookup.
//! - At close, a run that may write merges what it used with what the other
//!   runs of its scope on this machine used in the last [`JOB_WINDOW`] (a
//!   journal in the cache directory, under a lock, so concurrent and
//!   successive go commands of one job publish their union), packs the
//!   entries that no fresh pack holds (object storage only; a server
//!   assembles batches itself), publishes the manifest, and deletes packs
//!   and manifests too old to be used.
//! - A job's first go command publishes before the others run, so the
//!   manifest also keeps, as *earlier* entries, what the job before used
//!   (read by the job's first run and kept in the journal) and this job has
//!   not used yet, for [`JOB_WINDOW`] at most: a runner starting mid-job,
//!   and the job's own later commands, still find them. The job after
//!   drops them unless it uses them, so a manifest names at most two jobs'
//!   worth. A run that does not prefetch reads its scope's manifest at
//!   close instead, for the same reason and to know what is packed.
//!
//! Everything here is best effort: a missing, damaged or slow manifest or
//! pack costs a warning or a count, never a failed build.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use granary_protocol::{Hash, Response};
use granary_remote::manifest::{PACK_REUSE_AGE, from_unix_seconds, scope_key_name, unix_seconds};
use granary_remote::{
    Fetched, Group, Manifest, PackReader, PackRef, PackWriter, RawEntry, RemoteError,
};
use granary_store::{ActionId, Lookup, OutputId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Engine;
use super::remote::{Found, Remote, Trouble, not_stored, panicked, within};
use super::respond::Ticket;
use super::stats::add;

/// Packs or batches in flight at once.
const TRANSFERS_AT_ONCE: usize = 8;
/// Single lookups in flight at once, where there is no batch endpoint.
const LOOKUPS_AT_ONCE: usize = 32;
/// Entries per batch request.
const BATCH: usize = 256;
/// A new pack is closed once it is this large.
const PACK_TARGET: usize = 8 << 20;
/// Packs uploaded at once at close.
const PACK_UPLOADS_AT_ONCE: usize = 4;
/// A published manifest is the union of what the runs of its scope on this
/// machine used within this window: the go commands of one CI job.
pub const JOB_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// Most packs and manifests one close deletes.
const SWEEP_LIMIT: usize = 1000;
/// The journals' directory in the cache directory.
const JOURNALS: &str = "granary-journal";

/// A get waiting for the prefetch, and since when: however the remote
/// behaves, it waits at most --remote-timeout (see
/// [`Engine::watch_prefetch`]), and what it waited for nothing counts
/// against --remote-budget.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) ticket: Ticket,
    since: Instant,
}

impl Waiter {
    pub(super) fn new(ticket: Ticket) -> Waiter {
        Waiter {
            ticket,
            since: Instant::now(),
        }
    }
}

/// What became of an entry the prefetch planned to fetch.
#[derive(Debug)]
enum Planned {
    /// Its transfer is planned or under way; these gets wait for it, the
    /// longest-waiting first.
    Waiting(Vec<Waiter>),
    /// The prefetch stored it in the local tier.
    Stored,
    /// The prefetch did not get it.
    Failed,
}

/// The prefetch's state, shared with gets.
#[derive(Debug)]
pub(super) struct Prefetch {
    plan: Mutex<Plan>,
    /// The pack holding each entry the manifests named.
    packs: Mutex<HashMap<Hash, PackRef>>,
    /// What the latest job used, by the manifest of the run's own scope.
    latest_job: Mutex<Vec<Hash>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    watchdog: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the prefetch fetches, once it knows.
#[derive(Debug, Default)]
struct Plan {
    /// Whether the manifests have been read (or there is no prefetch).
    ready: bool,
    entries: HashMap<Hash, Planned>,
    /// Gets that came while the manifests were being read: they wait for
    /// the plan, one round trip, rather than look up what may be planned.
    early: Vec<(Hash, Waiter)>,
}

/// What a get found in the prefetch's plan.
pub(super) enum Joined {
    /// The get waits for the transfer, which will answer it.
    Waiting,
    /// The prefetch stored the entry: look again locally.
    Stored(Waiter),
    /// Nothing planned, or the transfer is over: ask the remote.
    No(Waiter),
}

impl Prefetch {
    pub(super) fn new(enabled: bool) -> Prefetch {
        Prefetch {
            plan: Mutex::new(Plan {
                ready: !enabled,
                ..Plan::default()
            }),
            packs: Mutex::default(),
            latest_job: Mutex::default(),
            task: Mutex::default(),
            watchdog: Mutex::default(),
        }
    }

    /// Keeps what the latest job used, by the manifest of the run's own
    /// scope, for the journal.
    fn remember_latest_job(&self, manifest: &Manifest) {
        *lock(&self.latest_job) = manifest
            .groups
            .iter()
            .flat_map(|g| &g.actions)
            .copied()
            .collect();
    }

    /// Lets a get of `action` wait for its transfer, if one is planned, or
    /// for the plan, if it is not made yet.
    pub(super) fn join(&self, action: Hash, waiter: Waiter) -> Joined {
        let mut plan = lock(&self.plan);
        if !plan.ready {
            plan.early.push((action, waiter));
            return Joined::Waiting;
        }
        match plan.entries.get_mut(&action) {
            Some(Planned::Waiting(waiters)) => {
                waiters.push(waiter);
                Joined::Waiting
            }
            Some(Planned::Stored) => Joined::Stored(waiter),
            Some(Planned::Failed) | None => Joined::No(waiter),
        }
    }
}

/// The actions a run used, in order of first use.
#[derive(Debug, Default)]
pub(super) struct Used {
    order: Vec<Hash>,
    seen: HashSet<Hash>,
}

impl Used {
    pub(super) fn insert(&mut self, action: Hash) {
        if self.seen.insert(action) {
            self.order.push(action);
        }
    }
}

/// Where a transfer's entries come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Pack(PackRef),
    /// A batch request, or single lookups if the remote has no batch
    /// endpoint.
    Loose,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// Starts the prefetch in the background, if the run has a remote and
    /// prefetches. Returns at once.
    pub(super) fn start_prefetch(self: &Arc<Self>) {
        let Some(remote) = &self.remote else { return };
        if !remote.options.scopes.prefetch {
            return;
        }
        let engine = self.clone();
        let task = remote.runtime.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(engine.clone().prefetch())
                .catch_unwind()
                .await
            {
                engine.report(Trouble::Remote(panicked(&*panic)), "the prefetch");
                engine.release_waiters();
            }
        });
        *lock(&remote.prefetch.task) = Some(task);
        let watchdog = remote.runtime.spawn(self.clone().watch_prefetch());
        *lock(&remote.prefetch.watchdog) = Some(watchdog);
    }

    /// Bounds every wait on the prefetch, whatever the remote sends (an
    /// endless or trickling transfer, a manifest that never comes): a get
    /// that has waited --remote-timeout gives up on its transfer and goes
    /// on to an ordinary lookup, and once the remote is off the prefetch
    /// stops and every waiting get goes on at once. Runs until the
    /// prefetch is over.
    async fn watch_prefetch(self: Arc<Self>) {
        let remote = self.remote();
        let limit = remote.options.timeout;
        let tick = (limit / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            tokio::time::sleep(tick).await;
            if !remote.is_on() {
                if let Some(task) = lock(&remote.prefetch.task).as_ref() {
                    task.abort();
                }
                return self.release_waiters();
            }
            let (early, stalled) = {
                let mut plan = lock(&remote.prefetch.plan);
                let (early, waiting) = std::mem::take(&mut plan.early)
                    .into_iter()
                    .partition(|(_, waiter)| waiter.since.elapsed() >= limit);
                plan.early = waiting;
                let stalled: Vec<Hash> = plan
                    .entries
                    .iter()
                    .filter_map(|(action, state)| match state {
                        Planned::Waiting(waiters) => waiters
                            .first()
                            .is_some_and(|w| w.since.elapsed() >= limit)
                            .then_some(*action),
                        Planned::Stored | Planned::Failed => None,
                    })
                    .collect();
                (early, stalled)
            };
            let gave_up = !early.is_empty() || !stalled.is_empty();
            for (action, waiter) in early {
                self.give_up_waiting(remote, action, waiter);
            }
            for action in stalled {
                self.settle(action, None);
            }
            if gave_up {
                tracing::debug!("gets waited for the prefetch longer than --remote-timeout");
            }
            let over = lock(&remote.prefetch.task)
                .as_ref()
                .is_none_or(|task| task.is_finished());
            if over {
                return;
            }
        }
    }

    /// Ends every wait on the prefetch: the plan is made (empty if it was
    /// not yet), and gets waiting for it go on to ordinary lookups.
    fn release_waiters(self: &Arc<Self>) {
        let remote = self.remote();
        let mut released = Vec::new();
        {
            let mut plan = lock(&remote.prefetch.plan);
            plan.ready = true;
            released.append(&mut plan.early);
            for (action, state) in &mut plan.entries {
                if let Planned::Waiting(waiters) = state {
                    released.extend(waiters.drain(..).map(|waiter| (*action, waiter)));
                    *state = Planned::Failed;
                }
            }
        }
        for (action, waiter) in released {
            self.give_up_waiting(remote, action, waiter);
        }
    }

    /// A get stops waiting for the prefetch without its entry: the wait
    /// counts against the budget, and an ordinary lookup takes over.
    fn give_up_waiting(self: &Arc<Self>, remote: &Remote, action: Hash, waiter: Waiter) {
        remote.wasted(waiter.since.elapsed());
        self.look_up(remote, waiter.ticket, action);
    }

    fn remote(&self) -> &Remote {
        self.remote.as_ref().expect("the prefetch needs a remote")
    }

    async fn prefetch(self: Arc<Self>) {
        let started = Instant::now();
        let groups = self.plan().await;
        let mut transfers = JoinSet::new();
        let slots = Arc::new(Semaphore::new(TRANSFERS_AT_ONCE));
        let handle = self.remote().runtime.handle().clone();
        for group in groups {
            let chunks: Vec<(Source, Vec<Hash>)> = match group.pack {
                Some(pack) => vec![(Source::Pack(pack), group.actions)],
                None => group
                    .actions
                    .chunks(BATCH)
                    .map(|chunk| (Source::Loose, chunk.to_vec()))
                    .collect(),
            };
            for (source, actions) in chunks {
                let (engine, slots) = (self.clone(), slots.clone());
                transfers.spawn_on(
                    async move {
                        let _slot = slots.acquire_owned().await;
                        engine.transfer(source, actions).await;
                    },
                    &handle,
                );
            }
        }
        while transfers.join_next().await.is_some() {}
        self.stats
            .prefetch_ms
            .store(started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Reads the manifests and plans what to fetch: the entries they name
    /// that the local tier lacks, grouped as they will be fetched.
    async fn plan(self: &Arc<Self>) -> Vec<Group> {
        let remote = self.remote();
        let scopes = &remote.options.scopes;
        let names: Vec<&String> = std::iter::once(&scopes.scope)
            .chain(&scopes.fallbacks)
            .collect();
        let timeout = remote.options.timeout;
        let cache = &remote.options.cache;
        let fetched = futures_util::future::join_all(
            names
                .iter()
                .map(|scope| within(timeout, cache.fetch_manifest(scope))),
        )
        .await;
        add(&self.stats.prefetch_requests, names.len() as u64);
        let mut manifests = Vec::new();
        for (i, (scope, result)) in names.iter().zip(fetched).enumerate() {
            match result {
                Ok(Some(manifest)) if manifest.is_stale(SystemTime::now()) => {
                    tracing::debug!("the manifest of scope {scope} is too old to be used");
                }
                Ok(Some(manifest)) => {
                    if i == 0 {
                        remote.prefetch.remember_latest_job(&manifest);
                    }
                    manifests.push(manifest);
                }
                Ok(None) => tracing::debug!("no manifest for scope {scope}"),
                Err(trouble) => self.report(trouble, &format!("the manifest of scope {scope}")),
            }
        }
        let mut named = HashSet::new();
        let mut groups = Vec::new();
        {
            let mut packs = lock(&remote.prefetch.packs);
            for group in manifests.into_iter().flat_map(|m| m.groups) {
                let actions: Vec<Hash> = group
                    .all()
                    .copied()
                    .filter(|action| named.insert(*action))
                    .collect();
                if let Some(pack) = group.pack {
                    packs.extend(actions.iter().map(|action| (*action, pack)));
                }
                groups.push(Group {
                    pack: group.pack,
                    actions,
                    earlier: Vec::new(),
                });
            }
        }
        add(&self.stats.prefetch_named, named.len() as u64);
        // What the local tier lacks: a stat per entry, off the runtime.
        let store = self.store.clone();
        let groups = tokio::task::spawn_blocking(move || {
            groups
                .into_iter()
                .filter_map(|mut group| {
                    group
                        .actions
                        .retain(|action| !store.action_path(&ActionId(*action)).exists());
                    (!group.actions.is_empty()).then_some(group)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let early = {
            let mut plan = lock(&remote.prefetch.plan);
            for action in groups.iter().flat_map(|group| &group.actions) {
                plan.entries
                    .entry(*action)
                    .or_insert_with(|| Planned::Waiting(Vec::new()));
            }
            plan.ready = true;
            std::mem::take(&mut plan.early)
        };
        for (action, waiter) in early {
            self.wait_for_prefetch(remote, waiter, action);
        }
        groups
    }

    /// Fetches one pack or batch; then lets the gets still waiting for its
    /// entries look them up one by one.
    async fn transfer(self: Arc<Self>, source: Source, actions: Vec<Hash>) {
        let remote = self.remote();
        if remote.is_on() {
            match AssertUnwindSafe(self.take(source, &actions))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => remote.succeeded(),
                Ok(Err(trouble)) => self.report(trouble, "the rest of a damaged pack"),
                Err(panic) => self.report(Trouble::Remote(panicked(&*panic)), "a transfer"),
            }
        }
        for action in actions {
            self.settle(action, None);
        }
    }

    /// Counts what went wrong with a manifest or a pack: a damaged one is
    /// ignored with a warning naming `what`, a failed request counts
    /// towards switching the remote off.
    fn report(&self, trouble: Trouble, what: &str) {
        match trouble {
            Trouble::Remote(e @ RemoteError::Damaged { .. }) => {
                add(&self.stats.prefetch_damaged, 1);
                tracing::warn!("ignored {what}: {e}");
            }
            Trouble::Remote(e) => {
                add(&self.stats.remote_errors, 1);
                self.remote().failed(&e);
                tracing::debug!("a prefetch request failed: {e}");
            }
            Trouble::Local(e) => self.report_not_stored(self.remote(), &e),
        }
    }

    async fn take(self: &Arc<Self>, source: Source, actions: &[Hash]) -> Result<(), Trouble> {
        let remote = self.remote();
        let cache = &remote.options.cache;
        let stall = remote.options.timeout;
        add(&self.stats.prefetch_requests, 1);
        let opened = match source {
            Source::Pack(pack) => within(stall, cache.open_pack(&pack)).await?,
            Source::Loose => within(stall, cache.open_batch(actions)).await?,
        };
        let Some(mut pack) = opened else {
            return match source {
                Source::Pack(_) => {
                    tracing::debug!("a pack of {} entries is gone", actions.len());
                    add(&self.stats.prefetch_missing, actions.len() as u64);
                    Ok(())
                }
                Source::Loose => {
                    add(&self.stats.prefetch_requests, actions.len() as u64);
                    self.look_up_each(actions).await;
                    Ok(())
                }
            };
        };
        let wanted: HashSet<Hash> = actions.iter().copied().collect();
        // A batch answers what it was asked, in order; a pack may hold more.
        let asked = matches!(source, Source::Loose).then_some(actions);
        let result = self.unpack(&mut pack, &wanted, asked).await;
        add(&self.stats.prefetch_bytes, pack.received());
        add(&self.stats.remote_bytes_down, pack.received());
        result
    }

    /// Stores the wanted entries of a pack as they arrive. The entries of
    /// a batch must be the `asked` ones, in order: anything else (an
    /// endless answer of unrelated entries, say) is damage.
    async fn unpack(
        self: &Arc<Self>,
        pack: &mut PackReader,
        wanted: &HashSet<Hash>,
        asked: Option<&[Hash]>,
    ) -> Result<(), Trouble> {
        let remote = self.remote();
        let cache = &remote.options.cache;
        let stall = remote.options.timeout;
        let mut asked = asked.map(|asked| asked.iter());
        while let Some(entry) = within(stall, pack.next()).await? {
            if let Some(asked) = &mut asked {
                let action = match &entry {
                    RawEntry::Missing(action) | RawEntry::Found { action, .. } => action,
                };
                if asked.next() != Some(action) {
                    return Err(Trouble::Remote(RemoteError::Damaged {
                        key: "a batch answer".to_owned(),
                        why: format!(
                            "it holds {}, which was not asked for there",
                            hex::encode(action)
                        ),
                    }));
                }
            }
            let (action, record) = match entry {
                RawEntry::Missing(action) => {
                    if wanted.contains(&action) {
                        add(&self.stats.prefetch_missing, 1);
                    }
                    continue;
                }
                RawEntry::Found { action, record, .. } => (action, record),
            };
            if !wanted.contains(&action)
                || !matches!(
                    lock(&remote.prefetch.plan).entries.get(&action),
                    Some(Planned::Waiting(_))
                )
            {
                continue;
            }
            let fetched = cache.unpack(pack, &action, &record)?;
            // One bad entry, or one the disk cannot take: the pack's
            // framing is still sound, and the next entry may fit.
            match self.store_packed(pack, action, &fetched).await? {
                Ok(found) => self.settle(action, Some(found)),
                Err(Trouble::Remote(e @ RemoteError::Damaged { .. })) => {
                    add(&self.stats.remote_damaged, 1);
                    tracing::info!("{e}; treated as a miss");
                }
                Err(Trouble::Local(e)) => {
                    self.report_not_stored(remote, &e);
                    self.settle(action, None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stores one entry of a pack in the local tier. The outer error ends
    /// the pack (cut short or damaged: nothing after it can be trusted);
    /// the inner one is this entry's alone.
    async fn store_packed(
        &self,
        pack: &mut PackReader,
        action: Hash,
        fetched: &Fetched,
    ) -> Result<Result<Found, Trouble>, Trouble> {
        let remote = self.remote();
        let mut body = match self.store.object_writer(&OutputId(fetched.record.output)) {
            Ok(body) => body,
            Err(e) => return Ok(Err(not_stored(&e))),
        };
        let written = match &fetched.inline {
            Some(inline) => body.write_all(inline).map_err(|e| not_stored(&e)),
            None => {
                let read =
                    remote
                        .options
                        .cache
                        .read_packed_object(pack, &fetched.record, &mut body);
                within(remote.options.timeout, read).await
            }
        };
        match written {
            Err(e @ Trouble::Remote(_)) => Err(e),
            Err(e) => Ok(Err(e)),
            Ok(()) => Ok(self.keep(action, &fetched.record, body)),
        }
    }

    /// Fetches entries one by one, a few at a time: for a remote without a
    /// batch endpoint.
    async fn look_up_each(self: &Arc<Self>, actions: &[Hash]) {
        let remote = self.remote();
        let timeout = remote.options.timeout;
        futures_util::stream::iter(actions)
            .for_each_concurrent(LOOKUPS_AT_ONCE, |action| async move {
                match within(timeout, self.fetch(remote, *action)).await {
                    Ok(Some(found)) => {
                        remote.succeeded();
                        self.settle(*action, Some(found));
                    }
                    Ok(None) => {
                        remote.succeeded();
                        add(&self.stats.prefetch_missing, 1);
                    }
                    Err(Trouble::Remote(e @ RemoteError::Damaged { .. })) => {
                        add(&self.stats.remote_damaged, 1);
                        tracing::info!("{e}; treated as a miss");
                    }
                    Err(Trouble::Remote(e)) => {
                        add(&self.stats.remote_errors, 1);
                        remote.failed(&e);
                    }
                    Err(Trouble::Local(e)) => self.report_not_stored(remote, &e),
                }
            })
            .await;
    }

    /// Ends the plan for `action`: answers the gets waiting for it with
    /// what was found, or hands them to an ordinary lookup.
    fn settle(self: &Arc<Self>, action: Hash, found: Option<Found>) {
        let remote = self.remote();
        let waiters = {
            let mut plan = lock(&remote.prefetch.plan);
            let Some(state) = plan.entries.get_mut(&action) else {
                return;
            };
            if !matches!(state, Planned::Waiting(_)) {
                return;
            }
            let done = match found {
                Some(_) => Planned::Stored,
                None => Planned::Failed,
            };
            match std::mem::replace(state, done) {
                Planned::Waiting(waiters) => waiters,
                Planned::Stored | Planned::Failed => Vec::new(),
            }
        };
        for waiter in waiters {
            match &found {
                Some(found) => {
                    add(&self.stats.prefetch_waits, 1);
                    self.answer_found(waiter.ticket, action, found);
                }
                None => self.give_up_waiting(remote, action, waiter),
            }
        }
    }

    /// At close: stops the prefetch, answers the gets still waiting for it
    /// (there should be none: the go command asks nothing more once it
    /// closes), and counts what the prefetch fetched for nothing. Gets
    /// after this are not held for a plan.
    pub(super) fn finish_prefetch(&self, remote: &Remote) {
        for task in [&remote.prefetch.task, &remote.prefetch.watchdog] {
            if let Some(task) = lock(task).take() {
                task.abort();
                let _ = remote.runtime.block_on(task);
            }
        }
        let plan = std::mem::replace(
            &mut *lock(&remote.prefetch.plan),
            Plan {
                ready: true,
                ..Plan::default()
            },
        );
        for (_, Waiter { ticket, .. }) in plan.early {
            add(&self.stats.misses, 1);
            let id = ticket.id();
            ticket.answer(Response::miss(id));
        }
        let used = lock(&remote.used);
        for (action, state) in plan.entries {
            match state {
                Planned::Waiting(waiters) => {
                    for Waiter { ticket, .. } in waiters {
                        add(&self.stats.misses, 1);
                        let id = ticket.id();
                        ticket.answer(Response::miss(id));
                    }
                }
                // Counted here, from the plan, so that the counts add up
                // even if a transfer is stopped between storing and settling.
                Planned::Stored => {
                    add(&self.stats.prefetch_fetched, 1);
                    match used.seen.contains(&action) {
                        true => add(&self.stats.prefetch_used, 1),
                        false => add(&self.stats.prefetch_unused, 1),
                    }
                }
                Planned::Failed => {}
            }
        }
    }

    /// At close: publishes the manifest of what this job used, packing
    /// what no fresh pack holds, then deletes what is too old to be used.
    pub(super) async fn publish(self: &Arc<Self>) {
        let remote = self.remote();
        if remote.options.read_only || !remote.is_on() {
            return;
        }
        let used = std::mem::take(&mut lock(&remote.used).order);
        if used.is_empty() {
            return;
        }
        if !remote.options.scopes.prefetch {
            self.read_own_manifest().await;
        }
        let scope = remote.options.scopes.scope.clone();
        let known = lock(&remote.prefetch.packs).clone();
        let latest_job = std::mem::take(&mut *lock(&remote.prefetch.latest_job));
        let dir = self.store.dir().join(JOURNALS);
        let merged = tokio::task::spawn_blocking(move || {
            Journal::merge(dir, &scope, latest_job, used, &known)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|merged| merged.map_err(|e| e.to_string()));
        let (journal, mut entries) = match merged {
            Ok(merged) => merged,
            Err(e) => {
                return tracing::warn!("cannot publish this run's manifest: {e}");
            }
        };
        let now = SystemTime::now();
        forget_stale_packs(&mut entries, now);
        if remote.options.cache.stores_packs() {
            // Earlier entries are not packed again: in a bucket, one
            // without a pack would cost a lookup of its own.
            entries.retain(|e| !e.earlier || e.pack.is_some());
            self.pack_loose(&mut entries).await;
        }
        let manifest = Manifest {
            scope: remote.options.scopes.scope.clone(),
            written: now,
            groups: groups_in_order(&entries),
        };
        let cache = &remote.options.cache;
        match within(remote.options.timeout, cache.publish_manifest(&manifest)).await {
            Ok(sent) => {
                add(&self.stats.remote_bytes_up, sent);
                add(&self.stats.manifest_entries, entries.len() as u64);
                let earlier = entries.iter().filter(|e| e.earlier).count();
                add(&self.stats.manifest_earlier, earlier as u64);
            }
            Err(e) => {
                add(&self.stats.remote_errors, 1);
                tracing::warn!(
                    "cannot publish the manifest of scope {}: {}",
                    manifest.scope,
                    trouble_text(&e)
                );
            }
        }
        if let Err(e) = journal.write(&entries) {
            tracing::debug!("cannot write the manifest journal: {e}");
        }
        drop(journal);
        if cache.stores_packs() {
            match within(remote.options.timeout, cache.sweep(now, SWEEP_LIMIT)).await {
                Ok(swept) => add(&self.stats.swept, swept as u64),
                Err(e) => tracing::debug!("cannot sweep old packs: {}", trouble_text(&e)),
            }
        }
    }

    /// For a run that did not prefetch: reads the manifest of its own
    /// scope, which the prefetch would have read, so that the job keeps
    /// what the job before used, and entries already in packs are not
    /// packed again.
    async fn read_own_manifest(&self) {
        let remote = self.remote();
        let scope = &remote.options.scopes.scope;
        let cache = &remote.options.cache;
        let manifest = match within(remote.options.timeout, cache.fetch_manifest(scope)).await {
            Ok(Some(manifest)) if !manifest.is_stale(SystemTime::now()) => manifest,
            Ok(_) => return,
            Err(trouble) => return self.report(trouble, &format!("the manifest of scope {scope}")),
        };
        remote.prefetch.remember_latest_job(&manifest);
        lock(&remote.prefetch.packs).extend(
            manifest
                .groups
                .iter()
                .filter_map(|g| Some((g.pack?, g)))
                .flat_map(|(pack, g)| g.all().map(move |action| (*action, pack))),
        );
    }

    /// Packs the entries that no fresh pack holds, reading them from the
    /// local tier, and uploads the packs; the entries then name them.
    async fn pack_loose(self: &Arc<Self>, entries: &mut [JournalEntry]) {
        let remote = self.remote();
        let loose: Vec<Hash> = entries
            .iter()
            .filter(|e| e.pack.is_none())
            .map(|e| e.action)
            .collect();
        if loose.is_empty() {
            return;
        }
        let (packs, mut built) = tokio::sync::mpsc::channel::<(PackWriter, Vec<Hash>)>(2);
        let engine = self.clone();
        let builder = tokio::task::spawn_blocking(move || engine.build_packs(&loose, &packs));
        let slots = Arc::new(Semaphore::new(PACK_UPLOADS_AT_ONCE));
        let mut uploads = JoinSet::new();
        while let Some((pack, actions)) = built.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let engine = self.clone();
            uploads.spawn(async move {
                let _slot = slot;
                let remote = engine.remote();
                let timeout = remote.options.timeout;
                let uploaded = within(timeout, remote.options.cache.put_pack(pack)).await;
                (uploaded, actions)
            });
        }
        let _ = builder.await;
        let mut packed = HashMap::new();
        while let Some(joined) = uploads.join_next().await {
            let Ok((uploaded, actions)) = joined else {
                continue;
            };
            match uploaded {
                Ok(pack) => {
                    add(&self.stats.packs_uploaded, 1);
                    add(&self.stats.pack_bytes_up, pack.size);
                    add(&self.stats.remote_bytes_up, pack.size);
                    packed.extend(actions.into_iter().map(|action| (action, pack)));
                }
                Err(e) => {
                    add(&self.stats.remote_errors, 1);
                    tracing::debug!("cannot upload a pack: {}", trouble_text(&e));
                }
            }
        }
        if remote.is_on() {
            for entry in entries.iter_mut() {
                if entry.pack.is_none() {
                    entry.pack = packed.get(&entry.action).copied();
                }
            }
        }
    }

    /// Reads `actions` from the local tier into packs of about
    /// [`PACK_TARGET`] bytes, in order, sending each when full. Entries the
    /// local tier no longer has are left out.
    fn build_packs(
        &self,
        actions: &[Hash],
        packs: &tokio::sync::mpsc::Sender<(PackWriter, Vec<Hash>)>,
    ) {
        let cache = &self.remote().options.cache;
        let mut pack = PackWriter::default();
        let mut members = Vec::new();
        for action in actions {
            let Lookup::Hit(hit) = self.store.get(&ActionId(*action)) else {
                continue;
            };
            let mut body = Vec::with_capacity(hit.entry.size as usize);
            if File::open(&hit.object)
                .and_then(|mut file| file.read_to_end(&mut body))
                .is_err()
                || body.len() as u64 != hit.entry.size
            {
                continue;
            }
            let Ok((record, object)) =
                cache.encode_entry(action, &hit.entry.output_id.0, hit.entry.put_time, &body)
            else {
                continue;
            };
            pack.add(action, &record, &object);
            members.push(*action);
            if pack.len() >= PACK_TARGET {
                let full = std::mem::take(&mut pack);
                if packs
                    .blocking_send((full, std::mem::take(&mut members)))
                    .is_err()
                {
                    return;
                }
            }
        }
        if !pack.is_empty() {
            let _ = packs.blocking_send((pack, members));
        }
    }
}

fn trouble_text(trouble: &Trouble) -> String {
    match trouble {
        Trouble::Remote(e) => e.to_string(),
        Trouble::Local(e) => e.clone(),
    }
}

/// Drops the packs a new manifest should not name: too old (so that the
/// sweep may delete them), or mostly holding entries nobody uses any more
/// (so that a prefetch never fetches more than twice what it needs).
fn forget_stale_packs(entries: &mut [JournalEntry], now: SystemTime) {
    let mut named: HashMap<Hash, u32> = HashMap::new();
    for pack in entries.iter().filter_map(|e| e.pack) {
        *named.entry(pack.id).or_default() += 1;
    }
    for entry in entries.iter_mut() {
        if let Some(pack) = entry.pack {
            let old = now
                .duration_since(pack.created)
                .is_ok_and(|age| age > PACK_REUSE_AGE);
            let sparse = named[&pack.id] * 2 < pack.entries;
            if old || sparse {
                entry.pack = None;
            }
        }
    }
}

/// The manifest's groups: one per pack, and one of loose entries, in the
/// order their first entry was used, earlier entries last.
fn groups_in_order(entries: &[JournalEntry]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Option<Hash>, usize> = HashMap::new();
    let (used, earlier): (Vec<_>, Vec<_>) = entries.iter().partition(|e| !e.earlier);
    for entry in used.into_iter().chain(earlier) {
        let i = *index.entry(entry.pack.map(|p| p.id)).or_insert_with(|| {
            groups.push(Group {
                pack: entry.pack,
                ..Group::default()
            });
            groups.len() - 1
        });
        match entry.earlier {
            false => groups[i].actions.push(entry.action),
            true => groups[i].earlier.push(entry.action),
        }
    }
    groups
}

/// An action a run of the scope used, and the pack that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JournalEntry {
    action: Hash,
    pack: Option<PackRef>,
    /// When a run last used it; if it is `earlier`, when the job began.
    used: SystemTime,
    /// Used by the job before this one, not yet by this one.
    earlier: bool,
}

/// The journal of a scope on this machine: the actions its runs used within
/// [`JOB_WINDOW`], one line each, kept under a lock while a run publishes.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    /// Held from the merge until the journal is written.
    _lock: File,
}

impl Journal {
    /// Locks the scope's journal and merges `used` into what it holds. If
    /// no run of this job has published yet, what `latest_job` used (by the
    /// manifest this run read) is kept as earlier entries.
    fn merge(
        dir: PathBuf,
        scope: &str,
        latest_job: Vec<Hash>,
        used: Vec<Hash>,
        packs: &HashMap<Hash, PackRef>,
    ) -> std::io::Result<(Journal, Vec<JournalEntry>)> {
        fs::create_dir_all(&dir)?;
        let name = scope_key_name(scope);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))?;
        lock.lock()?;
        let journal = Journal {
            path: dir.join(format!("{name}.log")),
            _lock: lock,
        };
        let now = SystemTime::now();
        let mut entries = journal.read(now);
        // The job's first publication: what the job before used is kept
        // for the window (a laptop's "job" may go on for days).
        if !entries.iter().any(|e| !e.earlier) {
            entries = latest_job
                .into_iter()
                .map(|action| JournalEntry {
                    action,
                    pack: packs.get(&action).copied(),
                    used: now,
                    earlier: true,
                })
                .collect();
        }
        let mut at: HashMap<Hash, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.action, i))
            .collect();
        for action in used {
            match at.get(&action) {
                Some(&i) => {
                    let entry = &mut entries[i];
                    entry.used = now;
                    entry.earlier = false;
                    entry.pack = entry.pack.or_else(|| packs.get(&action).copied());
                }
                None => {
                    at.insert(action, entries.len());
                    entries.push(JournalEntry {
                        action,
                        pack: packs.get(&action).copied(),
                        used: now,
                        earlier: false,
                    });
                }
            }
        }
        Ok((journal, entries))
    }

    /// The entries used within the window; unreadable lines are skipped.
    fn read(&self, now: SystemTime) -> Vec<JournalEntry> {
        let Ok(file) = File::open(&self.path) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| parse_line(&line))
            .filter(|e| {
                now.duration_since(e.used)
                    .map_or(true, |age| age <= JOB_WINDOW)
            })
            .collect()
    }

    /// Replaces the journal with `entries`.
    fn write(&self, entries: &[JournalEntry]) -> std::io::Result<()> {
        let mut text = String::with_capacity(entries.len() * 120);
        for entry in entries {
            let pack = match &entry.pack {
                Some(p) => format!(
                    "{}:{}:{}:{}",
                    hex::encode(p.id),
                    unix_seconds(p.created),
                    p.size,
                    p.entries
                ),
                None => "-".to_owned(),
            };
            text.push_str(&format!(
                "{} {} {pack}{}\n",
                unix_seconds(entry.used),
                hex::encode(entry.action),
                if entry.earlier { " earlier" } else { "" }
            ));
        }
        let dir = self.path.parent().expect("a journal is in a directory");
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<JournalEntry> {
    let mut fields = line.split(' ');
    let used = from_unix_seconds(fields.next()?.parse().ok()?)?;
    let mut action = [0; 32];
    hex::decode_to_slice(fields.next()?, &mut action).ok()?;
    let pack = match fields.next()? {
        "-" => None,
        pack => {
            let mut parts = pack.split(':');
            let mut id = [0; 32];
            hex::decode_to_slice(parts.next()?, &mut id).ok()?;
            Some(PackRef {
                id,
                created: from_unix_seconds(parts.next()?.parse().ok()?)?,
                size: parts.next()?.parse().ok()?,
                entries: parts.next()?.parse().ok()?,
            })
        }
    };
    let earlier = match fields.next() {
        None => false,
        Some("earlier") => true,
        Some(_) => return None,
    };
    Some(JournalEntry {
        action,
        pack,
        used,
        earlier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(id: u8, entries: u32, age: Duration) -> PackRef {
        PackRef {
            id: [id; 32],
            created: SystemTime::now() - age,
            size: 1000,
            entries,
        }
    }

    fn entry(action: u8, pack: Option<PackRef>) -> JournalEntry {
        JournalEntry {
            action: [action; 32],
            pack,
            used: from_unix_seconds(unix_seconds(SystemTime::now())).unwrap(),
            earlier: false,
        }
    }

    #[test]
    fn old_and_sparse_packs_are_not_named_again() {
        let fresh = pack(1, 2, Duration::ZERO);
        let old = pack(2, 1, PACK_REUSE_AGE + Duration::from_secs(60));
        let sparse = pack(3, 10, Duration::ZERO);
        let mut entries = vec![
            entry(1, Some(fresh)),
            entry(2, Some(old)),
            entry(3, Some(sparse)),
            entry(4, Some(sparse)),
            entry(5, Some(fresh)),
            entry(6, None),
        ];
        forget_stale_packs(&mut entries, SystemTime::now());
        let packs: Vec<_> = entries.iter().map(|e| e.pack.map(|p| p.id[0])).collect();
        assert_eq!(packs, [Some(1), None, None, None, Some(1), None]);
        let groups = groups_in_order(&entries);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].actions, [[1; 32], [5; 32]]);
        assert_eq!(groups[1].pack, None);
        assert_eq!(groups[1].actions.len(), 4);
    }

    #[test]
    fn the_journal_merges_runs_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        let packed = pack(9, 1, Duration::ZERO);
        let packs = HashMap::from([([2; 32], packed)]);
        let (journal, entries) = Journal::merge(
            journals.clone(),
            "s",
            vec![],
            vec![[1; 32], [2; 32]],
            &packs,
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        journal.write(&entries).unwrap();
        drop(journal);
        let (journal, entries) = Journal::merge(
            journals.clone(),
            "s",
            vec![[9; 32]],
            vec![[2; 32], [3; 32]],
            &HashMap::new(),
        )
        .unwrap();
        let actions: Vec<u8> = entries.iter().map(|e| e.action[0]).collect();
        assert_eq!(actions, [1, 2, 3], "the union, in order of first use");
        assert_eq!(
            entries[1].pack.map(|p| (p.id, p.entries)),
            Some((packed.id, 1))
        );
        // An entry last used before the window is forgotten.
        let mut stale = entries.clone();
        stale[0].used = SystemTime::now() - JOB_WINDOW - Duration::from_secs(60);
        journal.write(&stale).unwrap();
        drop(journal);
        let (_journal, entries) =
            Journal::merge(journals, "s", vec![], vec![], &HashMap::new()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(parse_line("garbage"), None);
    }

    /// Job 1 read a manifest naming 1, 2, 3; its first command used 1, its
    /// second 2 and 4; job 2 read job 1's manifest and used 4 and 5.
    #[test]
    fn a_manifest_keeps_what_the_job_before_used_for_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        let publish = |latest_job: &[u8], used: &[u8]| {
            let hashes = |ids: &[u8]| ids.iter().map(|&i| [i; 32]).collect::<Vec<_>>();
            let packs = HashMap::from([([3; 32], pack(7, 2, Duration::ZERO))]);
            let (journal, entries) = Journal::merge(
                journals.clone(),
                "s",
                hashes(latest_job),
                hashes(used),
                &packs,
            )
            .unwrap();
            journal.write(&entries).unwrap();
            let groups = groups_in_order(&entries);
            let ids = |actions: &[Hash]| actions.iter().map(|a| a[0]).collect::<Vec<u8>>();
            groups
                .iter()
                .map(|g| (g.pack.map(|p| p.id[0]), ids(&g.actions), ids(&g.earlier)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            publish(&[1, 2, 3], &[1]),
            [(None, vec![1], vec![2]), (Some(7), vec![], vec![3])],
            "the job's first command keeps what the job before used"
        );
        assert_eq!(
            publish(&[1], &[2, 4]),
            [(None, vec![1, 2, 4], vec![]), (Some(7), vec![], vec![3])],
            "its next command goes on from the journal, not from the manifest it read"
        );
        // Ages the journal's lines that `which` picks past the window.
        let path = journals.join(format!("{}.log", scope_key_name("s")));
        let age = |which: fn(&str) -> bool| {
            let text = fs::read_to_string(&path).unwrap();
            let old = unix_seconds(SystemTime::now() - JOB_WINDOW) - 60;
            let aged: String = text
                .lines()
                .map(|line| match which(line) {
                    true => format!("{old}{}\n", &line[line.find(' ').unwrap()..]),
                    false => format!("{line}\n"),
                })
                .collect();
            fs::write(&path, aged).unwrap();
        };
        age(|line| line.ends_with(" earlier"));
        assert_eq!(
            publish(&[9], &[5]),
            [(None, vec![1, 2, 4, 5], vec![])],
            "a job longer than the window keeps earlier entries no longer"
        );
        // The next job: the journal's entries are older than the window.
        age(|_| true);
        assert_eq!(
            publish(&[1, 2, 4], &[4, 5]),
            [(None, vec![4, 5], vec![1, 2])],
            "what only the job before the last used is gone"
        );
    }
}
