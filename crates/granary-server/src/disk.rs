//! The server's disk tier: blobs in files, an index in memory, uploads that
//! readers can follow while they arrive, and eviction in the background.
//!
//! ```text
//! <dir>/ac/<xx>/<hex>                action results
//! <dir>/cas/<xx>/<hex>               CAS blobs stored as they are
//! <dir>/cas/<xx>/<hex>.<size>.zst    CAS blobs of <size> bytes, as one zstd frame
//! <dir>/tmp/                         uploads in progress; emptied at start-up
//! <dir>/lock                         held while a server uses the directory
//! ```
//!
//! A blob is written to a temporary file, checked, compressed if that
//! saves at least a block of disk (see [`compress_file`]), and renamed
//! into place, so a file under `ac/` or `cas/` is always complete: after a
//! crash the index is rebuilt from names and sizes alone, without reading
//! contents. Blobs a server stored plain before it compressed (or that
//! did not shrink) stay readable; [`Disk::compress_forever`] converts the
//! former in the background, so an old directory needs no flag day.
//! The mtime of a blob is when it was last used (bumped at most once an
//! hour), so least-recently-used order survives restarts.
//!
//! One mutex guards the index. It is held for map operations and for the
//! renames that must not interleave with them, never for reads or writes
//! of contents, nor for the evictor's unlinks (a publish of a key being
//! evicted waits for its unlink instead).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, watch};

use crate::kept::Kept;
use crate::key::{Key, Kind};
use crate::table::Table;

/// How often a blob's mtime is bumped at most when it is used.
const TOUCH_INTERVAL: Duration = Duration::from_secs(3600);
/// Blobs the evictor takes out of the index per hold of its lock (their
/// files are unlinked with the lock let go).
const EVICT_BATCH: usize = 64;
/// Blobs looked at per hold of the index lock by a scan of all of them
/// (a few hundred microseconds).
const SCAN_CHUNK: usize = 16 * 1024;
/// The unit of disk space: sizes count whole blocks, as `du` does.
const BLOCK: u64 = 4096;
/// The zstd level of stored blobs. On the outputs of `go build std` and
/// `go vet std` (`bench/compression.py`), level 1 takes 3.81x less disk at
/// 246 MB/s a core, level 3 3.94x at 128 MB/s: 3% more disk for half the
/// CPU of every upload.
pub const STORE_LEVEL: i32 = 1;
/// Bytes of a blob compressed first, to see whether it shrinks.
const SAMPLE: u64 = 256 * 1024;
/// CAS blobs stored in fewer bytes are kept in memory too, within
/// [`Limits::memory`]. Served from a file, a 1 KB GET cost four system
/// calls (open, statx, pread, close) beside the request's own two, and
/// 13% of the server's CPU (`bench/http_floor.py`, perf and strace -c).
/// A CAS blob never changes under its key, so a kept copy needs no
/// invalidation; only its stored form may change (compressed later by
/// [`Disk::compress_forever`]), and its length tells which it is. Action
/// results can be replaced under their key: they are always read.
pub const KEPT_BELOW: u64 = 16 * 1024;

/// What a blob of `len` bytes takes on disk: whole blocks, and at least
/// one, for its inode, so that many empty blobs weigh as they do on disk.
fn on_disk(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// Size limits of the disk tier, counted in whole blocks of 4 KiB, at
/// least one a blob.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Above this, the evictor removes least recently used blobs...
    pub max_size: u64,
    /// ...until the total is at most this.
    pub low_watermark: u64,
    /// Writes that would take the total above this are refused.
    pub hard_limit: u64,
    /// The largest blob accepted.
    pub max_blob: u64,
    /// Bytes of small CAS blobs also kept in memory (see [`KEPT_BELOW`]).
    pub memory: u64,
}

/// The disk tier.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    limits: Limits,
    index: Mutex<Index>,
    /// Wakes the evictor.
    pressure: Notify,
    /// Shared with the metrics, which expose them as they are.
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    /// Small CAS blobs as stored, and how many reads they answered.
    kept: Kept,
    pub kept_reads: Counter,
    temp_names: AtomicU64,
    /// Held while the server runs: two servers on one directory would
    /// each evict what the other counts.
    _lock: File,
}

#[derive(Debug, Default)]
struct Index {
    blobs: Table<Meta>,
    /// Responses reading each blob now, by key: the evictor leaves these
    /// alone. Apart from `blobs`, which would otherwise carry a count in
    /// every entry for the few being read.
    pinned: HashMap<Key, u32>,
    /// Blobs the evictor has taken out of `blobs` and is unlinking now,
    /// without the lock: a publish of one of them waits until its old file
    /// is gone, so that the unlink cannot take the new one.
    evicting: HashSet<Key>,
    /// Disk space of the blobs in `blobs` (see [`on_disk`]).
    bytes: u64,
    /// How many of them are action results (counting them on demand
    /// would hold the lock for milliseconds with a million blobs).
    ac_blobs: u64,
    /// Disk space taken by uploads in progress: what they have written,
    /// never what they announced.
    reserved: u64,
    /// Disk space that refused writes needed since the last eviction: the
    /// evictor frees it, so that a refusal is temporary. A refused upload
    /// asks for what it had received and the bytes it was refused, so no
    /// client can make the server evict more than it sends; one retried
    /// gets further each time, until it fits.
    wanted: u64,
    /// Uploads that readers can follow, one per key.
    uploads: HashMap<Key, Arc<Upload>>,
    /// Space stored and taken when the file system last said it was full,
    /// below `--hard-limit`: the limits are lowered to fit under it.
    filled_at: Option<u64>,
}

impl Index {
    /// Adds or replaces a blob, keeping the totals; the replaced entry.
    fn insert(&mut self, key: Key, meta: Meta) -> Option<Meta> {
        self.bytes += on_disk(meta.stored);
        let replaced = self.blobs.insert(key, meta);
        match replaced {
            Some(old) => self.bytes -= on_disk(old.stored),
            None if key.kind == Kind::Ac => self.ac_blobs += 1,
            None => {}
        }
        replaced
    }

    /// The space stored, taken and asked for.
    fn demand(&self) -> u64 {
        self.bytes + self.reserved + self.wanted
    }

    /// The limits in force: `configured`, or, once the file system has
    /// filled below them, the same limits scaled down to what it held
    /// then. The server cannot keep more than the disk holds; evicting down
    /// to what fits keeps it taking new blobs where it would otherwise
    /// refuse every write until someone freed the disk. Lowered until a
    /// restart.
    fn limits(&self, configured: &Limits) -> Limits {
        let Some(filled_at) = self.filled_at else {
            return *configured;
        };
        let hard_limit = configured.hard_limit.min(filled_at);
        let scaled = |limit: u64| {
            let scaled = u128::from(limit) * u128::from(hard_limit)
                / u128::from(configured.hard_limit.max(1));
            scaled as u64
        };
        Limits {
            max_size: scaled(configured.max_size),
            low_watermark: scaled(configured.low_watermark),
            hard_limit,
            max_blob: configured.max_blob,
            memory: configured.memory,
        }
    }

    /// Takes `more` space for an upload that holds `held` already, or
    /// refuses it if the total would pass the hard limit: then the evictor
    /// is to free what the upload has sent.
    fn make_room(
        &mut self,
        more: u64,
        held: u64,
        configured: &Limits,
        pressure: &Notify,
    ) -> Result<(), Refusal> {
        let limits = self.limits(configured);
        let used = self.bytes + self.reserved;
        if used.saturating_add(more) > limits.hard_limit {
            let sent = held.saturating_add(more);
            // Room for what can never fit is not worth evicting for.
            if sent <= limits.hard_limit {
                self.wanted = self.wanted.max(sent);
            }
            pressure.notify_one();
            return Err(Refusal::Full {
                used,
                limit: limits.hard_limit,
            });
        }
        self.reserved += more;
        Ok(())
    }

    fn remove(&mut self, key: &Key) -> Option<Meta> {
        let meta = self.blobs.remove(key)?;
        self.bytes -= on_disk(meta.stored);
        if key.kind == Kind::Ac {
            self.ac_blobs -= 1;
        }
        Some(meta)
    }
}

/// What the index knows of a blob: 24 bytes, so that an entry with its
/// key takes 64 (see [`Table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The blob's length.
    size: u64,
    /// Its file's length: `size` for a blob stored as it is, less for one
    /// stored compressed.
    stored: u64,
    /// Last use, in seconds since the epoch (until 2106): least recently
    /// used order needs no finer clock.
    used: u32,
    /// When the file's mtime was last set, in the same unit.
    touched: u32,
}

impl Meta {
    fn compressed(&self) -> bool {
        self.stored != self.size
    }

    /// Records a use at `now`; whether the file's mtime is due a bump.
    fn use_at(&mut self, now: u32) -> bool {
        self.used = now;
        let touch = u64::from(now.saturating_sub(self.touched)) > TOUCH_INTERVAL.as_secs();
        if touch {
            self.touched = now;
        }
        touch
    }
}

/// Counts of the index, for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: u64,
    pub reserved: u64,
    pub ac_blobs: u64,
    pub cas_blobs: u64,
    pub uploads: u64,
    pub evicted: u64,
    pub evicted_bytes: u64,
    /// Bytes of small blobs kept in memory.
    pub kept: u64,
}

/// What the index was rebuilt from at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    pub blobs: u64,
    pub bytes: u64,
    pub took: Duration,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the blob is larger than the server's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "the cache is full: {used} bytes stored or promised, hard limit {limit}; \
         room is being freed, try again in a second"
    )]
    Full { used: u64, limit: u64 },
    #[error("cannot write the blob: {0}")]
    Io(#[from] io::Error),
}

/// The progress of an upload, as readers following it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in the temporary file that readers may read.
    pub written: u64,
    pub state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Fetching from the backing store; whether the blob exists is not known yet.
    Asking,
    Writing,
    /// Complete and published.
    Done,
    /// Refused or abandoned: readers must fail their responses.
    Failed,
    /// The backing store has no such blob.
    Missing,
}

/// An upload in progress that readers can follow.
#[derive(Debug)]
pub struct Upload {
    key: Key,
    temp: PathBuf,
    /// The blob's size, when the writer announced it.
    pub expected: Option<u64>,
    progress: watch::Sender<Progress>,
}

impl Upload {
    pub fn key(&self) -> Key {
        self.key
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The file the upload writes, opened for reading. Once the upload is
    /// published or abandoned, it is gone: look the key up again.
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.temp)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    /// A complete blob, pinned against eviction while the value lives.
    Blob(Blob),
    /// An upload in progress.
    Upload(Arc<Upload>),
    Missing,
}

/// What starting a fetch gave.
#[derive(Debug)]
pub enum Begun {
    /// This caller writes the blob.
    Writer(Writer),
    /// Someone else already does: follow them.
    Following(Arc<Upload>),
}

/// A complete blob, open for reading and safe from eviction.
#[derive(Debug)]
pub struct Blob {
    /// The blob, or one zstd frame of it if [`Blob::compressed`].
    pub stored_in: Stored,
    /// The blob's length.
    pub size: u64,
    /// Its stored length: the file's, or the copy's in memory.
    pub stored: u64,
    /// `None` for a copy in memory, which eviction cannot take away.
    pub pin: Option<Pin>,
}

impl Blob {
    /// Whether the file is a zstd frame of the blob (only then are the
    /// lengths different).
    pub fn compressed(&self) -> bool {
        self.stored != self.size
    }

    /// A reader of the blob's bytes from the start, decoded if it is
    /// stored compressed.
    pub fn reader(&self) -> io::Result<Box<dyn io::Read + '_>> {
        let stored: Box<dyn io::Read> = match &self.stored_in {
            Stored::File(file) => {
                io::Seek::rewind(&mut &*file)?;
                Box::new(file)
            }
            Stored::Memory(bytes) => Box::new(&bytes[..]),
        };
        Ok(match self.compressed() {
            false => stored,
            true => Box::new(zstd::stream::read::Decoder::new(stored)?),
        })
    }

    /// The whole blob, decoded. Blocking.
    pub fn read_all(&self) -> io::Result<Bytes> {
        if !self.compressed() {
            return self.read_stored();
        }
        // The size comes from the file's name: grown as read, not
        // allocated on its word.
        let mut bytes = Vec::with_capacity(self.size.min(self.stored * 8) as usize);
        io::Read::read_to_end(&mut io::Read::take(self.reader()?, self.size), &mut bytes)?;
        if bytes.len() as u64 != self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} bytes of {}", bytes.len(), self.size),
            ));
        }
        Ok(bytes.into())
    }

    /// The bytes as stored: the zstd frame of a compressed blob. Blocking.
    pub fn read_stored(&self) -> io::Result<Bytes> {
        match &self.stored_in {
            Stored::File(file) => read_start(file, self.stored).map(Bytes::from),
            Stored::Memory(bytes) => Ok(bytes.clone()),
        }
    }
}

/// Where a blob's stored bytes are.
#[derive(Debug)]
pub enum Stored {
    File(File),
    /// A small CAS blob kept in memory (see [`KEPT_BELOW`]).
    Memory(Bytes),
}

/// The first `length` bytes of `file`, wherever its cursor is: one read
/// for a small blob, as a GET of one needs. Blocking.
fn read_start(file: &File, length: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; length as usize];
    #[cfg(unix)]
    std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, 0)?;
    #[cfg(not(unix))]
    {
        io::Seek::rewind(&mut &*file)?;
        io::Read::read_exact(&mut &*file, &mut bytes)?;
    }
    Ok(bytes)
}

/// Keeps a blob from eviction while it lives.
#[derive(Debug)]
pub struct Pin {
    disk: Arc<Disk>,
    key: Key,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut index = self.disk.lock();
        if let Some(readers) = index.pinned.get_mut(&self.key) {
            *readers -= 1;
            if *readers == 0 {
                index.pinned.remove(&self.key);
            }
        }
    }
}

impl Disk {
    /// Opens the cache in `dir`, creating it if needed, and rebuilds the
    /// index from the files there.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<(Arc<Disk>, Rebuilt)> {
        let started = Instant::now();
        fs::create_dir_all(dir.join("tmp"))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another granary serve uses {}; give each server its own --dir",
                    dir.display()
                ),
            ),
            fs::TryLockError::Error(e) => e,
        })?;
        // Uploads cut short by a crash: never published, never to be.
        for entry in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        for kind in [Kind::Ac, Kind::Cas] {
            for shard in 0..=255u8 {
                fs::create_dir_all(dir.join(kind.name()).join(hex::encode([shard])))?;
            }
        }
        let blobs = Table::from_entries(scan(dir)?, |key, kept, other| {
            // A blob both plain and compressed: a conversion was cut short
            // after its rename. The compressed file is complete; keep it.
            let dropped = match other.compressed() {
                true => std::mem::replace(kept, other),
                false => other,
            };
            let _ = fs::remove_file(file_path(dir, key, &dropped));
        });
        let index = Index {
            bytes: blobs.iter().map(|(_, meta)| on_disk(meta.stored)).sum(),
            ac_blobs: blobs.iter().filter(|(key, _)| key.kind == Kind::Ac).count() as u64,
            blobs,
            ..Index::default()
        };
        let rebuilt = Rebuilt {
            blobs: index.blobs.len() as u64,
            bytes: index.bytes,
            took: started.elapsed(),
        };
        let disk = Arc::new(Disk {
            dir: dir.to_owned(),
            limits,
            index: Mutex::new(index),
            pressure: Notify::new(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            kept: Kept::new(limits.memory, 2 * BLOCK),
            kept_reads: Counter::default(),
            temp_names: AtomicU64::new(0),
            _lock: lock,
        });
        Ok((disk, rebuilt))
    }

    /// The limits in force (see [`Index::limits`]).
    pub fn limits(&self) -> Limits {
        self.lock().limits(&self.limits)
    }

    /// The file system said it was full: lowers the limits to fit under
    /// what is stored and taken now, and wakes the evictor.
    fn filled(&self) {
        let mut index = self.lock();
        let used = index.bytes + index.reserved;
        if used >= self.limits.hard_limit || index.filled_at.is_some_and(|at| at <= used) {
            return;
        }
        index.filled_at = Some(used);
        let lowered = index.limits(&self.limits);
        drop(index);
        tracing::warn!(
            "the file system of {} is full with {used} bytes in the cache, below --hard-limit {}: \
             the server keeps at most {} bytes until it restarts; give it room or lower \
             --max-size",
            self.dir.display(),
            self.limits.hard_limit,
            lowered.max_size,
        );
        self.pressure.notify_one();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves plain counters behind, never
        // a half-done file operation worth refusing service for.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the blob of `key`, described by `meta`, is stored.
    fn file_path(&self, key: &Key, meta: &Meta) -> PathBuf {
        file_path(&self.dir, key, meta)
    }

    pub fn usage(&self) -> Usage {
        let index = self.lock();
        Usage {
            bytes: index.bytes,
            reserved: index.reserved,
            ac_blobs: index.ac_blobs,
            cas_blobs: index.blobs.len() as u64 - index.ac_blobs,
            uploads: index.uploads.len() as u64,
            evicted: self.evictions.get(),
            evicted_bytes: self.evicted_bytes.get(),
            kept: self.kept.weight(),
        }
    }

    /// Whether `key` is stored, without counting as a use.
    pub fn contains(&self, key: &Key) -> Option<u64> {
        self.lock().blobs.get(key).map(|meta| meta.size)
    }

    /// Whether `key` is stored as a zstd frame of the blob (false if it
    /// is not stored).
    #[cfg(target_os = "linux")]
    pub fn is_compressed(&self, key: &Key) -> bool {
        self.lock()
            .blobs
            .get(key)
            .is_some_and(|meta| meta.stored != meta.size)
    }

    /// Finds `key`: a complete blob (opened, pinned, its use recorded), an
    /// upload in progress, or nothing.
    pub fn find(self: &Arc<Self>, key: &Key) -> Found {
        // A blob replaced between the index and its file (a plain file
        // by its compressed form) is looked up once more.
        self.find_once(key)
            .or_else(|| self.find_once(key))
            .unwrap_or(Found::Missing)
    }

    /// The copy of `key` kept in memory, if it is the form stored now.
    fn kept_copy(&self, key: &Key, stored: u64) -> Option<Bytes> {
        if !kept_in_memory(key, stored) {
            return None;
        }
        self.kept
            .get(&key.hash)
            .filter(|bytes| bytes.len() as u64 == stored)
    }

    /// [`Disk::find`], or `None` if the blob was replaced meanwhile.
    fn find_once(self: &Arc<Self>, key: &Key) -> Option<Found> {
        let now = now_seconds();
        let (meta, touch, kept) = {
            let mut guard = self.lock();
            let index = &mut *guard;
            match index.blobs.get_mut(key) {
                Some(meta) => {
                    let touch = meta.use_at(now);
                    let kept = self.kept_copy(key, meta.stored);
                    // A copy in memory needs no pin: eviction cannot take
                    // it away mid-read.
                    if kept.is_none() {
                        *index.pinned.entry(*key).or_default() += 1;
                    }
                    (*meta, touch, kept)
                }
                None => {
                    return Some(match index.uploads.get(key) {
                        Some(upload) => Found::Upload(upload.clone()),
                        None => Found::Missing,
                    });
                }
            }
        };
        if let Some(bytes) = kept {
            self.kept_reads.inc();
            if touch {
                let path = self.file_path(key, &meta);
                let _ = File::open(path).and_then(|f| f.set_modified(SystemTime::now()));
            }
            return Some(Found::Blob(Blob {
                stored_in: Stored::Memory(bytes),
                size: meta.size,
                stored: meta.stored,
                pin: None,
            }));
        }
        let pin = Pin {
            disk: self.clone(),
            key: *key,
        };
        let path = self.file_path(key, &meta);
        let opened = File::open(&path).and_then(|file| {
            let length = file.metadata()?.len();
            match length == meta.stored {
                true => Ok(file),
                false => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{length} bytes, not {}", meta.stored),
                )),
            }
        });
        match opened {
            Ok(file) => {
                if touch {
                    let _ = file.set_modified(SystemTime::now());
                }
                // A blob to keep is read now: whoever found it reads it
                // whole anyway. Unreadable, it is left to their read to fail.
                let stored_in = match kept_in_memory(key, meta.stored) {
                    true => match read_start(&file, meta.stored) {
                        Ok(bytes) => {
                            let bytes = Bytes::from(bytes);
                            self.kept.insert(key.hash, bytes.clone());
                            Stored::Memory(bytes)
                        }
                        Err(_) => Stored::File(file),
                    },
                    false => Stored::File(file),
                };
                Some(Found::Blob(Blob {
                    stored_in,
                    size: meta.size,
                    stored: meta.stored,
                    pin: Some(pin),
                }))
            }
            Err(e) => {
                // Deleted or cut short behind the server's back: forget
                // it, so that the next upload stores it again; unless it
                // was replaced meanwhile (the file opened was the new one,
                // or the old one is gone): then look again.
                drop(pin);
                let mut index = self.lock();
                let same = |now: &Meta| now.size == meta.size && now.stored == meta.stored;
                match index.blobs.get(key) {
                    Some(now) if same(now) => {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!("{} is damaged ({e}); removed", path.display());
                            let _ = fs::remove_file(&path);
                        }
                        index.remove(key);
                        Some(Found::Missing)
                    }
                    Some(_) => None,
                    None => Some(Found::Missing),
                }
            }
        }
    }

    /// Starts writing `key`, announced as `length` bytes if known, for a
    /// client's upload. Readers follow this upload unless they already
    /// follow another one of the same key. No room is taken for the
    /// announced length: only bytes that arrive take room (see
    /// [`Writer::write`]), so an announcement holds nothing and evicts
    /// nothing.
    pub fn begin(self: &Arc<Self>, key: Key, length: Option<u64>) -> Result<Writer, Refusal> {
        match self.start(key, length, State::Writing, false)? {
            Begun::Writer(writer) => Ok(writer),
            Begun::Following(_) => unreachable!("a client's upload never joins another"),
        }
    }

    /// Starts fetching `key` from the backing store, unless a fetch or an
    /// upload of it is already under way: then follow that one.
    pub fn begin_fetch(self: &Arc<Self>, key: Key) -> Result<Begun, Refusal> {
        self.start(key, None, State::Asking, true)
    }

    fn start(
        self: &Arc<Self>,
        key: Key,
        length: Option<u64>,
        state: State,
        join: bool,
    ) -> Result<Begun, Refusal> {
        if let Some(length) = length
            && length > self.limits.max_blob
        {
            return Err(Refusal::TooLarge {
                limit: self.limits.max_blob,
            });
        }
        let temp = self.temp_path(&key);
        let upload = {
            let mut index = self.lock();
            if join && let Some(upload) = index.uploads.get(&key) {
                return Ok(Begun::Following(upload.clone()));
            }
            let (progress, _) = watch::channel(Progress { written: 0, state });
            let upload = Arc::new(Upload {
                key,
                temp: temp.clone(),
                expected: length,
                progress,
            });
            index.uploads.entry(key).or_insert_with(|| upload.clone());
            upload
        };
        let mut writer = Writer {
            disk: self.clone(),
            key,
            upload,
            file: None,
            written: 0,
            reserved: 0,
            finished: false,
        };
        writer.file = Some(
            File::options()
                .write(true)
                .create_new(true)
                .open(&writer.upload.temp)?,
        );
        Ok(Begun::Writer(writer))
    }

    /// Records a use of `key` if it is stored with `size` bytes; says
    /// whether it is. A CAS blob is named by its content, so one sent again
    /// needs no second copy: writing it anew and renaming it over the old
    /// file made ext4 flush the new file's data (`auto_da_alloc`), which
    /// held repeated 1 KB PUTs to a quarter of the rate of new ones.
    pub fn use_stored(&self, key: &Key, size: u64) -> bool {
        self.contains(key) == Some(size) && self.used(key).is_some()
    }

    /// The size of `key` if it is stored, recording a use.
    pub fn used(&self, key: &Key) -> Option<u64> {
        let (meta, touch) = {
            let mut index = self.lock();
            let meta = index.blobs.get_mut(key)?;
            let touch = meta.use_at(now_seconds());
            (*meta, touch)
        };
        if touch {
            let path = self.file_path(key, &meta);
            let _ = File::open(path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        Some(meta.size)
    }

    /// Writes and publishes a whole blob at once, unless the very same is
    /// stored already; whether it wrote. Blocking.
    pub fn store(self: &Arc<Self>, key: Key, bytes: &[u8]) -> Result<bool, Refusal> {
        // An action result (never compressed) is compared: the same
        // action may have a new one.
        let same = key.kind == Kind::Cas
            || fs::read(self.dir.join(key.relative_path())).is_ok_and(|stored| stored == bytes);
        if same && self.use_stored(&key, bytes.len() as u64) {
            return Ok(false);
        }
        let mut writer = self.begin(key, Some(bytes.len() as u64))?;
        writer.write(bytes)?;
        writer.publish().map(|()| true)
    }

    /// Waits for pressure, then evicts least recently used blobs that no
    /// one is reading until what is stored, promised to uploads and asked
    /// for by refused writes is at most the low watermark. Runs until the
    /// task is dropped.
    pub async fn evict_forever(self: Arc<Self>) {
        loop {
            let pressure = self.pressure.notified();
            let over = {
                let index = self.lock();
                index.demand() > index.limits(&self.limits).max_size
            };
            if !over {
                tokio::select! {
                    () = pressure => {}
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                continue;
            }
            let disk = self.clone();
            // File deletions: off the runtime's threads.
            let removed = tokio::task::spawn_blocking(move || disk.evict()).await;
            if removed.unwrap_or(0) == 0 {
                // Everything left is being read: try again when something
                // changes, or in a second.
                tokio::select! {
                    () = self.pressure.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// One eviction pass; returns the blobs removed. The room refused
    /// writes asked for is forgotten: their clients ask again.
    pub fn evict(&self) -> u64 {
        let needed = {
            let mut index = self.lock();
            let limits = index.limits(&self.limits);
            if index.demand() <= limits.max_size {
                index.wanted = 0;
                return 0;
            }
            index.demand() - limits.low_watermark
        };
        // The last use up to which enough is stored to free what is
        // needed, found from uses and sizes alone (8 bytes a blob); then
        // only the blobs used until then are listed with their keys.
        let mut uses = self.scan_index(|_, meta, pinned| {
            let blocks = on_disk(meta.stored) / BLOCK;
            (!pinned).then(|| (meta.used, u32::try_from(blocks).unwrap_or(u32::MAX)))
        });
        uses.sort_unstable_by_key(|&(used, _)| used);
        let mut freed = 0u64;
        let until = uses
            .iter()
            .find(|(_, blocks)| {
                freed += u64::from(*blocks) * BLOCK;
                freed >= needed
            })
            .or(uses.last())
            .map(|&(used, _)| used);
        drop(uses);
        let mut candidates = match until {
            Some(until) => self.scan_index(|key, meta, pinned| {
                (!pinned && meta.used <= until).then_some((meta.used, *key))
            }),
            None => Vec::new(),
        };
        candidates.sort_unstable_by_key(|&(used, _)| used);
        let mut removed = 0;
        for batch in candidates.chunks(EVICT_BATCH) {
            let mut victims = Vec::with_capacity(batch.len());
            let mut low_watermark_reached = false;
            {
                let mut index = self.lock();
                let low_watermark = index.limits(&self.limits).low_watermark;
                for (used, key) in batch {
                    if index.demand() <= low_watermark {
                        low_watermark_reached = true;
                        break;
                    }
                    // Used or pinned since the candidates were listed: keep it.
                    let meta = match index.blobs.get(key) {
                        Some(meta) if meta.used == *used && !index.pinned.contains_key(key) => {
                            *meta
                        }
                        _ => continue,
                    };
                    index.remove(key);
                    index.evicting.insert(*key);
                    victims.push((*key, meta));
                }
            }
            // Unlinks take tens of microseconds each: holding the lock for
            // a batch of them held up every request (a GET waited 22 s
            // behind an eviction of 300,000 blobs, bench/fleet.py).
            let unlinked: Vec<bool> = victims
                .iter()
                .map(
                    |(key, meta)| match fs::remove_file(self.file_path(key, meta)) {
                        Ok(()) => true,
                        Err(e) => e.kind() == io::ErrorKind::NotFound,
                    },
                )
                .collect();
            let mut index = self.lock();
            for ((key, meta), unlinked) in victims.into_iter().zip(unlinked) {
                index.evicting.remove(&key);
                if !unlinked {
                    // Kept, to be tried again (Windows refuses to remove a
                    // file someone holds open).
                    index.insert(key, meta);
                    continue;
                }
                removed += 1;
                self.evictions.inc();
                self.evicted_bytes.inc_by(on_disk(meta.stored));
            }
            if low_watermark_reached {
                break;
            }
        }
        self.lock().wanted = 0;
        removed
    }

    /// The index lock, once no old file of `key` is being unlinked by the
    /// evictor (see [`Index::evicting`]); waits a few milliseconds at most,
    /// the time of one batch of unlinks. Blocking.
    fn lock_to_publish(&self, key: &Key) -> MutexGuard<'_, Index> {
        loop {
            let index = self.lock();
            if !index.evicting.contains(key) {
                return index;
            }
            drop(index);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What `pick` picks of every blob (its key, what is known of it,
    /// whether it is being read), taking the index lock a chunk at a time:
    /// a scan of millions of blobs never holds up a request for long.
    /// Blobs that move while the lock is let go (the last one, into the
    /// place of one removed) may be missed; a scan is a snapshot only.
    fn scan_index<T>(&self, mut pick: impl FnMut(&Key, &Meta, bool) -> Option<T>) -> Vec<T> {
        let mut picked = Vec::new();
        let mut start = 0;
        loop {
            let index = self.lock();
            let chunk = index.blobs.chunk(start, SCAN_CHUNK);
            if chunk.is_empty() {
                return picked;
            }
            picked.extend(
                chunk
                    .iter()
                    .filter_map(|(key, meta)| pick(key, meta, index.pinned.contains_key(key))),
            );
            start += chunk.len();
        }
    }

    /// Compresses, in the background, the blobs stored plain that would
    /// take fewer blocks compressed (those an earlier version stored),
    /// one at a time and pausing as long as each took: at most half a core.
    pub async fn compress_forever(self: Arc<Self>) {
        let plain = self.scan_index(|key, meta, _| {
            (key.kind == Kind::Cas && !meta.compressed() && meta.size > BLOCK).then_some(*key)
        });
        if plain.is_empty() {
            return;
        }
        tracing::info!(
            "compressing {} blobs stored plain, in the background",
            plain.len()
        );
        let mut compressed = 0u64;
        for key in plain {
            let started = Instant::now();
            let disk = self.clone();
            match tokio::task::spawn_blocking(move || disk.compress_stored(&key)).await {
                Ok(Ok(true)) => compressed += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!("cannot compress {key}: {e}"),
                Err(e) => tracing::warn!("cannot compress {key}: {e}"),
            }
            tokio::time::sleep(started.elapsed()).await;
        }
        tracing::info!("{compressed} blobs stored plain are now compressed");
    }

    /// Compresses one blob stored plain, if it is still there, plain, and
    /// shrinks by a block; whether it did. Blocking.
    fn compress_stored(&self, key: &Key) -> io::Result<bool> {
        let Some(plain) = self.lock().blobs.get(key).copied() else {
            return Ok(false);
        };
        if plain.compressed() {
            return Ok(false);
        }
        let plain_path = self.file_path(key, &plain);
        let temp = self.temp_path(key).with_extension("zst");
        let Some(stored) = compress_file(&plain_path, plain.size, &temp)? else {
            return Ok(false);
        };
        // The file keeps the blob's last use for the next start-up.
        let touched = SystemTime::UNIX_EPOCH + Duration::from_secs(plain.touched.into());
        let _ = File::options()
            .write(true)
            .open(&temp)
            .and_then(|f| f.set_modified(touched));
        let mut index = self.lock();
        let Some(now) = index.blobs.get(key).copied() else {
            drop(index);
            let _ = fs::remove_file(&temp);
            return Ok(false);
        };
        if now.size != plain.size || now.stored != plain.stored {
            drop(index);
            let _ = fs::remove_file(&temp);
            return Ok(false);
        }
        let meta = Meta { stored, ..now };
        if let Err(e) = fs::rename(&temp, self.file_path(key, &meta)) {
            drop(index);
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        index.insert(*key, meta);
        drop(index);
        // Readers of the plain file read on through their open file.
        let _ = fs::remove_file(plain_path);
        Ok(true)
    }

    /// A new name in `tmp/` for a file of `key`.
    fn temp_path(&self, key: &Key) -> PathBuf {
        self.dir.join("tmp").join(format!(
            "{}-{}-{}",
            key.hex(),
            std::process::id(),
            self.temp_names.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

/// Writes one blob. Dropping it before [`Writer::publish`] abandons the
/// upload: the temporary file goes, followers see [`State::Failed`].
#[derive(Debug)]
pub struct Writer {
    disk: Arc<Disk>,
    key: Key,
    upload: Arc<Upload>,
    file: Option<File>,
    written: u64,
    reserved: u64,
    finished: bool,
}

impl Writer {
    pub fn key(&self) -> Key {
        self.key
    }

    /// The upload that readers follow.
    pub fn upload(&self) -> Arc<Upload> {
        self.upload.clone()
    }

    /// Announces that the backing store has the blob and it is coming.
    pub fn found(&self) {
        self.upload
            .progress
            .send_modify(|p| p.state = State::Writing);
    }

    /// Appends `bytes`, checking the limits; followers may read them as soon
    /// as this returns. Blocking: call it off the runtime for large writes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        let after = self.written.saturating_add(bytes.len() as u64);
        if after > self.disk.limits.max_blob {
            return Err(Refusal::TooLarge {
                limit: self.disk.limits.max_blob,
            });
        }
        let needed = on_disk(after);
        if needed > self.reserved {
            let more = needed - self.reserved;
            let disk = &self.disk;
            disk.lock()
                .make_room(more, self.reserved, &disk.limits, &disk.pressure)?;
            self.reserved += more;
        }
        let file = self.file.as_mut().expect("open until finished");
        if let Err(e) = file.write_all(bytes) {
            if e.kind() == io::ErrorKind::StorageFull {
                self.disk.filled();
            }
            return Err(e.into());
        }
        self.written = after;
        self.upload.progress.send_modify(|p| p.written = after);
        Ok(())
    }

    /// [`Writer::write`] on the blocking pool; the writer comes back with
    /// the result.
    pub async fn write_off_runtime(mut self, bytes: Vec<u8>) -> (Writer, Result<(), Refusal>) {
        tokio::task::spawn_blocking(move || {
            let result = self.write(&bytes);
            (self, result)
        })
        .await
        .expect("writing does not panic")
    }

    /// [`Writer::publish`] on the blocking pool.
    pub async fn publish_off_runtime(self) -> Result<(), Refusal> {
        tokio::task::spawn_blocking(move || self.publish())
            .await
            .expect("publishing does not panic")
    }

    /// Publishes the blob: renames it into place and indexes it.
    pub fn publish(mut self) -> Result<(), Refusal> {
        drop(self.file.take());
        let temp = self.upload.temp.clone();
        let compressed = match self.key.kind == Kind::Cas && self.written > BLOCK {
            true => {
                let zst = temp.with_extension("zst");
                compress_file(&temp, self.written, &zst)
                    .unwrap_or_else(|e| {
                        tracing::warn!("cannot compress {}, stored as it is: {e}", self.key);
                        let _ = fs::remove_file(&zst);
                        None
                    })
                    .map(|stored| (zst, stored))
            }
            false => None,
        };
        let now = now_seconds();
        let meta = Meta {
            size: self.written,
            stored: compressed
                .as_ref()
                .map_or(self.written, |(_, stored)| *stored),
            used: now,
            touched: now,
        };
        let disk = self.disk.clone();
        let target = disk.file_path(&self.key, &meta);
        let mut index = disk.lock_to_publish(&self.key);
        let renamed = match &compressed {
            Some((zst, _)) => fs::rename(zst, &target),
            None => fs::rename(&temp, &target),
        };
        if let Err(e) = renamed {
            if let Some((zst, _)) = &compressed {
                let _ = fs::remove_file(zst);
            }
            return Err(e.into());
        }
        let mut replaced = None;
        // Readers of a replaced file stay pinned by key until they finish.
        if let Some(old) = index.insert(self.key, meta) {
            replaced = Some(disk.file_path(&self.key, &old)).filter(|old| *old != target);
        }
        index.reserved -= self.reserved;
        self.reserved = 0;
        self.finish(&mut index, State::Done);
        if index.demand() > index.limits(&disk.limits).max_size {
            disk.pressure.notify_one();
        }
        drop(index);
        if compressed.is_some() {
            // Followers read on through their open file.
            let _ = fs::remove_file(&temp);
        }
        if let Some(replaced) = replaced {
            let _ = fs::remove_file(replaced);
        }
        Ok(())
    }

    /// Gives up: the backing store has no such blob.
    pub fn missing(mut self) {
        let disk = self.disk.clone();
        let mut index = disk.lock();
        self.abandon(&mut index, State::Missing);
    }

    fn abandon(&mut self, index: &mut Index, state: State) {
        drop(self.file.take());
        let _ = fs::remove_file(&self.upload.temp);
        index.reserved -= self.reserved;
        self.reserved = 0;
        self.finish(index, state);
    }

    fn finish(&mut self, index: &mut Index, state: State) {
        if index
            .uploads
            .get(&self.key)
            .is_some_and(|u| Arc::ptr_eq(u, &self.upload))
        {
            index.uploads.remove(&self.key);
        }
        self.upload.progress.send_modify(|p| p.state = state);
        self.finished = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let disk = self.disk.clone();
            let mut index = disk.lock();
            self.abandon(&mut index, State::Failed);
        }
    }
}

/// Compresses the `size`-byte file at `plain` into `compressed` as one zstd
/// frame (its size in the header), if that takes fewer blocks; the
/// compressed length if it does (else `compressed` is gone). Blocking.
///
/// The rule is a block because the disk counts blocks: a 6 KB blob that
/// compresses to 3 KB still takes one block less, one of 3 KB that
/// compresses to 1 KB takes as many. A larger blob whose first
/// [`SAMPLE`] bytes do not shrink by an eighth (already compressed, or
/// random) is not compressed at all: trying costs 40 ms a 10 MB blob.
fn compress_file(plain: &Path, size: u64, compressed: &Path) -> io::Result<Option<u64>> {
    let mut input = File::open(plain)?;
    let mut sample = Vec::with_capacity(size.min(SAMPLE) as usize);
    io::Read::read_to_end(&mut io::Read::take(&mut input, SAMPLE), &mut sample)?;
    let frame = zstd::bulk::compress(&sample, STORE_LEVEL)?;
    if size <= SAMPLE {
        // The whole blob: the frame is the answer.
        if on_disk(frame.len() as u64) >= on_disk(size) {
            return Ok(None);
        }
        let mut output = File::options()
            .write(true)
            .create_new(true)
            .open(compressed)?;
        if let Err(e) = output.write_all(&frame) {
            let _ = fs::remove_file(compressed);
            return Err(e);
        }
        return Ok(Some(frame.len() as u64));
    }
    if frame.len() as u64 > SAMPLE / 8 * 7 {
        return Ok(None);
    }
    let output = File::options()
        .write(true)
        .create_new(true)
        .open(compressed)?;
    let written = (|| {
        let mut encoder = zstd::stream::write::Encoder::new(output, STORE_LEVEL)?;
        encoder.set_pledged_src_size(Some(size))?;
        encoder.include_contentsize(true)?;
        encoder.write_all(&sample)?;
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.metadata().map(|m| m.len())
    })();
    match written {
        Ok(stored) if on_disk(stored) < on_disk(size) => Ok(Some(stored)),
        other => {
            let _ = fs::remove_file(compressed);
            other.map(|_| None)
        }
    }
}

/// Where the blob of `key`, described by `meta`, is stored under `dir`.
fn file_path(dir: &Path, key: &Key, meta: &Meta) -> PathBuf {
    let plain = dir.join(key.relative_path());
    match meta.compressed() {
        false => plain,
        true => plain.with_extension(format!("{}.zst", meta.size)),
    }
}

/// Whether a blob of `key`, `stored` bytes as stored, is kept in memory
/// too (see [`KEPT_BELOW`]).
fn kept_in_memory(key: &Key, stored: u64) -> bool {
    key.kind == Kind::Cas && stored < KEPT_BELOW
}

fn now_seconds() -> u32 {
    seconds(SystemTime::now())
}

fn seconds(time: SystemTime) -> u32 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Lists the blobs under `dir` by name and metadata, on all cores.
fn scan(dir: &Path) -> io::Result<Vec<(Key, Meta)>> {
    let shards: Vec<(Kind, PathBuf)> = [Kind::Ac, Kind::Cas]
        .into_iter()
        .flat_map(|kind| {
            (0..=255u8).map(move |shard| (kind, dir.join(kind.name()).join(hex::encode([shard]))))
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let per_thread = shards.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || scan_shards(chunk)))
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.join().expect("scanning does not panic")?);
        }
        Ok(all)
    })
}

fn scan_shards(shards: &[(Kind, PathBuf)]) -> io::Result<Vec<(Key, Meta)>> {
    let mut found = Vec::new();
    for (kind, shard) in shards {
        let entries = match fs::read_dir(shard) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some((key, size)) = name.to_str().and_then(|name| parse_name(*kind, name)) else {
                continue;
            };
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let used = metadata.modified().map_or(0, seconds);
            found.push((
                key,
                Meta {
                    size: size.unwrap_or(metadata.len()),
                    stored: metadata.len(),
                    used,
                    touched: used,
                },
            ));
        }
    }
    Ok(found)
}

/// The key of a blob's file name, and the blob's size if the name says it
/// (`<hex>.<size>.zst`).
fn parse_name(kind: Kind, name: &str) -> Option<(Key, Option<u64>)> {
    match name.split_once('.') {
        None => Key::new(kind, name).map(|key| (key, None)),
        Some((hex, rest)) => {
            let size = rest.strip_suffix(".zst")?.parse().ok()?;
            Some((Key::new(kind, hex)?, Some(size)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_size: 64 << 20,
            low_watermark: 60 << 20,
            hard_limit: 64 << 20,
            max_blob: 1 << 30,
            memory: 1 << 20,
        }
    }

    fn cas(bytes: &[u8]) -> Key {
        Key::new(Kind::Cas, &granary_id::Id::of(bytes).to_string()).unwrap()
    }

    /// The names of the files under `dir/cas/`.
    fn cas_files(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for shard in fs::read_dir(dir.join("cas")).unwrap() {
            for file in fs::read_dir(shard.unwrap().path()).unwrap() {
                names.push(file.unwrap().file_name().into_string().unwrap());
            }
        }
        names.sort();
        names
    }

    fn stored(disk: &Arc<Disk>, key: &Key) -> Blob {
        match disk.find(key) {
            Found::Blob(blob) => blob,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// Writes `blob` plain into the cache in `dir`, as a server before
    /// compression left it; its key and file.
    fn write_plain(dir: &Path, blob: &[u8]) -> (Key, PathBuf) {
        let key = cas(blob);
        let path = dir.join(key.relative_path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, blob).unwrap();
        (key, path)
    }

    /// Go-like output: text that repeats with variations.
    fn compressible(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b"func main() { fmt.Println(i) }\n"[i % 31] ^ (i / 4096 % 3) as u8)
            .collect()
    }

    /// Bytes that do not compress: hashes of a counter.
    fn random(len: usize) -> Vec<u8> {
        (0u64..)
            .flat_map(|i| granary_id::Id::of(&i.to_le_bytes()).0)
            .take(len)
            .collect()
    }

    #[test]
    fn blobs_that_shrink_by_a_block_are_stored_compressed_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path(), limits()).unwrap();
        let big = compressible(1 << 20);
        let noise = random(64 << 10);
        // Larger than the sample: refused on its first 256 KiB.
        let big_noise = random(1 << 20);
        let small = compressible(4000);
        for blob in [&big, &noise, &big_noise, &small] {
            disk.store(cas(blob), blob).unwrap();
        }
        let names = cas_files(dir.path());
        let compressed: Vec<&String> = names.iter().filter(|n| n.ends_with(".zst")).collect();
        assert_eq!(
            compressed,
            [&format!("{}.{}.zst", cas(&big).hex(), big.len())],
            "{names:?}"
        );
        let blob = stored(&disk, &cas(&big));
        assert!(blob.compressed());
        assert_eq!(blob.size, big.len() as u64);
        assert!(
            blob.stored < blob.size / 4,
            "{} of {}",
            blob.stored,
            blob.size
        );
        assert!(blob.read_all().unwrap() == big);
        assert_eq!(
            zstd::bulk::decompress(&blob.read_stored().unwrap(), big.len()).unwrap(),
            big
        );
        for plain in [&noise, &big_noise, &small] {
            let blob = stored(&disk, &cas(plain));
            assert!(!blob.compressed());
            assert!(blob.read_all().unwrap() == *plain);
        }
        // The limits count the blocks the files take.
        let expected = on_disk(blob.stored) + (64 << 10) + (1 << 20) + BLOCK;
        assert_eq!(disk.usage().bytes, expected);
        drop(blob);
        // A restart finds each blob's size in its name, not its file.
        drop(disk);
        let (disk, rebuilt) = Disk::open(dir.path(), limits()).unwrap();
        assert_eq!((rebuilt.blobs, rebuilt.bytes), (4, expected));
        assert_eq!(disk.contains(&cas(&big)), Some(big.len() as u64));
        assert!(stored(&disk, &cas(&big)).read_all().unwrap() == big);
    }

    #[tokio::test]
    async fn blobs_stored_plain_are_compressed_in_the_background_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let big = compressible(300 << 10);
        let (key, plain) = write_plain(dir.path(), &big);
        let (disk, _) = Disk::open(dir.path(), limits()).unwrap();
        assert_eq!(disk.usage().bytes, on_disk(big.len() as u64));
        let reader = stored(&disk, &key);
        disk.clone().compress_forever().await;
        assert_eq!(
            cas_files(dir.path()),
            [format!("{}.{}.zst", key.hex(), big.len())]
        );
        // A reader of the plain file reads on through its open file.
        assert!(reader.read_all().unwrap() == big);
        assert!(disk.usage().bytes < on_disk(big.len() as u64) / 4);
        assert!(stored(&disk, &key).read_all().unwrap() == big);
        // A conversion cut short after its rename leaves both files: the
        // compressed one is kept at start-up, the plain one goes.
        drop((reader, disk));
        fs::write(&plain, &big).unwrap();
        let (disk, rebuilt) = Disk::open(dir.path(), limits()).unwrap();
        assert_eq!(rebuilt.blobs, 1);
        assert_eq!(cas_files(dir.path()).len(), 1);
        assert!(stored(&disk, &key).compressed());
    }

    /// A publish of a key whose old file the evictor is unlinking waits
    /// for the unlink, which would otherwise take the new file.
    #[test]
    fn a_publish_waits_for_the_unlink_of_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path(), limits()).unwrap();
        let key = cas(b"again");
        disk.lock().evicting.insert(key);
        let storing = {
            let disk = disk.clone();
            std::thread::spawn(move || disk.store(key, b"again").unwrap())
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(disk.contains(&key), None, "published during the unlink");
        assert!(!storing.is_finished());
        disk.lock().evicting.remove(&key);
        assert!(storing.join().unwrap());
        assert_eq!(disk.contains(&key), Some(5));
    }

    /// Eviction frees the least recently used blobs down to the low
    /// watermark, found in two scans of the index, and spares the blobs
    /// being read however old.
    #[test]
    fn eviction_frees_the_least_recently_used_and_spares_blobs_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_size: 100 * BLOCK,
            low_watermark: 80 * BLOCK,
            hard_limit: 1000 * BLOCK,
            max_blob: 1 << 20,
            memory: 0,
        };
        let (disk, _) = Disk::open(dir.path(), limits).unwrap();
        let keys: Vec<Key> = (0..120u32)
            .map(|i| {
                let key = Key::new(Kind::Ac, &format!("{i:064x}")).unwrap();
                disk.store(key, &i.to_le_bytes()).unwrap();
                key
            })
            .collect();
        // Reading the oldest pins it (and counts as a use: made old again).
        let being_read = stored(&disk, &keys[0]);
        for (i, key) in keys.iter().enumerate() {
            disk.lock().blobs.get_mut(key).unwrap().used = 1000 + i as u32;
        }
        assert_eq!(disk.evict(), 40);
        assert_eq!(disk.usage().bytes, 80 * BLOCK);
        let kept: Vec<bool> = keys
            .iter()
            .map(|key| disk.contains(key).is_some())
            .collect();
        assert!(kept[0], "the blob being read stays");
        assert!(kept[1..=40].iter().all(|kept| !kept), "{kept:?}");
        assert!(kept[41..].iter().all(|kept| *kept), "{kept:?}");
        drop(being_read);
        assert_eq!(disk.evict(), 0, "at the low watermark: nothing to do");
    }

    #[tokio::test]
    async fn small_cas_blobs_are_read_from_memory_in_the_form_stored_now() {
        let dir = tempfile::tempdir().unwrap();
        let text = compressible(12 << 10);
        let (key, _) = write_plain(dir.path(), &text);
        let (disk, _) = Disk::open(dir.path(), limits()).unwrap();
        assert!(stored(&disk, &key).read_all().unwrap() == text);
        let again = stored(&disk, &key);
        assert!(matches!(again.stored_in, Stored::Memory(_)));
        assert!(again.read_all().unwrap() == text);
        assert_eq!(disk.kept_reads.get(), 1);
        // Compressed since, while a reader of the plain file kept it: the
        // plain copy is not the stored form, and is not read.
        drop(again);
        disk.clone().compress_forever().await;
        disk.kept.insert(key.hash, Bytes::from(text.clone()));
        let compressed = stored(&disk, &key);
        assert!(compressed.compressed());
        assert_eq!(disk.kept_reads.get(), 1, "read from its file");
        assert!(compressed.read_all().unwrap() == text);
        let kept = stored(&disk, &key);
        assert!(matches!(kept.stored_in, Stored::Memory(_)));
        assert!(kept.compressed() && kept.read_all().unwrap() == text);
        assert_eq!(disk.kept_reads.get(), 2);
        assert_eq!(disk.usage().kept, kept.stored);
    }

    #[test]
    fn action_results_and_larger_blobs_are_always_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path(), limits()).unwrap();
        let action = Key::new(Kind::Ac, &"ab".repeat(32)).unwrap();
        disk.store(action, b"first").unwrap();
        assert!(stored(&disk, &action).read_all().unwrap() == b"first"[..]);
        disk.store(action, b"other").unwrap();
        assert!(stored(&disk, &action).read_all().unwrap() == b"other"[..]);
        let large = random(KEPT_BELOW as usize);
        disk.store(cas(&large), &large).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                stored(&disk, &cas(&large)).stored_in,
                Stored::File(_)
            ));
        }
        assert_eq!((disk.kept_reads.get(), disk.usage().kept), (0, 0));
        // With no memory to keep them in, small CAS blobs are read too.
        drop(disk);
        let (disk, _) = Disk::open(
            dir.path(),
            Limits {
                memory: 0,
                ..limits()
            },
        )
        .unwrap();
        let small = random(100);
        disk.store(cas(&small), &small).unwrap();
        for _ in 0..2 {
            assert!(stored(&disk, &cas(&small)).read_all().unwrap() == small);
        }
        assert_eq!((disk.kept_reads.get(), disk.usage().kept), (0, 0));
    }
}
