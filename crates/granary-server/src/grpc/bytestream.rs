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
use tonic::{Request, Response, Status, Streaming};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::resource::{Resource, parse_read, parse_write};
use super::{Reapi, empty_hash, unreadable_status};
use crate::check::{Rejected, Why};
use crate::codec;
use crate::disk::STORE_LEVEL;
use crate::grant::Access;
use crate::key::Kind;
use crate::pace::Pace;
use crate::service::{Opened, Receiving, Unreadable, stored_bytes};

/// Broken-off uploads kept at most; the oldest goes first.
const KEPT_AT_MOST: usize = 256;
/// The share of `--max-size` that kept uploads may hold (each holds what
/// it received): a client that breaks off uploads of huge blobs cannot
/// hold the room others need.
const KEPT_SHARE: u64 = 8;
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

/// An upload under way: where it is received, and how far it got in the
/// client's terms (`write_offset`).
struct Partial {
    receiving: Receiving,
    /// For `compressed-blobs/zstd/`: the decoder, and whether its last
    /// frame ended.
    decoder: Option<(Decoder<'static>, bool)>,
    received: u64,
    size: u64,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("receiving", &self.receiving)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Partial {
    /// The disk space this upload holds: what it has taken.
    fn held(&self) -> u64 {
        self.receiving.received()
    }

    /// Takes one message's data: decoded if compressed, never to more
    /// than the blob's size.
    async fn accept(&mut self, data: &[u8]) -> Result<(), Rejected> {
        self.received += data.len() as u64;
        let Partial {
            receiving,
            decoder,
            size,
            ..
        } = self;
        let too_much = || {
            Rejected::incomplete(format!(
                "more than the {size} bytes the resource name says; nothing stored"
            ))
        };
        let Some((decoder, ended)) = decoder else {
            if receiving.received() + data.len() as u64 > *size {
                return Err(too_much());
            }
            return receiving.take(data).await;
        };
        // No data, no progress: the end of a frame stays known.
        if data.is_empty() {
            return Ok(());
        }
        let mut input = InBuffer::around(data);
        let mut piece = vec![0; 64 * 1024];
        loop {
            let read_from = input.pos();
            let mut output = OutBuffer::around(&mut piece[..]);
            let hint = decoder.run(&mut input, &mut output).map_err(|e| {
                Rejected::new(
                    Why::Invalid,
                    format!(
                        "the zstd stream is damaged, or its window is over 2^{} bytes \
                         (compress at level 19 or lower): {e}",
                        window_log(*size)
                    ),
                )
            })?;
            let produced = output.pos();
            // A call that reads and writes nothing says nothing of the
            // frame: after a frame's end, zstd's hint is the size of the
            // next frame's header, not 0.
            if produced > 0 || input.pos() > read_from {
                *ended = hint == 0;
            }
            if receiving.received() + produced as u64 > *size {
                return Err(too_much());
            }
            receiving.take(&piece[..produced]).await?;
            if input.pos() == data.len() && produced < piece.len() {
                return Ok(());
            }
        }
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
        let (chunks, encoded) = match resource.size == 0 && resource.key.hash == empty_hash() {
            true => (futures_util::stream::empty().boxed(), false),
            false => self.chunks(&resource, offset).await?,
        };
        let limit = match limit {
            0 => u64::MAX,
            limit => limit,
        };
        let sent = self.service.metrics.bytes_sent.clone();
        let stream = match (resource.compressed, encoded) {
            (true, true) => chunks,
            (true, false) => codec::encoded(chunks, STORE_LEVEL),
            (false, _) => limited(chunks, limit),
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
    /// upload; for a `compressed-blobs` read from the start of a blob
    /// stored compressed, its file as it is (then: `true`).
    async fn chunks(
        &self,
        resource: &Resource<'_>,
        offset: u64,
    ) -> Result<(BoxStream<'static, io::Result<Bytes>>, bool), Status> {
        let (key, size) = (resource.key, resource.size);
        let opened = match self.service.open(key).await {
            Ok(opened) => opened,
            Err(unreadable) => {
                if matches!(unreadable, Unreadable::Missing(_)) {
                    self.count(Kind::Cas, false);
                }
                return Err(unreadable_status(unreadable));
            }
        };
        let found = match &opened {
            Opened::Stored(blob) => Some(blob.size),
            Opened::Arriving(follower) => follower.expected(),
        };
        if let Some(found) = found
            && found != size
        {
            self.count(Kind::Cas, false);
            return Err(Status::not_found(format!(
                "{key} has {found} bytes, not {size}"
            )));
        }
        self.count(Kind::Cas, true);
        let stream = match opened {
            Opened::Stored(blob) if blob.compressed() && resource.compressed && offset == 0 => {
                return Ok((stored_bytes(key, blob, 0).map_err(unreadable_status)?, true));
            }
            opened => self.service.bytes_from(key, opened, offset).await,
        };
        Ok((stream.map_err(unreadable_status)?, false))
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
                Partial {
                    receiving: self
                        .service
                        .receive(key, Some(size))
                        .map_err(|rejected| self.rejected(rejected))?,
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
            partial
                .accept(&message.data)
                .await
                .map_err(|rejected| self.rejected(rejected))?;
            if message.finish_write {
                break;
            }
            message = match paced_message(&mut stream, &pace).await {
                Ok(Some(message)) => message,
                broken => {
                    // Keep what came, so the client can resume.
                    partial
                        .receiving
                        .flush()
                        .await
                        .map_err(|rejected| self.rejected(rejected))?;
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
        let Partial {
            receiving,
            decoder,
            received,
            size,
        } = partial;
        if decoder.is_some_and(|(_, ended)| !ended) {
            return Err(self.rejected(Rejected::incomplete(
                "the zstd stream ends in the middle of a frame; nothing stored",
            )));
        }
        self.service
            .finish(receiving, Some(size))
            .await
            .map_err(|rejected| self.rejected(rejected))?;
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
    async fn partial(disk: &std::sync::Arc<Disk>, byte: u8, size: u64, received: u64) -> Partial {
        let key = Key::new(Kind::Cas, &hex::encode([byte; 32])).unwrap();
        let writer = disk.begin(key, Some(size)).unwrap();
        let mut receiving = Receiving::new(key, Some(writer));
        receiving
            .take(&vec![byte; received as usize])
            .await
            .unwrap();
        receiving.flush().await.unwrap();
        Partial {
            receiving,
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
            memory: 1 << 20,
        };
        Disk::open(dir.path(), limits).unwrap().0
    }

    #[tokio::test]
    async fn kept_uploads_give_back_their_room_once_they_hold_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(&dir);
        let partials = Partials::new(Duration::from_secs(60));
        let room = 1 << 20;
        // Announcing a blob of 1 GiB holds nothing: what came holds room.
        partials.keep(
            "a".into(),
            partial(&disk, 1, 1 << 30, 600 << 10).await,
            room,
        );
        assert_eq!(partials.committed("a"), Some(600 << 10));
        let one = disk.usage().reserved;
        assert_eq!(one, 600 << 10);
        // Two would hold more than the room: the older one goes, and its
        // room with it.
        partials.keep(
            "b".into(),
            partial(&disk, 2, 1 << 30, 600 << 10).await,
            room,
        );
        assert_eq!(
            (partials.committed("a"), partials.committed("b")),
            (None, Some(600 << 10))
        );
        assert_eq!(disk.usage().reserved, one);
        // One that received more than the room alone is not kept, and
        // drops nothing.
        partials.keep("c".into(), partial(&disk, 3, 4 << 20, 2 << 20).await, room);
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

    /// Receives `compressed`, `blob` compressed, in messages of `message`
    /// bytes; whether the last frame ended. The blob is checked against
    /// its hash and published.
    async fn decode(blob: &[u8], compressed: &[u8], message: usize) -> Result<bool, Rejected> {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(&dir);
        let key = Key::new(Kind::Cas, &granary_id::Id::of(blob).to_string()).unwrap();
        let size = blob.len() as u64;
        let mut partial = Partial {
            receiving: Receiving::new(key, Some(disk.begin(key, Some(size)).unwrap())),
            decoder: Some((bounded_decoder(size).unwrap(), false)),
            received: 0,
            size,
        };
        for piece in compressed.chunks(message) {
            partial.accept(piece).await?;
        }
        let ended = partial.decoder.as_ref().is_some_and(|(_, ended)| *ended);
        partial.receiving.finish(&disk, Some(size)).await?;
        Ok(ended)
    }

    #[tokio::test]
    async fn a_frame_that_fills_the_output_exactly_still_ends() {
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
                let ended = decode(&blob, &compressed, message).await.unwrap();
                assert!(
                    ended,
                    "{size} bytes in messages of {message}: frame not ended"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_frame_declaring_a_huge_window_is_refused_before_it_is_allocated() {
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
        let refused = decode(&blob, &compressed, compressed.len())
            .await
            .unwrap_err();
        assert_eq!(refused.why, Why::Invalid);
        assert!(refused.message.contains("window"), "{refused:?}");
        // The same blob with an ordinary window passes.
        let plain = zstd::bulk::compress(&blob, 3).unwrap();
        assert!(decode(&blob, &plain, plain.len()).await.unwrap());
    }
}
