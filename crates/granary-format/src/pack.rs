//! Packs: many cache entries in one blob, so that fetching thousands of
//! entries costs a few dozen requests.
//!
//! ```text
//! pack  = MAGIC entry* END
//! entry = action[32] record_length:u32 record object_length:u64 object
//!       | action[32] 0:u32                      the remote has no such entry
//! END   = 32 zero bytes
//! ```
//!
//! Integers are big-endian. No action ID is zero (they are SHA-256 sums),
//! so the end cannot be mistaken for an entry. `record` and `object` are the action entry and
//! the object exactly as the [`Format`](crate::Format) stores them under
//! their keys, so a pack is checked as the entries themselves are. The same
//! framing carries packs stored in object storage and the answers of a
//! cache server's batch endpoint (`POST /batch`), which is why an entry may
//! say that it is missing. The explicit end tells a complete pack from a
//! cut one. A batch answer may come compressed as a whole, as one zstd
//! stream ([`PackReader::open_zstd`]).

use granary_id::Id;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::{ByteStream, RemoteError};

/// The first bytes of every pack.
pub const MAGIC: &[u8; 16] = b"granary-pack-01\n";
/// Action records longer than this are refused (REAPI servers take action
/// results up to 4 MiB).
pub const MAX_PACKED_RECORD: u32 = 4 << 20;

/// Appends the head of an entry to `out`: what precedes its object's
/// `object_length` bytes. With [`write_missing`] and [`write_end`], the one
/// encoder of packs, for [`PackWriter`] and for writers that stream
/// objects (a cache server's batch answer).
pub fn write_entry_head(out: &mut Vec<u8>, action: &Id, record: &[u8], object_length: u64) {
    out.extend_from_slice(&action.0);
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(record);
    out.extend_from_slice(&object_length.to_be_bytes());
}

/// Appends to `out` the entry saying that there is none for `action`.
pub fn write_missing(out: &mut Vec<u8>, action: &Id) {
    out.extend_from_slice(&action.0);
    out.extend_from_slice(&0u32.to_be_bytes());
}

/// Appends the end of a pack to `out`.
pub fn write_end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 32]);
}

/// A pack being written, in memory.
#[derive(Debug)]
pub struct PackWriter {
    bytes: Vec<u8>,
    entries: usize,
}

impl Default for PackWriter {
    fn default() -> Self {
        PackWriter {
            bytes: MAGIC.to_vec(),
            entries: 0,
        }
    }
}

impl PackWriter {
    /// Adds an entry: its record, and its object (empty when inline).
    pub fn add(&mut self, action: &Id, record: &[u8], object: &[u8]) {
        write_entry_head(&mut self.bytes, action, record, object.len() as u64);
        self.bytes.extend_from_slice(object);
        self.entries += 1;
    }

    /// Says that there is no entry for `action`.
    pub fn add_missing(&mut self, action: &Id) {
        write_missing(&mut self.bytes, action);
        self.entries += 1;
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The whole pack, end included.
    pub fn finish(mut self) -> Vec<u8> {
        write_end(&mut self.bytes);
        self.bytes
    }
}

/// One entry of a pack, as read.
#[derive(Debug)]
pub enum RawEntry {
    /// The entry's record; its object (`object_length` bytes, maybe none)
    /// follows, to be read with [`PackReader::read_object`] or skipped.
    Found {
        action: Id,
        record: Vec<u8>,
        object_length: u64,
    },
    /// The remote had no entry for this action.
    Missing(Id),
}

type IoStream = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// Reads a pack as it arrives.
pub struct PackReader {
    reader: StreamReader<IoStream, Bytes>,
    key: String,
    /// Bytes of the current entry's object not yet read.
    object_left: u64,
    /// Bytes received, as they came (compressed or not).
    received: Arc<AtomicU64>,
}

impl std::fmt::Debug for PackReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackReader")
            .field("key", &self.key)
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl PackReader {
    /// Checks the pack's first bytes.
    pub async fn open(stream: ByteStream, key: String) -> Result<PackReader, RemoteError> {
        PackReader::start(stream, key, false).await
    }

    /// As [`PackReader::open`], for a pack compressed as one zstd stream.
    pub async fn open_zstd(stream: ByteStream, key: String) -> Result<PackReader, RemoteError> {
        PackReader::start(stream, key, true).await
    }

    async fn start(stream: ByteStream, key: String, zstd: bool) -> Result<PackReader, RemoteError> {
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let stream = stream
            .inspect_ok(move |chunk| {
                counter.fetch_add(chunk.len() as u64, Relaxed);
            })
            .boxed();
        let stream = if zstd {
            decompressed(stream, key.clone())
        } else {
            stream
        };
        let stream: IoStream = Box::pin(stream.map_err(std::io::Error::other));
        let mut pack = PackReader {
            reader: StreamReader::new(stream),
            key,
            object_left: 0,
            received,
        };
        let mut magic = [0; MAGIC.len()];
        pack.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(pack.damaged("it does not start as a pack does"));
        }
        Ok(pack)
    }

    /// The pack's name, for messages.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes received so far, as they came over the wire.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// The next entry, or `None` at the pack's end. Skips what is left of
    /// the previous entry's object.
    pub async fn next(&mut self) -> Result<Option<RawEntry>, RemoteError> {
        self.skip_object().await?;
        let mut action = [0; 32];
        self.read_exact(&mut action).await?;
        if action == [0; 32] {
            return Ok(None);
        }
        let action = Id(action);
        let mut length = [0; 4];
        self.read_exact(&mut length).await?;
        let length = u32::from_be_bytes(length);
        if length == 0 {
            return Ok(Some(RawEntry::Missing(action)));
        }
        if length > MAX_PACKED_RECORD {
            return Err(self.damaged(format!("a record of {length} bytes")));
        }
        let mut record = vec![0; length as usize];
        self.read_exact(&mut record).await?;
        let mut object_length = [0; 8];
        self.read_exact(&mut object_length).await?;
        let object_length = u64::from_be_bytes(object_length);
        self.object_left = object_length;
        Ok(Some(RawEntry::Found {
            action,
            record,
            object_length,
        }))
    }

    /// Passes the current entry's object to `sink`, a chunk at a time.
    pub async fn read_object(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), RemoteError>,
    ) -> Result<(), RemoteError> {
        let mut buffer = vec![0; 64 * 1024];
        while self.object_left > 0 {
            let want = buffer.len().min(self.object_left as usize);
            let n = self.read_some(&mut buffer[..want]).await?;
            self.object_left -= n as u64;
            sink(&buffer[..n])?;
        }
        Ok(())
    }

    async fn skip_object(&mut self) -> Result<(), RemoteError> {
        self.read_object(|_| Ok(())).await
    }

    async fn read_some(&mut self, buffer: &mut [u8]) -> Result<usize, RemoteError> {
        let n = self.reader.read(buffer).await.map_err(|e| self.cut(e))?;
        if n == 0 {
            return Err(self.damaged("it ends in the middle of an entry"));
        }
        Ok(n)
    }

    async fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), RemoteError> {
        let mut filled = 0;
        while filled < buffer.len() {
            filled += self.read_some(&mut buffer[filled..]).await?;
        }
        Ok(())
    }

    fn cut(&self, e: std::io::Error) -> RemoteError {
        let why = match e.downcast::<RemoteError>() {
            // Found by the decompression under the reader.
            Ok(damaged @ RemoteError::Damaged { .. }) => return damaged,
            Ok(e) => e.to_string(),
            Err(e) => e.to_string(),
        };
        RemoteError::Failed(format!("reading the pack {} failed: {why}", self.key))
    }

    pub fn damaged(&self, why: impl Into<String>) -> RemoteError {
        RemoteError::Damaged {
            key: self.key.clone(),
            why: why.into(),
        }
    }
}

/// Bytes of decompressed pack handed on at a time.
const DECOMPRESSED_CHUNK: usize = 256 * 1024;

/// Decompresses a zstd stream as it arrives; memory stays at a chunk
/// however much the data expands.
fn decompressed(body: ByteStream, key: String) -> ByteStream {
    struct Inflating {
        body: ByteStream,
        decoder: Decoder<'static>,
        input: Bytes,
        /// The last call filled the output: the decoder may hold more.
        full: bool,
        /// A frame has begun and not ended.
        in_frame: bool,
        key: String,
    }
    let decoder = match Decoder::new() {
        Ok(decoder) => decoder,
        Err(e) => {
            let e = RemoteError::Failed(format!("cannot decompress {key}: {e}"));
            return futures_util::stream::once(async move { Err(e) }).boxed();
        }
    };
    let state = Inflating {
        body,
        decoder,
        input: Bytes::new(),
        full: false,
        in_frame: false,
        key,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        loop {
            if state.input.is_empty() && !state.full {
                match state.body.try_next().await? {
                    Some(chunk) => state.input = chunk,
                    None if state.in_frame => {
                        return Err(RemoteError::Damaged {
                            key: state.key,
                            why: "its compressed stream ends in the middle".into(),
                        });
                    }
                    None => return Ok(None),
                }
                continue;
            }
            let mut output = vec![0; DECOMPRESSED_CHUNK];
            let mut input = InBuffer::around(&state.input);
            let mut out = OutBuffer::around(&mut output[..]);
            let hint = match state.decoder.run(&mut input, &mut out) {
                Ok(hint) => hint,
                Err(e) => {
                    return Err(RemoteError::Damaged {
                        key: state.key,
                        why: format!("its compressed stream is damaged: {e}"),
                    });
                }
            };
            let (used, made) = (input.pos(), out.pos());
            state.input.advance(used);
            state.full = made == DECOMPRESSED_CHUNK;
            state.in_frame = hint != 0;
            if made > 0 {
                output.truncate(made);
                return Ok(Some((Bytes::from(output), state)));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn stream_of(bytes: Vec<u8>, chunk: usize) -> ByteStream {
        let chunks: Vec<_> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks).boxed()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn sample() -> Vec<u8> {
        let mut pack = PackWriter::default();
        pack.add(&Id([1; 32]), b"record one", b"");
        pack.add_missing(&Id([2; 32]));
        pack.add(&Id([3; 32]), b"record three", &vec![9; 200_000]);
        pack.add(&Id([4; 32]), b"record four", b"four");
        assert_eq!(pack.entries(), 4);
        pack.finish()
    }

    #[test]
    fn entries_come_back_in_order_whatever_the_chunks() {
        for chunk in [1, 7, 4096, 1 << 20] {
            block_on(async {
                let mut pack = PackReader::open(stream_of(sample(), chunk), "p".into())
                    .await
                    .unwrap();
                let mut seen = Vec::new();
                while let Some(entry) = pack.next().await.unwrap() {
                    match entry {
                        RawEntry::Found {
                            action,
                            record,
                            object_length,
                        } => {
                            let mut object = Vec::new();
                            // The third entry's object is skipped, not read.
                            if action != Id([3; 32]) {
                                pack.read_object(|c| {
                                    object.extend_from_slice(c);
                                    Ok(())
                                })
                                .await
                                .unwrap();
                            }
                            seen.push((action.0[0], record, object_length, object));
                        }
                        RawEntry::Missing(action) => seen.push((action.0[0], vec![], 0, vec![])),
                    }
                }
                assert_eq!(seen.len(), 4, "chunk {chunk}");
                assert_eq!(seen[2].2, 200_000);
                assert_eq!(seen[3], (4, b"record four".to_vec(), 4, b"four".to_vec()));
                assert_eq!(pack.received(), sample().len() as u64);
            });
        }
    }

    /// Every entry of a pack read with `open`, objects included.
    async fn read_all(mut pack: PackReader) -> Result<Vec<(Id, Vec<u8>)>, RemoteError> {
        let mut seen = Vec::new();
        while let Some(entry) = pack.next().await? {
            if let RawEntry::Found { action, .. } = entry {
                let mut object = Vec::new();
                pack.read_object(|c| {
                    object.extend_from_slice(c);
                    Ok(())
                })
                .await?;
                seen.push((action, object));
            }
        }
        Ok(seen)
    }

    #[test]
    fn compressed_packs_read_as_plain_ones() {
        let plain = sample();
        let compressed = zstd::bulk::compress(&plain, 1).unwrap();
        assert!(compressed.len() < plain.len() / 10);
        block_on(async {
            let expected = read_all(
                PackReader::open(stream_of(plain.clone(), 4096), "p".into())
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            for chunk in [1, 13, 4096, 1 << 20] {
                let pack = PackReader::open_zstd(stream_of(compressed.clone(), chunk), "p".into())
                    .await
                    .unwrap();
                let received = pack.received.clone();
                assert_eq!(read_all(pack).await.unwrap(), expected, "chunk {chunk}");
                // What came over the wire, not what it expanded to.
                assert_eq!(received.load(Relaxed), compressed.len() as u64);
            }
            // Expanding far beyond a chunk: the decoder is drained, not cut.
            let mut big = PackWriter::default();
            big.add(&Id([7; 32]), b"zeros", &vec![0; 3 << 20]);
            let big = zstd::bulk::compress(&big.finish(), 1).unwrap();
            let entries = read_all(
                PackReader::open_zstd(stream_of(big, 100), "p".into())
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(entries[0].1.len(), 3 << 20);

            let half = compressed[..compressed.len() / 2].to_vec();
            let mut garbled = compressed.clone();
            garbled[20] ^= 0xff;
            // Without a checksum in the frame, garbled bytes may decode to
            // garbage: the pack's framing and the entries' hashes catch it.
            for (bad, why) in [(half, "ends in the middle"), (garbled, "")] {
                let result = async {
                    read_all(PackReader::open_zstd(stream_of(bad, 64), "p".into()).await?).await
                }
                .await;
                match result {
                    Err(RemoteError::Damaged { why: w, .. }) => assert!(w.contains(why), "{w}"),
                    other => panic!("{why}: {other:?}"),
                }
            }
        });
    }

    #[test]
    fn cut_or_foreign_packs_are_damaged() {
        let whole = sample();
        for cut in [0, 10, 16, 40, 60, 1000, whole.len() - 1] {
            block_on(async {
                let result = async {
                    let mut pack =
                        PackReader::open(stream_of(whole[..cut].to_vec(), 100), "p".into()).await?;
                    while pack.next().await?.is_some() {}
                    Ok::<_, RemoteError>(())
                }
                .await;
                assert!(
                    matches!(result, Err(RemoteError::Damaged { .. })),
                    "cut at {cut}: {result:?}"
                );
            });
        }
        block_on(async {
            let e = PackReader::open(
                stream_of(b"<html>no such thing</html>".to_vec(), 5),
                "p".into(),
            )
            .await
            .err()
            .unwrap();
            assert!(e.to_string().contains("does not start as a pack"), "{e}");
            let mut huge = MAGIC.to_vec();
            huge.extend_from_slice(&[5; 32]);
            huge.extend_from_slice(&u32::MAX.to_be_bytes());
            let mut pack = PackReader::open(stream_of(huge, 100), "p".into())
                .await
                .unwrap();
            let e = pack.next().await.unwrap_err();
            assert!(e.to_string().contains("a record of"), "{e}");
        });
    }
}
