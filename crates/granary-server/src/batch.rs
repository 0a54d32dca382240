//! `POST /batch`: many action entries in one request, for the prefetch of
//! `granary prog`.
//!
//! The request lists action IDs in hex, one per line (at most
//! [`MAX_BATCH`]); the answer is a pack, written with
//! `granary_format::pack`'s encoder (its objects streamed): for
//! each ID in order, its `ActionResult` and, when the output is not inline,
//! the CAS blob it names, or a mark that there is no such entry. A fresh
//! runner thus fetches a few thousand entries in a few requests instead of
//! a few thousand.
//!
//! The answer is written by a blocking task that reads the blobs (pinned
//! against eviction while read) and hands chunks to the response through a
//! small channel, so a slow client holds a few chunks of memory and the
//! task waits for it, for the idle timeout at most: a client that stops
//! reading gives its thread back. Few answers run at once (see
//! [`BATCHES_AT_ONCE`] and [`BATCHES_PER_CONNECTION`]), so no client can
//! take the blocking pool from the others. Entries still being uploaded, and entries only the
//! backing store has, are answered as missing: the client then asks for
//! them one by one, which does reach the backing store.
//!
//! A client that accepts zstd gets the answer compressed, as a series of
//! zstd frames (see [`frames`](crate::frames), which keeps the blobs'
//! frames for the next runner): the blobs are kept as the Bazel protocol
//! sends them, uncompressed, and Go's outputs shrink to about a quarter.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult;
use bytes::Bytes;
use granary_format::pack::{self, MAGIC};
use granary_id::Id;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use zstd::bulk::Compressor;

use crate::check::MAX_ACTION_RESULT;
use crate::disk::Blob;
use crate::frames::{Frames, LEVEL, MAX_FRAMED};
use crate::key::{Key, Kind};
use crate::metrics::Metrics;
use crate::service::Service;

/// Most action IDs one request may name.
pub const MAX_BATCH: usize = 10_000;
/// Batch answers being written at once, each on a thread of the blocking
/// pool; more wait for their turn without a thread.
pub const BATCHES_AT_ONCE: usize = 8;
/// Batch answers one connection may have under way, sent or not: an HTTP/2
/// client opening hundreds of streams waits for its own turns.
pub const BATCHES_PER_CONNECTION: usize = 2;
/// Chunks of the answer on their way to the client.
const CHANNEL: usize = 4;
/// Bytes per chunk of the answer.
const CHUNK: usize = 256 * 1024;

/// Reads a request's body: action IDs, one per line.
pub fn parse(body: &[u8], instance: &str) -> Result<Vec<Asked>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not text".to_owned())?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(n, line)| {
            let key = Key::new(Kind::Ac, line).ok_or_else(|| {
                format!(
                    "line {} is not an action ID (64 lower-case hex digits)",
                    n + 1
                )
            })?;
            Ok::<_, String>(Asked {
                action: key.hash,
                key: key.in_instance(instance),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.len() > MAX_BATCH {
        return Err(format!(
            "{} action IDs; a batch has at most {MAX_BATCH}",
            keys.len()
        ));
    }
    Ok(keys)
}

/// Whether a request's `Accept-Encoding` takes zstd (and does not refuse it
/// with `q=0`).
pub fn accepts_zstd(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case("zstd") && !refused
        })
}

/// Starts writing the answer to `keys`, compressed with zstd if `zstd` is
/// given the frames to use; its chunks arrive on the receiver. The writer
/// holds `turn` until it is done, and gives up on a client that takes no
/// chunk for `idle`.
pub fn answer(
    service: Arc<Service>,
    keys: Vec<Asked>,
    zstd: bool,
    turn: OwnedSemaphorePermit,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (sender, receiver) = mpsc::channel(CHANNEL);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let frames = zstd.then(|| service.frames.clone());
        let zstd = match frames.map(|frames| Compressor::new(LEVEL).map(|c| (frames, c))) {
            None => None,
            Some(Ok(zstd)) => Some(zstd),
            Some(Err(e)) => {
                let _ = sender.blocking_send(Err(e));
                return;
            }
        };
        let mut answer = Answer {
            metrics: service.metrics.clone(),
            idle: service.idle_timeout,
            service,
            sender,
            runtime,
            buffer: MAGIC.to_vec(),
            zstd,
        };
        // An error means the client left, or a blob could not be read
        // after its length was sent; either way the answer ends there.
        if answer.write(&keys).is_err() {
            tracing::debug!("a batch answer was cut short");
        }
    });
    receiver
}

struct Answer {
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    sender: mpsc::Sender<std::io::Result<Bytes>>,
    /// To wait for the client, with a deadline, from the blocking thread.
    runtime: tokio::runtime::Handle,
    /// How long the client may leave a chunk untaken.
    idle: Duration,
    /// The answer, before compression.
    buffer: Vec<u8>,
    /// For a client that takes zstd.
    zstd: Option<(Arc<Frames>, Compressor<'static>)>,
}

/// The answer cannot go on.
struct Stop;

/// An action ID a batch asks for, and where its entry is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub action: Id,
    pub key: Key,
}

/// A CAS blob and its key.
type CasBlob = (Key, Blob);

impl Answer {
    fn write(&mut self, keys: &[Asked]) -> Result<(), Stop> {
        for Asked { action, key } in keys {
            let Some((record, object)) = self.entry(key) else {
                self.metrics.looked_up(Kind::Ac, false);
                pack::write_missing(&mut self.buffer, action);
                continue;
            };
            self.metrics.looked_up(Kind::Ac, true);
            let object_length = object.as_ref().map_or(0, |(_, blob)| blob.size);
            pack::write_entry_head(&mut self.buffer, action, &record, object_length);
            match object {
                None => {}
                Some((cas, blob)) => {
                    if self.zstd.is_some() && blob.size <= MAX_FRAMED {
                        self.flush()?;
                        let (frames, compressor) = self.zstd.as_mut().expect("zstd is on");
                        let frame = frames.frame(&cas, &blob, compressor);
                        let frame = frame.or_else(|e| self.fail(e))?;
                        for start in (0..frame.len()).step_by(CHUNK) {
                            let end = frame.len().min(start + CHUNK);
                            self.send(frame.slice(start..end))?;
                        }
                        continue;
                    }
                    let mut file = blob.reader().or_else(|e| self.fail(e))?;
                    let mut left = blob.size;
                    while left > 0 {
                        if self.buffer.len() >= CHUNK {
                            self.flush()?;
                        }
                        let start = self.buffer.len();
                        let want = (CHUNK as u64).min(left) as usize;
                        self.buffer.resize(start + want, 0);
                        if let Err(e) = file.read_exact(&mut self.buffer[start..]) {
                            return self.fail(e);
                        }
                        left -= want as u64;
                    }
                }
            }
            if self.buffer.len() >= CHUNK {
                self.flush()?;
            }
        }
        pack::write_end(&mut self.buffer);
        self.flush()
    }

    /// Cuts the answer: a length is already promised.
    fn fail<T>(&self, e: std::io::Error) -> Result<T, Stop> {
        let _ = self.sender.try_send(Err(e));
        Err(Stop)
    }

    /// The action result of `key` and the CAS blob holding its output when
    /// not inline; `None` if either is missing or unreadable, or the blob's
    /// length is not the one the result names (damaged on disk: it must
    /// not be sent, nor kept compressed).
    fn entry(&self, key: &Key) -> Option<(Bytes, Option<CasBlob>)> {
        let blob = self.service.stored(key)?;
        if blob.size > MAX_ACTION_RESULT {
            return None;
        }
        let record = blob.read_all().ok()?;
        let object = match output_in_cas(&record)? {
            None => None,
            Some((cas, size)) => match self.service.stored(&cas) {
                Some(blob) if blob.size == size => Some((cas, blob)),
                _ => return None,
            },
        };
        Some((record, object))
    }

    /// Sends what the buffer holds, as a zstd frame if the client wants it
    /// so.
    fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = match &mut self.zstd {
            None => std::mem::take(&mut self.buffer),
            Some((_, compressor)) => {
                let frame = compressor.compress(&self.buffer);
                self.buffer.clear();
                frame.or_else(|e| self.fail(e))?
            }
        };
        self.send(Bytes::from(chunk))
    }

    fn send(&mut self, chunk: Bytes) -> Result<(), Stop> {
        self.metrics.bytes_sent.inc_by(chunk.len() as u64);
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.idle, self.sender.send(Ok(chunk))));
        match sent {
            Ok(Ok(())) => Ok(()),
            // The client left, or stopped reading.
            Ok(Err(_)) | Err(_) => Err(Stop),
        }
    }
}

/// The CAS key and length of the output of an action result whose single
/// output file is not inline; `Some(None)` when there is nothing to add;
/// `None` when it is not an action result.
fn output_in_cas(record: &[u8]) -> Option<Option<(Key, u64)>> {
    let result = ActionResult::decode(record).ok()?;
    let [file] = &result.output_files[..] else {
        return Some(None);
    };
    let digest = file.digest.as_ref()?;
    if !file.contents.is_empty() || digest.size_bytes == 0 {
        return Some(None);
    }
    let size = u64::try_from(digest.size_bytes).ok()?;
    Key::new(Kind::Cas, &digest.hash).map(|key| Some((key, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_is_sent_to_those_who_take_it() {
        let takes = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(
                    http::header::ACCEPT_ENCODING,
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            accepts_zstd(&headers)
        };
        assert!(takes(&["zstd"]));
        assert!(takes(&["gzip, ZSTD;q=0.5"]));
        assert!(takes(&["gzip", "br, zstd"]));
        assert!(!takes(&[]));
        assert!(!takes(&["gzip, br"]));
        assert!(!takes(&["zstd;q=0"]));
        assert!(!takes(&["zstd; q=0.0"]));
        assert!(!takes(&["zstdx"]));
    }

    #[test]
    fn requests_are_hex_lines() {
        let a = "ab".repeat(32);
        let keys = parse(format!("{a}\n\n{a}\r\n").as_bytes(), "").unwrap();
        assert_eq!(keys.len(), 2);
        // A named instance asks for the same action IDs, kept elsewhere.
        let named = parse(a.as_bytes(), "pr-1").unwrap();
        assert_eq!(named[0].action, keys[0].action);
        assert_ne!(named[0].key, keys[0].key);
        for (bad, why) in [
            (format!("{a}\nnot hex\n"), "line 2"),
            (a.to_uppercase(), "line 1"),
            ("\u{0}\u{ff}".to_owned(), "line 1"),
            (format!("{a}\n").repeat(MAX_BATCH + 1), "at most"),
        ] {
            let e = parse(bad.as_bytes(), "").unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(parse(b"\xff\xfe", "").unwrap_err().contains("not text"));
    }
}
