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

use std::io::Read;

use bytes::Bytes;
use granary_id::Id;
use prometheus_client::metrics::counter::Counter;
use quick_cache::sync::Cache;
use zstd::bulk::Compressor;

use crate::disk::Blob;
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
    /// `None` when the budget is 0: every blob is compressed anew.
    cache: Option<Cache<Id, Bytes, ByWeight>>,
    /// Frames served from the cache.
    pub reused: Counter,
    /// Frames compressed for an answer.
    pub compressed: Counter,
}

/// A frame weighs its length.
#[derive(Debug, Clone)]
struct ByWeight;

impl quick_cache::Weighter<Id, Bytes> for ByWeight {
    fn weight(&self, _key: &Id, frame: &Bytes) -> u64 {
        frame.len() as u64
    }
}

impl Frames {
    /// Keeps at most `budget` bytes of frames.
    pub fn new(budget: u64) -> Frames {
        let cache = (budget > 0).then(|| {
            let items = (budget / TYPICAL_FRAME).clamp(64, 1 << 20) as usize;
            // Few shards: a shard holds at most its share of the budget,
            // and a frame must fit in one.
            let options = quick_cache::OptionsBuilder::new()
                .shards(4)
                .estimated_items_capacity(items)
                .weight_capacity(budget)
                .build()
                .expect("every option is set");
            Cache::with_options(options, ByWeight, Default::default(), Default::default())
        });
        Frames {
            cache,
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
            return blob.read_stored().map(Bytes::from);
        }
        let mut compressed = false;
        let mut compress = || {
            compressed = true;
            let mut content = Vec::with_capacity(blob.size as usize);
            (&blob.file).take(blob.size).read_to_end(&mut content)?;
            if content.len() as u64 != blob.size {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            compressor.compress(&content).map(Bytes::from)
        };
        let frame = match &self.cache {
            None => compress(),
            // Runners that ask at once wait for one compression.
            Some(cache) => cache.get_or_insert_with(&key.hash, compress),
        }?;
        match compressed {
            true => self.compressed.inc(),
            false => self.reused.inc(),
        };
        Ok(frame)
    }

    /// Bytes of frames kept.
    pub fn kept(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let frames = Frames::new(1 << 20);
        let cache = frames.cache.as_ref().unwrap();
        for i in 0..64u8 {
            cache.insert(Id([i; 32]), Bytes::from(vec![i; 64 << 10]));
        }
        assert!(frames.kept() <= 1 << 20, "{}", frames.kept());
        assert!(frames.kept() >= 512 << 10, "{}", frames.kept());
        assert_eq!(Frames::new(0).kept(), 0);
    }
}
