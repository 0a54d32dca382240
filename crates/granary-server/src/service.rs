//! The service core, under both protocols: who is asking, opening a key to
//! read it, and storing a key from bytes or a stream.
//!
//! The HTTP API (`http.rs`), the action cache and CAS (`grpc/`), ByteStream
//! and the batch answers all read and write through here, so a rule of the
//! cache (a blob still arriving is followed, a miss reads through the
//! backing store, an upload is checked before it is published, a stored
//! blob new to the server goes to the backing store) is written once. What each face
//! adds is only its framing: statuses, headers, messages.
//!
//! Architecture invariant: nothing here knows HTTP or gRPC. Errors are
//! [`Unreadable`] and [`Rejected`]; each face turns them into its own
//! statuses.

use std::io::{self, Seek};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::Semaphore;

use crate::auth::{Auth, Identity};
use crate::backing::Backing;
use crate::check::{Check, Rejected, Why};
use crate::chunks::file_chunks;
use crate::codec;
use crate::dashboard::Dashboard;
use crate::disk::{Blob, Disk, Found, Refusal, Stored, Writer};
use crate::follow::{Followed, Follower, follow};
use crate::frames::Frames;
use crate::key::{Key, Kind};
use crate::metrics::Metrics;

/// An upload's bytes are written once this many have gathered (or when
/// the client pauses).
pub const WRITE_BATCH: usize = 256 * 1024;

/// What every request needs.
#[derive(Debug)]
pub struct Service {
    pub disk: Arc<Disk>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// Compressed blobs for batch answers.
    pub frames: Arc<Frames>,
    pub backing: Option<Backing>,
    /// How long a client may leave a request body without a byte, and how
    /// long a reader waits for an upload it follows to make progress.
    pub idle_timeout: Duration,
    /// Turns to write a batch answer (see [`batch::BATCHES_AT_ONCE`](crate::batch::BATCHES_AT_ONCE)).
    pub batch_turns: Arc<Semaphore>,
    pub dashboard: Arc<Dashboard>,
    pub started: Instant,
    pub tls: bool,
}

/// A key opened for reading.
#[derive(Debug)]
pub enum Opened {
    /// Complete on disk, pinned against eviction while it lives.
    Stored(Blob),
    /// Still arriving, from a client's upload or the backing store.
    Arriving(Follower),
}

/// A key opened without waiting (see [`Service::open_now`]).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub enum OpenedNow {
    /// Complete on disk, pinned against eviction while it lives.
    Stored(Blob),
    /// Nowhere: no upload in flight, no backing store to ask.
    Missing,
    /// Reading it waits, or decodes: [`Service::open`] it.
    Later,
}

/// What the cache holds of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Complete on disk, this many bytes.
    Stored(u64),
    /// Only in the backing store, of a size not known here.
    InBacking,
    /// Nowhere (a blob still arriving is not held yet).
    Absent,
}

/// Why a key cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("no {0}")]
    Missing(Key),
    #[error("the upload of {0} failed; try again")]
    UploadFailed(Key),
    #[error("the upload of {key} made no progress for {after:?}; try again")]
    Stalled { key: Key, after: Duration },
    /// There is no room to fetch it from the backing store.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot read {key}: {source}")]
    Io { key: Key, source: io::Error },
}

impl Service {
    /// Who sent a request with this `Authorization` header (or gRPC
    /// `authorization` metadata); a refused credential is counted.
    pub async fn identify_header(&self, authorization: Option<&[u8]>) -> Identity {
        let identity = self.auth.identify(authorization).await;
        if let Some(refusal) = &identity.refusal {
            self.metrics.refuse_credential(refusal.reason);
        }
        identity
    }

    /// Opens `key`: stored, or arriving (an upload in flight, or a fetch
    /// from the backing store started now or joined). Waits for an
    /// arriving blob's source to be known for the idle timeout at most.
    pub async fn open(&self, key: Key) -> Result<Opened, Unreadable> {
        let upload = match self.disk.find(&key) {
            Found::Blob(blob) => return Ok(Opened::Stored(blob)),
            Found::Upload(upload) => upload,
            Found::Missing => match &self.backing {
                Some(backing) => backing.fetch(&self.disk, key)?,
                None => return Err(Unreadable::Missing(key)),
            },
        };
        let idle = self.idle_timeout;
        match tokio::time::timeout(idle, follow(upload)).await {
            Ok(Followed::Stream(follower)) => Ok(Opened::Arriving(follower)),
            Ok(Followed::Published) => match self.disk.find(&key) {
                Found::Blob(blob) => Ok(Opened::Stored(blob)),
                // Evicted at once, or being written again.
                Found::Upload(_) | Found::Missing => Err(Unreadable::UploadFailed(key)),
            },
            Ok(Followed::Missing) => Err(Unreadable::Missing(key)),
            Ok(Followed::Failed) => Err(Unreadable::UploadFailed(key)),
            Err(_) => Err(Unreadable::Stalled { key, after: idle }),
        }
    }

    /// Opens `key` if that needs no wait and no decoding: stored (as a
    /// zstd frame only for a client that takes `zstd`), or missing with
    /// nowhere else to look.
    #[cfg(target_os = "linux")]
    pub fn open_now(&self, key: &Key, zstd: bool) -> OpenedNow {
        // Asked first, so that a blob left to `open` is not found (and
        // its use counted) twice.
        if !zstd && self.disk.is_compressed(key) {
            return OpenedNow::Later;
        }
        match self.disk.find(key) {
            // Compressed since the question above.
            Found::Blob(blob) if blob.compressed() && !zstd => OpenedNow::Later,
            Found::Blob(blob) => OpenedNow::Stored(blob),
            Found::Missing if self.backing.is_none() => OpenedNow::Missing,
            Found::Missing | Found::Upload(_) => OpenedNow::Later,
        }
    }

    /// `key` if it is stored, pinned; never waits (for the batch answers,
    /// on a blocking thread, where a blob still arriving counts as missing).
    pub fn stored(&self, key: &Key) -> Option<Blob> {
        match self.disk.find(key) {
            Found::Blob(blob) => Some(blob),
            Found::Upload(_) | Found::Missing => None,
        }
    }

    /// What the cache holds of `key`, without reading it; a stored blob
    /// counts as used (REAPI clients ask before they rely on a blob).
    pub async fn held(&self, key: &Key) -> Held {
        match self.disk.used(key) {
            Some(size) => Held::Stored(size),
            None => match &self.backing {
                Some(backing) if backing.exists(key).await => Held::InBacking,
                _ => Held::Absent,
            },
        }
    }

    /// [`Service::held`] if that needs no wait; `None` if only the backing
    /// store could tell.
    #[cfg(target_os = "linux")]
    pub fn held_now(&self, key: &Key) -> Option<Held> {
        match self.disk.used(key) {
            Some(size) => Some(Held::Stored(size)),
            None => self.backing.is_none().then_some(Held::Absent),
        }
    }

    /// A whole blob of at most `limit` bytes; `None` if it is larger.
    /// With `zstd`, a blob stored compressed comes as it is stored.
    pub async fn read_whole(
        &self,
        key: Key,
        limit: u64,
        zstd: bool,
    ) -> Result<Option<Whole>, Unreadable> {
        let mut stream = match self.open(key).await? {
            Opened::Stored(blob) if blob.size > limit => return Ok(None),
            Opened::Stored(blob) => {
                return tokio::task::spawn_blocking(move || read_whole(key, &blob, zstd))
                    .await
                    .expect("reading does not panic")
                    .map(Some);
            }
            Opened::Arriving(follower) => self.follow_from(key, follower, 0).await?,
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|source| Unreadable::Io { key, source })?);
            if bytes.len() as u64 > limit {
                return Ok(None);
            }
        }
        Ok(Some(Whole {
            size: bytes.len() as u64,
            bytes: bytes.into(),
            zstd: false,
        }))
    }

    /// The bytes of an opened key from `offset`, as the client takes
    /// them, decoded if stored compressed: a stored blob stays pinned until
    /// the stream is dropped; each wait for an arriving one is bounded by
    /// the idle timeout.
    pub async fn bytes_from(
        &self,
        key: Key,
        opened: Opened,
        offset: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, Unreadable> {
        match opened {
            Opened::Stored(blob) if blob.compressed() => {
                let stream = stored_bytes(key, blob, 0)?;
                Ok(codec::skipped(codec::decoded(stream), offset))
            }
            Opened::Stored(blob) => stored_bytes(key, blob, offset),
            Opened::Arriving(follower) => self.follow_from(key, follower, offset).await,
        }
    }

    async fn follow_from(
        &self,
        key: Key,
        mut follower: Follower,
        offset: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, Unreadable> {
        follower
            .skip_to(offset)
            .await
            .map_err(|source| Unreadable::Io { key, source })?;
        let idle = self.idle_timeout;
        Ok(
            futures_util::stream::unfold(follower, move |mut follower| async move {
                let chunk = match tokio::time::timeout(idle, follower.next_chunk()).await {
                    Ok(chunk) => chunk?,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        Unreadable::Stalled { key, after: idle }.to_string(),
                    )),
                };
                Some((chunk, follower))
            })
            .boxed(),
        )
    }

    /// Starts receiving `key`, announced as `length` bytes if known. A CAS
    /// blob stored already with that length is only checked, not written
    /// again.
    pub fn receive(&self, key: Key, length: Option<u64>) -> Result<Receiving, Rejected> {
        let stored = key.kind == Kind::Cas
            && length.is_some_and(|length| self.disk.contains(&key) == Some(length));
        let writer = match stored {
            true => None,
            false => Some(
                self.disk
                    .begin(key, length)
                    .map_err(|refusal| Rejected::from_refusal(&refusal))?,
            ),
        };
        Ok(Receiving::new(key, writer))
    }

    /// Checks and publishes what `receiving` received, which must be
    /// `length` bytes if that is known, and hands it to the backing store
    /// ([`Service::written`]).
    pub async fn finish(&self, receiving: Receiving, length: Option<u64>) -> Result<(), Rejected> {
        let key = receiving.key;
        let written = receiving.finish(&self.disk, length).await?;
        self.written(key, written).await
    }

    /// Checks and stores a whole blob (unless the very same is stored);
    /// whether it was written. Blocking: the caller then hands it to
    /// [`Service::written`].
    pub fn store_blocking(&self, key: Key, bytes: &[u8]) -> Result<bool, Rejected> {
        let mut check = Check::new(key.kind);
        check.update(bytes)?;
        check.finish(&key)?;
        self.disk
            .store(key, bytes)
            .map_err(|refusal| Rejected::from_refusal(&refusal))
    }

    /// [`Service::store_blocking`] on the blocking pool, then
    /// [`Service::written`].
    pub async fn store(self: &Arc<Self>, key: Key, bytes: Vec<u8>) -> Result<(), Rejected> {
        let service = self.clone();
        let written = tokio::task::spawn_blocking(move || service.store_blocking(key, &bytes))
            .await
            .expect("storing does not panic")?;
        self.written(key, written).await
    }

    /// Hands `key` to the backing store if it was `written` now (a blob
    /// stored already is there from before).
    pub async fn written(&self, key: Key, written: bool) -> Result<(), Rejected> {
        match &self.backing {
            Some(backing) if written => backing.stored(&self.disk, key).await.map_err(|why| {
                Rejected::new(
                    Why::Io,
                    format!(
                        "{key} is stored here, but not in the backing store, as \
                         --write-through requires: {why}"
                    ),
                )
            }),
            _ => Ok(()),
        }
    }
}

/// A whole blob as read.
#[derive(Debug)]
pub struct Whole {
    /// The blob, or one zstd frame of it if `zstd`.
    pub bytes: Bytes,
    pub zstd: bool,
    /// The blob's length.
    pub size: u64,
}

/// Reads a stored blob whole: decoded, or with `zstd` as stored. Blocking.
pub fn read_whole(key: Key, blob: &Blob, zstd: bool) -> Result<Whole, Unreadable> {
    let zstd = blob.compressed() && zstd;
    let read = match zstd {
        true => blob.read_stored(),
        false => blob.read_all(),
    };
    let bytes = read.map_err(|source| Unreadable::Io { key, source })?;
    Ok(Whole {
        bytes,
        zstd,
        size: blob.size,
    })
}

/// The file of a stored blob from `offset`, as it is stored, holding its
/// pin until the stream is dropped.
pub fn stored_bytes(
    key: Key,
    blob: Blob,
    offset: u64,
) -> Result<BoxStream<'static, io::Result<Bytes>>, Unreadable> {
    let Blob { stored_in, pin, .. } = blob;
    let file = match stored_in {
        Stored::File(file) => file,
        Stored::Memory(bytes) => {
            let rest = bytes.slice((offset as usize).min(bytes.len())..);
            return Ok(futures_util::stream::once(async move {
                let _pinned = pin;
                Ok(rest)
            })
            .boxed());
        }
    };
    let mut file = file;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))
            .map_err(|source| Unreadable::Io { key, source })?;
    }
    Ok(file_chunks(file, pin).boxed())
}

/// An upload being received: checked as it comes, gathered into batches
/// for the disk, and published only once the whole is right. Dropping it
/// abandons the upload (see [`Writer`]).
#[derive(Debug)]
pub struct Receiving {
    key: Key,
    /// `None`: the same blob is stored already; the bytes are only checked.
    writer: Option<Writer>,
    check: Check,
    batch: Vec<u8>,
    received: u64,
}

impl Receiving {
    /// Receives through `writer` (none: only checks).
    pub fn new(key: Key, writer: Option<Writer>) -> Receiving {
        Receiving {
            key,
            writer,
            check: Check::new(key.kind),
            batch: Vec::new(),
            received: 0,
        }
    }

    /// Bytes taken so far, written or gathered.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes `data`: checked and gathered; written once a batch is full.
    pub async fn take(&mut self, data: &[u8]) -> Result<(), Rejected> {
        self.check.update(data)?;
        self.batch.extend_from_slice(data);
        self.received += data.len() as u64;
        if self.batch.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what has gathered, off the runtime, so that readers
    /// following the upload have it.
    pub async fn flush(&mut self) -> Result<(), Rejected> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let (writer, result) = writer.write_off_runtime(batch).await;
        self.writer = Some(writer);
        result.map_err(|refusal| Rejected::from_refusal(&refusal))
    }

    /// Writes the rest, checks the whole (`length` bytes, if known) and
    /// publishes it; without a writer, records a use of the stored blob.
    /// Whether it was written (not only checked against the same blob
    /// stored already).
    pub async fn finish(mut self, disk: &Disk, length: Option<u64>) -> Result<bool, Rejected> {
        self.flush().await?;
        if let Some(length) = length
            && self.received != length
        {
            return Err(Rejected::incomplete(format!(
                "{} bytes received of {length}",
                self.received
            )));
        }
        let Receiving {
            key,
            writer,
            check,
            received,
            ..
        } = self;
        check.finish(&key)?;
        match writer {
            Some(writer) => writer
                .publish_off_runtime()
                .await
                .map(|()| true)
                .map_err(|refusal| Rejected::from_refusal(&refusal)),
            // Evicted meanwhile: as if it had been right after the write.
            None => {
                disk.use_stored(&key, received);
                Ok(false)
            }
        }
    }
}
