//! CAS blobs compressed once for many batch answers.
//!
//! A batch answer for a client that takes zstd is a series of zstd frames,
//! which a decoder reads as one stream: the pack's framing goes in small
//! frames, and each CAS blob of up to [`MAX_FRAMED`] bytes in a frame of
//! its own. That frame depends only on the blob's content, which its key
//! names, so it is kept in memory, within a byte budget
//! (`--compressed-cache`), for the next runner that fetches the same
//! entries: fresh runners of one project mostly fetch the same outputs,
//! and compressing `go build std`'s 180 MB at level 1 costs about half a
//! second of a core each time. Compressing each blob apart costs under 1%
//! of the ratio on Go's outputs (`std`: 48.6 MB as one stream, 49.0 MB
//! blob by blob).

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use zstd::bulk::Compressor;

use crate::disk::Blob;
use crate::kept::Kept;
use crate::key::Key;

/// zstd's fastest regular level: several hundred MB/s per core, so the
/// server's CPU does not become the bottleneck of a prefetch.
pub const LEVEL: i32 = 1;
/// Larger blobs are compressed as they are read, a chunk at a time, and
/// not kept.
pub const MAX_FRAMED: u64 = 16 << 20;
/// What a kept frame weighs on average, to size the cache's index.
const TYPICAL_FRAME: u64 = 32 << 10;

/// Compressed CAS blobs, least recently used dropped first.
#[derive(Debug)]
pub struct Frames {
    kept: Kept,
    /// Frames served from the cache.
    pub reused: Counter,
    /// Frames compressed for an answer.
    pub compressed: Counter,
}

impl Frames {
    /// Keeps at most `budget` bytes of frames; 0: every blob is
    /// compressed anew.
    pub fn new(budget: u64) -> Frames {
        Frames {
            kept: Kept::new(budget, TYPICAL_FRAME),
            reused: Counter::default(),
            compressed: Counter::default(),
        }
    }

    /// The zstd frame of `blob`, the CAS blob of `key`, which is at most
    /// [`MAX_FRAMED`] bytes: kept, or read and compressed now with
    /// `compressor` (made once per answer: a context costs more than a
    /// small blob's compression).
    pub fn frame(
        &self,
        key: &Key,
        blob: &Blob,
        compressor: &mut Compressor<'static>,
    ) -> std::io::Result<Bytes> {
        if blob.compressed() {
            // Stored as one frame already.
            return blob.read_stored();
        }
        let mut compressed = false;
        let compress = || {
            compressed = true;
            compressor.compress(&blob.read_all()?).map(Bytes::from)
        };
        // Runners that ask at once wait for one compression.
        let frame = self.kept.get_or_insert_with(&key.hash, compress)?;
        match compressed {
            true => self.compressed.inc(),
            false => self.reused.inc(),
        };
        Ok(frame)
    }

    /// Bytes of frames kept.
    pub fn kept(&self) -> u64 {
        self.kept.weight()
    }
}
