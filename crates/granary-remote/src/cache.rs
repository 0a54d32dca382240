//! The action cache and the content-addressed store, on a [`BlobStore`].

use granary_id::Id;
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use sha2::Digest as _;

use crate::layout::{Format, Namespace, manifest_action};
use crate::manifest::{
    MANIFEST_DELETE_AGE, Manifest, PACK_DELETE_AGE, PackRef, Seal, unix_seconds,
};
use crate::pack::{PackReader, PackWriter};
use crate::record::{ActionRecord, Placement};
use crate::{BlobStore, ByteStream, RemoteError, STREAM_ABOVE, reapi};
use granary_trust::SigningKey;

/// Outputs up to this size travel inside their action record. In
/// `go build std`, 77% of the outputs are this small.
pub const INLINE_LIMIT: u64 = 64 * 1024;
/// The longest valid record: a header, and an inline body that zstd could
/// not shrink (it then adds a few bytes per 128 KiB block), or an action
/// result with its contents and a few dozen bytes of fields.
const MAX_RECORD: usize = INLINE_LIMIT as usize + 1024;
/// zstd's default level: about 300 MB/s per core, and Go's object files
/// shrink to a third or a quarter.
const LEVEL: i32 = 3;
/// Bodies larger than this are compressed on tokio's blocking pool, so as
/// not to hold up the runtime's other requests.
const COMPRESS_IN_PLACE: usize = 256 * 1024;
/// Stored manifests longer than this are refused.
const MAX_MANIFEST: usize = 64 << 20;
/// Deletions a sweep sends at once.
const DELETES_AT_ONCE: usize = 8;
/// Bytes read from a file at a time for a streamed upload.
const READ_CHUNK: usize = 1 << 20;

/// The remote cache: lookups, fetches and uploads, one request each, with
/// no deadlines of its own (the caller sets them). Records, manifests and
/// packs are read and written in one namespace; bodies are shared.
#[derive(Debug, Clone)]
pub struct RemoteCache {
    blobs: Arc<dyn BlobStore>,
    format: Format,
    namespace: Namespace,
    /// Signs every record written, if set.
    signer: Option<Arc<SigningKey>>,
}

/// A pack ready to store ([`RemoteCache::seal_pack`]).
#[derive(Debug, Clone)]
pub struct SealedPack {
    pub reference: PackRef,
    bytes: Bytes,
}

/// An action record found in the remote, with its inline body.
#[derive(Debug)]
pub struct Fetched {
    pub record: ActionRecord,
    /// The output, decompressed, when it was inline; else fetch it with
    /// [`RemoteCache::fetch_object`].
    pub inline: Option<Vec<u8>>,
    /// Bytes received.
    pub transferred: u64,
}

/// What the go command made: an action's output, when it was first put,
/// and how long building it took where that was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    pub action: Id,
    pub output: Id,
    /// Kept by every copy: the go command expires test results by it.
    pub put_time: SystemTime,
    pub build_time: Option<Duration>,
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Bytes sent, compressed.
    pub transferred: u64,
    /// Whether the output's object was already there, so not sent again.
    pub object_present: bool,
}

/// What [`RemoteCache::probe`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The remote's clock minus ours, in milliseconds, where the remote
    /// tells its time (object storage, in the probe blob's listing).
    pub clock_skew_ms: Option<i64>,
}

impl RemoteCache {
    /// The cache in the default namespace, writing unsigned records.
    pub fn new(blobs: Arc<dyn BlobStore>, format: Format) -> RemoteCache {
        RemoteCache {
            blobs,
            format,
            namespace: Namespace::default(),
            signer: None,
        }
    }

    /// The same remote, in `namespace`.
    pub fn in_namespace(&self, namespace: Namespace) -> RemoteCache {
        RemoteCache {
            namespace,
            ..self.clone()
        }
    }

    /// Signs every record this cache writes with `key`.
    pub fn signed_by(self, key: Arc<SigningKey>) -> RemoteCache {
        RemoteCache {
            signer: Some(key),
            ..self
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Whether records written here are signed.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Where the cache is, for messages.
    pub fn location(&self) -> &dyn fmt::Display {
        &*self.blobs
    }

    /// The key of the action entry of `action`, for messages.
    pub fn action_key(&self, action: &Id) -> String {
        self.format.action_key(self.namespace.as_str(), action)
    }

    /// The record of `action`, or `None` if the remote has none.
    pub async fn lookup(&self, action: &Id) -> Result<Option<Fetched>, RemoteError> {
        let key = self.action_key(action);
        let Some(stream) = self.blobs.get(&key).await? else {
            return Ok(None);
        };
        let bytes = read_whole(stream, MAX_RECORD, &key).await?;
        let (record, inline) = self.decode_record(action, &key, &bytes)?;
        Ok(Some(Fetched {
            record,
            inline,
            transferred: bytes.len() as u64,
        }))
    }

    /// Reads an action entry stored under `key`: its record, and its output
    /// if inline.
    fn decode_record(
        &self,
        action: &Id,
        key: &str,
        bytes: &[u8],
    ) -> Result<(ActionRecord, Option<Vec<u8>>), RemoteError> {
        match self.format {
            Format::Granary => {
                let (record, body) =
                    ActionRecord::parse(action, bytes).map_err(|why| damaged(key, why))?;
                let inline = match record.placement {
                    Placement::Object => None,
                    Placement::Inline => {
                        let mut output = Vec::with_capacity(record.size.min(INLINE_LIMIT) as usize);
                        let mut decoder =
                            ObjectDecoder::new(self.format, key, &mut output, record.size);
                        decoder.write(body)?;
                        decoder.finish()?;
                        Some(output)
                    }
                };
                Ok((record, inline))
            }
            Format::Reapi => reapi::decode(action, bytes).map_err(|why| damaged(key, why)),
        }
    }

    /// Streams the output of `record`, decompressed, into `sink`, checking
    /// its size (not its hash: the sink's owner does that). Returns the bytes
    /// received. Writes to `sink` happen on the runtime: make it a file.
    pub async fn fetch_object(
        &self,
        record: &ActionRecord,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, RemoteError> {
        let key = self.format.object_key(&record.output);
        let Some(mut stream) = self.blobs.get_object(&key, record.size).await? else {
            return Err(damaged(
                &key,
                "the object its action record names is missing",
            ));
        };
        let mut transferred = 0;
        let mut decoder = ObjectDecoder::new(self.format, &key, sink, record.size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            transferred += chunk.len() as u64;
            decoder.write(&chunk)?;
        }
        decoder.finish()?;
        Ok(transferred)
    }

    /// Uploads `body` as the output of `action`: its object first, unless
    /// inline or already there, then the record, so that no reader finds a
    /// record before its object.
    pub async fn upload(&self, made: &Made, body: Bytes) -> Result<Sent, RemoteError> {
        let record = self.record_of(made, body.len() as u64);
        let mut sent = Sent::default();
        if record.placement == Placement::Object {
            let key = self.format.object_key(&made.output);
            if self.blobs.has_object(&key, body.len() as u64).await? {
                sent.object_present = true;
            } else {
                let object = if body.len() <= COMPRESS_IN_PLACE {
                    self.encode_object(&body)?
                } else {
                    let (cache, body) = (self.clone(), body.clone());
                    tokio::task::spawn_blocking(move || cache.encode_object(&body))
                        .await
                        .map_err(|e| RemoteError::Failed(format!("compression failed: {e}")))??
                };
                sent.transferred += object.len() as u64;
                self.blobs.put(&key, object).await?;
            }
        }
        let bytes = self.encode_record(&record, &body)?;
        sent.transferred += bytes.len() as u64;
        self.blobs
            .put(&self.action_key(&made.action), bytes.into())
            .await?;
        Ok(sent)
    }

    /// Uploads the output stored in the file at `path`, `size` bytes that
    /// must hash to `output`, as [`RemoteCache::upload`] does; an object
    /// above [`STREAM_ABOVE`] streams from the file (compressed on the way
    /// in the granary format), so memory stays bounded whatever its size.
    /// A file that does not hash to `output` (changed since) is not
    /// published: its upload fails at the last chunk.
    pub async fn upload_file(
        &self,
        made: &Made,
        path: &std::path::Path,
        size: u64,
    ) -> Result<Sent, RemoteError> {
        let output = &made.output;
        if size <= STREAM_ABOVE {
            let body = tokio::fs::read(path).await.map_err(|e| {
                RemoteError::LocalFile(format!("cannot read {}: {e}", path.display()))
            })?;
            if Id::of(&body) != *output {
                return Err(changed(path));
            }
            return self.upload(made, body.into()).await;
        }
        let record = self.record_of(made, size);
        let key = self.format.object_key(output);
        let mut sent = Sent::default();
        if self.blobs.has_object(&key, size).await? {
            sent.object_present = true;
        } else {
            let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (stream, length) = match self.format {
                Format::Granary => (object_stream(path, *output, true, counted.clone()), None),
                Format::Reapi => (
                    object_stream(path, *output, false, counted.clone()),
                    Some(size),
                ),
            };
            self.blobs.put_stream(&key, stream, length).await?;
            sent.transferred += counted.load(std::sync::atomic::Ordering::Relaxed);
        }
        let bytes = self.encode_record(&record, &[])?;
        sent.transferred += bytes.len() as u64;
        self.blobs
            .put(&self.action_key(&made.action), bytes.into())
            .await?;
        Ok(sent)
    }

    /// An entry as the remote stores it, for a pack: its action record, and
    /// its object (empty when the output is inline).
    pub fn encode_entry(&self, made: &Made, body: &[u8]) -> Result<(Vec<u8>, Bytes), RemoteError> {
        let record = self.record_of(made, body.len() as u64);
        let object = match record.placement {
            Placement::Inline => Bytes::new(),
            Placement::Object => self.encode_object(body)?,
        };
        Ok((self.encode_record(&record, body)?, object))
    }

    /// The record of an output, inline if small enough, signed if this
    /// cache signs.
    fn record_of(&self, made: &Made, size: u64) -> ActionRecord {
        let mut record = ActionRecord {
            action: made.action,
            output: made.output,
            size,
            put_time: made.put_time,
            build_time: made.build_time,
            placement: if size <= INLINE_LIMIT {
                Placement::Inline
            } else {
                Placement::Object
            },
            signature: None,
        };
        if let Some(signer) = &self.signer {
            record.signature = Some(signer.sign(&record.claim(self.namespace.as_str())));
        }
        record
    }

    fn encode_object(&self, body: &[u8]) -> Result<Bytes, RemoteError> {
        Ok(match self.format {
            Format::Granary => compress(body)?.into(),
            Format::Reapi => Bytes::copy_from_slice(body),
        })
    }

    fn encode_record(&self, record: &ActionRecord, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let inline = (record.placement == Placement::Inline).then_some(body);
        Ok(match self.format {
            Format::Granary => {
                let mut bytes = record.header().into_bytes();
                if let Some(inline) = inline {
                    bytes.extend_from_slice(&compress(inline)?);
                }
                bytes
            }
            Format::Reapi => reapi::encode(record, inline),
        })
    }

    /// Checks that the remote answers and takes our credentials, leaving
    /// nothing behind: a lookup of an action no build has, and with
    /// `write` a write. In object storage the write is a probe blob in
    /// this namespace, read back, listed (its time there against ours is
    /// the clock skew) and deleted; a REAPI cache cannot delete, so there
    /// it is the empty blob, which every such cache holds already (and an
    /// HTTP server's `Date` gives the skew).
    pub async fn probe(&self, write: bool) -> Result<Probe, RemoteError> {
        let nobody = Id::from([0; 32]);
        let lookup = self.action_key(&nobody);
        self.blobs.get(&lookup).await?;
        if !write {
            let clock_skew_ms = self.blobs.clock_skew_ms(&lookup).await?;
            return Ok(Probe { clock_skew_ms });
        }
        if self.format == Format::Reapi {
            let empty = self.format.object_key(&Id::of(b""));
            self.blobs.put(&empty, Bytes::new()).await?;
            let clock_skew_ms = self.blobs.clock_skew_ms(&empty).await?;
            return Ok(Probe { clock_skew_ms });
        }
        let mut name = [0u8; 16];
        getrandom::fill(&mut name)
            .map_err(|e| RemoteError::Config(format!("no randomness for a probe name: {e}")))?;
        let dir = format!(
            "{}doctor/",
            self.format.namespace_dir(self.namespace.as_str())
        );
        let key = format!("{dir}{}", hex::encode(name));
        let body = Bytes::from_static(b"granary doctor: safe to delete\n");
        let before = SystemTime::now();
        self.blobs.put(&key, body.clone()).await?;
        let after = SystemTime::now();
        let read_back = self.read_small(&key).await;
        let listed = self.blobs.list(&dir).await;
        self.blobs.delete(&key).await?;
        if self.blobs.exists(&key).await? {
            return Err(RemoteError::Failed(format!(
                "the probe {key} is still there after its deletion"
            )));
        }
        if read_back?.as_deref() != Some(&body[..]) {
            return Err(RemoteError::Damaged {
                key,
                why: "the probe read back differs from what was written".into(),
            });
        }
        // Our clock when the remote stamped the blob, to within the put's
        // duration: its middle.
        let ours = before + after.duration_since(before).unwrap_or_default() / 2;
        let clock_skew_ms =
            listed?
                .iter()
                .find(|l| l.key == key)
                .map(|l| match l.modified.duration_since(ours) {
                    Ok(ahead) => ahead.as_millis() as i64,
                    Err(behind) => -(behind.duration().as_millis() as i64),
                });
        Ok(Probe { clock_skew_ms })
    }

    /// A blob small enough to hold, whole.
    async fn read_small(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let Some(mut body) = self.blobs.get(key).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > 1 << 20 {
                return Err(RemoteError::Damaged {
                    key: key.to_owned(),
                    why: "more than 1 MiB where a few bytes were written".into(),
                });
            }
        }
        Ok(Some(bytes))
    }

    /// What to change when the remote refuses our credentials (see
    /// [`BlobStore::credentials_advice`]).
    pub fn credentials_advice(&self, writes: bool) -> String {
        self.blobs.credentials_advice(writes)
    }

    /// Whether packs are stored in this remote: in object storage, and in
    /// the CAS of a REAPI cache that has no batch endpoint (over gRPC, and
    /// an HTTP server such as bazel-remote once a batch request found none),
    /// where a pack is a blob like any other (its name is its SHA-256).
    /// granary serve's HTTP face answers batches instead (see
    /// [`RemoteCache::open_batch`]).
    ///
    /// A REAPI store that has not said yet whether it answers batches (a
    /// gRPC server this run asked for none) is asked once, with an empty
    /// batch: packs are for servers that cannot answer one.
    pub async fn stores_packs(&self) -> bool {
        if self.format == Format::Granary {
            return true;
        }
        if self.blobs.keeps_packs() {
            // A failed question leaves the answer unknown: packs are kept.
            let _ = self.open_batch(&[]).await;
        }
        self.blobs.keeps_packs()
    }

    /// Finishes a pack for storing: its bytes, and the reference a
    /// manifest names it by (its ID is its bytes' hash, so a manifest can
    /// name it before it is stored). It may compress: call it where
    /// blocking is allowed.
    pub fn seal_pack(&self, pack: PackWriter) -> Result<SealedPack, RemoteError> {
        let entries = pack.entries() as u32;
        let bytes = match self.format {
            Format::Granary => pack.finish(),
            // In a REAPI cache a pack is one zstd stream: the format keeps
            // objects plain, and a server would compress it on every read.
            Format::Reapi => zstd::bulk::compress(&pack.finish(), LEVEL)
                .map_err(|e| RemoteError::LocalFile(format!("cannot compress a pack: {e}")))?,
        };
        Ok(SealedPack {
            reference: PackRef {
                id: Id::of(&bytes),
                // Whole seconds, as manifests keep it.
                created: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(unix_seconds(SystemTime::now())),
                size: bytes.len() as u64,
                entries,
            },
            bytes: bytes.into(),
        })
    }

    /// Stores a sealed pack; returns its reference.
    pub async fn put_pack(&self, pack: SealedPack) -> Result<PackRef, RemoteError> {
        let key = self
            .format
            .pack_key(self.namespace.as_str(), &pack.reference.id);
        self.blobs.put(&key, pack.bytes).await?;
        Ok(pack.reference)
    }

    /// Opens a pack, or `None` if it is gone.
    pub async fn open_pack(&self, pack: &PackRef) -> Result<Option<PackReader>, RemoteError> {
        let key = self.format.pack_key(self.namespace.as_str(), &pack.id);
        let opened = match self.format {
            Format::Granary => match self.blobs.get(&key).await? {
                Some(stream) => Some(PackReader::open(stream, key).await?),
                None => None,
            },
            Format::Reapi => match self.blobs.get_compressed_object(&key, pack.size).await? {
                Some(stream) => Some(PackReader::open_zstd(stream, key).await?),
                None => None,
            },
        };
        Ok(opened)
    }

    /// Asks the server for many entries in one request; the answer is a
    /// pack. `None`: the remote has no batch endpoint.
    pub async fn open_batch(&self, actions: &[Id]) -> Result<Option<PackReader>, RemoteError> {
        let mut body = String::with_capacity(actions.len() * 65);
        for action in actions {
            body.push_str(&hex::encode(action));
            body.push('\n');
        }
        let prefix = self.format.namespace_dir(self.namespace.as_str());
        let Some(answer) = self.blobs.batch(&prefix, body.into()).await? else {
            return Ok(None);
        };
        let key = format!("a batch of {} entries", actions.len());
        let pack = if answer.zstd {
            PackReader::open_zstd(answer.body, key).await?
        } else {
            PackReader::open(answer.body, key).await?
        };
        Ok(Some(pack))
    }

    /// Reads a pack's entry: its record and, if inline, its output. If not,
    /// read the object with [`RemoteCache::read_packed_object`].
    pub fn unpack(
        &self,
        pack: &PackReader,
        action: &Id,
        record: &[u8],
    ) -> Result<Fetched, RemoteError> {
        let (record, inline) = self
            .decode_record(action, pack.key(), record)
            .map_err(|e| pack.damaged(format!("entry {}: {e}", hex::encode(action))))?;
        Ok(Fetched {
            record,
            inline,
            transferred: 0,
        })
    }

    /// Streams the object of the pack's current entry into `sink`, as
    /// [`RemoteCache::fetch_object`] does.
    pub async fn read_packed_object(
        &self,
        pack: &mut PackReader,
        record: &ActionRecord,
        sink: &mut (dyn Write + Send),
    ) -> Result<(), RemoteError> {
        let key = pack.key().to_owned();
        let mut decoder = ObjectDecoder::new(self.format, &key, sink, record.size);
        pack.read_object(|chunk| decoder.write(chunk)).await?;
        decoder.finish()
    }

    /// The latest manifest of `scope`, with its seal, or `None` if there is
    /// none.
    pub async fn fetch_manifest(
        &self,
        scope: &str,
    ) -> Result<Option<(Manifest, Seal)>, RemoteError> {
        let (key, bytes) = match self.format {
            Format::Granary => {
                let key = self.format.manifest_key(self.namespace.as_str(), scope);
                let Some(stream) = self.blobs.get(&key).await? else {
                    return Ok(None);
                };
                let bytes = read_whole(stream, MAX_MANIFEST, &key).await?;
                (key, bytes)
            }
            Format::Reapi => {
                let action = manifest_action(scope);
                let Some(found) = self.lookup(&action).await? else {
                    return Ok(None);
                };
                let key = self.action_key(&action);
                if found.record.size > MAX_MANIFEST as u64 {
                    return Err(damaged(&key, "a manifest longer than 64 MiB"));
                }
                let bytes = match found.inline {
                    Some(bytes) => bytes,
                    None => {
                        let mut bytes = Vec::new();
                        self.fetch_object(&found.record, &mut bytes).await?;
                        bytes
                    }
                };
                (key, bytes)
            }
        };
        let manifest = Manifest::decode_sealed(&bytes)
            .map_err(|why| damaged(&key, format!("not a manifest: {why}")))?;
        Ok(Some(manifest))
    }

    /// Publishes `manifest` as the latest of its scope, signed if this
    /// cache signs. Returns the bytes sent.
    pub async fn publish_manifest(&self, manifest: &Manifest) -> Result<u64, RemoteError> {
        let bytes = match &self.signer {
            Some(key) => {
                manifest.encode_signed(|digest| key.sign_manifest(self.namespace.as_str(), digest))
            }
            None => manifest.encode(),
        };
        match self.format {
            Format::Granary => {
                let sent = bytes.len() as u64;
                self.blobs
                    .put(
                        &self
                            .format
                            .manifest_key(self.namespace.as_str(), &manifest.scope),
                        bytes.into(),
                    )
                    .await?;
                Ok(sent)
            }
            Format::Reapi => {
                let made = Made {
                    action: manifest_action(&manifest.scope),
                    output: Id::of(&bytes),
                    put_time: manifest.written,
                    build_time: None,
                };
                let sent = self.upload(&made, bytes.into()).await?;
                Ok(sent.transferred)
            }
        }
    }

    /// Deletes this namespace's packs and manifests too old to be used (see
    /// [`manifest`](crate::manifest)), at most `limit` of them. Only in
    /// object storage: a cache server ages its blobs out by itself.
    pub async fn sweep(&self, now: SystemTime, limit: usize) -> Result<usize, RemoteError> {
        if self.format != Format::Granary {
            return Ok(0);
        }
        let dir = self.format.namespace_dir(self.namespace.as_str());
        let (packs, manifests) = (format!("{dir}packs/"), format!("{dir}manifests/"));
        // Both at once: the sweep runs beside a close's publication, and
        // should take no more round trips than it does.
        let (packs, manifests) =
            futures_util::try_join!(self.blobs.list(&packs), self.blobs.list(&manifests))?;
        let old: Vec<String> = (packs.into_iter().map(|listed| (listed, PACK_DELETE_AGE)))
            .chain(
                manifests
                    .into_iter()
                    .map(|listed| (listed, MANIFEST_DELETE_AGE)),
            )
            .filter(|(listed, max_age)| {
                now.duration_since(listed.modified)
                    .is_ok_and(|age| age > *max_age)
            })
            .map(|(listed, _)| listed.key)
            .take(limit)
            .collect();
        futures_util::stream::iter(&old)
            .map(|key| self.blobs.delete(key))
            .buffer_unordered(DELETES_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(old.len())
    }
}

/// The object in the file at `path`, as a stream of chunks read (and,
/// with `compress`, zstd-compressed) on the blocking pool a few at a time,
/// counting the bytes sent in `counted`; the last item is an error if the
/// file does not hash to `output`.
fn object_stream(
    path: &std::path::Path,
    output: Id,
    compress: bool,
    counted: Arc<std::sync::atomic::AtomicU64>,
) -> ByteStream {
    let (chunks, received) = tokio::sync::mpsc::channel::<Result<Bytes, RemoteError>>(2);
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let result = read_object(&path, output, compress, &mut |chunk: Vec<u8>| {
            counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            chunks.blocking_send(Ok(chunk.into())).is_ok()
        });
        if let Err(e) = result {
            let _ = chunks.blocking_send(Err(e));
        }
    });
    futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    })
    .boxed()
}

/// Reads the file at `path` in chunks, hashing, and hands each (compressed
/// if `compress`) to `send`, until it says stop. Fails if the file does
/// not hash to `output`.
fn read_object(
    path: &std::path::Path,
    output: Id,
    compress: bool,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<(), RemoteError> {
    use std::io::Read;
    let failed =
        |e: io::Error| RemoteError::LocalFile(format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut hasher = sha2::Sha256::new();
    let mut encoder = match compress {
        true => Some(zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(failed)?),
        false => None,
    };
    let mut buffer = vec![0; READ_CHUNK];
    loop {
        let n = file.read(&mut buffer).map_err(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        let chunk = match &mut encoder {
            None => buffer[..n].to_vec(),
            Some(encoder) => {
                encoder.write_all(&buffer[..n]).map_err(failed)?;
                std::mem::take(encoder.get_mut())
            }
        };
        if !chunk.is_empty() && !send(chunk) {
            return Ok(());
        }
    }
    if Id(hasher.finalize().into()) != output {
        return Err(changed(path));
    }
    if let Some(encoder) = encoder {
        let tail = encoder.finish().map_err(failed)?;
        if !tail.is_empty() {
            send(tail);
        }
    }
    Ok(())
}

fn changed(path: &std::path::Path) -> RemoteError {
    RemoteError::LocalFile(format!(
        "{} changed before its upload; not uploaded",
        path.display()
    ))
}

fn compress(body: &[u8]) -> Result<Vec<u8>, RemoteError> {
    zstd::bulk::compress(body, LEVEL)
        .map_err(|e| RemoteError::Failed(format!("cannot compress an output: {e}")))
}

fn damaged(key: &str, why: impl Into<String>) -> RemoteError {
    RemoteError::Damaged {
        key: key.to_owned(),
        why: why.into(),
    }
}

/// Reads a blob that must be at most `limit` bytes long.
async fn read_whole(
    mut stream: ByteStream,
    limit: usize,
    key: &str,
) -> Result<Vec<u8>, RemoteError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if bytes.len() + chunk.len() > limit {
            return Err(damaged(key, format!("longer than {limit} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Decompresses one zstd frame into a sink, refusing to write more than the
/// size the record announced: a hostile record cannot fill the disk.
struct Decoder<'a> {
    inner: zstd::stream::write::Decoder<'static, Limited<'a>>,
}

enum DecodeError {
    Damaged(String),
    Sink(io::Error),
}

impl DecodeError {
    fn into_remote(self, key: &str) -> RemoteError {
        match self {
            DecodeError::Damaged(why) => damaged(key, why),
            DecodeError::Sink(e) => RemoteError::Sink(e),
        }
    }
}

impl<'a> Decoder<'a> {
    fn new(sink: &'a mut (dyn Write + Send), size: u64) -> Decoder<'a> {
        let inner = zstd::stream::write::Decoder::new(Limited::new(sink, size))
            .expect("a zstd decoder needs no more than memory");
        Decoder { inner }
    }

    fn write(&mut self, frame: &[u8]) -> Result<(), DecodeError> {
        let result = self.inner.write_all(frame);
        self.check(result)
    }

    /// Flushes what is left and checks that the whole size arrived.
    fn finish(mut self) -> Result<(), DecodeError> {
        let result = self.inner.flush();
        self.check(result)?;
        match self.inner.get_ref().left {
            0 => Ok(()),
            left => Err(DecodeError::Damaged(short_by(left))),
        }
    }

    fn check(&mut self, result: io::Result<()>) -> Result<(), DecodeError> {
        result.map_err(|e| match self.inner.get_mut().sink_error.take() {
            Some(sink) => DecodeError::Sink(sink),
            None => DecodeError::Damaged(format!("not a valid body: {e}")),
        })
    }
}

fn short_by(left: u64) -> String {
    format!("the body is {left} bytes shorter than its record says")
}

/// Decodes an object as its bytes arrive, into a sink, as `format`
/// stores it: a zstd frame, or the bytes themselves.
struct ObjectDecoder<'a> {
    key: &'a str,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Zstd(Decoder<'a>),
    Plain(Limited<'a>),
}

impl<'a> ObjectDecoder<'a> {
    fn new(format: Format, key: &'a str, sink: &'a mut (dyn Write + Send), size: u64) -> Self {
        let inner = match format {
            Format::Granary => Inner::Zstd(Decoder::new(sink, size)),
            Format::Reapi => Inner::Plain(Limited::new(sink, size)),
        };
        ObjectDecoder { key, inner }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RemoteError> {
        match &mut self.inner {
            Inner::Zstd(decoder) => decoder.write(bytes).map_err(|e| e.into_remote(self.key)),
            Inner::Plain(limited) => {
                limited
                    .write_all(bytes)
                    .map_err(|e| match limited.sink_error.take() {
                        Some(sink) => RemoteError::Sink(sink),
                        None => damaged(self.key, e.to_string()),
                    })
            }
        }
    }

    /// Checks that the whole object arrived.
    fn finish(self) -> Result<(), RemoteError> {
        match self.inner {
            Inner::Zstd(decoder) => decoder.finish().map_err(|e| e.into_remote(self.key)),
            Inner::Plain(limited) if limited.left > 0 => {
                Err(damaged(self.key, short_by(limited.left)))
            }
            Inner::Plain(_) => Ok(()),
        }
    }
}

/// A sink that takes at most the size a record announced.
struct Limited<'a> {
    sink: &'a mut (dyn Write + Send),
    left: u64,
    sink_error: Option<io::Error>,
}

impl<'a> Limited<'a> {
    fn new(sink: &'a mut (dyn Write + Send), size: u64) -> Limited<'a> {
        Limited {
            sink,
            left: size,
            sink_error: None,
        }
    }
}

impl Write for Limited<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other("the body is longer than its record says"));
        }
        if let Err(e) = self.sink.write_all(buf) {
            self.sink_error = Some(e);
            return Err(io::Error::other("the sink failed"));
        }
        self.left -= buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    //! Fault injection: an in-memory blob store whose contents the tests
    //! damage at will. Round trips through a real S3 server are in the
    //! `granary` crate's tests.

    use std::time::Duration;

    use super::*;
    use crate::memory::MemoryBlobs;

    fn setup() -> (Arc<MemoryBlobs>, RemoteCache) {
        let memory = Arc::new(MemoryBlobs::default());
        (memory.clone(), RemoteCache::new(memory, Format::Granary))
    }

    fn output(body: &[u8]) -> Id {
        Id::of(body)
    }

    fn made(action: Id, output: Id, put_time: SystemTime) -> Made {
        Made {
            action,
            output,
            put_time,
            build_time: None,
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_probe_of_a_reapi_cache_writes_only_the_empty_blob() {
        let memory = Arc::new(MemoryBlobs::default());
        let cache = RemoteCache::new(memory.clone(), Format::Reapi)
            .in_namespace(Namespace::new("team").unwrap());
        assert_eq!(block_on(cache.probe(false)).unwrap(), Probe::default());
        assert!(memory.puts().is_empty());
        assert_eq!(memory.gets(), [format!("team/ac/{}", "00".repeat(32))]);
        block_on(cache.probe(true)).unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(memory.puts(), [format!("cas/{empty}")]);
        assert_eq!(memory.blob(&format!("cas/{empty}")).unwrap().len(), 0);
    }

    /// Go object files are text-heavy: compressible, but not trivially.
    fn object_like(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b"go.buildid TEXT main.main(SB) 0123456789abcdef"[(i * 7 + i / 13) % 46])
            .collect()
    }

    async fn fetch(cache: &RemoteCache, action: &Id) -> Result<Vec<u8>, RemoteError> {
        let found = cache.lookup(action).await?.expect("a record");
        match found.inline {
            Some(body) => Ok(body),
            None => {
                let mut body = Vec::new();
                cache.fetch_object(&found.record, &mut body).await?;
                Ok(body)
            }
        }
    }

    #[test]
    fn a_signing_cache_signs_what_it_writes_in_its_own_namespace() {
        let key = Arc::new(SigningKey::generate().unwrap());
        let trusted = granary_trust::TrustedKeys::new([key.public()]);
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let (small, large) = (b"small".to_vec(), object_like(200_000));
        for format in [Format::Granary, Format::Reapi] {
            let memory = Arc::new(MemoryBlobs::default());
            let main = RemoteCache::new(memory.clone(), format)
                .in_namespace(Namespace::new("main").unwrap())
                .signed_by(key.clone());
            block_on(async {
                for (action, body) in [(Id([1; 32]), &small), (Id([2; 32]), &large)] {
                    main.upload(&made(action, output(body), time), body.clone().into())
                        .await
                        .unwrap();
                    let found = main.lookup(&action).await.unwrap().unwrap();
                    let signature = found.record.signature.as_ref();
                    assert_eq!(
                        trusted.check(&found.record.claim("main"), signature),
                        Ok(())
                    );
                    assert!(trusted.check(&found.record.claim(""), signature).is_err());
                }
                // Records stay in the namespace; bodies are shared.
                let default = RemoteCache::new(memory.clone(), format);
                assert!(default.lookup(&Id([1; 32])).await.unwrap().is_none());
                assert!(
                    memory
                        .blob(&format.action_key("main", &Id([1; 32])))
                        .is_some()
                );
                assert!(memory.blob(&format.object_key(&output(&large))).is_some());
                // Entries of packs are signed records too.
                let (record, _) = main
                    .encode_entry(&made(Id([3; 32]), output(&small), time), &small)
                    .unwrap();
                let (record, _) = main.decode_record(&Id([3; 32]), "a pack", &record).unwrap();
                assert_eq!(
                    trusted.check(&record.claim("main"), record.signature.as_ref()),
                    Ok(())
                );
            });
        }
    }

    #[test]
    fn reapi_entries_are_action_results_over_plain_cas_blobs() {
        let memory = Arc::new(MemoryBlobs::default());
        let cache = RemoteCache::new(memory.clone(), Format::Reapi);
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_750_000_000_000_000_001);
        block_on(async {
            let small = object_like(1000);
            cache
                .upload(
                    &made(Id([1; 32]), output(&small), time),
                    small.clone().into(),
                )
                .await
                .unwrap();
            let found = cache.lookup(&Id([1; 32])).await.unwrap().unwrap();
            assert_eq!(found.record.put_time, time);
            assert_eq!(found.inline.as_deref(), Some(&small[..]));

            let large = object_like(1 << 20);
            let sent = cache
                .upload(
                    &made(Id([2; 32]), output(&large), time),
                    large.clone().into(),
                )
                .await
                .unwrap();
            assert!(sent.transferred > large.len() as u64, "sent as it is");
            let object = Format::Reapi.object_key(&output(&large));
            assert_eq!(object, format!("cas/{}", hex::encode(output(&large))));
            assert_eq!(
                memory.blob(&object).unwrap(),
                large,
                "the CAS holds the bytes themselves, as Bazel expects"
            );
            assert_eq!(fetch(&cache, &Id([2; 32])).await.unwrap(), large);

            // A cache that moved the inline contents to its CAS.
            let stripped = reapi::encode(
                &ActionRecord {
                    action: Id([4; 32]),
                    output: output(&large),
                    size: large.len() as u64,
                    put_time: time,
                    placement: Placement::Object,
                    build_time: None,
                    signature: None,
                },
                None,
            );
            memory
                .put(&Format::Reapi.action_key("", &Id([4; 32])), stripped.into())
                .await
                .unwrap();
            assert_eq!(fetch(&cache, &Id([4; 32])).await.unwrap(), large);

            memory.edit(&object, |bytes| bytes.truncate(1000));
            let short = fetch(&cache, &Id([2; 32])).await.unwrap_err();
            assert!(matches!(short, RemoteError::Damaged { .. }), "{short}");
            memory.edit(&Format::Reapi.action_key("", &Id([1; 32])), |bytes| {
                bytes.truncate(bytes.len() / 2)
            });
            let cut = cache.lookup(&Id([1; 32])).await.unwrap_err();
            assert!(matches!(cut, RemoteError::Damaged { .. }), "{cut}");
            memory
                .put(
                    &Format::Reapi.action_key("", &Id([5; 32])),
                    Bytes::from_static(b"\x0a\x00"),
                )
                .await
                .unwrap();
            let empty = cache.lookup(&Id([5; 32])).await.unwrap_err().to_string();
            assert!(empty.contains("one output file"), "{empty}");
        });
    }

    #[test]
    fn packed_entries_and_manifests_read_back_in_both_formats() {
        use crate::manifest::{Group, Manifest};
        use crate::pack::{PackWriter, RawEntry};
        for format in [Format::Granary, Format::Reapi] {
            let memory = Arc::new(MemoryBlobs::default());
            let cache = RemoteCache::new(memory.clone(), format);
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
            let bodies = [object_like(100), object_like(300_000)];
            let mut pack = PackWriter::default();
            for (i, body) in bodies.iter().enumerate() {
                let (record, object) = cache
                    .encode_entry(&made(Id([i as u8 + 1; 32]), output(body), time), body)
                    .unwrap();
                pack.add(&Id([i as u8 + 1; 32]), &record, &object);
            }
            pack.add_missing(&Id([7; 32]));
            block_on(async {
                let sealed = cache.seal_pack(pack).unwrap();
                let stored = cache.put_pack(sealed.clone()).await.unwrap();
                assert_eq!(stored, sealed.reference);
                assert_eq!(stored.entries, 3);
                let mut reader = cache.open_pack(&stored).await.unwrap().unwrap();
                for (i, body) in bodies.iter().enumerate() {
                    let Some(RawEntry::Found { action, record, .. }) = reader.next().await.unwrap()
                    else {
                        panic!("entry {i}");
                    };
                    let fetched = cache.unpack(&reader, &action, &record).unwrap();
                    assert_eq!(fetched.record.put_time, time);
                    let got = match fetched.inline {
                        Some(inline) => inline,
                        None => {
                            let mut got = Vec::new();
                            cache
                                .read_packed_object(&mut reader, &fetched.record, &mut got)
                                .await
                                .unwrap();
                            got
                        }
                    };
                    assert_eq!(&got, body, "{format:?} entry {i}");
                }
                assert!(matches!(
                    reader.next().await,
                    Ok(Some(RawEntry::Missing(_)))
                ));
                assert!(matches!(reader.next().await, Ok(None)));
                // A record under another action's name is damaged (REAPI
                // results do not name their action).
                let (record, _) = cache
                    .encode_entry(&made(Id([1; 32]), output(&bodies[0]), time), &bodies[0])
                    .unwrap();
                let misfiled = cache.unpack(&reader, &Id([3; 32]), &record);
                assert_eq!(misfiled.is_err(), format == Format::Granary);

                let manifest = Manifest {
                    scope: "m linux/amd64 go1.25".into(),
                    written: time,
                    groups: vec![Group {
                        pack: Some(stored),
                        pack_in: None,
                        actions: vec![Id([1; 32]), Id([2; 32])],
                        earlier: vec![Id([3; 32])],
                    }],
                    build_times: std::collections::HashMap::from([(
                        Id([2; 32]),
                        Duration::from_millis(40),
                    )]),
                };
                assert_eq!(cache.fetch_manifest(&manifest.scope).await.unwrap(), None);
                cache.publish_manifest(&manifest).await.unwrap();
                let (fetched, seal) = cache
                    .fetch_manifest(&manifest.scope)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!((fetched, seal.signature), (manifest.clone(), None));
                assert_eq!(cache.fetch_manifest("other").await.unwrap(), None);
            });
        }
    }

    #[test]
    fn small_outputs_are_inline_large_ones_objects_sent_once() {
        let (memory, cache) = setup();
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_750_000_000_000_000_001);
        block_on(async {
            let small = object_like(1000);
            let sent = cache
                .upload(
                    &made(Id([1; 32]), output(&small), time),
                    small.clone().into(),
                )
                .await
                .unwrap();
            assert_eq!(memory.puts().len(), 1, "one request");
            assert!(sent.transferred < 1000, "compressed: {sent:?}");
            let found = cache.lookup(&Id([1; 32])).await.unwrap().unwrap();
            assert_eq!(found.record.put_time, time);
            assert_eq!(found.inline.as_deref(), Some(&small[..]));

            let large = object_like(3 << 20);
            let sent = cache
                .upload(
                    &made(Id([2; 32]), output(&large), time),
                    large.clone().into(),
                )
                .await
                .unwrap();
            assert!(
                !sent.object_present && sent.transferred < (1 << 20),
                "{sent:?}"
            );
            let puts = memory.puts();
            assert_eq!(
                puts[1..],
                [
                    Format::Granary.object_key(&output(&large)),
                    Format::Granary.action_key("", &Id([2; 32]))
                ],
                "object first"
            );
            assert_eq!(fetch(&cache, &Id([2; 32])).await.unwrap(), large);

            let again = cache
                .upload(
                    &made(Id([3; 32]), output(&large), time),
                    large.clone().into(),
                )
                .await
                .unwrap();
            assert!(again.object_present);
            assert_eq!(memory.puts().len(), 4, "only the record is sent");
            assert_eq!(
                cache.lookup(&Id([4; 32])).await.unwrap().map(|f| f.record),
                None
            );
        });
    }

    #[test]
    fn incompressible_outputs_stay_near_their_size() {
        let (_memory, cache) = setup();
        let noise: Vec<u8> = (0..INLINE_LIMIT as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        block_on(async {
            let sent = cache
                .upload(
                    &made(Id([1; 32]), output(&noise), SystemTime::now()),
                    noise.clone().into(),
                )
                .await
                .unwrap();
            assert!(sent.transferred < INLINE_LIMIT + 300, "{sent:?}");
            assert_eq!(fetch(&cache, &Id([1; 32])).await.unwrap(), noise);
        });
    }

    #[test]
    fn damaged_entries_are_refused() {
        let small = object_like(5000);
        let large = object_like(200_000);
        type Edit = fn(&mut Vec<u8>);
        let edits: [(&str, Edit); 6] = [
            ("truncated", |b| b.truncate(b.len() - 10)),
            ("cut to half", |b| b.truncate(b.len() / 2)),
            ("trailing bytes", |b| b.extend_from_slice(b"junk")),
            ("bit flip in the frame", |b| {
                let n = b.len();
                b[n - 20] ^= 0x40
            }),
            ("empty", Vec::clear),
            ("not zstd", |b| *b = b"plain text".to_vec()),
        ];
        for (what, edit) in edits {
            for (body, on_object) in [(&small, false), (&large, true)] {
                let (memory, cache) = setup();
                block_on(async {
                    cache
                        .upload(
                            &made(Id([9; 32]), output(body), SystemTime::now()),
                            body.clone().into(),
                        )
                        .await
                        .unwrap();
                    let key = if on_object {
                        Format::Granary.object_key(&output(body))
                    } else {
                        Format::Granary.action_key("", &Id([9; 32]))
                    };
                    memory.edit(&key, edit);
                    match fetch(&cache, &Id([9; 32])).await {
                        // A flipped bit inside a raw or literal block may decode
                        // to other bytes of the right size: the hash check of
                        // whoever stores it catches that.
                        Ok(got) => assert!(got != *body && got.len() == body.len(), "{what}"),
                        Err(RemoteError::Damaged { .. }) => {}
                        Err(e) => panic!("{what} on {key}: {e}"),
                    }
                });
            }
        }
    }

    #[test]
    fn a_record_cannot_expand_beyond_its_size() {
        let (memory, cache) = setup();
        let body = vec![0; 4096];
        block_on(async {
            cache
                .upload(
                    &made(Id([5; 32]), output(&body), SystemTime::now()),
                    body.into(),
                )
                .await
                .unwrap();
            let bomb = zstd::bulk::compress(&vec![0; 50 << 20], 3).unwrap();
            memory.edit(&Format::Granary.action_key("", &Id([5; 32])), |record| {
                let header = record.iter().position(|&b| b == b'\n').unwrap() + 1;
                record.truncate(header);
                record.extend_from_slice(&bomb);
            });
            let e = cache.lookup(&Id([5; 32])).await.unwrap_err();
            assert!(e.to_string().contains("longer than its record says"), "{e}");
        });
    }

    /// Outputs above [`STREAM_ABOVE`] stream from their file in both
    /// formats and read back whole; a file that no longer hashes to its
    /// output ID is the local side's trouble, and nothing of it is stored.
    #[test]
    fn large_outputs_stream_from_their_file_and_a_changed_file_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output");
        let body = object_like(STREAM_ABOVE as usize + 3 * READ_CHUNK + 17);
        std::fs::write(&path, &body).unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for format in [Format::Granary, Format::Reapi] {
            let memory = Arc::new(MemoryBlobs::default());
            let cache = RemoteCache::new(memory.clone(), format);
            block_on(async {
                let size = body.len() as u64;
                let sent = cache
                    .upload_file(&made(Id([1; 32]), output(&body), time), &path, size)
                    .await
                    .unwrap();
                assert!(sent.transferred > 0 && !sent.object_present);
                assert_eq!(
                    fetch(&cache, &Id([1; 32])).await.unwrap(),
                    body,
                    "{format:?}"
                );

                let e = cache
                    .upload_file(
                        &made(Id([2; 32]), output(b"something else"), time),
                        &path,
                        size,
                    )
                    .await
                    .unwrap_err();
                assert!(
                    matches!(e, RemoteError::LocalFile(ref why) if why.contains("changed")),
                    "{e}"
                );
                assert_eq!(memory.blob(&format.action_key("", &Id([2; 32]))), None);
                assert_eq!(
                    memory.blob(&format.object_key(&output(b"something else"))),
                    None
                );
            });
        }
    }

    #[test]
    fn a_missing_object_or_a_failing_sink_is_not_a_hit() {
        let (memory, cache) = setup();
        let body = object_like(100_000);
        block_on(async {
            cache
                .upload(
                    &made(Id([6; 32]), output(&body), SystemTime::now()),
                    body.clone().into(),
                )
                .await
                .unwrap();
            let found = cache.lookup(&Id([6; 32])).await.unwrap().unwrap();

            struct Full;
            impl Write for Full {
                fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                    Err(io::Error::from(io::ErrorKind::StorageFull))
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let e = cache
                .fetch_object(&found.record, &mut Full)
                .await
                .unwrap_err();
            assert!(
                matches!(e, RemoteError::Sink(ref s) if s.kind() == io::ErrorKind::StorageFull),
                "{e}"
            );

            memory.remove(&Format::Granary.object_key(&output(&body)));
            let e = cache
                .fetch_object(&found.record, &mut Vec::new())
                .await
                .unwrap_err();
            assert!(matches!(e, RemoteError::Damaged { .. }), "{e}");
        });
    }
}
