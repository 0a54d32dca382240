//! An object store behind the disk tier: read-through, write-behind.
//!
//! A miss on disk asks the backing store once, however many clients ask at
//! the same time: the first starts a fetch into the disk tier, the others
//! follow it as it arrives, exactly as they would follow a client's upload.
//! Blobs that clients upload are queued and copied to the backing store in
//! the background; a full queue drops (counted), never slows a client.
//! Several servers can share one bucket this way: a blob written through
//! one is readable through the others once it is written behind,
//! milliseconds later (`bench/fleet.py`), or before its writer hears it
//! is stored with `--write-through`.
//! Only blobs new to the server go to the backing store: one sent again
//! is there already, from its first upload or from where it was fetched.
//!
//! Keys in the backing store: `<prefix>/granary-serve-v1/{ac,cas}/<hex>`,
//! bodies as the clients sent them (decoded if the disk keeps them
//! compressed).

use std::fmt;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use granary_format::{BlobStore, RemoteError, STREAM_ABOVE};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::codec;
use crate::disk::{Begun, Blob, Disk, Found, Refusal, Upload, Writer};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::service::{Receiving, stored_bytes};

/// Blobs waiting to be written behind, at most.
const QUEUE: usize = 16 * 1024;
/// Uploads to the backing store at once.
pub const UPLOADS_AT_ONCE: usize = 8;
/// Bytes of blobs held in memory by uploads at once (a larger blob waits
/// until it is alone).
const UPLOAD_MEMORY: u32 = 256 * 1024 * 1024;

/// The name of the server's layout in the backing store.
const LAYOUT: &str = "granary-serve-v1";

/// The backing store and its write-behind queue.
pub struct Backing {
    blobs: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<Key>,
    write_through: bool,
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backing({})", self.blobs)
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{LAYOUT}", self.blobs)
    }
}

fn backing_key(key: &Key) -> String {
    format!("{LAYOUT}/{key}")
}

impl Backing {
    /// Starts the write-behind task. Dropping every [`Backing`] clone's
    /// sender ends it once the queue is empty.
    pub fn start(
        blobs: Arc<dyn BlobStore>,
        disk: Arc<Disk>,
        metrics: Arc<Metrics>,
        write_through: bool,
    ) -> (Backing, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_behind(blobs.clone(), disk, metrics.clone(), receiver));
        (
            Backing {
                blobs,
                metrics,
                queue,
                write_through,
            },
            task,
        )
    }

    /// Hands `key`, just stored on `disk`, to the backing store: queued,
    /// or with `--write-through` copied now.
    pub async fn stored(&self, disk: &Arc<Disk>, key: Key) -> Result<(), String> {
        if !self.write_through {
            if self.queue.try_send(key).is_err() {
                self.metrics.backing_dropped.inc();
            }
            return Ok(());
        }
        let written = match disk.find(&key) {
            Found::Blob(blob) => write_one(&*self.blobs, &key, blob)
                .await
                .map_err(|e| e.to_string()),
            Found::Upload(_) | Found::Missing => {
                Err("it was evicted or replaced before it was copied".to_owned())
            }
        };
        let counter = match &written {
            Ok(()) => &self.metrics.backing_uploads,
            Err(_) => &self.metrics.backing_errors,
        };
        counter.inc();
        written
    }

    pub async fn exists(&self, key: &Key) -> bool {
        self.metrics.backing_lookups.inc();
        match self.blobs.exists(&backing_key(key)).await {
            Ok(exists) => exists,
            Err(e) => {
                self.metrics.backing_errors.inc();
                tracing::warn!("backing store: {e}");
                false
            }
        }
    }

    /// Fetches `key` into `disk` unless a fetch or upload of it is under
    /// way; either way, the upload to follow.
    pub fn fetch(&self, disk: &Arc<Disk>, key: Key) -> Result<Arc<Upload>, Refusal> {
        let writer = match disk.begin_fetch(key)? {
            Begun::Following(upload) => return Ok(upload),
            Begun::Writer(writer) => writer,
        };
        let upload = writer.upload();
        let blobs = self.blobs.clone();
        let metrics = self.metrics.clone();
        let disk = disk.clone();
        tokio::spawn(async move {
            match fetch(&*blobs, &disk, writer).await {
                Ok(true) => {
                    metrics.backing_fetches.inc();
                }
                Ok(false) => {
                    metrics.backing_misses.inc();
                }
                Err(why) => {
                    metrics.backing_errors.inc();
                    tracing::warn!("backing store: cannot fetch {key}: {why}");
                }
            }
        });
        Ok(upload)
    }
}

/// Copies one blob from the backing store through `writer`, checking it as
/// a client's upload is checked. `Ok(false)`: there is no such blob.
async fn fetch(blobs: &dyn BlobStore, disk: &Disk, writer: Writer) -> Result<bool, String> {
    let key = writer.key();
    let mut stream = match blobs.get(&backing_key(&key)).await {
        Ok(Some(stream)) => stream,
        Ok(None) => {
            writer.missing();
            return Ok(false);
        }
        Err(e) => return Err(e.to_string()),
    };
    writer.found();
    let mut receiving = Receiving::new(key, Some(writer));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        receiving
            .take(&chunk)
            .await
            .map_err(|rejected| rejected.message)?;
    }
    receiving
        .finish(disk, None)
        .await
        .map_err(|rejected| rejected.message)?;
    Ok(true)
}

async fn write_behind(
    blobs: Arc<dyn BlobStore>,
    disk: Arc<Disk>,
    metrics: Arc<Metrics>,
    mut queue: mpsc::Receiver<Key>,
) {
    let running = Arc::new(Semaphore::new(UPLOADS_AT_ONCE));
    let memory = Arc::new(Semaphore::new(UPLOAD_MEMORY as usize));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(key) = queue.recv().await {
        let Some(size) = disk.contains(&key) else {
            continue; // evicted before its turn
        };
        let Ok(slot) = running.clone().acquire_owned().await else {
            break;
        };
        // A large blob streams, holding a few chunks.
        let share = u32::try_from(size.min(STREAM_ABOVE))
            .unwrap_or(u32::MAX)
            .clamp(1, UPLOAD_MEMORY);
        let Ok(held) = memory.clone().acquire_many_owned(share).await else {
            break;
        };
        let (blobs, disk, metrics) = (blobs.clone(), disk.clone(), metrics.clone());
        tasks.spawn(async move {
            let result = match disk.find(&key) {
                Found::Blob(blob) => write_one(&*blobs, &key, blob)
                    .await
                    .map_err(|e| e.to_string()),
                // Evicted, or being written again (and queued again then).
                Found::Upload(_) | Found::Missing => Ok(()),
            };
            match result {
                Ok(()) => {
                    metrics.backing_uploads.inc();
                }
                Err(why) => {
                    metrics.backing_errors.inc();
                    tracing::warn!("backing store: cannot write {key} behind: {why}");
                }
            };
            drop((slot, held));
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Copies one blob to the backing store, decoded: whole if small, else
/// as a stream of chunks read as the upload takes them.
async fn write_one(blobs: &dyn BlobStore, key: &Key, blob: Blob) -> Result<(), RemoteError> {
    let cannot_read =
        |e: &dyn fmt::Display| RemoteError::LocalFile(format!("cannot read {key}: {e}"));
    let size = blob.size;
    if size <= STREAM_ABOVE {
        let bytes = tokio::task::spawn_blocking(move || blob.read_all())
            .await
            .expect("reading does not panic")
            .map_err(|e| cannot_read(&e))?;
        return blobs.put(&backing_key(key), bytes).await;
    }
    let compressed = blob.compressed();
    let stream = stored_bytes(*key, blob, 0).map_err(|e| cannot_read(&e))?;
    let stream = match compressed {
        true => codec::decoded(stream),
        false => stream,
    };
    let stream = stream
        .map_err(|e| RemoteError::LocalFile(format!("cannot read the blob: {e}")))
        .boxed();
    blobs
        .put_stream(&backing_key(key), stream, Some(size))
        .await
}
