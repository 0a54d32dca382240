//! ByteStream: blobs of any size, streamed both ways in bounded memory.
//!
//! A Read sends the blob from `read_offset` for up to `read_limit` bytes,
//! in chunks of [`CHUNK`]; a blob still being uploaded is followed as it
//! arrives, each wait bounded by the idle timeout. `compressed-blobs/zstd/`
//! reads send one zstd stream of the blob from the offset.
//!
//! A Write streams to disk as the HTTP PUT does, checked against the
//! digest before it is published, and at the same [`Pace`]: messages
//! without data are no progress. A Write that breaks off (the stream
//! fails, falls behind its pace, or ends without `finish_write`) keeps
//! what it received for twice the idle timeout (at most [`KEPT_AT_MOST`] uploads,
//! holding at most an eighth of `--max-size`; the oldest go first, and a
//! timer reaps those whose time is up): QueryWriteStatus tells the client
//! where to resume, and a new Write of the same resource name from that
//! offset continues it. Compressed writes are decoded on the way in, never
//! to more bytes than the digest says, with a window of at most
//! [`MAX_WINDOW_LOG`] bits.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStream;
use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::io::AsyncSeekExt;
use tonic::{Request, Response, Status, Streaming};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::resource::{Resource, parse_read, parse_write};
use super::{Reapi, empty_hash, refused, stalled};
use crate::check::Check;
use crate::disk::{Found, Writer};
use crate::follow::CHUNK;
use crate::grant::Access;
use crate::key::Kind;
use crate::pace::Pace;

/// Broken-off uploads kept at most; the oldest goes first.
const KEPT_AT_MOST: usize = 256;
/// The share of `--max-size` that kept uploads may hold (each holds what
/// it received): a client that breaks off uploads of huge blobs cannot
/// hold the room others need.
const KEPT_SHARE: u64 = 8;
/// Bytes gathered before they are written to disk.
const WRITE_BATCH: usize = 256 * 1024;
/// The largest zstd window a compressed Write may use, as a power of two
/// (8 MiB: what zstd's levels up to 19 use; 20 to 22 need more). The
/// decoder allocates the window a frame declares, so without a cap a 4 KB
/// frame declaring zstd's default maximum (128 MiB) costs that per stream.
pub const MAX_WINDOW_LOG: u32 = 23;
/// The window every compressed Write may use, whatever its size: zstd
/// streaming a blob of unknown size at level 3 (Bazel's default) declares
/// 2 MiB.
const MIN_WINDOW_LOG: u32 = 21;

/// Uploads that broke off, by resource name.
#[derive(Debug)]
pub struct Partials {
    held: Mutex<HashMap<String, (Instant, Partial)>>,
    /// How long a broken-off upload waits to be resumed: twice the idle
    /// timeout, time for a client to notice, reconnect and ask.
    kept_for: Duration,
}

impl Partials {
    pub fn new(idle_timeout: Duration) -> Partials {
        Partials {
            held: Mutex::default(),
            kept_for: idle_timeout.saturating_mul(2),
        }
    }

    fn take(&self, name: &str) -> Option<Partial> {
        let mut held = self.held.lock().expect("never poisoned");
        held.retain(|_, (since, _)| since.elapsed() < self.kept_for);
        held.remove(name).map(|(_, partial)| partial)
    }

    /// Drops the uploads kept too long, with their files and room; every
    /// quarter of that time until the task is dropped.
    pub async fn reap_forever(self: std::sync::Arc<Self>) {
        let mut ticks = tokio::time::interval((self.kept_for / 4).max(Duration::from_millis(100)));
        loop {
            ticks.tick().await;
            // Dropped outside the lock: each drop takes the disk's lock.
            let expired: Vec<Partial> = {
                let mut held = self.held.lock().expect("never poisoned");
                let names: Vec<String> = held
                    .iter()
                    .filter(|(_, (since, _))| since.elapsed() >= self.kept_for)
                    .map(|(name, _)| name.clone())
                    .collect();
                names
                    .iter()
                    .filter_map(|name| held.remove(name).map(|(_, partial)| partial))
                    .collect()
            };
            drop(expired);
        }
    }

    /// Keeps `partial` to be resumed, dropping the oldest kept uploads
    /// while there are too many or they hold more than `room` bytes.
    /// An upload larger than `room` alone is not kept, and drops nothing.
    fn keep(&self, name: String, partial: Partial, room: u64) {
        if partial.held() > room {
            return;
        }
        let mut held = self.held.lock().expect("never poisoned");
        held.retain(|_, (since, _)| since.elapsed() < self.kept_for);
        let mut reserved: u64 = held.values().map(|(_, p)| p.held()).sum::<u64>() + partial.held();
        while held.len() >= KEPT_AT_MOST || reserved > room {
            let Some(oldest) = held
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some((_, dropped)) = held.remove(&oldest) {
                reserved -= dropped.held();
            }
        }
        held.insert(name, (Instant::now(), partial));
    }

    fn committed(&self, name: &str) -> Option<u64> {
        let held = self.held.lock().expect("never poisoned");
        held.get(name)
            .filter(|(since, _)| since.elapsed() < self.kept_for)
            .map(|(_, partial)| partial.received)
    }
}

/// An upload under way: where it is written, how it is checked, and how
/// far it got in the client's terms (`write_offset`).
struct Partial {
    writer: Writer,
    check: Check,
    /// For `compressed-blobs/zstd/`: the decoder, and whether its last
    /// frame ended.
    decoder: Option<(Decoder<'static>, bool)>,
    received: u64,
    size: u64,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("key", &self.writer.key())
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Partial {
    /// The disk space this upload holds: what it has written.
    fn held(&self) -> u64 {
        self.writer.written()
    }

    /// Takes one message's data: decoded if compressed, checked, and
    /// gathered into `batch` for the disk.
    fn accept(&mut self, data: &[u8], batch: &mut Vec<u8>) -> Result<(), Status> {
        self.received += data.len() as u64;
        let start = batch.len();
        match &mut self.decoder {
            None => batch.extend_from_slice(data),
            // No data, no progress: the end of a frame stays known.
            Some(_) if data.is_empty() => {}
            Some((decoder, ended)) => {
                let mut input = InBuffer::around(data);
                let mut piece = vec![0; 64 * 1024];
                loop {
                    let read_from = input.pos();
                    let mut output = OutBuffer::around(&mut piece[..]);
                    let hint = decoder.run(&mut input, &mut output).map_err(|e| {
                        Status::invalid_argument(format!(
                            "the zstd stream is damaged, or its window is over 2^{} bytes \
                             (compress at level 19 or lower): {e}",
                            window_log(self.size)
                        ))
                    })?;
                    let produced = output.pos();
                    // A call that reads and writes nothing says nothing of
                    // the frame: after a frame's end, zstd's hint is the
                    // size of the next frame's header, not 0.
                    if produced > 0 || input.pos() > read_from {
                        *ended = hint == 0;
                    }
                    batch.extend_from_slice(&piece[..produced]);
                    if self.writer.written() + batch.len() as u64 > self.size {
                        break;
                    }
                    if input.pos() == data.len() && produced < piece.len() {
                        break;
                    }
                }
            }
        }
        if self.writer.written() + batch.len() as u64 > self.size {
            return Err(Status::invalid_argument(format!(
                "more than the {} bytes the resource name says; nothing stored",
                self.size
            )));
        }
        self.check
            .update(&batch[start..])
            .map_err(|rejected| Status::invalid_argument(rejected.message))
    }

    /// Writes what has gathered, off the runtime.
    async fn flush(mut self, batch: &mut Vec<u8>) -> Result<Partial, Status> {
        if batch.is_empty() {
            return Ok(self);
        }
        let (writer, result) = self.writer.write_off_runtime(std::mem::take(batch)).await;
        self.writer = writer;
        result.map_err(|refusal| refused(&refusal))?;
        Ok(self)
    }
}

impl Reapi {
    /// How many bytes kept uploads may reserve.
    fn kept_room(&self) -> u64 {
        self.service.disk.limits().max_size / KEPT_SHARE
    }
}

type ReadStream = Pin<Box<dyn futures_util::Stream<Item = Result<ReadResponse, Status>> + Send>>;

impl Reapi {
    async fn open_read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let asked = request.get_ref();
        let resource = parse_read(&asked.resource_name)?;
        self.authorize(&request, resource.instance, Access::Read, false)
            .await?;
        let (Ok(offset), Ok(limit)) = (
            u64::try_from(asked.read_offset),
            u64::try_from(asked.read_limit),
        ) else {
            return Err(Status::out_of_range(
                "read_offset and read_limit cannot be negative",
            ));
        };
        if resource.compressed && limit != 0 {
            return Err(Status::invalid_argument(
                "a read of compressed-blobs takes no read_limit",
            ));
        }
        if offset > resource.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the blob's {} bytes",
                resource.size
            )));
        }
        let plain = match resource.size == 0 && resource.key.hash == empty_hash() {
            true => futures_util::stream::empty().boxed(),
            false => self.chunks(&resource, offset).await?,
        };
        let limit = match limit {
            0 => u64::MAX,
            limit => limit,
        };
        let plain = limited(plain, limit);
        let sent = self.service.metrics.bytes_sent.clone();
        let stream = match resource.compressed {
            true => compressed(plain),
            false => plain,
        }
        .map(move |chunk| {
            let data = chunk.map_err(|e| Status::unavailable(format!("{e}; read again")))?;
            sent.inc_by(data.len() as u64);
            Ok(ReadResponse {
                data: data.to_vec(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// The blob's bytes from `offset`: from its file, or following its
    /// upload.
    async fn chunks(
        &self,
        resource: &Resource<'_>,
        offset: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, Status> {
        let (key, size) = (resource.key, resource.size);
        let service = &self.service;
        let upload = match service.disk.find(&key) {
            Found::Blob(blob) if blob.size != size => {
                self.count(Kind::Cas, false);
                return Err(Status::not_found(format!(
                    "{key} has {} bytes, not {size}",
                    blob.size
                )));
            }
            Found::Blob(blob) => {
                self.count(Kind::Cas, true);
                let mut file = tokio::fs::File::from_std(blob.file);
                file.seek(io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| Status::internal(format!("cannot read {key}: {e}")))?;
                let pin = blob.pin;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
                        let _pinned = &pin;
                        chunk
                    });
                return Ok(stream.boxed());
            }
            Found::Upload(upload) => upload,
            Found::Missing => match &service.backing {
                Some(backing) => backing
                    .fetch(&service.disk, key)
                    .map_err(|refusal| refused(&refusal))?,
                None => {
                    self.count(Kind::Cas, false);
                    return Err(Status::not_found(format!("no {key}")));
                }
            },
        };
        let Some(mut follower) = self.follow(key, upload).await? else {
            self.count(Kind::Cas, false);
            return Err(Status::not_found(format!("no {key}")));
        };
        if follower.expected().is_some_and(|expected| expected != size) {
            return Err(Status::not_found(format!("{key} is not {size} bytes")));
        }
        self.count(Kind::Cas, true);
        follower
            .skip_to(offset)
            .await
            .map_err(|e| Status::internal(format!("cannot read {key}: {e}")))?;
        let idle = service.idle_timeout;
        Ok(
            futures_util::stream::unfold(follower, move |mut follower| async move {
                let chunk = match tokio::time::timeout(idle, follower.next_chunk()).await {
                    Ok(chunk) => chunk?,
                    Err(_) => Err(io::Error::other(stalled(key, idle).message().to_owned())),
                };
                Some((chunk, follower))
            })
            .boxed(),
        )
    }

    /// Receives a Write; returns its committed size.
    async fn write(&self, request: Request<Streaming<WriteRequest>>) -> Result<i64, Status> {
        let idle = self.service.idle_timeout;
        let metadata = Request::from_parts(request.metadata().clone(), Default::default(), ());
        let mut stream = request.into_inner();
        let first = next_message(&mut stream, idle)
            .await?
            .ok_or_else(|| Status::invalid_argument("the write sent no message"))?;
        let name = first.resource_name.clone();
        let resource = parse_write(&name)?;
        self.authorize(&metadata, resource.instance, Access::Write, false)
            .await?;
        let (key, size) = (resource.key, resource.size);
        let limits = self.service.disk.limits();
        if size > limits.max_blob {
            self.service.metrics.reject("too_large");
            return Err(Status::resource_exhausted(format!(
                "{key} has {size} bytes; this server keeps blobs of at most {}",
                limits.max_blob
            )));
        }
        // An upload that finds the blob already stored ends at once, as
        // REAPI says: -1 for a compressed one, else the blob's size.
        let done = |received: u64| match resource.compressed {
            true => -1,
            false => received as i64,
        };
        if self.service.disk.contains(&key) == Some(size) || (size == 0 && key.hash == empty_hash())
        {
            return Ok(done(size));
        }
        let mut partial = match self.uploads.take(&name) {
            Some(partial)
                if first.write_offset >= 0 && partial.received == first.write_offset as u64 =>
            {
                partial
            }
            held if first.write_offset == 0 => {
                drop(held);
                let writer = self
                    .service
                    .disk
                    .begin(key, Some(size))
                    .map_err(|refusal| self.refused(&refusal))?;
                Partial {
                    writer,
                    check: Check::new(Kind::Cas),
                    decoder: match resource.compressed {
                        true => Some((bounded_decoder(size)?, false)),
                        false => None,
                    },
                    received: 0,
                    size,
                }
            }
            held => {
                let committed = held.as_ref().map_or(0, |p| p.received);
                if let Some(held) = held {
                    self.uploads.keep(name.clone(), held, self.kept_room());
                }
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not continue this upload, of which {committed} bytes \
                     are committed; ask QueryWriteStatus and resume from there",
                    first.write_offset
                )));
            }
        };
        let mut batch = Vec::new();
        let mut message = first;
        let mut pace = Pace::new(idle);
        loop {
            if message.write_offset < 0 || message.write_offset as u64 != partial.received {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} after {} bytes; nothing stored",
                    message.write_offset, partial.received
                )));
            }
            if !message.resource_name.is_empty() && message.resource_name != name {
                return Err(Status::invalid_argument(
                    "one Write writes one resource; nothing stored",
                ));
            }
            self.service
                .metrics
                .bytes_received
                .inc_by(message.data.len() as u64);
            pace.received(message.data.len() as u64);
            if let Err(status) = partial.accept(&message.data, &mut batch) {
                self.service.metrics.reject("invalid");
                return Err(status);
            }
            if batch.len() >= WRITE_BATCH {
                partial = partial.flush(&mut batch).await?;
            }
            if message.finish_write {
                break;
            }
            message = match paced_message(&mut stream, &pace).await {
                Ok(Some(message)) => message,
                broken => {
                    // Keep what came, so the client can resume.
                    partial = partial.flush(&mut batch).await?;
                    let received = partial.received;
                    self.uploads.keep(name, partial, self.kept_room());
                    return Err(match broken {
                        Err(status) => status,
                        Ok(_) => Status::aborted(format!(
                            "the stream ended without finish_write; {received} bytes are \
                             committed: resume from there"
                        )),
                    });
                }
            };
        }
        let partial = partial.flush(&mut batch).await?;
        let Partial {
            writer,
            check,
            decoder,
            received,
            size,
        } = partial;
        if decoder.is_some_and(|(_, ended)| !ended) {
            self.service.metrics.reject("incomplete");
            return Err(Status::invalid_argument(
                "the zstd stream ends in the middle of a frame; nothing stored",
            ));
        }
        if writer.written() != size {
            self.service.metrics.reject("incomplete");
            return Err(Status::invalid_argument(format!(
                "{} bytes received of the {size} the resource name says; nothing stored",
                writer.written()
            )));
        }
        check.finish(&key).map_err(|rejected| {
            self.service.metrics.reject(rejected.reason);
            Status::invalid_argument(rejected.message)
        })?;
        writer
            .publish_off_runtime()
            .await
            .map_err(|refusal| self.refused(&refusal))?;
        if let Some(backing) = &self.service.backing {
            backing.queue(key);
        }
        Ok(received as i64)
    }

    async fn query_write_status(
        &self,
        request: &Request<QueryWriteStatusRequest>,
    ) -> Result<QueryWriteStatusResponse, Status> {
        let name = &request.get_ref().resource_name;
        let resource = parse_write(name)?;
        self.authorize(request, resource.instance, Access::Write, false)
            .await?;
        if let Some(committed) = self.uploads.committed(name) {
            return Ok(QueryWriteStatusResponse {
                committed_size: committed as i64,
                complete: false,
            });
        }
        match self.service.disk.contains(&resource.key) == Some(resource.size) {
            true => Ok(QueryWriteStatusResponse {
                committed_size: resource.size as i64,
                complete: true,
            }),
            false => Err(Status::not_found(format!(
                "no upload of {} is under way",
                resource.key
            ))),
        }
    }
}

/// The next message of a Write, waiting at most `idle` for it.
async fn next_message(
    stream: &mut Streaming<WriteRequest>,
    idle: Duration,
) -> Result<Option<WriteRequest>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(message) => message,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no message for {idle:?}; what came is kept: resume the upload"
        ))),
    }
}

/// The next message of a Write, by the upload's pace.
async fn paced_message(
    stream: &mut Streaming<WriteRequest>,
    pace: &Pace,
) -> Result<Option<WriteRequest>, Status> {
    match tokio::time::timeout_at(pace.deadline(), stream.message()).await {
        Ok(message) => message,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{}; what came is kept: resume the upload",
            pace.too_slow()
        ))),
    }
}

/// The window a compressed Write of a `size`-byte blob may use, in bits.
fn window_log(size: u64) -> u32 {
    let needed = u64::BITS - size.saturating_sub(1).leading_zeros();
    needed.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// A zstd decoder for a `size`-byte blob (see [`window_log`]).
fn bounded_decoder(size: u64) -> Result<Decoder<'static>, Status> {
    let mut decoder = Decoder::new().map_err(|e| Status::internal(e.to_string()))?;
    decoder
        .set_parameter(DParameter::WindowLogMax(window_log(size)))
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(decoder)
}

/// At most `limit` bytes of `stream`.
fn limited(
    stream: BoxStream<'static, io::Result<Bytes>>,
    limit: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures_util::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        let chunk = match stream.next().await? {
            Ok(mut chunk) => {
                chunk.truncate(left.min(chunk.len() as u64) as usize);
                Ok(chunk)
            }
            Err(e) => Err(e),
        };
        let taken = chunk.as_ref().map_or(0, |c| c.len() as u64);
        Some((chunk, (stream, left - taken)))
    })
    .boxed()
}

/// `stream` as one zstd stream (level 1: the server compresses on every
/// read).
fn compressed(
    stream: BoxStream<'static, io::Result<Bytes>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    let encoder = match zstd::stream::write::Encoder::new(Vec::new(), 1) {
        Ok(encoder) => encoder,
        Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
    };
    futures_util::stream::unfold(
        (stream, Some(encoder)),
        |(mut stream, encoder)| async move {
            let mut encoder = encoder?;
            loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = io::Write::write_all(&mut encoder, &chunk) {
                            return Some((Err(e), (stream, None)));
                        }
                        let out = std::mem::take(encoder.get_mut());
                        if !out.is_empty() {
                            return Some((Ok(out.into()), (stream, Some(encoder))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (stream, None))),
                    None => {
                        return Some((encoder.finish().map(Bytes::from), (stream, None)));
                    }
                }
            }
        },
    )
    .boxed()
}

#[tonic::async_trait]
impl ByteStream for Reapi {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.observed("Read", "cas", self.open_read(request)).await
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.observed("Write", "cas", Reapi::write(self, request))
            .await
            .map(|committed_size| Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let started = Instant::now();
        let result = Reapi::query_write_status(self, &request)
            .await
            .map(Response::new);
        self.observe("QueryWriteStatus", "cas", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Disk, Limits};
    use crate::key::Key;

    /// A kept upload of a `size`-byte blob that has received `received`.
    fn partial(disk: &std::sync::Arc<Disk>, byte: u8, size: u64, received: u64) -> Partial {
        let key = Key::new(Kind::Cas, &hex::encode([byte; 32])).unwrap();
        let mut writer = disk.begin(key, Some(size)).unwrap();
        writer.write(&vec![byte; received as usize]).unwrap();
        Partial {
            writer,
            check: Check::new(Kind::Cas),
            decoder: None,
            received,
            size,
        }
    }

    /// A disk tier of 64 MiB in `dir`.
    fn disk(dir: &tempfile::TempDir) -> std::sync::Arc<Disk> {
        let limits = Limits {
            max_size: 64 << 20,
            low_watermark: 60 << 20,
            hard_limit: 64 << 20,
            max_blob: 1 << 30,
        };
        Disk::open(dir.path(), limits).unwrap().0
    }

    #[test]
    fn kept_uploads_give_back_their_room_once_they_hold_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(&dir);
        let partials = Partials::new(Duration::from_secs(60));
        let room = 1 << 20;
        // Announcing a blob of 1 GiB holds nothing: what came holds room.
        partials.keep("a".into(), partial(&disk, 1, 1 << 30, 600 << 10), room);
        assert_eq!(partials.committed("a"), Some(600 << 10));
        let one = disk.usage().reserved;
        assert_eq!(one, 600 << 10);
        // Two would hold more than the room: the older one goes, and its
        // room with it.
        partials.keep("b".into(), partial(&disk, 2, 1 << 30, 600 << 10), room);
        assert_eq!(
            (partials.committed("a"), partials.committed("b")),
            (None, Some(600 << 10))
        );
        assert_eq!(disk.usage().reserved, one);
        // One that received more than the room alone is not kept, and
        // drops nothing.
        partials.keep("c".into(), partial(&disk, 3, 4 << 20, 2 << 20), room);
        assert_eq!(
            (partials.committed("b"), partials.committed("c")),
            (Some(600 << 10), None)
        );
        assert_eq!(disk.usage().reserved, one);
        drop(partials.take("b"));
        assert_eq!(disk.usage().reserved, 0);
    }

    #[test]
    fn the_window_of_a_compressed_write_is_bounded_by_its_size_and_a_maximum() {
        assert_eq!(window_log(0), MIN_WINDOW_LOG);
        assert_eq!(window_log(4096), MIN_WINDOW_LOG);
        assert_eq!(window_log((1 << 22) + 1), 23);
        assert_eq!(window_log(u64::MAX), MAX_WINDOW_LOG);
    }

    /// Decodes `compressed` for a blob of `size` bytes in pieces of
    /// `message` bytes; whether the last frame ended.
    fn decode(compressed: &[u8], size: u64, message: usize) -> Result<(Vec<u8>, bool), Status> {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(&dir);
        let key = Key::new(Kind::Cas, &"ab".repeat(32)).unwrap();
        let mut partial = Partial {
            writer: disk.begin(key, Some(size)).unwrap(),
            check: Check::new(Kind::Cas),
            decoder: Some((bounded_decoder(size)?, false)),
            received: 0,
            size,
        };
        let mut out = Vec::new();
        for piece in compressed.chunks(message) {
            partial.accept(piece, &mut out)?;
        }
        let ended = partial.decoder.as_ref().is_some_and(|(_, ended)| *ended);
        Ok((out, ended))
    }

    #[test]
    fn a_frame_that_fills_the_output_exactly_still_ends() {
        // 64 KiB and its multiples fill the decoder's output piece exactly
        // with the frame's last byte.
        for size in [
            1,
            (64 << 10) - 1,
            64 << 10,
            (64 << 10) + 1,
            128 << 10,
            1 << 20,
        ] {
            let blob: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let compressed = zstd::bulk::compress(&blob, 3).unwrap();
            for message in [compressed.len(), 1000] {
                let (out, ended) = decode(&compressed, size as u64, message).unwrap();
                assert!(out == blob, "{size} bytes in messages of {message}");
                assert!(
                    ended,
                    "{size} bytes in messages of {message}: frame not ended"
                );
            }
        }
    }

    #[test]
    fn a_frame_declaring_a_huge_window_is_refused_before_it_is_allocated() {
        let blob = vec![7u8; 4096];
        let mut encoder = zstd::stream::raw::Encoder::new(3).unwrap();
        encoder
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
            .unwrap();
        let mut compressed = vec![0; 8192];
        let mut output = OutBuffer::around(&mut compressed[..]);
        let mut input = InBuffer::around(&blob[..]);
        encoder.run(&mut input, &mut output).unwrap();
        encoder.finish(&mut output, true).unwrap();
        let written = output.pos();
        compressed.truncate(written);
        let refused = decode(&compressed, 4096, compressed.len()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("window"), "{refused:?}");
        // The same blob with an ordinary window passes.
        let plain = zstd::bulk::compress(&blob, 3).unwrap();
        assert!(decode(&plain, 4096, plain.len()).unwrap().1);
    }
}
