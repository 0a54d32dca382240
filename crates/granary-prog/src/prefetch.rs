//! The prefetch: what takes the remote's round trips off a fresh runner's
//! critical path (manifests are published at close, see
//! [`publish`](crate::publish)).
//!
//! Right after the handshake, a task reads the manifests of the run's scope
//! and fallback scopes, in the run's namespace and then in those it reads,
//! and fetches what they name and the local tier lacks: packs from object
//! storage, batches from a cache server (one by one from a server without
//! a batch endpoint), a few transfers at a time.
//! Every entry to fetch is *planned*: a get for it waits for its transfer
//! instead of asking the remote again, and once the transfer is over, gets
//! it did not serve go on to an ordinary lookup (or, with
//! `Scopes::look_up_unnamed` off and a manifest read, gets of actions no
//! manifest named are misses at once). Each entry is held to the
//! same trust rule as a lookup's, in the namespace it came from (the
//! manifest's, or that of a pack the manifest names in a namespace the run
//! also reads); the signatures of a pack's entries are checked a few dozen
//! at a time, unless a get waits for one or the stream pauses
//! ([`Prefetch::vouch`]).
//!
//! Everything here is best effort: a missing, damaged or slow manifest or
//! pack costs a warning or a count, never a failed build.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use granary_id::Id;
use granary_protocol::Response;
use granary_remote::{
    ActionRecord, Fetched, Group, Manifest, Namespace, PackReader, PackRef, RawEntry, RemoteError,
};
use granary_store::{Lookup, ObjectWriter};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::remote::{Found, Remote, Trouble, not_stored, panicked, within};
use super::respond::Ticket;
use super::stats::add;

/// Packs or batches in flight at once.
const TRANSFERS_AT_ONCE: usize = 8;
/// Single lookups in flight at once, where there is no batch endpoint.
const LOOKUPS_AT_ONCE: usize = 32;
/// Entries per batch request.
const BATCH: usize = 256;
/// Entries of a pack whose signatures are checked together, unless a get
/// waits for one: about half the cost of checking each alone.
const VOUCH_AT_ONCE: usize = 64;
/// How long received entries wait for the next before they are checked.
const VOUCH_WITHIN: Duration = Duration::from_millis(2);

/// A get waiting for the prefetch, and since when: however the remote
/// behaves, it waits at most --remote-timeout (see
/// [`Prefetch::watch`]), and what it waited for nothing counts
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

/// A pack, and the namespace it is in: the run's own, or one it reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Packed {
    pub(super) namespace: Namespace,
    pub(super) pack: PackRef,
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

/// The prefetch of a run with a remote, and its state, shared with gets.
#[derive(Debug)]
pub(super) struct Prefetch {
    pub(super) remote: Arc<Remote>,
    plan: Mutex<Plan>,
    /// The pack holding each entry the manifests named.
    pub(super) packs: Mutex<HashMap<Id, Packed>>,
    /// What the latest job used, by the first manifest read (see
    /// [`Prefetch::plan`]).
    pub(super) latest_job: Mutex<Vec<Id>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    watchdog: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the prefetch fetches, once it knows.
#[derive(Debug, Default)]
struct Plan {
    /// Whether the manifests have been read (or there is no prefetch).
    ready: bool,
    entries: HashMap<Id, Planned>,
    /// Gets that came while the manifests were being read: they wait for
    /// the plan, one round trip, rather than look up what may be planned.
    early: Vec<(Id, Waiter)>,
    /// Every action the manifests named, when only those are looked up
    /// (`Scopes::look_up_unnamed` off, and a manifest was read).
    named_only: Option<HashSet<Id>>,
}

/// What a get found in the prefetch's plan.
enum Joined {
    /// The get waits for the transfer, which will answer it.
    Waiting,
    /// The prefetch stored the entry: look again locally.
    Stored(Waiter),
    /// Nothing planned, or the transfer is over: ask the remote.
    No(Waiter),
    /// No manifest named it, and only named actions are looked up.
    Unnamed(Waiter),
}

impl Prefetch {
    /// The prefetch of `remote`; until [`Prefetch::start`], gets go
    /// straight to lookups.
    pub(super) fn new(remote: Arc<Remote>) -> Prefetch {
        let enabled = remote.options.scopes.prefetch;
        Prefetch {
            remote,
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

    /// Keeps what the latest job used, by `manifest`, for the journal.
    pub(super) fn remember_latest_job(&self, manifest: &Manifest) {
        *lock(&self.latest_job) = manifest
            .groups
            .iter()
            .flat_map(|g| &g.actions)
            .copied()
            .collect();
    }

    /// Lets a get of `action` wait for its transfer, if one is planned, or
    /// for the plan, if it is not made yet.
    fn join(&self, action: Id, waiter: Waiter) -> Joined {
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
            Some(Planned::Failed) => Joined::No(waiter),
            None => match &plan.named_only {
                Some(named) if !named.contains(&action) => Joined::Unnamed(waiter),
                _ => Joined::No(waiter),
            },
        }
    }
}

/// An entry of a pack whose body is written but not yet in the local
/// tier: its record waits to be checked with others ([`Prefetch::vouch`]).
struct Unvouched {
    action: Id,
    record: ActionRecord,
    body: ObjectWriter,
}

/// Where a transfer's entries come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Pack(PackRef),
    /// A batch request, or single lookups if the remote has no batch
    /// endpoint.
    Loose,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Prefetch {
    /// Looks `action` up in the remote after a local miss, answering
    /// `ticket` when done. Returns at once.
    pub(super) fn get(self: &Arc<Self>, ticket: Ticket, action: Id) {
        self.wait(Waiter::new(ticket), action);
    }

    /// Lets a get wait for the prefetch if it brings `action`, else looks
    /// it up.
    fn wait(self: &Arc<Self>, waiter: Waiter, action: Id) {
        let remote = &self.remote;
        let waiter = match self.join(action, waiter) {
            Joined::Waiting => return,
            Joined::Stored(waiter) => match remote.store.get(&action) {
                Lookup::Hit(hit) => return remote.answer_local(waiter.ticket, action, hit),
                Lookup::Miss(_) => waiter,
            },
            Joined::No(waiter) => waiter,
            Joined::Unnamed(waiter) => return remote.miss_unnamed(waiter.ticket, action),
        };
        remote.look_up(waiter.ticket, action);
    }

    /// Starts the prefetch in the background, if the run prefetches.
    /// Returns at once.
    pub(super) fn start(self: &Arc<Self>) {
        let remote = &self.remote;
        if !remote.options.scopes.prefetch {
            return;
        }
        let prefetch = self.clone();
        let task = remote.runtime.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(prefetch.clone().prefetch())
                .catch_unwind()
                .await
            {
                prefetch.report(Trouble::Remote(panicked(&*panic)), "the prefetch");
                prefetch.release_waiters();
            }
        });
        *lock(&self.task) = Some(task);
        let watchdog = remote.runtime.spawn(self.clone().watch());
        *lock(&self.watchdog) = Some(watchdog);
    }

    /// Bounds every wait on the prefetch, whatever the remote sends (an
    /// endless or trickling transfer, a manifest that never comes): a get
    /// that has waited --remote-timeout gives up on its transfer and goes
    /// on to an ordinary lookup, and once the remote is off the prefetch
    /// stops and every waiting get goes on at once. Runs until the
    /// prefetch is over.
    async fn watch(self: Arc<Self>) {
        let remote = &self.remote;
        let limit = remote.options.timeout;
        let tick = (limit / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            tokio::time::sleep(tick).await;
            if !remote.is_on() {
                if let Some(task) = lock(&self.task).as_ref() {
                    task.abort();
                }
                return self.release_waiters();
            }
            let (early, stalled) = {
                let mut plan = lock(&self.plan);
                let (early, waiting) = std::mem::take(&mut plan.early)
                    .into_iter()
                    .partition(|(_, waiter)| waiter.since.elapsed() >= limit);
                plan.early = waiting;
                let stalled: Vec<Id> = plan
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
            let over = lock(&self.task)
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
        let remote = &self.remote;
        let mut released = Vec::new();
        {
            let mut plan = lock(&self.plan);
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
    fn give_up_waiting(&self, remote: &Arc<Remote>, action: Id, waiter: Waiter) {
        remote.wasted(waiter.since.elapsed());
        remote.look_up(waiter.ticket, action);
    }

    async fn prefetch(self: Arc<Self>) {
        let started = Instant::now();
        let groups = self.plan().await;
        tracing::debug!("the prefetch planned {} groups", groups.len());
        let mut transfers = JoinSet::new();
        let slots = Arc::new(Semaphore::new(TRANSFERS_AT_ONCE));
        let handle = self.remote.runtime.clone();
        for (from, group) in groups {
            let chunks: Vec<(Source, Vec<Id>)> = match group.pack {
                Some(pack) => vec![(Source::Pack(pack), group.actions)],
                None => group
                    .actions
                    .chunks(BATCH)
                    .map(|chunk| (Source::Loose, chunk.to_vec()))
                    .collect(),
            };
            for (source, actions) in chunks {
                let (prefetch, slots) = (self.clone(), slots.clone());
                transfers.spawn_on(
                    async move {
                        let _slot = slots.acquire_owned().await;
                        prefetch.transfer(from, source, actions).await;
                    },
                    &handle,
                );
            }
        }
        while transfers.join_next().await.is_some() {}
        tracing::debug!("the prefetch is over");
        self.remote
            .stats
            .prefetch_ms
            .store(started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Reads the manifests and plans what to fetch: the entries they name
    /// that the local tier lacks, grouped as they will be fetched, each
    /// group with the index in `remote.reads` of the namespace it is in.
    async fn plan(self: &Arc<Self>) -> Vec<(usize, Group)> {
        let remote = &self.remote;
        let scopes = &remote.options.scopes;
        let names: Vec<(usize, &String)> = (0..remote.reads.len())
            .flat_map(|from| {
                std::iter::once(&scopes.scope)
                    .chain(&scopes.fallbacks)
                    .map(move |scope| (from, scope))
            })
            .collect();
        let timeout = remote.options.timeout;
        let fetched = futures_util::future::join_all(
            names
                .iter()
                .map(|(from, scope)| within(timeout, remote.reads[*from].fetch_manifest(scope))),
        )
        .await;
        add(&self.remote.stats.prefetch_requests, names.len() as u64);
        let mut manifests = Vec::new();
        for ((from, scope), result) in names.iter().zip(fetched) {
            let namespace = remote.reads[*from].namespace();
            match result {
                Ok(Some((manifest, _))) if manifest.is_stale(SystemTime::now()) => {
                    tracing::debug!("the manifest of scope {scope} in {namespace} is too old");
                }
                Ok(Some((_, seal))) if !remote.trusts_manifest(&remote.reads[*from], &seal) => {}
                Ok(Some((manifest, _))) => {
                    // The job before: the run's own scope's, else, for a
                    // scope's first job (a pull request's), the job it
                    // falls back on. Its entries are this job's earlier
                    // ones, so that its first go command does not find the
                    // packs its later ones need sparse and pack them again.
                    if manifests.is_empty() {
                        self.remember_latest_job(&manifest);
                    }
                    remote.note_build_times(manifest.build_times.iter().map(|(a, t)| (*a, *t)));
                    manifests.push((*from, manifest));
                }
                Ok(None) => tracing::debug!("no manifest for scope {scope} in {namespace}"),
                Err(trouble) => self.report(
                    trouble,
                    &format!("the manifest of scope {scope} in {namespace}"),
                ),
            }
        }
        let mut named = HashSet::new();
        let mut groups = Vec::new();
        {
            let mut packs = lock(&self.packs);
            let all = manifests
                .into_iter()
                .flat_map(|(from, m)| m.groups.into_iter().map(move |group| (from, group)));
            for (from, group) in all {
                // A pack in another namespace is fetched, and its entries
                // trusted, as that namespace's, if this run reads it.
                let at = match &group.pack_in {
                    None => from,
                    Some(namespace) => {
                        match remote.reads.iter().position(|r| r.namespace() == namespace) {
                            Some(at) => at,
                            None => {
                                tracing::debug!("a manifest names a pack in {namespace}, unread");
                                continue;
                            }
                        }
                    }
                };
                let actions: Vec<Id> = group
                    .all()
                    .copied()
                    .filter(|action| named.insert(*action))
                    .collect();
                if let Some(pack) = group.pack {
                    let namespace = remote.reads[at].namespace();
                    packs.extend(actions.iter().map(|action| {
                        let namespace = namespace.clone();
                        (*action, Packed { namespace, pack })
                    }));
                }
                groups.push((
                    at,
                    Group {
                        pack: group.pack,
                        actions,
                        ..Group::default()
                    },
                ));
            }
        }
        add(&self.remote.stats.prefetch_named, named.len() as u64);
        // Without a manifest, nothing is known to be missing.
        let named_only = (!scopes.look_up_unnamed && !named.is_empty()).then_some(named);
        // What the local tier lacks: a stat per entry, off the runtime.
        let store = self.remote.store.clone();
        let groups = tokio::task::spawn_blocking(move || {
            groups
                .into_iter()
                .filter_map(|(from, mut group)| {
                    group
                        .actions
                        .retain(|action| !store.action_path(action).exists());
                    (!group.actions.is_empty()).then_some((from, group))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let early = {
            let mut plan = lock(&self.plan);
            for action in groups.iter().flat_map(|(_, group)| &group.actions) {
                plan.entries
                    .entry(*action)
                    .or_insert_with(|| Planned::Waiting(Vec::new()));
            }
            plan.ready = true;
            plan.named_only = named_only;
            std::mem::take(&mut plan.early)
        };
        for (action, waiter) in early {
            self.wait(waiter, action);
        }
        groups
    }

    /// Fetches one pack or batch; then lets the gets still waiting for its
    /// entries look them up one by one.
    async fn transfer(self: Arc<Self>, from: usize, source: Source, actions: Vec<Id>) {
        let remote = &self.remote;
        if remote.is_on() {
            match AssertUnwindSafe(self.take(from, source, &actions))
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
    pub(super) fn report(&self, trouble: Trouble, what: &str) {
        match trouble {
            Trouble::Remote(e @ RemoteError::Damaged { .. }) => {
                add(&self.remote.stats.prefetch_damaged, 1);
                tracing::warn!("ignored {what}: {e}");
            }
            Trouble::Remote(e) => {
                add(&self.remote.stats.remote_errors, 1);
                self.remote.failed(&e);
                tracing::debug!("a prefetch request failed: {e}");
            }
            Trouble::Local(e) => self.remote.report_not_stored(&e),
        }
    }

    async fn take(
        self: &Arc<Self>,
        from: usize,
        source: Source,
        actions: &[Id],
    ) -> Result<(), Trouble> {
        let remote = &self.remote;
        let cache = &remote.reads[from];
        let stall = remote.options.timeout;
        add(&self.remote.stats.prefetch_requests, 1);
        let opened = match source {
            Source::Pack(pack) => within(stall, cache.open_pack(&pack)).await?,
            Source::Loose => within(stall, cache.open_batch(actions)).await?,
        };
        let Some(mut pack) = opened else {
            return match source {
                Source::Pack(_) => {
                    tracing::debug!("a pack of {} entries is gone", actions.len());
                    add(&self.remote.stats.prefetch_missing, actions.len() as u64);
                    // A cache server may have evicted it: this run's
                    // manifest packs them anew.
                    let mut packs = lock(&self.packs);
                    for action in actions {
                        packs.remove(action);
                    }
                    Ok(())
                }
                Source::Loose => {
                    add(&self.remote.stats.prefetch_requests, actions.len() as u64);
                    self.look_up_each(actions).await;
                    Ok(())
                }
            };
        };
        let wanted: HashSet<Id> = actions.iter().copied().collect();
        // A batch answers what it was asked, in order; a pack may hold more.
        let asked = matches!(source, Source::Loose).then_some(actions);
        let result = self.unpack(from, &mut pack, &wanted, asked).await;
        tracing::debug!(
            "received {} bytes for {} entries",
            pack.received(),
            actions.len()
        );
        add(&self.remote.stats.prefetch_bytes, pack.received());
        add(&self.remote.stats.remote_bytes_down, pack.received());
        result
    }

    /// Stores the wanted entries of a pack as they arrive. The entries of
    /// a batch must be the `asked` ones, in order: anything else (an
    /// endless answer of unrelated entries, say) is damage.
    async fn unpack(
        self: &Arc<Self>,
        from: usize,
        pack: &mut PackReader,
        wanted: &HashSet<Id>,
        asked: Option<&[Id]>,
    ) -> Result<(), Trouble> {
        let mut unvouched = Vec::new();
        let received = self
            .receive(from, pack, wanted, asked, &mut unvouched)
            .await;
        // What arrived whole before any trouble is as good as the rest.
        self.vouch(from, &mut unvouched);
        received
    }

    /// Writes the bodies of the wanted entries of a pack as they arrive;
    /// their records wait in `unvouched` for [`Prefetch::vouch`], so that
    /// their signatures are checked together: until [`VOUCH_AT_ONCE`]
    /// wait, a get waits for one, the next entry is [`VOUCH_WITHIN`] late,
    /// or the pack ends.
    async fn receive(
        self: &Arc<Self>,
        from: usize,
        pack: &mut PackReader,
        wanted: &HashSet<Id>,
        asked: Option<&[Id]>,
        unvouched: &mut Vec<Unvouched>,
    ) -> Result<(), Trouble> {
        let remote = &self.remote;
        let cache = &remote.reads[from];
        let stall = remote.options.timeout;
        let mut asked = asked.map(|asked| asked.iter());
        loop {
            let entry = {
                let mut next = std::pin::pin!(within(stall, pack.next()));
                if unvouched.is_empty() {
                    next.await
                } else {
                    // Records wait to be checked with more only while
                    // entries keep coming: a pause in the stream checks them.
                    tokio::select! {
                        biased;
                        entry = &mut next => entry,
                        () = tokio::time::sleep(VOUCH_WITHIN) => {
                            self.vouch(from, unvouched);
                            next.await
                        }
                    }
                }
            };
            let Some(entry) = entry? else { break };
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
                        add(&self.remote.stats.prefetch_missing, 1);
                    }
                    continue;
                }
                RawEntry::Found { action, record, .. } => (action, record),
            };
            if !wanted.contains(&action)
                || !matches!(
                    lock(&self.plan).entries.get(&action),
                    Some(Planned::Waiting(_))
                )
            {
                continue;
            }
            let fetched = cache.unpack(pack, &action, &record)?;
            // A body the disk cannot take: the pack's framing is still
            // sound, and the next entry may fit.
            match self.receive_body(pack, &fetched).await? {
                Ok(body) => unvouched.push(Unvouched {
                    action,
                    record: fetched.record,
                    body,
                }),
                Err(trouble) => {
                    self.report(trouble, "an entry of a pack");
                    self.settle(action, None);
                }
            }
            if remote.options.trusted.is_none()
                || unvouched.len() >= VOUCH_AT_ONCE
                || self.awaits_any(unvouched)
            {
                self.vouch(from, unvouched);
            }
        }
        Ok(())
    }

    /// Whether a get waits for one of the `unvouched` entries: then they
    /// are vouched for at once rather than with more.
    fn awaits_any(&self, unvouched: &[Unvouched]) -> bool {
        let plan = lock(&self.plan);
        unvouched.iter().any(|entry| {
            matches!(plan.entries.get(&entry.action),
                Some(Planned::Waiting(waiters)) if !waiters.is_empty())
        })
    }

    /// Stores the entries received from `reads[from]` that it trusts in the
    /// local tier, and answers the gets waiting for them. An untrusted
    /// one is dropped: not to be named again in this run's manifest, and
    /// its gets go on to a lookup once the transfer is over.
    fn vouch(self: &Arc<Self>, from: usize, unvouched: &mut Vec<Unvouched>) {
        if unvouched.is_empty() {
            return;
        }
        let remote = &self.remote;
        let records: Vec<&ActionRecord> = unvouched.iter().map(|entry| &entry.record).collect();
        let trusted = remote.trusts_all(&remote.reads[from], &records);
        for (entry, trusted) in unvouched.drain(..).zip(trusted) {
            let Unvouched {
                action,
                record,
                body,
            } = entry;
            if !trusted {
                lock(&self.packs).remove(&action);
                continue;
            }
            match remote.keep(action, &record, body) {
                Ok(found) => self.settle(action, Some(found)),
                Err(Trouble::Remote(e)) => {
                    add(&self.remote.stats.remote_damaged, 1);
                    tracing::info!("{e}; treated as a miss");
                }
                Err(Trouble::Local(e)) => {
                    remote.report_not_stored(&e);
                    self.settle(action, None);
                }
            }
        }
    }

    /// Writes the body of one entry of a pack into the local tier. The
    /// outer error ends the pack (cut short or damaged: nothing after it
    /// can be trusted); the inner one is this entry's alone.
    async fn receive_body(
        &self,
        pack: &mut PackReader,
        fetched: &Fetched,
    ) -> Result<Result<ObjectWriter, Trouble>, Trouble> {
        let remote = &self.remote;
        let mut body = match remote.store.object_writer(&fetched.record.output) {
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
            Ok(()) => Ok(Ok(body)),
            Err(e @ Trouble::Remote(_)) => Err(e),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Fetches entries one by one, a few at a time: for a remote without a
    /// batch endpoint.
    async fn look_up_each(self: &Arc<Self>, actions: &[Id]) {
        let remote = &self.remote;
        let timeout = remote.options.timeout;
        futures_util::stream::iter(actions)
            .for_each_concurrent(LOOKUPS_AT_ONCE, |action| async move {
                match within(timeout, remote.fetch(*action)).await {
                    Ok(Some(found)) => {
                        remote.succeeded();
                        self.settle(*action, Some(found));
                    }
                    Ok(None) => {
                        remote.succeeded();
                        add(&self.remote.stats.prefetch_missing, 1);
                    }
                    Err(Trouble::Remote(e @ RemoteError::Damaged { .. })) => {
                        add(&self.remote.stats.remote_damaged, 1);
                        tracing::info!("{e}; treated as a miss");
                    }
                    Err(Trouble::Remote(e)) => {
                        add(&self.remote.stats.remote_errors, 1);
                        remote.failed(&e);
                    }
                    Err(Trouble::Local(e)) => remote.report_not_stored(&e),
                }
            })
            .await;
    }

    /// Ends the plan for `action`: answers the gets waiting for it with
    /// what was found, or hands them to an ordinary lookup.
    fn settle(self: &Arc<Self>, action: Id, found: Option<Found>) {
        let remote = &self.remote;
        let waiters = {
            let mut plan = lock(&self.plan);
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
                    add(&self.remote.stats.prefetch_waits, 1);
                    self.remote.answer_found(waiter.ticket, action, found);
                }
                None => self.give_up_waiting(remote, action, waiter),
            }
        }
    }

    /// At close: stops the prefetch, answers the gets still waiting for it
    /// (there should be none: the go command asks nothing more once it
    /// closes), and counts what the prefetch fetched for nothing. Gets
    /// after this are not held for a plan.
    pub(super) fn finish(&self) {
        let remote = &self.remote;
        for task in [&self.task, &self.watchdog] {
            if let Some(task) = lock(task).take() {
                task.abort();
                let _ = remote.runtime.block_on(task);
            }
        }
        let plan = std::mem::replace(
            &mut *lock(&self.plan),
            Plan {
                ready: true,
                ..Plan::default()
            },
        );
        for (action, Waiter { ticket, .. }) in plan.early {
            self.remote.stats.miss(action);
            let id = ticket.id();
            ticket.answer(Response::miss(id));
        }
        let used = lock(&remote.used);
        for (action, state) in plan.entries {
            match state {
                Planned::Waiting(waiters) => {
                    for Waiter { ticket, .. } in waiters {
                        self.remote.stats.miss(action);
                        let id = ticket.id();
                        ticket.answer(Response::miss(id));
                    }
                }
                // Counted here, from the plan, so that the counts add up
                // even if a transfer is stopped between storing and settling.
                Planned::Stored => {
                    add(&self.remote.stats.prefetch_fetched, 1);
                    match used.seen.contains(&action) {
                        true => add(&self.remote.stats.prefetch_used, 1),
                        false => add(&self.remote.stats.prefetch_unused, 1),
                    }
                }
                Planned::Failed => {}
            }
        }
    }
}
