//! How much the cache holds, and trimming it: least recently used first.
//!
//! A file's mtime is its last use (cmd/go's rule, which granary follows), so
//! trimming needs no index of its own. It is two walks over the 256
//! subdirectories, so memory stays bounded by one subdirectory plus one
//! counter per distinct second of last use, whatever the size of the cache:
//!
//! 1. [`Store::scan_subdirectory`] tallies every entry file by kind and age
//!    into a [`Usage`], and counts the bytes last used in each second, for
//!    the files outside the grace window;
//! 2. [`Usage::plan`] turns the [`Policy`] into a single cutoff: every file
//!    last used before it goes, and nothing else;
//! 3. [`Store::remove_unused_in`] walks again and removes those files.
//!
//! Both walks go one subdirectory at a time, so that callers can spread
//! them over threads (partial tallies combine with [`Usage::merge`]) and
//! show progress; the store itself starts no thread.
//!
//! A file that granary hands to the go command must not vanish before the
//! go command opens it. Two rules make sure of that. Nothing used within the
//! grace window is removed, and since use is recorded at most hourly, the
//! window should be longer than an hour. And a use that records itself (a
//! lookup that bumps an mtime) and a removal exclude each other through a
//! lock file per subdirectory: the remover checks the mtime again under the
//! lock just before removing, so a file is either seen as used and kept, or
//! removed before the lookup looks, which then misses.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::{self, File, TryLockError};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::walk::remove_entry_file;
use crate::{EntryFile, EntryKind, Store, StoreError};

/// The default maximum age, as cmd/go's (`trimLimit`): five days unused.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
/// The default grace window: well beyond the hour for which a use may go
/// unrecorded, and longer than almost any single build or test run.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(4 * 3600);
/// The upper bounds of the age brackets of [`Usage::by_age`]; the last
/// bracket holds everything older.
pub const AGE_BRACKETS: [Duration; 4] = [
    Duration::from_secs(3600),
    Duration::from_secs(24 * 3600),
    Duration::from_secs(7 * 24 * 3600),
    Duration::from_secs(30 * 24 * 3600),
];
/// Name of the file, in the cache directory, holding the time of the last
/// completed trim in Unix seconds: granary's counterpart of cmd/go's `trim.txt`.
pub const TRIM_MARKER: &str = "granary-trim.txt";
/// Temporary files older than this were left by a killed process: no put
/// takes a day.
pub const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(24 * 3600);

/// The directory, in the temporary directory, of the use locks.
const USE_LOCKS: &str = "locks";
const TRIMMER_LOCK: &str = "trim.lock";

/// What a trim keeps and removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Files unused for longer are removed. `Duration::MAX`: no age limit.
    pub max_age: Duration,
    /// Ceiling on the disk space the entries take; least recently used
    /// files are removed until they fit. `u64::MAX`: no ceiling.
    pub max_size: u64,
    /// Floor on the space left available on the cache's file system; least
    /// recently used files are removed until it is reached. 0: no floor.
    pub min_free: u64,
    /// Nothing used more recently than this is removed, whatever the limits.
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_age: DEFAULT_MAX_AGE,
            max_size: u64::MAX,
            min_free: 0,
            grace: DEFAULT_GRACE,
        }
    }
}

/// A number of files and the disk space they take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// What a scan found: the cache's contents by kind and age.
#[derive(Debug, Clone)]
pub struct Usage {
    pub policy: Policy,
    /// When the scan started; ages are counted from it.
    pub now: SystemTime,
    pub actions: Tally,
    pub objects: Tally,
    /// Entry files by time since last use, in [`AGE_BRACKETS`].
    pub by_age: [Tally; AGE_BRACKETS.len() + 1],
    largest_wanted: usize,
    largest_heap: BinaryHeap<Reverse<(u64, PathBuf)>>,
    /// Files outside the grace window, by the second they were last used.
    removable: BTreeMap<u64, Tally>,
}

/// What a policy removes from a scanned cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Files last used before this second (since the Unix epoch) go.
    cutoff: u64,
    /// What goes.
    pub remove: Tally,
    /// Bytes the size limits ask for beyond what may go: the grace window
    /// protects them.
    pub shortfall: u64,
}

impl Usage {
    fn new(policy: Policy, now: SystemTime, largest_wanted: usize) -> Usage {
        Usage {
            policy,
            now,
            actions: Tally::default(),
            objects: Tally::default(),
            by_age: Default::default(),
            largest_wanted,
            largest_heap: BinaryHeap::new(),
            removable: BTreeMap::new(),
        }
    }

    /// All entry files.
    pub fn total(&self) -> Tally {
        let mut total = self.actions;
        total += self.objects;
        total
    }

    fn record(&mut self, file: EntryFile) {
        match file.kind {
            EntryKind::Action(_) => self.actions.add(file.disk_size),
            EntryKind::Object(_) => self.objects.add(file.disk_size),
        }
        let age = self.now.duration_since(file.last_used).unwrap_or_default();
        let bracket = AGE_BRACKETS.iter().take_while(|b| age >= **b).count();
        self.by_age[bracket].add(file.disk_size);
        let second = unix_seconds(file.last_used);
        if second < self.grace_cutoff() {
            self.removable
                .entry(second)
                .or_default()
                .add(file.disk_size);
        }
        if matches!(file.kind, EntryKind::Object(_)) {
            self.keep_if_large(file.size, file.path);
        }
    }

    fn keep_if_large(&mut self, size: u64, path: PathBuf) {
        if self.largest_wanted > 0 {
            self.largest_heap.push(Reverse((size, path)));
            if self.largest_heap.len() > self.largest_wanted {
                self.largest_heap.pop();
            }
        }
    }

    /// Adds what another scan of the same cache, under the same policy,
    /// found in other subdirectories.
    pub fn merge(&mut self, other: Usage) {
        self.actions += other.actions;
        self.objects += other.objects;
        for (mine, theirs) in self.by_age.iter_mut().zip(other.by_age) {
            *mine += theirs;
        }
        for (second, tally) in other.removable {
            *self.removable.entry(second).or_default() += tally;
        }
        for Reverse((size, path)) in other.largest_heap {
            self.keep_if_large(size, path);
        }
    }

    /// The largest objects, largest first, as many as the scan was asked for.
    pub fn largest(&self) -> Vec<(u64, PathBuf)> {
        let mut largest: Vec<_> = self
            .largest_heap
            .iter()
            .map(|Reverse(e)| e.clone())
            .collect();
        largest.sort_by(|a, b| b.cmp(a));
        largest
    }

    /// Files last used in this second or later are inside the grace window.
    fn grace_cutoff(&self) -> u64 {
        self.now
            .checked_sub(self.policy.grace)
            .map_or(0, unix_seconds)
    }

    /// What the policy removes, given the space `available` on the file
    /// system (needed only when the policy has a `min_free` floor).
    pub fn plan(&self, available: Option<u64>) -> Plan {
        let policy = &self.policy;
        let age_cutoff = self.now.checked_sub(policy.max_age).map_or(0, unix_seconds);
        let over_ceiling = self.total().bytes.saturating_sub(policy.max_size);
        let under_floor = available.map_or(0, |free| policy.min_free.saturating_sub(free));
        let wanted = over_ceiling.max(under_floor);
        let mut plan = Plan {
            cutoff: 0,
            remove: Tally::default(),
            shortfall: 0,
        };
        // Oldest first: everything beyond the age limit, then as much as
        // the size limits want.
        for (&second, tally) in &self.removable {
            if second >= age_cutoff && plan.remove.bytes >= wanted {
                break;
            }
            plan.remove += *tally;
            plan.cutoff = second + 1;
        }
        plan.shortfall = wanted.saturating_sub(plan.remove.bytes);
        plan
    }
}

impl Plan {
    /// Whether `file`, as it is now, is to go.
    fn removes(&self, file: &EntryFile) -> bool {
        unix_seconds(file.last_used) < self.cutoff
    }
}

impl Store {
    /// An empty tally of this cache under `policy` (whose grace window
    /// decides what may be removed), to keep the `largest` largest objects;
    /// fill it with [`Store::scan_subdirectory`].
    pub fn usage(&self, policy: &Policy, largest: usize) -> Usage {
        Usage::new(*policy, self.now(), largest)
    }

    /// Tallies the entry files of the subdirectory `prefix` into `usage`.
    /// Subdirectories can be scanned in parallel into separate tallies, then
    /// merged ([`Usage::merge`]).
    pub fn scan_subdirectory(&self, prefix: u8, usage: &mut Usage) -> io::Result<()> {
        for file in self.entry_files_in(prefix)? {
            usage.record(file);
        }
        Ok(())
    }

    /// Removes the entry files of the subdirectory `prefix` that `plan`
    /// removes, checking each once more just before, under the
    /// subdirectory's use lock: a file used since the scan stays. Returns
    /// what this call removed. Subdirectories can be trimmed in parallel.
    pub fn remove_unused_in(&self, prefix: u8, plan: &Plan) -> Result<Tally, StoreError> {
        let mut removed = Tally::default();
        if plan.remove.files == 0 {
            return Ok(removed);
        }
        let files = self
            .entry_files_in(prefix)
            .map_err(self.io_error("list the entries of"))?;
        let candidates: Vec<_> = files.iter().filter(|f| plan.removes(f)).collect();
        if candidates.is_empty() {
            return Ok(removed);
        }
        let lock = self
            .use_lock(prefix)
            .map_err(self.io_error("open a lock file in"))?;
        for file in candidates {
            lock.lock().map_err(self.io_error("lock a lock file in"))?;
            let outcome = match self.restat(file) {
                Some(now) if plan.removes(&now) => remove_entry_file(&now)
                    .map(|gone| gone.then_some(now.disk_size))
                    .map_err(|source| StoreError::Io {
                        op: "remove",
                        path: now.path.clone(),
                        source,
                    }),
                _ => Ok(None),
            };
            let _ = lock.unlock();
            if let Some(bytes) = outcome? {
                removed.add(bytes);
            }
        }
        Ok(removed)
    }

    /// The space available on the cache's file system, if `policy` has a
    /// floor on it.
    pub fn available_space_for(&self, policy: &Policy) -> Result<Option<u64>, StoreError> {
        if policy.min_free == 0 {
            return Ok(None);
        }
        fs4::available_space(self.dir())
            .map(Some)
            .map_err(self.io_error("measure the free space of"))
    }

    /// Whether the last trim finished longer than `interval` ago. A missing,
    /// unreadable or implausible marker means yes: trimming too often only
    /// costs time, never trimming costs the disk.
    pub fn trim_due(&self, interval: Duration) -> bool {
        match self.last_trim() {
            Some(last) => self
                .now()
                .duration_since(last)
                .map_or(true, |since| since >= interval),
            None => true,
        }
    }

    /// When the last trim finished, from the marker file.
    pub fn last_trim(&self) -> Option<SystemTime> {
        let text = fs::read_to_string(self.dir().join(TRIM_MARKER)).ok()?;
        let seconds: u64 = text.trim().parse().ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
    }

    /// Records that a trim finished now.
    pub fn mark_trimmed(&self) -> Result<(), StoreError> {
        let marker = self.dir().join(TRIM_MARKER);
        let mut file = self.new_temp_file()?;
        writeln!(file, "{}", unix_seconds(self.now()))
            .map_err(self.io_error("write a temporary file in"))?;
        file.persist(&marker).map_err(|e| StoreError::Io {
            op: "write",
            path: marker,
            source: e.error,
        })?;
        Ok(())
    }

    /// Becomes the one automatic trimmer of this cache, unless another
    /// process is: `None` then. The lock lasts as long as the file.
    pub fn try_lock_trimmer(&self) -> Result<Option<File>, StoreError> {
        let path = self.tmp_dir().join(TRIMMER_LOCK);
        let file = self
            .open_lock(&path)
            .map_err(self.io_error("open the lock file in"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(StoreError::Io {
                op: "lock",
                path,
                source,
            }),
        }
    }

    /// The lock file that makes recording a use of an object and removing a
    /// file in the subdirectory `prefix` exclusive. One per subdirectory, so
    /// that subdirectories can be trimmed in parallel. Each user opens its
    /// own: locks belong to open files.
    pub(crate) fn use_lock(&self, prefix: u8) -> io::Result<File> {
        self.open_lock(&self.tmp_dir().join(USE_LOCKS).join(format!("{prefix:02x}")))
    }

    fn open_lock(&self, path: &Path) -> io::Result<File> {
        let open = || File::options().create(true).append(true).open(path);
        match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(path.parent().unwrap_or(self.tmp_dir()))?;
                open()
            }
            other => other,
        }
    }
}

pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{Hit, Lookup};
    use granary_id::Id;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A store whose clock stands still until the test moves it.
    struct Fixture {
        _tmp: tempfile::TempDir,
        store: Store,
        now: Arc<Mutex<SystemTime>>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let now = Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(1_900_000_000)));
            let clock = now.clone();
            let store = Store::open(tmp.path().join("cache"))
                .unwrap()
                .with_clock(Arc::new(move || *clock.lock().unwrap()));
            Fixture {
                _tmp: tmp,
                store,
                now,
            }
        }

        fn now(&self) -> SystemTime {
            *self.now.lock().unwrap()
        }

        /// Entry `n`, with a body of `len` bytes, last used `age` ago.
        fn entry(&self, n: u8, len: usize, age: Duration) -> (Id, PathBuf) {
            let action = Id([n; 32]);
            let stored = self.store.put_bytes(&action, &vec![n; len]).unwrap();
            let used = self.now() - age;
            for path in [self.store.action_path(&action), stored.object.clone()] {
                File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(used)
                    .unwrap();
            }
            (action, stored.object)
        }

        fn present(&self, action: &Id) -> bool {
            matches!(self.store.get(action), Lookup::Hit(_))
        }

        /// Scans, plans and removes, one subdirectory after the other.
        fn trim(&self, policy: Policy) -> Trimmed {
            let usage = self.store.scan(&policy);
            let plan = usage.plan(self.store.available_space_for(&policy).unwrap());
            Trimmed {
                plan,
                removed: self.store.remove_unused(&plan),
                temporaries: self
                    .store
                    .remove_stale_temporaries(STALE_TEMPORARY_AGE)
                    .unwrap(),
            }
        }
    }

    struct Trimmed {
        plan: Plan,
        removed: Tally,
        temporaries: Tally,
    }

    impl Store {
        fn scan(&self, policy: &Policy) -> Usage {
            self.scan_keeping(policy, 0)
        }

        fn scan_keeping(&self, policy: &Policy, largest: usize) -> Usage {
            let mut usage = self.usage(policy, largest);
            for prefix in 0..=255 {
                self.scan_subdirectory(prefix, &mut usage).unwrap();
            }
            usage
        }

        fn remove_unused(&self, plan: &Plan) -> Tally {
            let mut removed = Tally::default();
            for prefix in 0..=255 {
                removed += self.remove_unused_in(prefix, plan).unwrap();
            }
            removed
        }
    }

    fn policy(max_age: Duration, max_size: u64, grace: Duration) -> Policy {
        Policy {
            max_age,
            max_size,
            min_free: 0,
            grace,
        }
    }

    #[test]
    fn age_limit_removes_exactly_the_older_entries() {
        let f = Fixture::new();
        let ages = [HOUR / 2, 2 * HOUR, 2 * DAY, 10 * DAY, 40 * DAY];
        let entries: Vec<_> = (0..5)
            .map(|i| f.entry(i, 100, ages[usize::from(i)]))
            .collect();

        let usage = f.store.scan(&Policy::default());
        assert_eq!(usage.actions.files, 5);
        assert_eq!(usage.objects.files, 5);
        let by_age: Vec<u64> = usage.by_age.iter().map(|t| t.files).collect();
        assert_eq!(by_age, [2, 2, 2, 2, 2]);
        let plan = usage.plan(None);
        assert_eq!(plan.remove.files, 4);
        assert_eq!(plan.shortfall, 0);

        let report = f.trim(Policy::default());
        assert_eq!(report.removed, plan.remove);
        let kept: Vec<bool> = entries.iter().map(|(a, _)| f.present(a)).collect();
        assert_eq!(kept, [true, true, true, false, false]);
        assert!(!entries[3].1.exists() && !entries[4].1.exists());
    }

    #[test]
    fn size_limit_removes_least_recently_used_first() {
        let f = Fixture::new();
        // Entry i was last used i days ago: entry 9 is the least recent.
        let entries: Vec<_> = (0..10)
            .map(|i| f.entry(i, 10_000, DAY * u32::from(i) + 5 * HOUR))
            .collect();
        let total = f.store.scan(&Policy::default()).total();
        let max_size = total.bytes / 2;
        let limits = policy(Duration::MAX, max_size, DEFAULT_GRACE);

        let report = f.trim(limits);
        assert_eq!(report.plan.shortfall, 0);
        let after = f.store.scan(&limits).total();
        assert!(after.bytes <= max_size, "{after:?} > {max_size}");
        assert_eq!(after.bytes + report.removed.bytes, total.bytes);
        let kept: Vec<bool> = entries.iter().map(|(a, _)| f.present(a)).collect();
        let newest_removed = kept.iter().position(|k| !k).unwrap();
        assert!(newest_removed >= 4, "removed more than needed: {kept:?}");
        assert!(
            kept[newest_removed..].iter().all(|k| !k),
            "not LRU: {kept:?}"
        );
    }

    #[test]
    fn scans_of_parts_merge_into_the_scan_of_the_whole() {
        let f = Fixture::new();
        for i in 0..40 {
            f.entry(i, 100 * usize::from(i), DAY * u32::from(i % 9) + HOUR);
        }
        let policy = policy(3 * DAY, 50_000, DEFAULT_GRACE);
        let whole = f.store.scan_keeping(&policy, 5);
        let mut merged = f.store.usage(&policy, 5);
        for part in [0..=99, 100..=255] {
            let mut usage = f.store.usage(&policy, 5);
            for prefix in part {
                f.store.scan_subdirectory(prefix, &mut usage).unwrap();
            }
            merged.merge(usage);
        }
        assert_eq!(merged.total(), whole.total());
        assert_eq!(merged.by_age, whole.by_age);
        assert_eq!(merged.largest(), whole.largest());
        assert_eq!(merged.largest().len(), 5);
        assert_eq!(merged.plan(None), whole.plan(None));
        assert!(whole.plan(None).remove.files > 0);
    }

    #[test]
    fn nothing_used_within_the_grace_window_is_removed() {
        let f = Fixture::new();
        let recent = f.entry(1, 5000, 3 * HOUR);
        let old = f.entry(2, 5000, 5 * HOUR);
        let everything = policy(Duration::ZERO, 0, DEFAULT_GRACE);

        let report = f.trim(everything);
        assert_eq!(report.removed.files, 2);
        assert!(
            report.plan.shortfall > 0,
            "the limit wanted the recent entry too"
        );
        // Looking without a lookup, which would count as a use.
        assert!(recent.1.exists() && !old.1.exists());

        // Lifting the grace window lets the limits have their way.
        let report = f.trim(Policy {
            grace: Duration::ZERO,
            ..everything
        });
        assert_eq!((report.removed.files, report.plan.shortfall), (2, 0));
        assert!(!recent.1.exists());
    }

    #[test]
    fn free_space_floor_removes_what_the_file_system_lacks() {
        let f = Fixture::new();
        for i in 0..6 {
            f.entry(i, 20_000, DAY * u32::from(i) + 5 * HOUR);
        }
        let floor = Policy {
            max_age: Duration::MAX,
            min_free: 1_000_000,
            ..Policy::default()
        };
        let usage = f.store.scan(&floor);
        assert_eq!(usage.plan(Some(2_000_000)).remove.files, 0);
        let plan = usage.plan(Some(1_000_000 - 30_000));
        assert!(
            plan.remove.bytes >= 30_000 && plan.remove.files < 12,
            "{plan:?}"
        );
        assert_eq!(plan.shortfall, 0);
        let plan = usage.plan(Some(0));
        assert_eq!(plan.remove, usage.total());
        assert_eq!(plan.shortfall, 1_000_000 - usage.total().bytes);
    }

    #[test]
    fn an_entry_used_after_the_scan_is_kept() {
        let f = Fixture::new();
        let (used, _) = f.entry(1, 100, 10 * DAY);
        let (unused, _) = f.entry(2, 100, 10 * DAY);
        let usage = f.store.scan(&Policy::default());
        let plan = usage.plan(None);
        assert_eq!(plan.remove.files, 4);

        let Lookup::Hit(Hit { object, .. }) = f.store.get(&used) else {
            panic!("expected a hit")
        };
        let removed = f.store.remove_unused(&plan);
        assert_eq!(removed.files, 2);
        assert!(object.exists() && f.present(&used));
        assert!(!f.present(&unused));
    }

    #[test]
    fn a_lookup_waits_for_a_removal_in_progress_and_then_misses() {
        let f = Fixture::new();
        let (action, object) = f.entry(1, 100, 10 * DAY);
        // A trim is removing the object: it holds the use lock.
        let prefix = Id::of(&[1; 100]).0[0];
        let remover = f.store.use_lock(prefix).unwrap();
        remover.lock().unwrap();
        let store = f.store.clone();
        let (done, lookup) = std::sync::mpsc::channel();
        let looker = std::thread::spawn(move || done.send(store.get(&action)).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            lookup.try_recv().is_err(),
            "the lookup must wait for the removal, not hand out a file about to vanish"
        );
        fs::remove_file(&object).unwrap();
        drop(remover); // closing releases it on every platform
        looker.join().unwrap();
        assert!(matches!(
            lookup.recv().unwrap(),
            Lookup::Miss(crate::MissReason::NoObject)
        ));
    }

    #[test]
    fn trims_are_due_once_per_interval_and_bad_markers_make_them_due() {
        let f = Fixture::new();
        assert!(f.store.trim_due(DAY), "never trimmed");
        f.store.mark_trimmed().unwrap();
        assert_eq!(f.store.last_trim(), Some(f.now()));
        assert!(!f.store.trim_due(DAY));
        *f.now.lock().unwrap() += DAY - Duration::from_secs(1);
        assert!(!f.store.trim_due(DAY));
        *f.now.lock().unwrap() += Duration::from_secs(1);
        assert!(f.store.trim_due(DAY));

        let marker = f.store.dir().join(TRIM_MARKER);
        for garbage in [
            &b"yesterday\n"[..],
            b"",
            b"\xff\xfe",
            b"99999999999999999999999",
        ] {
            fs::write(&marker, garbage).unwrap();
            assert!(f.store.trim_due(DAY), "{garbage:?}");
        }
        let future = unix_seconds(f.now()) + 3600;
        fs::write(&marker, format!("{future}\n")).unwrap();
        assert!(f.store.trim_due(DAY), "a marker from the future");
        fs::remove_file(&marker).unwrap();
        fs::create_dir(&marker).unwrap();
        assert!(f.store.trim_due(DAY), "an unreadable marker");
    }

    #[test]
    fn one_automatic_trimmer_at_a_time() {
        let f = Fixture::new();
        let first = f.store.try_lock_trimmer().unwrap();
        assert!(first.is_some());
        assert!(f.store.try_lock_trimmer().unwrap().is_none());
        drop(first);
        assert!(f.store.try_lock_trimmer().unwrap().is_some());
    }

    #[test]
    fn executable_entries_go_whole_and_temporaries_are_cleaned() {
        let f = Fixture::new();
        let body = b"#!an executable";
        let dir = f.store.object_path(&Id::of(body));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tool"), body).unwrap();
        for path in [dir.join("tool"), dir.clone()] {
            let mut options = File::options();
            options.read(true);
            // Windows opens a directory only when asked to.
            #[cfg(windows)]
            std::os::windows::fs::OpenOptionsExt::custom_flags(&mut options, 0x0200_0000);
            let file = options.open(&path).unwrap();
            file.set_modified(f.now() - 9 * DAY).unwrap();
        }
        let orphan = f.store.tmp_dir().join(".put-orphan");
        fs::write(&orphan, b"half").unwrap();
        File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(f.now() - 2 * DAY)
            .unwrap();

        let report = f.trim(Policy::default());
        assert_eq!(report.removed.files, 1);
        assert!(!dir.exists());
        assert_eq!(report.temporaries.files, 1);
        assert!(!orphan.exists());
        assert!(
            f.store.try_lock_trimmer().unwrap().is_some(),
            "lock files stay"
        );
    }
}
