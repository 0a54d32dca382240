//! Looking entries up and publishing new ones.

use std::fs::{self, File, FileTimes};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use granary_id::Id;

use crate::walk::remove_in_place;
use crate::{ActionEntry, ENTRY_SIZE, EntryError, Tally};

/// Name of the directory, inside the cache directory, that holds files
/// being written. cmd/go neither reads nor cleans it.
pub const TMP_DIR_NAME: &str = "granary-tmp";

/// How stale a file's mtime must be before a use updates it (cmd/go's
/// `mtimeInterval`): one write per hour at most, not one per read.
const MTIME_INTERVAL: Duration = Duration::from_secs(3600);

/// The source of "now", replaceable in tests.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A cache directory in cmd/go's format.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    tmp: PathBuf,
    clock: Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// A failure to write to the store. Reads never fail: they miss.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the body's SHA-256 is {actual}, not its output ID {expected}")]
    HashMismatch { expected: Id, actual: Id },
    #[error("the body has {actual} bytes, not the {expected} announced")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(
        "{} is a directory but not a valid executable cache entry; remove it",
        path.display()
    )]
    BadExecutableEntry { path: PathBuf },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Hit),
    Miss(MissReason),
}

/// A usable entry: its record and the path of a regular file holding exactly
/// `entry.size` bytes.
#[derive(Debug, Clone)]
pub struct Hit {
    pub entry: ActionEntry,
    pub object: PathBuf,
}

/// Why a lookup missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// No action file: the ordinary miss.
    NoEntry,
    /// The action file exists but could not be read.
    Unreadable(ErrorKind),
    /// The action file is not a valid entry.
    CorruptEntry(EntryError),
    /// The entry names an object that does not exist.
    NoObject,
    /// The object exists with another size than its entry says: truncated,
    /// or being written in place by a native `go` process.
    ObjectSize { expected: u64, actual: u64 },
    /// The object path is a directory that is not a valid executable entry.
    BadExecutableEntry,
}

impl MissReason {
    /// Whether the miss reveals damaged cache contents rather than absence.
    pub fn is_corruption(&self) -> bool {
        !matches!(self, MissReason::NoEntry | MissReason::NoObject)
    }
}

/// The result of a put.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The regular file holding the output.
    pub object: PathBuf,
    /// Whether a valid object was already there and was kept as it was.
    pub reused: bool,
}

/// A body being written to a temporary file while it is hashed. Hand it to
/// [`Store::put`] to publish it; dropping it removes the temporary file.
#[derive(Debug)]
pub struct ObjectWriter {
    file: NamedTempFile,
    hasher: Sha256,
    len: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Store {
    /// Opens the cache directory `dir`, creating it if needed. Cheap: the
    /// 256 subdirectories are created when first written to.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store::at(dir);
        fs::create_dir_all(&store.tmp).map_err(io_error("create", &store.tmp))?;
        Ok(store)
    }

    /// The cache directory `dir`, without touching the file system: for
    /// commands that must not create anything. Writes create what they need.
    pub fn at(dir: impl Into<PathBuf>) -> Store {
        let dir = dir.into();
        Store {
            tmp: dir.join(TMP_DIR_NAME),
            dir,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Replaces the clock, for tests of time-dependent behaviour.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of files being written.
    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Now, by the store's clock.
    pub(crate) fn now(&self) -> SystemTime {
        (self.clock)()
    }

    pub(crate) fn io_error(&self, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + '_ {
        io_error(op, &self.dir)
    }

    /// Removes temporary files older than `max_age`: what a process killed
    /// in the middle of a put left behind, in the temporary directory and
    /// in the 256 subdirectories (a whole-cache walk, for trims). Younger
    /// ones may belong to a put in progress in another process. Returns how
    /// many files were removed and their length; files that vanish
    /// meanwhile are skipped.
    pub fn remove_stale_temporaries(&self, max_age: Duration) -> io::Result<Tally> {
        let mut removed = Tally::default();
        self.remove_stale_in(&self.tmp, max_age, &mut removed, |name| {
            !name.ends_with(".lock")
        })?;
        for prefix in 0..=u8::MAX {
            // Never through a link out of the cache.
            let Some(subdir) = self.subdir(prefix)? else {
                continue;
            };
            self.remove_stale_in(&subdir, max_age, &mut removed, |name| {
                name.starts_with(TEMP_PREFIX)
            })?;
        }
        Ok(removed)
    }

    fn remove_stale_in(
        &self,
        dir: &Path,
        max_age: Duration,
        removed: &mut Tally,
        temporary: impl Fn(&str) -> bool,
    ) -> io::Result<()> {
        let now = (self.clock)();
        let entries = match fs::read_dir(dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            if !entry.file_name().to_str().is_some_and(&temporary) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let stale = meta
                .modified()
                .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age >= max_age));
            if meta.is_file() && stale && remove_in_place(&entry.path(), false).is_ok() {
                removed.files += 1;
                removed.bytes += meta.len();
            }
        }
        Ok(())
    }

    /// The path of the action file for `action`.
    pub fn action_path(&self, action: &Id) -> PathBuf {
        self.entry_path(action, "a")
    }

    /// The path of the object file for `output`.
    pub fn object_path(&self, output: &Id) -> PathBuf {
        self.entry_path(output, "d")
    }

    fn entry_path(&self, id: &Id, suffix: &str) -> PathBuf {
        let hex = id.to_hex();
        let mut path = self.dir.join(&hex[..2]);
        path.push(format!("{hex}-{suffix}"));
        path
    }

    /// Looks up `action`. Marks the entry and its object used.
    pub fn get(&self, action: &Id) -> Lookup {
        let path = self.action_path(action);
        let (entry, mtime) = match read_entry(&path, action) {
            Ok(found) => found,
            Err(reason) => return Lookup::Miss(reason),
        };
        let now = (self.clock)();
        if needs_touch(mtime, now) {
            touch(&path, now);
        }
        let object = self.object_path(&entry.output_id);
        let (object, meta) = match fs::metadata(&object) {
            Ok(meta) if meta.is_dir() => match executable_in(&object) {
                Some(found) => found,
                None => return Lookup::Miss(MissReason::BadExecutableEntry),
            },
            Ok(meta) => (object, meta),
            Err(e) if e.kind() == ErrorKind::NotFound => return Lookup::Miss(MissReason::NoObject),
            Err(e) => return Lookup::Miss(MissReason::Unreadable(e.kind())),
        };
        if meta.len() != entry.size {
            return Lookup::Miss(MissReason::ObjectSize {
                expected: entry.size,
                actual: meta.len(),
            });
        }
        if !self.mark_used(&object, &entry.output_id, &meta, now) {
            // A trim removed it just now.
            return Lookup::Miss(MissReason::NoObject);
        }
        Lookup::Hit(Hit { entry, object })
    }

    /// Starts writing the body of `output`. Write all of it, then call
    /// [`Store::put`].
    pub fn object_writer(&self, output: &Id) -> Result<ObjectWriter, StoreError> {
        let file = self.temp_file_beside(&self.object_path(output))?;
        Ok(ObjectWriter {
            file,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Publishes a complete body as the output of `action`: checks its size
    /// and hash, renames it into place unless a valid copy is already there,
    /// then writes the action entry. Nothing is published on error.
    pub fn put(
        &self,
        action: &Id,
        body: ObjectWriter,
        output_id: Id,
        size: u64,
    ) -> Result<Stored, StoreError> {
        self.put_as_of(action, body, output_id, size, (self.clock)())
    }

    /// [`Store::put`] for an output first put at `put_time`, such as one
    /// fetched from another cache: the go command reads the put time to
    /// expire cached test results, so a copy must keep the original's.
    pub fn put_as_of(
        &self,
        action: &Id,
        body: ObjectWriter,
        output_id: Id,
        size: u64,
        put_time: SystemTime,
    ) -> Result<Stored, StoreError> {
        if body.len != size {
            return Err(StoreError::SizeMismatch {
                expected: size,
                actual: body.len,
            });
        }
        let actual = Id(body.hasher.finalize().into());
        if actual != output_id {
            return Err(StoreError::HashMismatch {
                expected: output_id,
                actual,
            });
        }
        let stored = self.publish_object(body.file, &output_id, size)?;
        let entry = ActionEntry {
            output_id,
            size,
            put_time,
        };
        self.publish_entry(action, &entry)?;
        Ok(stored)
    }

    /// Stores `body` as the output of `action`: [`Store::object_writer`] and
    /// [`Store::put`] in one call, for bodies already in memory.
    pub fn put_bytes(&self, action: &Id, body: &[u8]) -> Result<Stored, StoreError> {
        let output = Id::of(body);
        let mut writer = self.object_writer(&output)?;
        writer
            .write_all(body)
            .map_err(io_error("write to", writer.file.path()))?;
        self.put(action, writer, output, body.len() as u64)
    }

    fn publish_object(
        &self,
        file: NamedTempFile,
        output_id: &Id,
        size: u64,
    ) -> Result<Stored, StoreError> {
        let path = self.object_path(output_id);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                // `go run` caches executables as a directory holding one file;
                // such an entry can be used but not replaced by a file.
                return match executable_in(&path) {
                    Some((inner, meta)) if meta.len() == size && hash_of(&inner)? == *output_id => {
                        Ok(Stored {
                            object: inner,
                            reused: true,
                        })
                    }
                    _ => Err(StoreError::BadExecutableEntry { path }),
                };
            }
            Ok(meta)
                if meta.len() == size
                    && hash_of(&path)? == *output_id
                    && self.mark_used(&path, output_id, &meta, (self.clock)()) =>
            {
                return Ok(Stored {
                    object: path,
                    reused: true,
                });
            }
            _ => {}
        }
        self.rename_into_place(file, &path)?;
        Ok(Stored {
            object: path,
            reused: false,
        })
    }

    fn publish_entry(&self, action: &Id, entry: &ActionEntry) -> Result<(), StoreError> {
        let text = entry.encode(action);
        debug_assert_eq!(text.len(), ENTRY_SIZE);
        let path = self.action_path(action);
        let mut file = self.temp_file_beside(&path)?;
        file.write_all(text.as_bytes())
            .map_err(io_error("write to", file.path()))?;
        self.rename_into_place(file, &path)
    }

    /// Records a use of the object `output` at `path` (whose metadata is `meta`)
    /// before it is handed out, and returns whether it is still there.
    ///
    /// A recent mtime keeps the file from being trimmed, but bumping it is
    /// due only once an hour; a bump and a trim's removal exclude each other
    /// through the use lock, so that the object is either seen as used by
    /// the trim, or gone before this check looks (a miss, never a path to a
    /// file about to vanish).
    fn mark_used(&self, path: &Path, output: &Id, meta: &fs::Metadata, now: SystemTime) -> bool {
        if !meta.modified().is_ok_and(|m| needs_touch(m, now)) {
            return true;
        }
        // Without the lock file (a read-only cache) nobody can trim either.
        let lock = self.use_lock(output.0[0]).ok();
        let locked = lock.as_ref().is_some_and(|l| l.lock_shared().is_ok());
        touch(path, now);
        let present = fs::metadata(path).is_ok_and(|m| m.len() == meta.len());
        if locked && let Some(lock) = lock {
            let _ = lock.unlock();
        }
        present
    }

    /// A new file in the temporary directory, to be renamed into place.
    pub(crate) fn new_temp_file(&self) -> Result<NamedTempFile, StoreError> {
        self.retry_in_missing_dir(&self.tmp, || temp_file_in(&self.tmp))
            .map_err(io_error("create a temporary file in", &self.tmp))
    }

    /// A new file in the directory of `path`, to be renamed to `path`. A
    /// rename within one directory takes no file-system-wide lock, and the
    /// new files spread over the 256 subdirectories instead of contending
    /// for one: storing a fresh runner's prefetch (two files per entry)
    /// took a third of the kernel time this way.
    fn temp_file_beside(&self, path: &Path) -> Result<NamedTempFile, StoreError> {
        let dir = path.parent().unwrap_or(&self.dir);
        self.retry_in_missing_dir(dir, || temp_file_in(dir))
            .map_err(io_error("create a temporary file in", dir))
    }

    fn rename_into_place(&self, file: NamedTempFile, path: &Path) -> Result<(), StoreError> {
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        let mut file = Some(file);
        self.retry_in_missing_dir(&parent, || {
            retry_while_held_open(|| {
                let temp = file.take().expect("a rename attempt owns the file");
                temp.persist(path).map(drop).map_err(|e| {
                    file = Some(e.file);
                    e.error
                })
            })
        })
        .map_err(io_error("publish", path))
    }

    /// Runs `op`; if it fails because `dir` is missing (`go clean -cache`
    /// removes the subdirectories), creates `dir` and runs `op` once more.
    fn retry_in_missing_dir<T>(
        &self,
        dir: &Path,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(dir)?;
                op()
            }
            other => other,
        }
    }
}

/// How long a rename over a file another process holds open is retried:
/// cmd/go's own cache gives up after as long (`robustio`'s
/// `arbitraryTimeout`).
#[cfg(windows)]
const HELD_OPEN_FOR_AT_MOST: Duration = Duration::from_secs(2);

/// Runs `op` again while it fails because the file it replaces is open in
/// another process. Windows refuses to rename over a file opened without
/// `FILE_SHARE_DELETE`, which is how go opens the outputs it reads, so a
/// put racing a concurrent build's read would otherwise be lost. Elsewhere
/// a rename never fails so.
fn retry_while_held_open<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    #[cfg(windows)]
    {
        // ERROR_ACCESS_DENIED and ERROR_SHARING_VIOLATION, as robustio.
        let held_open = |e: &io::Error| matches!(e.raw_os_error(), Some(5 | 32));
        let give_up = std::time::Instant::now() + HELD_OPEN_FOR_AT_MOST;
        let mut pause = Duration::from_millis(1);
        loop {
            match op() {
                Err(e) if held_open(&e) && std::time::Instant::now() + pause < give_up => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }
    #[cfg(not(windows))]
    op()
}

/// Names of files being written start so; cmd/go ignores them.
const TEMP_PREFIX: &str = ".put-";

fn temp_file_in(dir: &Path) -> io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // Entries are shared with cmd/go, which creates them 0666 less umask.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir)
}

pub(crate) fn read_entry(
    path: &Path,
    action: &Id,
) -> Result<(ActionEntry, SystemTime), MissReason> {
    let unreadable = |e: io::Error| MissReason::Unreadable(e.kind());
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => MissReason::NoEntry,
        kind => MissReason::Unreadable(kind),
    })?;
    let meta = file.metadata().map_err(unreadable)?;
    let len = meta.len();
    if len != ENTRY_SIZE as u64 {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        return Err(MissReason::CorruptEntry(EntryError::WrongLength(len)));
    }
    let mut buf = [0u8; ENTRY_SIZE];
    file.read_exact(&mut buf).map_err(|e| match e.kind() {
        // Shrunk between the stat and the read.
        ErrorKind::UnexpectedEof => MissReason::CorruptEntry(EntryError::WrongLength(0)),
        kind => MissReason::Unreadable(kind),
    })?;
    let entry = ActionEntry::parse(&buf, action).map_err(MissReason::CorruptEntry)?;
    Ok((entry, meta.modified().map_err(unreadable)?))
}

/// The single file inside an executable cache entry, with its metadata.
pub(crate) fn executable_in(dir: &Path) -> Option<(PathBuf, fs::Metadata)> {
    let mut entries = fs::read_dir(dir).ok()?;
    let only = entries.next()?.ok()?;
    if entries.next().is_some() {
        return None;
    }
    let path = only.path();
    let meta = fs::symlink_metadata(&path)
        .ok()
        .filter(fs::Metadata::is_file)?;
    Some((path, meta))
}

fn hash_of(path: &Path) -> Result<Id, StoreError> {
    sha256_of(path).map_err(io_error("read", path))
}

pub(crate) fn sha256_of(path: &Path) -> io::Result<Id> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(Id(hasher.finalize().into()))
}

fn needs_touch(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime)
        .is_ok_and(|age| age >= MTIME_INTERVAL)
}

/// Marks a file used. Best effort, as in cmd/go: a file we may read but not
/// touch (another user's cache) is still usable.
fn touch(path: &Path, now: SystemTime) {
    let times = FileTimes::new().set_accessed(now).set_modified(now);
    let _ = File::options()
        .write(true)
        .open(path)
        .or_else(|_| File::open(path))
        .and_then(|f| f.set_times(times));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        (dir, store)
    }

    fn hit(store: &Store, action: &Id) -> Hit {
        match store.get(action) {
            Lookup::Hit(hit) => hit,
            Lookup::Miss(reason) => panic!("expected a hit, missed: {reason:?}"),
        }
    }

    fn miss(store: &Store, action: &Id) -> MissReason {
        match store.get(action) {
            Lookup::Hit(hit) => panic!("expected a miss, hit {hit:?}"),
            Lookup::Miss(reason) => reason,
        }
    }

    #[test]
    fn put_then_get() {
        let (_tmp, store) = store();
        let action = Id([1; 32]);
        let stored = store.put_bytes(&action, b"hello").unwrap();
        assert!(!stored.reused);
        let hit = hit(&store, &action);
        assert_eq!(hit.entry.output_id, Id::of(b"hello"));
        assert_eq!(hit.entry.size, 5);
        assert_eq!(hit.object, stored.object);
        assert_eq!(fs::read(&hit.object).unwrap(), b"hello");
        assert!(hit.object.is_absolute() || store.dir().is_relative());
        assert!(hit.object.extension().is_none());
    }

    #[test]
    fn empty_bodies_are_objects_too() {
        let (_tmp, store) = store();
        let action = Id([2; 32]);
        store.put_bytes(&action, b"").unwrap();
        let hit = hit(&store, &action);
        assert_eq!(hit.entry.size, 0);
        assert_eq!(fs::read(&hit.object).unwrap(), b"");
    }

    #[cfg(unix)] // compares inodes
    #[test]
    fn a_valid_object_is_not_rewritten_but_a_damaged_one_is() {
        let (_tmp, store) = store();
        let first = store.put_bytes(&Id([1; 32]), b"shared").unwrap();
        let inode = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(p).unwrap().ino()
        };
        let before = inode(&first.object);
        let again = store.put_bytes(&Id([2; 32]), b"shared").unwrap();
        assert!(again.reused);
        assert_eq!(inode(&again.object), before);

        // Same size, flipped byte: the object is replaced.
        fs::write(&first.object, b"sharex").unwrap();
        let repaired = store.put_bytes(&Id([3; 32]), b"shared").unwrap();
        assert!(!repaired.reused);
        assert_eq!(fs::read(&repaired.object).unwrap(), b"shared");
    }

    #[test]
    fn wrong_hash_or_size_publishes_nothing() {
        let (_tmp, store) = store();
        let action = Id([4; 32]);
        let mut w = store.object_writer(&Id::of(b"abd")).unwrap();
        w.write_all(b"abc").unwrap();
        let err = store.put(&action, w, Id::of(b"abd"), 3).unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        let mut w = store.object_writer(&Id::of(b"abc")).unwrap();
        w.write_all(b"abc").unwrap();
        let err = store.put(&action, w, Id::of(b"abc"), 4).unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
        assert_eq!(miss(&store, &action), MissReason::NoEntry);
        assert!(!store.object_path(&Id::of(b"abc")).exists());
        // The refused bodies' temporary files are gone too.
        let left: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .flat_map(|dir| fs::read_dir(dir.unwrap().path()).unwrap())
            .map(|file| file.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn damaged_entries_are_misses() {
        let (_tmp, store) = store();
        let action = Id([5; 32]);
        let stored = store.put_bytes(&action, b"0123456789").unwrap();

        fs::write(&stored.object, b"01234").unwrap();
        assert_eq!(
            miss(&store, &action),
            MissReason::ObjectSize {
                expected: 10,
                actual: 5
            }
        );
        fs::remove_file(&stored.object).unwrap();
        assert_eq!(miss(&store, &action), MissReason::NoObject);

        let entry = store.action_path(&action);
        fs::write(&entry, b"v1 garbage\n").unwrap();
        assert_eq!(
            miss(&store, &action),
            MissReason::CorruptEntry(EntryError::WrongLength(11))
        );
        assert!(miss(&store, &action).is_corruption());
        fs::write(&entry, vec![b'x'; 4096]).unwrap();
        assert!(matches!(
            miss(&store, &action),
            MissReason::CorruptEntry(EntryError::WrongLength(_))
        ));
    }

    /// What `go clean -cache` does: removes the 256 subdirectories.
    fn go_clean_cache(store: &Store) {
        for dir in fs::read_dir(store.dir()).unwrap() {
            let dir = dir.unwrap().path();
            if dir.file_name().unwrap().len() == 2 {
                fs::remove_dir_all(dir).unwrap();
            }
        }
    }

    #[test]
    fn survives_go_clean_cache_removing_subdirectories() {
        let (_tmp, store) = store();
        store.put_bytes(&Id([6; 32]), b"x").unwrap();
        go_clean_cache(&store);
        assert_eq!(miss(&store, &Id([6; 32])), MissReason::NoEntry);
        store.put_bytes(&Id([6; 32]), b"x").unwrap();
        hit(&store, &Id([6; 32]));
    }

    /// In the middle of a put, the half-written body goes with its
    /// directory: the put fails, saying what it could not do, and leaves
    /// nothing behind; the next put of it works. (Windows removes no
    /// directory holding an open file: there `go clean` fails instead.)
    #[cfg(unix)]
    #[test]
    fn a_put_cut_short_by_go_clean_cache_fails_and_leaves_nothing() {
        let (_tmp, store) = store();
        let (action, body) = (Id([7; 32]), b"written while go clean ran");
        let output = Id::of(body);
        let mut writer = store.object_writer(&output).unwrap();
        writer.write_all(&body[..10]).unwrap();
        go_clean_cache(&store);
        writer.write_all(&body[10..]).unwrap();
        let e = store
            .put(&action, writer, output, body.len() as u64)
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot publish"), "{e}");
        assert_eq!(miss(&store, &action), MissReason::NoEntry);
        let left = store.remove_stale_temporaries(Duration::ZERO).unwrap();
        assert_eq!(left, Tally::default());
        store.put_bytes(&action, body).unwrap();
        assert_eq!(fs::read(hit(&store, &action).object).unwrap(), body);
    }

    #[test]
    fn put_time_survives_and_mtime_moves_at_most_hourly() {
        let (_tmp, store) = store();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = Arc::new(Mutex::new(start));
        let clock = now.clone();
        let store = store.with_clock(Arc::new(move || *clock.lock().unwrap()));
        let action = Id([7; 32]);
        let stored = store.put_bytes(&action, b"data").unwrap();
        let entry = store.action_path(&action);
        let set_mtime = |p: &Path, t: SystemTime| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        set_mtime(&entry, start);
        set_mtime(&stored.object, start);

        *now.lock().unwrap() = start + Duration::from_secs(59 * 60);
        assert_eq!(hit(&store, &action).entry.put_time, start);
        assert_eq!(mtime(&entry), start, "used within the hour: untouched");
        assert_eq!(mtime(&stored.object), start);

        let later = start + Duration::from_secs(2 * 3600);
        *now.lock().unwrap() = later;
        assert_eq!(hit(&store, &action).entry.put_time, start);
        assert_eq!(mtime(&entry), later);
        assert_eq!(mtime(&stored.object), later);
    }

    #[test]
    fn a_copy_keeps_the_original_put_time() {
        let (_tmp, store) = store();
        let action = Id([8; 32]);
        let original = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut body = store.object_writer(&Id::of(b"fetched")).unwrap();
        body.write_all(b"fetched").unwrap();
        store
            .put_as_of(&action, body, Id::of(b"fetched"), 7, original)
            .unwrap();
        assert_eq!(hit(&store, &action).entry.put_time, original);
    }

    #[test]
    fn only_stale_temporaries_are_removed() {
        let (_tmp, store) = store();
        let now = Arc::new(Mutex::new(SystemTime::now()));
        let clock = now.clone();
        let store = store.with_clock(Arc::new(move || *clock.lock().unwrap()));
        let tmp = store.dir().join(TMP_DIR_NAME);
        fs::write(tmp.join(".put-orphan"), b"half a body").unwrap();
        // Left beside the entries by a killed put, and an entry that is no
        // temporary file however old.
        let subdir = store.dir().join("ab");
        fs::create_dir_all(&subdir).unwrap();
        fs::write(subdir.join(".put-orphan2"), b"half").unwrap();
        store.put_bytes(&Id([0xab; 32]), b"kept").unwrap();
        // A put in progress in this process.
        let mut in_progress = store.object_writer(&Id::of(b"being written")).unwrap();
        in_progress.write_all(b"being written").unwrap();

        assert_eq!(
            store
                .remove_stale_temporaries(Duration::from_secs(3600))
                .unwrap(),
            Tally::default()
        );
        *now.lock().unwrap() += Duration::from_secs(2 * 3600);
        File::options()
            .write(true)
            .open(in_progress.file.path())
            .unwrap()
            .set_modified(*now.lock().unwrap())
            .unwrap();
        assert_eq!(
            store
                .remove_stale_temporaries(Duration::from_secs(3600))
                .unwrap(),
            Tally {
                files: 2,
                bytes: 15
            }
        );
        assert!(in_progress.file.path().exists());
        assert!(!subdir.join(".put-orphan2").exists());
        assert_eq!(hit(&store, &Id([0xab; 32])).entry.size, 4);
        store
            .put(&Id([1; 32]), in_progress, Id::of(b"being written"), 13)
            .unwrap();
    }

    #[test]
    fn reads_gos_executable_cache_entries() {
        let (_tmp, store) = store();
        let action = Id([8; 32]);
        let body = b"#!fake executable";
        let output = Id::of(body);
        let dir = store.object_path(&output);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hello"), body).unwrap();
        let entry = ActionEntry {
            output_id: output,
            size: body.len() as u64,
            put_time: SystemTime::now(),
        };
        let entry_path = store.action_path(&action);
        fs::create_dir_all(entry_path.parent().unwrap()).unwrap();
        fs::write(&entry_path, entry.encode(&action)).unwrap();
        assert_eq!(hit(&store, &action).object, dir.join("hello"));
        let stored = store.put_bytes(&Id([9; 32]), body).unwrap();
        assert!(stored.reused);
        assert_eq!(stored.object, dir.join("hello"));
    }
}

/// The race of `four_concurrent_builds_share_one_directory` (tests of the
/// binary), many times over in one process: several helpers put one entry
/// at once, while a native go command writes it the way cmd/go does (the
/// action line in place, then a truncate; the object in place, its last
/// byte last) and lookups read it. Whatever the interleaving, a lookup
/// never hands out a wrong or short object, and once the writers are done
/// the entry is a hit.
#[cfg(all(test, unix))]
mod races {
    use std::os::unix::fs::FileExt;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// cmd/go's DiskCache.putIndexEntry and copyFile, reduced to their
    /// writes.
    fn native_put(store: &Store, action: &Id, body: &[u8]) {
        let output = Id::of(body);
        let object = store.object_path(&output);
        let _ = fs::create_dir_all(object.parent().unwrap());
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&object)
            .unwrap();
        file.write_all_at(&body[..body.len() - 1], 0).unwrap();
        file.write_all_at(&body[body.len() - 1..], body.len() as u64 - 1)
            .unwrap();
        let entry = ActionEntry {
            output_id: output,
            size: body.len() as u64,
            put_time: SystemTime::now(),
        };
        let path = store.action_path(action);
        let _ = fs::create_dir_all(path.parent().unwrap());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let line = entry.encode(action);
        file.write_all(line.as_bytes()).unwrap();
        file.set_len(line.len() as u64).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_entry_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let output = Id::of(&body);
        for round in 0..100u32 {
            let action = Id(Sha256::digest(round.to_be_bytes()).into());
            let writers = 5;
            let start = Barrier::new(writers + 2);
            let done = AtomicBool::new(false);
            std::thread::scope(|scope| {
                for writer in 0..writers {
                    let (store, start, body) = (&store, &start, &body);
                    scope.spawn(move || {
                        start.wait();
                        match writer {
                            0 => native_put(store, &action, body),
                            _ => {
                                store.put_bytes(&action, body).unwrap();
                            }
                        }
                    });
                }
                for _ in 0..2 {
                    let (store, start, done, body) = (&store, &start, &done, &body);
                    scope.spawn(move || {
                        start.wait();
                        while !done.load(Ordering::Relaxed) {
                            if let Lookup::Hit(hit) = store.get(&action) {
                                assert_eq!(hit.entry.output_id, output);
                                let read = fs::read(&hit.object).unwrap();
                                assert!(
                                    read.len() == body.len(),
                                    "round {round}: a hit with {} of {} bytes",
                                    read.len(),
                                    body.len()
                                );
                            }
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
                // The writers end on their own; then the readers stop.
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    done.store(true, Ordering::Relaxed);
                });
            });
            match store.get(&action) {
                Lookup::Hit(hit) => {
                    assert_eq!(fs::read(&hit.object).unwrap(), body, "round {round}");
                }
                Lookup::Miss(reason) => panic!("round {round}: lost the entry: {reason:?}"),
            }
        }
    }
}

/// What Windows does differently: go opens the outputs it reads without
/// `FILE_SHARE_DELETE`, and Windows refuses to rename over such a file;
/// paths may be longer than `MAX_PATH` (260).
#[cfg(all(test, windows))]
mod windows {
    use std::os::windows::fs::OpenOptionsExt;
    use std::time::Instant;

    use super::*;

    /// How go's `os.Open` shares a file: reads and writes, not deletion.
    const FILE_SHARE_READ_WRITE: u32 = 0x1 | 0x2;

    fn hold(path: &Path) -> File {
        File::options()
            .read(true)
            .share_mode(FILE_SHARE_READ_WRITE)
            .open(path)
            .unwrap()
    }

    /// A store holding an entry of `action` whose output is "first".
    fn store_with(action: &Id) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        store.put_bytes(action, b"first").unwrap();
        (dir, store)
    }

    fn output_of(store: &Store, action: &Id) -> Id {
        match store.get(action) {
            Lookup::Hit(hit) => hit.entry.output_id,
            Lookup::Miss(reason) => panic!("a miss: {reason:?}"),
        }
    }

    #[test]
    fn a_put_over_an_entry_held_open_waits_for_its_reader() {
        let action = Id([7; 32]);
        let (_dir, store) = store_with(&action);
        let held = hold(&store.action_path(&action));
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let started = Instant::now();
        store.put_bytes(&action, b"second").unwrap();
        let waited = started.elapsed();
        reader.join().unwrap();
        assert!(
            waited >= Duration::from_millis(250),
            "the rename did not wait for the reader ({waited:?}): was the file not held?"
        );
        assert_eq!(output_of(&store, &action), Id::of(b"second"));
    }

    #[test]
    fn a_put_over_an_entry_held_open_for_good_gives_up_and_keeps_the_old_one() {
        let action = Id([8; 32]);
        let (_dir, store) = store_with(&action);
        let _held = hold(&store.action_path(&action));
        let started = Instant::now();
        let refused = store.put_bytes(&action, b"second").unwrap_err();
        let waited = started.elapsed();
        assert!(
            (HELD_OPEN_FOR_AT_MOST / 2..HELD_OPEN_FOR_AT_MOST * 2).contains(&waited),
            "gave up after {waited:?}"
        );
        assert!(refused.to_string().contains("publish"), "{refused}");
        assert_eq!(output_of(&store, &action), Id::of(b"first"));
    }

    #[test]
    fn a_cache_deeper_than_max_path_works() {
        let dir = tempfile::tempdir().unwrap();
        let deep = (0..12).fold(dir.path().to_owned(), |path, level| {
            path.join(format!("{level:02}-{}", "d".repeat(20)))
        });
        assert!(deep.as_os_str().len() > 260, "{}", deep.display());
        let store = Store::open(&deep).unwrap();
        let action = Id([9; 32]);
        store.put_bytes(&action, b"deep").unwrap();
        let Lookup::Hit(hit) = store.get(&action) else {
            panic!("a miss in {}", deep.display())
        };
        assert_eq!(fs::read(&hit.object).unwrap(), b"deep");
    }
}
