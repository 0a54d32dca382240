//! Publishing at close: the manifest of what this job used, and the packs
//! that hold its entries.
//!
//! - A run that may write merges what it used with what the other
//!   runs of its scope on this machine used in the last [`JOB_WINDOW`] (a
//!   journal in the cache directory, under a lock, so concurrent and
//!   successive go commands of one job publish their union), packs the
//!   entries that no fresh pack holds (object storage only; a server
//!   assembles batches itself), publishes the manifest beside the packs it
//!   names (again without any pack the store refused), and deletes packs
//!   and manifests too old to be used (once an hour per machine). A
//!   manifest this machine published as it is within the hour is not sent
//!   again.
//! - A fresh pack in a namespace the run reads holds an entry as well as
//!   one of its own: a pull request's first job names the packs of `main`
//!   it fetched instead of uploading what it used again (its next jobs
//!   read `main` too).
//! - A job's first go command publishes before the others run, so the
//!   manifest also keeps, as *earlier* entries, what the job before used
//!   and this job has not used yet, for [`JOB_WINDOW`] at most: a runner
//!   starting mid-job, and the job's own later commands, still find them.
//!   The job before is the one the first manifest the job's first run read
//!   names (its scope's, or the one a pull request's first job falls back
//!   on), kept in the journal. The job after drops them unless it uses
//!   them, so a manifest names at most two jobs' worth. A run that does
//!   not prefetch reads its scope's manifest at close instead, for the
//!   same reason and to know what is packed.
//!
//! Everything here is best effort: a failed publication costs a warning,
//! never a failed build.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use granary_id::Id;
use granary_remote::layout::scope_key_name;
use granary_remote::manifest::{PACK_REUSE_AGE, from_unix_seconds, unix_seconds};
use granary_remote::{
    Group, Made, Manifest, Namespace, PackRef, PackWriter, STREAM_ABOVE, SealedPack,
};
use granary_store::Lookup;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::prefetch::{Packed, Prefetch, lock};
use crate::remote::{Remote, Trouble, within};
use crate::stats::add;

/// A new pack is closed once it is this large.
const PACK_TARGET: usize = 8 << 20;
/// Packs uploaded at once at close.
const PACK_UPLOADS_AT_ONCE: usize = 4;
/// A published manifest is the union of what the runs of its scope on this
/// machine used within this window: the go commands of one CI job.
pub const JOB_WINDOW: Duration = Duration::from_secs(3 * 3600);
/// How often a machine's runs sweep a namespace.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// A manifest that a run of this machine published within this window is
/// not sent again unchanged: the go commands of a job that use nothing new
/// (a linter's `go list`s, a second build) then cost no round trip.
const REPUBLISH_AFTER: Duration = Duration::from_secs(3600);
/// Most packs and manifests one close deletes.
const SWEEP_LIMIT: usize = 1000;
/// The journals' directory in the cache directory, where the binary keeps
/// its own files about runs too.
pub const JOURNALS: &str = "granary-journal";

/// At close: publishes the manifest of what this job used, packing
/// what no fresh pack holds, and meanwhile deletes what is too old to be
/// used (no fresh manifest names it, so the two need no order: the go
/// command waits for one round trip less). A run that checks signatures
/// but cannot sign publishes nothing: runs like it would not use its
/// manifest, and it would replace a signed one.
pub(super) async fn publish(prefetch: &Prefetch) {
    let remote = &prefetch.remote;
    let unsigned_among_trusting = remote.options.trusted.is_some() && !remote.options.cache.signs();
    if remote.options.read_only || !remote.is_on() || unsigned_among_trusting {
        return;
    }
    let (used, build_times) = {
        let mut used = lock(&remote.used);
        (std::mem::take(&mut used.order), used.build_times.clone())
    };
    if used.is_empty() {
        return;
    }
    tokio::join!(publish_manifest(prefetch, used, build_times), sweep(remote));
}

/// Deletes the namespace's packs and manifests too old to be used; only
/// in object storage, where nothing else ages them out. Once per
/// [`SWEEP_EVERY`] on a machine: a listing takes a round trip per thousand
/// keys, and a job's go commands would each pay it.
async fn sweep(remote: &Remote) {
    let cache = &remote.options.cache;
    let swept_by = format!("{} {}", cache.location(), cache.namespace());
    if !sweep_due(&remote.store.dir().join(JOURNALS), &swept_by) {
        return;
    }
    match within(
        remote.options.timeout,
        cache.sweep(SystemTime::now(), SWEEP_LIMIT),
    )
    .await
    {
        Ok(swept) => add(&remote.stats.swept, swept as u64),
        Err(e) => tracing::debug!("cannot sweep old packs: {}", trouble_text(&e)),
    }
}

/// Whether no run on this machine swept the remote named `swept_by`
/// within [`SWEEP_EVERY`]; if so, marks it swept now (before sweeping: go
/// commands that close at once sweep once).
fn sweep_due(dir: &Path, swept_by: &str) -> bool {
    let stamp = dir.join(format!("{}.swept", scope_key_name(swept_by)));
    let recent = fs::metadata(&stamp)
        .and_then(|meta| meta.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age < SWEEP_EVERY));
    if recent {
        return false;
    }
    let marked = fs::create_dir_all(dir).and_then(|()| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&stamp)?;
        file.set_modified(SystemTime::now())
    });
    if let Err(e) = marked {
        tracing::debug!("cannot mark the sweep in {}: {e}", stamp.display());
    }
    true
}

/// Merges what this run `used` into the scope's journal, packs what no
/// fresh pack holds, and publishes the manifest.
async fn publish_manifest(prefetch: &Prefetch, used: Vec<Id>, build_times: HashMap<Id, Duration>) {
    let remote = &prefetch.remote;
    if !remote.options.scopes.prefetch {
        read_own_manifest(prefetch).await;
    }
    let scope = remote.options.scopes.scope.clone();
    let known = lock(&prefetch.packs).clone();
    let latest_job = std::mem::take(&mut *lock(&prefetch.latest_job));
    let dir = remote.store.dir().join(JOURNALS);
    let merged = tokio::task::spawn_blocking(move || {
        let usage = RunUsage {
            latest_job,
            used,
            build_times,
        };
        Journal::merge(dir, &scope, usage, &known)
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
    let readable: Vec<&Namespace> = remote.reads.iter().map(|r| r.namespace()).collect();
    forget_stale_packs(&mut entries, now, &readable);
    let cache = &remote.options.cache;
    let destination = format!("{} {}", cache.location(), cache.namespace());
    if let Some(published_at) = journal.published_as(&destination, &entries, now) {
        add(&remote.stats.manifest_unchanged, 1);
        let published = Some((destination.as_str(), published_at));
        if let Err(e) = journal.write(&entries, published) {
            tracing::debug!("cannot write the manifest journal: {e}");
        }
        return;
    }
    // Within the remote's timeout; no answer: packs, as for any store
    // that cannot answer batches.
    let stores_packs =
        tokio::time::timeout(remote.options.timeout, remote.options.cache.stores_packs())
            .await
            .unwrap_or(true);
    let mut uploads = PackUploads::default();
    if stores_packs {
        // Earlier entries are not packed again: in a bucket, one
        // without a pack would cost a lookup of its own.
        entries.retain(|e| !e.earlier || e.pack.is_some());
        uploads = pack_loose(remote, &mut entries).await;
    }
    // The manifest goes out beside the last packs it names, not after
    // them: the go command waits for one round trip less. A reader in
    // between finds a pack missing and looks its entries up, as it does
    // for any pack that is gone.
    let manifest = manifest_of(remote, &entries, now);
    let (mut published, failed) =
        tokio::join!(publish_once(remote, &manifest), uploads.finish(remote));
    if !failed.is_empty() {
        for entry in &mut entries {
            if entry
                .pack
                .as_ref()
                .is_some_and(|p| failed.contains(&p.pack.id))
            {
                entry.pack = None;
            }
        }
        // Named, a missing pack would cost every reader a lookup per entry.
        published = publish_once(remote, &manifest_of(remote, &entries, now)).await;
    }
    if published {
        add(&remote.stats.manifest_entries, entries.len() as u64);
        let earlier = entries.iter().filter(|e| e.earlier).count();
        add(&remote.stats.manifest_earlier, earlier as u64);
    }
    let published = published.then_some((destination.as_str(), now));
    if let Err(e) = journal.write(&entries, published) {
        tracing::debug!("cannot write the manifest journal: {e}");
    }
}

/// The manifest naming `entries`, in the run's scope.
fn manifest_of(remote: &Remote, entries: &[JournalEntry], now: SystemTime) -> Manifest {
    Manifest {
        scope: remote.options.scopes.scope.clone(),
        written: now,
        groups: groups_in_order(entries, remote.options.cache.namespace()),
        build_times: entries
            .iter()
            .filter_map(|e| Some((e.action, e.build_time?)))
            .collect(),
    }
}

/// Publishes `manifest`; whether it was.
async fn publish_once(remote: &Remote, manifest: &Manifest) -> bool {
    let cache = &remote.options.cache;
    match within(remote.options.timeout, cache.publish_manifest(manifest)).await {
        Ok(sent) => {
            add(&remote.stats.remote_bytes_up, sent);
            true
        }
        Err(e) => {
            add(&remote.stats.remote_errors, 1);
            tracing::warn!(
                "cannot publish the manifest of scope {}: {}",
                manifest.scope,
                trouble_text(&e)
            );
            false
        }
    }
}

/// For a run that did not prefetch: reads the manifest of its own
/// scope, which the prefetch would have read, so that the job keeps
/// what the job before used, and entries already in packs are not
/// packed again.
async fn read_own_manifest(prefetch: &Prefetch) {
    let remote = &prefetch.remote;
    let scope = &remote.options.scopes.scope;
    let cache = &remote.options.cache;
    let manifest = match within(remote.options.timeout, cache.fetch_manifest(scope)).await {
        Ok(Some((manifest, seal)))
            if !manifest.is_stale(SystemTime::now()) && remote.trusts_manifest(cache, &seal) =>
        {
            manifest
        }
        Ok(_) => return,
        Err(trouble) => {
            return prefetch.report(trouble, &format!("the manifest of scope {scope}"));
        }
    };
    prefetch.remember_latest_job(&manifest);
    remote.note_build_times(manifest.build_times.iter().map(|(a, t)| (*a, *t)));
    let mut packs = lock(&prefetch.packs);
    for group in &manifest.groups {
        let Some(pack) = group.pack else { continue };
        let namespace = group.pack_in.as_ref().unwrap_or(cache.namespace());
        packs.extend(group.all().map(|action| {
            let namespace = namespace.clone();
            (*action, Packed { namespace, pack })
        }));
    }
}

/// Packs the entries that no fresh pack holds, reading them from the
/// local tier, and starts uploading the packs to the run's namespace; the
/// entries then name them. Returns once every pack is sealed (its name
/// known), with the last uploads still running.
async fn pack_loose(remote: &Arc<Remote>, entries: &mut [JournalEntry]) -> PackUploads {
    let loose: Vec<(Id, Option<Duration>)> = entries
        .iter()
        .filter(|e| e.pack.is_none())
        .map(|e| (e.action, e.build_time))
        .collect();
    let mut uploads = PackUploads::default();
    if loose.is_empty() {
        return uploads;
    }
    let (packs, mut built) = tokio::sync::mpsc::channel::<(SealedPack, Vec<Id>)>(2);
    let builder = {
        let remote = remote.clone();
        tokio::task::spawn_blocking(move || build_packs(&remote, &loose, &packs))
    };
    // Bounds the packs held in memory: the channel's, and those uploading.
    let slots = Arc::new(Semaphore::new(PACK_UPLOADS_AT_ONCE));
    let mut packed = HashMap::new();
    let namespace = remote.options.cache.namespace();
    while let Some((pack, actions)) = built.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let reference = pack.reference;
        uploads.sealed.push(reference.id);
        packed.extend(actions.into_iter().map(|action| (action, reference)));
        let remote = remote.clone();
        uploads.running.spawn(async move {
            let _slot = slot;
            let timeout = remote.options.timeout;
            let uploaded = within(timeout, remote.options.cache.put_pack(pack)).await;
            (reference, uploaded)
        });
    }
    let _ = builder.await;
    for entry in entries.iter_mut() {
        if entry.pack.is_none() {
            entry.pack = packed.get(&entry.action).map(|pack| Packed {
                namespace: namespace.clone(),
                pack: *pack,
            });
        }
    }
    uploads
}

/// The packs of one close, named and uploading.
#[derive(Default)]
struct PackUploads {
    /// Every pack sealed, by ID.
    sealed: Vec<Id>,
    running: JoinSet<(PackRef, Result<PackRef, Trouble>)>,
}

impl PackUploads {
    /// Waits for the uploads; returns the packs that were not stored.
    async fn finish(mut self, remote: &Remote) -> HashSet<Id> {
        let mut failed: HashSet<Id> = self.sealed.into_iter().collect();
        while let Some(joined) = self.running.join_next().await {
            let Ok((pack, uploaded)) = joined else {
                continue;
            };
            match uploaded {
                Ok(_) => {
                    failed.remove(&pack.id);
                    add(&remote.stats.packs_uploaded, 1);
                    add(&remote.stats.pack_bytes_up, pack.size);
                    add(&remote.stats.remote_bytes_up, pack.size);
                }
                Err(e) => {
                    add(&remote.stats.remote_errors, 1);
                    tracing::debug!("cannot upload a pack: {}", trouble_text(&e));
                }
            }
        }
        failed
    }
}

/// Reads `actions` from the local tier into packs of about
/// [`PACK_TARGET`] bytes, in order, sealing and sending each when full, with
/// the build times known. Entries the local tier no longer has are left out.
fn build_packs(
    remote: &Remote,
    actions: &[(Id, Option<Duration>)],
    packs: &tokio::sync::mpsc::Sender<(SealedPack, Vec<Id>)>,
) {
    let cache = &remote.options.cache;
    let send = |pack: PackWriter, members: Vec<Id>| match cache.seal_pack(pack) {
        Ok(sealed) => packs.blocking_send((sealed, members)).is_ok(),
        Err(e) => {
            tracing::debug!("cannot seal a pack: {e}");
            false
        }
    };
    let mut pack = PackWriter::default();
    let mut members = Vec::new();
    for (action, build_time) in actions {
        let Lookup::Hit(hit) = remote.store.get(action) else {
            continue;
        };
        // A large output is looked up alone: read whole into a pack, it
        // would cost its size in memory.
        if hit.entry.size > STREAM_ABOVE {
            continue;
        }
        let mut body = Vec::with_capacity(hit.entry.size as usize);
        if File::open(&hit.object)
            .and_then(|mut file| file.read_to_end(&mut body))
            .is_err()
            || body.len() as u64 != hit.entry.size
        {
            continue;
        }
        let made = Made {
            action: *action,
            output: hit.entry.output_id,
            put_time: hit.entry.put_time,
            build_time: *build_time,
        };
        let Ok((record, object)) = cache.encode_entry(&made, &body) else {
            continue;
        };
        pack.add(action, &record, &object);
        members.push(*action);
        if pack.len() >= PACK_TARGET
            && !send(std::mem::take(&mut pack), std::mem::take(&mut members))
        {
            return;
        }
    }
    if !pack.is_empty() {
        send(pack, members);
    }
}

fn trouble_text(trouble: &Trouble) -> String {
    match trouble {
        Trouble::Remote(e) => e.to_string(),
        Trouble::Local(e) => e.clone(),
    }
}

/// Drops the packs a new manifest should not name: too old (so that the
/// sweep may delete them), mostly holding entries nobody uses any more
/// (so that a prefetch never fetches more than twice what it needs), or in
/// a namespace this run does not read (the journal is the machine's, and
/// an earlier run may have read others).
fn forget_stale_packs(entries: &mut [JournalEntry], now: SystemTime, readable: &[&Namespace]) {
    let mut named: HashMap<&Packed, u32> = HashMap::new();
    for packed in entries.iter().filter_map(|e| e.pack.as_ref()) {
        *named.entry(packed).or_default() += 1;
    }
    let forgotten: Vec<bool> = entries
        .iter()
        .map(|entry| {
            entry.pack.as_ref().is_some_and(|packed| {
                let old = now
                    .duration_since(packed.pack.created)
                    .is_ok_and(|age| age > PACK_REUSE_AGE);
                let sparse = named[packed] * 2 < packed.pack.entries;
                old || sparse || !readable.contains(&&packed.namespace)
            })
        })
        .collect();
    for (entry, forgotten) in entries.iter_mut().zip(forgotten) {
        if forgotten {
            entry.pack = None;
        }
    }
}

/// The manifest's groups: one per pack, and one of loose entries, in the
/// order their first entry was used, earlier entries last. `own` is the
/// namespace the manifest is published in.
fn groups_in_order(entries: &[JournalEntry], own: &Namespace) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Option<(&Namespace, Id)>, usize> = HashMap::new();
    let (used, earlier): (Vec<_>, Vec<_>) = entries.iter().partition(|e| !e.earlier);
    for entry in used.into_iter().chain(earlier) {
        let key = entry.pack.as_ref().map(|p| (&p.namespace, p.pack.id));
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                pack: entry.pack.as_ref().map(|p| p.pack),
                pack_in: entry
                    .pack
                    .as_ref()
                    .filter(|p| p.namespace != *own)
                    .map(|p| p.namespace.clone()),
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
    action: Id,
    pack: Option<Packed>,
    /// When a run last used it; if it is `earlier`, when the job began.
    used: SystemTime,
    /// Used by the job before this one, not yet by this one.
    earlier: bool,
    /// How long its output took to build, where known.
    build_time: Option<Duration>,
}

/// What a run brings to its scope's journal.
#[derive(Debug, Default)]
struct RunUsage {
    /// What the job before used, by the manifest this run read.
    latest_job: Vec<Id>,
    /// What this run used, in order.
    used: Vec<Id>,
    /// How long the outputs this run knows of took to build.
    build_times: HashMap<Id, Duration>,
}

/// The journal of a scope on this machine: the actions its runs used within
/// [`JOB_WINDOW`], one line each, kept under a lock while a run publishes.
/// A first line says where and when the entries were last published as
/// they are, if they were.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    /// What the journal held before the merge, and where and when it was
    /// published.
    before: Vec<JournalEntry>,
    published: Option<(String, SystemTime)>,
    /// Held from the merge until the journal is written.
    _lock: File,
}

/// The first line of a journal whose entries were published as they are.
const PUBLISHED: &str = "published";

impl Journal {
    /// Locks the scope's journal and merges what this run `used` into what
    /// it holds. If no run of this job has published yet, what the latest
    /// job used (by the manifest this run read) is kept as earlier entries.
    fn merge(
        dir: PathBuf,
        scope: &str,
        usage: RunUsage,
        packs: &HashMap<Id, Packed>,
    ) -> std::io::Result<(Journal, Vec<JournalEntry>)> {
        let RunUsage {
            latest_job,
            used,
            build_times,
        } = usage;
        let took = |action: &Id| build_times.get(action).copied();
        fs::create_dir_all(&dir)?;
        let name = scope_key_name(scope);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))?;
        lock.lock()?;
        let mut journal = Journal {
            path: dir.join(format!("{name}.log")),
            before: Vec::new(),
            published: None,
            _lock: lock,
        };
        let now = SystemTime::now();
        journal.read(now);
        let mut entries = journal.before.clone();
        // The job's first publication: what the job before used is kept
        // for the window (a laptop's "job" may go on for days).
        if !entries.iter().any(|e| !e.earlier) {
            entries = latest_job
                .into_iter()
                .map(|action| JournalEntry {
                    action,
                    pack: packs.get(&action).cloned(),
                    used: now,
                    earlier: true,
                    build_time: took(&action),
                })
                .collect();
        }
        let mut at: HashMap<Id, usize> = entries
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
                    if entry.pack.is_none() {
                        entry.pack = packs.get(&action).cloned();
                    }
                    entry.build_time = took(&action).or(entry.build_time);
                }
                None => {
                    at.insert(action, entries.len());
                    entries.push(JournalEntry {
                        action,
                        pack: packs.get(&action).cloned(),
                        used: now,
                        earlier: false,
                        build_time: took(&action),
                    });
                }
            }
        }
        Ok((journal, entries))
    }

    /// Reads the entries used within the window, and where they were
    /// published; unreadable lines are skipped.
    fn read(&mut self, now: SystemTime) {
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        let mut lines = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .peekable();
        if let Some(header) = lines.next_if(|line| line.starts_with(PUBLISHED)) {
            self.published = parse_published(&header);
        }
        self.before = lines
            .filter_map(|line| parse_line(&line))
            .filter(|e| {
                now.duration_since(e.used)
                    .map_or(true, |age| age <= JOB_WINDOW)
            })
            .collect();
    }

    /// When `entries` were published to `destination` as they are, if that
    /// was within [`REPUBLISH_AFTER`]: the manifest they make is there. A
    /// manifest keeps no times of use, so those may differ.
    fn published_as(
        &self,
        destination: &str,
        entries: &[JournalEntry],
        now: SystemTime,
    ) -> Option<SystemTime> {
        let (to, at) = self.published.as_ref()?;
        let recent = now
            .duration_since(*at)
            .is_ok_and(|age| age < REPUBLISH_AFTER);
        let manifest = |e: &JournalEntry| (e.action, e.pack.clone(), e.earlier, e.build_time);
        let same = self.before.len() == entries.len()
            && self
                .before
                .iter()
                .zip(entries)
                .all(|(a, b)| manifest(a) == manifest(b));
        (to == destination && recent && same).then_some(*at)
    }

    /// Replaces the journal with `entries`, and where and when they were
    /// published as they are, if they were.
    fn write(
        &self,
        entries: &[JournalEntry],
        published: Option<(&str, SystemTime)>,
    ) -> std::io::Result<()> {
        let mut text = String::with_capacity(entries.len() * 120);
        if let Some((destination, at)) = published {
            text.push_str(&format!("{PUBLISHED} {} {destination}\n", unix_seconds(at)));
        }
        for entry in entries {
            let pack = match &entry.pack {
                Some(Packed { namespace, pack }) => format!(
                    "{}:{}:{}:{}:{}",
                    hex::encode(pack.id),
                    unix_seconds(pack.created),
                    pack.size,
                    pack.entries,
                    namespace.as_str()
                ),
                None => "-".to_owned(),
            };
            text.push_str(&format!(
                "{} {} {pack}{}{}\n",
                unix_seconds(entry.used),
                hex::encode(entry.action),
                if entry.earlier { " earlier" } else { "" },
                entry
                    .build_time
                    .map_or(String::new(), |t| format!(" built={}", t.as_millis())),
            ));
        }
        let dir = self.path.parent().expect("a journal is in a directory");
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// `published <unix seconds> <remote> <namespace>`.
fn parse_published(line: &str) -> Option<(String, SystemTime)> {
    let rest = line.strip_prefix(PUBLISHED)?.strip_prefix(' ')?;
    let (at, destination) = rest.split_once(' ')?;
    Some((destination.to_owned(), from_unix_seconds(at.parse().ok()?)?))
}

fn parse_line(line: &str) -> Option<JournalEntry> {
    let mut fields = line.split(' ');
    let used = from_unix_seconds(fields.next()?.parse().ok()?)?;
    let action = Id::from_hex(fields.next()?)?;
    let pack = match fields.next()? {
        "-" => None,
        pack => {
            let mut parts = pack.split(':');
            let pack = PackRef {
                id: Id::from_hex(parts.next()?)?,
                created: from_unix_seconds(parts.next()?.parse().ok()?)?,
                size: parts.next()?.parse().ok()?,
                entries: parts.next()?.parse().ok()?,
            };
            // A line of a version that did not name the namespace: the
            // entry is packed again.
            let namespace = parts.next().and_then(|name| Namespace::new(name).ok());
            namespace.map(|namespace| Packed { namespace, pack })
        }
    };
    let (mut earlier, mut build_time) = (false, None);
    for field in fields {
        match field {
            "earlier" if !earlier => earlier = true,
            _ => match field.strip_prefix("built=") {
                Some(ms) if build_time.is_none() => {
                    build_time = Some(Duration::from_millis(ms.parse().ok()?));
                }
                _ => return None,
            },
        }
    }
    Some(JournalEntry {
        action,
        pack,
        used,
        earlier,
        build_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_sweeps_a_remote_once_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        assert!(sweep_due(&journals, "s3://ci main"));
        assert!(!sweep_due(&journals, "s3://ci main"), "swept just now");
        assert!(sweep_due(&journals, "s3://ci pr-7"), "another namespace");
        let stamp = fs::read_dir(&journals)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name().to_string_lossy().starts_with("s3---ci-main"))
            .unwrap();
        File::options()
            .write(true)
            .open(stamp.path())
            .unwrap()
            .set_modified(SystemTime::now() - SWEEP_EVERY - Duration::from_secs(60))
            .unwrap();
        assert!(sweep_due(&journals, "s3://ci main"), "an hour later");
    }

    fn namespace(name: &str) -> Namespace {
        Namespace::new(name).unwrap()
    }

    /// A pack in the namespace `pr`.
    fn pack(id: u8, entries: u32, age: Duration) -> Packed {
        pack_in("pr", id, entries, age)
    }

    fn pack_in(name: &str, id: u8, entries: u32, age: Duration) -> Packed {
        Packed {
            namespace: namespace(name),
            pack: PackRef {
                id: Id([id; 32]),
                // Whole seconds, as the journal keeps them.
                created: from_unix_seconds(unix_seconds(SystemTime::now() - age)).unwrap(),
                size: 1000,
                entries,
            },
        }
    }

    fn entry(action: u8, pack: Option<Packed>) -> JournalEntry {
        JournalEntry {
            action: Id([action; 32]),
            pack,
            used: from_unix_seconds(unix_seconds(SystemTime::now())).unwrap(),
            earlier: false,
            build_time: None,
        }
    }

    fn usage(latest_job: Vec<Id>, used: Vec<Id>) -> RunUsage {
        RunUsage {
            latest_job,
            used,
            build_times: HashMap::new(),
        }
    }

    #[test]
    fn old_sparse_and_unread_packs_are_not_named_again() {
        let fresh = pack(1, 2, Duration::ZERO);
        let old = pack(2, 1, PACK_REUSE_AGE + Duration::from_secs(60));
        let sparse = pack(3, 10, Duration::ZERO);
        let of_main = pack_in("main", 4, 1, Duration::ZERO);
        let unread = pack_in("nightly", 5, 1, Duration::ZERO);
        let mut entries = vec![
            entry(1, Some(fresh.clone())),
            entry(2, Some(old)),
            entry(3, Some(sparse.clone())),
            entry(4, Some(sparse)),
            entry(5, Some(fresh)),
            entry(6, None),
            entry(7, Some(of_main)),
            entry(8, Some(unread)),
        ];
        let (pr, main) = (namespace("pr"), namespace("main"));
        forget_stale_packs(&mut entries, SystemTime::now(), &[&pr, &main]);
        let packs: Vec<_> = entries
            .iter()
            .map(|e| e.pack.as_ref().map(|p| p.pack.id.0[0]))
            .collect();
        let kept = [Some(1), None, None, None, Some(1), None, Some(4), None];
        assert_eq!(packs, kept);
        let groups = groups_in_order(&entries, &pr);
        let ids = |actions: &[Id]| actions.iter().map(|a| a.0[0]).collect::<Vec<u8>>();
        let groups: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.pack.map(|p| p.id.0[0]),
                    g.pack_in.clone(),
                    ids(&g.actions),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                (Some(1), None, vec![1, 5]),
                (None, None, vec![2, 3, 4, 6, 8]),
                (Some(4), Some(main), vec![7]),
            ],
            "a pack of the run's own namespace names none"
        );
    }

    #[test]
    fn the_journal_merges_runs_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        let packed = pack(9, 1, Duration::ZERO);
        let packs = HashMap::from([(Id([2; 32]), packed.clone())]);
        let mut first = usage(vec![], vec![Id([1; 32]), Id([2; 32])]);
        first.build_times = HashMap::from([(Id([1; 32]), Duration::from_millis(250))]);
        let (journal, entries) = Journal::merge(journals.clone(), "s", first, &packs).unwrap();
        assert_eq!(entries.len(), 2);
        journal.write(&entries, None).unwrap();
        drop(journal);
        let mut second = usage(vec![Id([9; 32])], vec![Id([2; 32]), Id([3; 32])]);
        second.build_times = HashMap::from([(Id([3; 32]), Duration::from_millis(40))]);
        let (journal, entries) =
            Journal::merge(journals.clone(), "s", second, &HashMap::new()).unwrap();
        let actions: Vec<u8> = entries.iter().map(|e| e.action.0[0]).collect();
        assert_eq!(actions, [1, 2, 3], "the union, in order of first use");
        assert_eq!(entries[1].pack, Some(packed), "the journal keeps packs");
        let times: Vec<Option<u128>> = entries
            .iter()
            .map(|e| e.build_time.map(|t| t.as_millis()))
            .collect();
        assert_eq!(times, [Some(250), None, Some(40)], "build times are kept");
        // An entry last used before the window is forgotten.
        let mut stale = entries.clone();
        stale[0].used = SystemTime::now() - JOB_WINDOW - Duration::from_secs(60);
        journal.write(&stale, None).unwrap();
        drop(journal);
        let (_journal, entries) =
            Journal::merge(journals, "s", RunUsage::default(), &HashMap::new()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].build_time, Some(Duration::from_millis(40)));
        assert_eq!(parse_line("garbage"), None);
        let action = hex::encode([1; 32]);
        for bad in ["built=x", "built=1 built=2", "earlier earlier", "later"] {
            assert_eq!(parse_line(&format!("1 {action} - {bad}")), None, "{bad}");
        }
        // A pack of a line without its namespace, as versions before
        // 2026-12-07 wrote them, is packed again; the entry is kept.
        let pack = hex::encode([9; 32]);
        let line = parse_line(&format!("1 {action} {pack}:1790000000:1000:1")).unwrap();
        assert_eq!((line.action, line.pack), (Id([1; 32]), None));
    }

    #[test]
    fn a_manifest_published_as_it_is_is_not_sent_again_within_the_hour() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        let used = |ids: &[u8]| usage(vec![], ids.iter().map(|&i| Id([i; 32])).collect());
        let merge =
            |ids: &[u8]| Journal::merge(journals.clone(), "s", used(ids), &HashMap::new()).unwrap();
        let now = SystemTime::now();
        let (journal, entries) = merge(&[1, 2]);
        assert_eq!(journal.published_as("s3://ci main", &entries, now), None);
        journal
            .write(&entries, Some(("s3://ci main", now)))
            .unwrap();
        drop(journal);

        let (journal, entries) = merge(&[2]);
        let published = journal.published_as("s3://ci main", &entries, now);
        assert!(published.is_some(), "nothing new was used");
        assert_eq!(journal.published_as("s3://ci pr-7", &entries, now), None);
        let later = now + REPUBLISH_AFTER + Duration::from_secs(1);
        assert_eq!(journal.published_as("s3://ci main", &entries, later), None);
        // Written back as skipped: the time of the publication stays.
        journal
            .write(&entries, Some(("s3://ci main", published.unwrap())))
            .unwrap();
        drop(journal);

        let (journal, entries) = merge(&[3]);
        assert_eq!(
            journal.published_as("s3://ci main", &entries, now),
            None,
            "3 is new"
        );
        // A publication that failed leaves no claim behind.
        journal.write(&entries, None).unwrap();
        drop(journal);
        let (journal, entries) = merge(&[3]);
        assert_eq!(journal.published_as("s3://ci main", &entries, now), None);
        assert_eq!(parse_published("published x s3://ci main"), None);
    }

    /// Job 1 read a manifest naming 1, 2, 3; its first command used 1, its
    /// second 2 and 4; job 2 read job 1's manifest and used 4 and 5.
    #[test]
    fn a_manifest_keeps_what_the_job_before_used_for_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNALS);
        let publish = |latest_job: &[u8], used: &[u8]| {
            let hashes = |ids: &[u8]| ids.iter().map(|&i| Id([i; 32])).collect::<Vec<_>>();
            let packs = HashMap::from([(Id([3; 32]), pack(7, 2, Duration::ZERO))]);
            let (journal, entries) = Journal::merge(
                journals.clone(),
                "s",
                usage(hashes(latest_job), hashes(used)),
                &packs,
            )
            .unwrap();
            journal.write(&entries, None).unwrap();
            let groups = groups_in_order(&entries, &namespace("pr"));
            let ids = |actions: &[Id]| actions.iter().map(|a| a.0[0]).collect::<Vec<u8>>();
            groups
                .iter()
                .map(|g| (g.pack.map(|p| p.id.0[0]), ids(&g.actions), ids(&g.earlier)))
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
