//! A stored blob's file as a stream of chunks, read into buffers that are
//! reused (and the buffers, which a blob still arriving is read into too).
//!
//! A chunk handed to the network returns its buffer to the stream once it
//! is sent, so a large GET cycles through two or three buffers. Reading
//! through `tokio::fs::File` instead copies every chunk twice (into its
//! own buffer, then into the caller's), and a fresh 256 KiB buffer per
//! chunk is worse still: glibc maps allocations that large anew, and every
//! page of each one faults in (measured in docs/benchmarks.md).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, Stream};

use crate::follow::CHUNK;

/// Buffers a stream keeps for reuse; more in flight are dropped on return.
const KEPT: usize = 4;

/// Reads `file` from where it stands to its end, `CHUNK` bytes at a time.
/// `hold` lives as long as the stream (the blob's pin).
pub fn file_chunks<H: Send + 'static>(
    file: std::fs::File,
    hold: H,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let pool = Pool::default();
    stream::try_unfold((file, pool, hold), |(mut file, pool, hold)| async move {
        let mut buffer = pool.take();
        let (file, buffer, read) = tokio::task::spawn_blocking(move || {
            let read = read_fully(&mut file, &mut buffer);
            (file, buffer, read)
        })
        .await
        .map_err(io::Error::other)?;
        match read? {
            0 => Ok(None),
            length => Ok(Some((pool.lend(buffer, length), (file, pool, hold)))),
        }
    })
}

/// Fills `buffer` unless the file ends first; returns the bytes read.
fn read_fully(file: &mut std::fs::File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One stream's spare buffers, each `CHUNK` long and already initialised.
#[derive(Clone, Debug, Default)]
pub struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    pub fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| vec![0; CHUNK])
    }

    /// The first `length` bytes of `buffer`, which comes back here once
    /// every handle on it is dropped.
    pub fn lend(&self, buffer: Vec<u8>, length: usize) -> Bytes {
        Bytes::from_owner(Lent {
            buffer,
            length,
            home: self.clone(),
        })
    }
}

struct Lent {
    buffer: Vec<u8>,
    length: usize,
    home: Pool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.length]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut spare = self.home.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < KEPT {
            spare.push(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::{Seek, SeekFrom, Write};

    async fn gather(file: std::fs::File) -> (Vec<u8>, Vec<usize>) {
        let chunks: Vec<Bytes> = file_chunks(file, ())
            .map(|chunk| chunk.unwrap())
            .collect()
            .await;
        let sizes = chunks.iter().map(Bytes::len).collect();
        (chunks.concat(), sizes)
    }

    #[tokio::test]
    async fn a_file_is_read_whole_from_where_it_stands_in_full_chunks() {
        let content: Vec<u8> = (0..(2 * CHUNK + 1000)).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();

        file.seek(SeekFrom::Start(0)).unwrap();
        let (read, sizes) = gather(file.try_clone().unwrap()).await;
        assert_eq!(read, content);
        assert_eq!(sizes, [CHUNK, CHUNK, 1000]);

        file.seek(SeekFrom::Start(7)).unwrap();
        let (read, _) = gather(file.try_clone().unwrap()).await;
        assert_eq!(read, content[7..]);

        let (read, sizes) = gather(tempfile::tempfile().unwrap()).await;
        assert!(read.is_empty() && sizes.is_empty());
    }

    /// A file that cannot be read ends the stream with its error.
    #[cfg(unix)] // a folder opens as a file there, and reading it fails
    #[tokio::test]
    async fn a_read_error_is_the_streams_last_item() {
        let folder = tempfile::tempdir().unwrap();
        let file = std::fs::File::open(folder.path()).unwrap();
        let items: Vec<io::Result<Bytes>> = file_chunks(file, ()).collect().await;
        assert_eq!(items.len(), 1);
        let error = items.into_iter().next().unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::IsADirectory);
    }

    #[tokio::test]
    async fn a_buffer_comes_back_only_when_every_handle_on_it_is_dropped() {
        let pool = Pool::default();
        let mut buffer = pool.take();
        buffer[..3].copy_from_slice(b"abc");
        let address = buffer.as_ptr();
        let lent = pool.lend(buffer, 3);
        let part = lent.slice(1..);
        drop(lent);
        assert!(pool.0.lock().unwrap().is_empty(), "a slice still holds it");
        assert_eq!(&part[..], b"bc");
        drop(part);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "the same buffer, reused");
        assert_eq!(again.len(), CHUNK);
    }
}
