//! The transport underneath the remote cache: blobs by key.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::RemoteError;

/// Blobs larger than this are put as a stream ([`BlobStore::put_stream`],
/// from their file), never whole in memory.
pub const STREAM_ABOVE: u64 = 16 << 20;

/// A blob's bytes, as they arrive.
pub type ByteStream = BoxStream<'static, Result<Bytes, RemoteError>>;

/// A flat store of blobs by key, such as a bucket under a prefix. Keys are
/// relative paths of ASCII letters, digits, `-` and `/`
/// (see [`layout`](crate::layout)).
#[async_trait]
pub trait BlobStore: fmt::Display + fmt::Debug + Send + Sync + 'static {
    /// What to change when the store refuses our credentials, for a client
    /// that `writes` or only reads: the settings of this kind of store.
    fn credentials_advice(&self, writes: bool) -> String;

    /// The blob under `key`, as a stream, or `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError>;

    /// Whether there is a blob under `key`.
    async fn exists(&self, key: &str) -> Result<bool, RemoteError>;

    /// The object under `key`, known to be `size` bytes: stores whose
    /// reads name a blob by its digest (hash and size, as REAPI's CAS
    /// does) need the size; others ignore it.
    async fn get_object(&self, key: &str, _size: u64) -> Result<Option<ByteStream>, RemoteError> {
        self.get(key).await
    }

    /// As [`BlobStore::get_object`], for an object that is compressed
    /// already (a pack in a REAPI cache): a store that compresses on the
    /// wire should not.
    async fn get_compressed_object(
        &self,
        key: &str,
        size: u64,
    ) -> Result<Option<ByteStream>, RemoteError> {
        self.get_object(key, size).await
    }

    /// Whether there is an object of `size` bytes under `key` (see
    /// [`BlobStore::get_object`]).
    async fn has_object(&self, key: &str, _size: u64) -> Result<bool, RemoteError> {
        self.exists(key).await
    }

    /// Stores `body` under `key`, replacing any blob there.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError>;

    /// Stores the blob that `body` streams, `length` bytes if known, under
    /// `key`, holding only a few chunks in memory whatever its size (S3's
    /// multipart upload, a streamed HTTP PUT). An error in the stream
    /// abandons the upload: nothing is stored. The default collects the
    /// stream, for stores that only hold small blobs.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        _length: Option<u64>,
    ) -> Result<(), RemoteError> {
        use futures_util::TryStreamExt;
        let chunks: Vec<Bytes> = body.try_collect().await?;
        self.put(key, chunks.concat().into()).await
    }

    /// Sends a batch request (action IDs in hex, one per line) for the
    /// entries under `prefix` (a namespace's, `<name>/`, or empty) and
    /// returns the answer, a [`pack`](crate::pack). `None`: this store has
    /// no batch endpoint.
    async fn batch(
        &self,
        _prefix: &str,
        _request: Bytes,
    ) -> Result<Option<BatchAnswer>, RemoteError> {
        Ok(None)
    }

    /// Whether the [`RemoteCache`](crate::RemoteCache) should keep packs
    /// here even in the REAPI format, where they go to the CAS: for stores
    /// that have no [`BlobStore::batch`], or found out they have none.
    fn keeps_packs(&self) -> bool {
        false
    }

    /// The blobs whose keys start with `prefix`.
    async fn list(&self, _prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        Err(RemoteError::Config(format!("{self} cannot list its blobs")))
    }

    /// Deletes the blob under `key`, if there is one.
    async fn delete(&self, _key: &str) -> Result<(), RemoteError> {
        Err(RemoteError::Config(format!("{self} cannot delete blobs")))
    }

    /// How far the remote's clock is ahead of ours, in milliseconds, if
    /// it says its time (an HTTP server's `Date`, to the second). Object
    /// stores' times are measured through a probe blob instead.
    async fn clock_skew_ms(&self, _key: &str) -> Result<Option<i64>, RemoteError> {
        Ok(None)
    }
}

/// The answer to [`BlobStore::batch`]: a pack, as it arrives.
pub struct BatchAnswer {
    pub body: ByteStream,
    /// The pack comes compressed as one zstd stream (HTTP's
    /// `Content-Encoding: zstd`): a server that keeps blobs uncompressed
    /// sends a quarter of the bytes for Go's outputs.
    pub zstd: bool,
}

impl fmt::Debug for BatchAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchAnswer")
            .field("zstd", &self.zstd)
            .finish_non_exhaustive()
    }
}

/// A blob found by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, under the store's prefix as the other methods take it.
    pub key: String,
    pub modified: SystemTime,
}
