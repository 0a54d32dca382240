//! Reading a blob while its upload (or its fetch from the backing store)
//! is still writing it: what a GET or a ByteStream Read of such a blob
//! sends, chunk by chunk as the writer gets further.

use std::io::{self, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::chunks::Pool;
use crate::disk::{Progress, State, Upload};

/// Bytes per chunk sent to a reader.
pub const CHUNK: usize = 256 * 1024;

/// What following an upload gives.
#[derive(Debug)]
pub enum Followed {
    Stream(Follower),
    /// The backing store has no such blob.
    Missing,
    Failed,
    /// It was published before its file could be opened: it is stored.
    Published,
}

/// Waits until the upload's source is known, then opens its file.
pub async fn follow(upload: Arc<Upload>) -> Followed {
    let mut progress = upload.progress();
    let state = match progress.wait_for(|p| p.state != State::Asking).await {
        Ok(progress) => progress.state,
        Err(_) => State::Failed,
    };
    match state {
        State::Missing => return Followed::Missing,
        State::Failed => return Followed::Failed,
        State::Asking | State::Writing | State::Done => {}
    }
    let Ok(file) = upload.open() else {
        // Its file is gone: it was published (look it up again) or
        // abandoned; either way its state says so at once.
        let ended = progress
            .wait_for(|p| !matches!(p.state, State::Asking | State::Writing))
            .await;
        return match ended.map(|p| p.state) {
            Ok(State::Done) => Followed::Published,
            Ok(State::Missing) => Followed::Missing,
            _ => Followed::Failed,
        };
    };
    Followed::Stream(Follower {
        upload,
        file: tokio::fs::File::from_std(file),
        position: 0,
        progress,
        buffers: Pool::default(),
    })
}

/// Reads an upload's file up to where its writer got, waiting for more.
#[derive(Debug)]
pub struct Follower {
    /// Keeps the progress channel's sender alive.
    upload: Arc<Upload>,
    file: tokio::fs::File,
    position: u64,
    progress: watch::Receiver<Progress>,
    buffers: Pool,
}

impl Follower {
    /// The blob's size, if its writer announced it.
    pub fn expected(&self) -> Option<u64> {
        self.upload.expected
    }

    /// Starts reading at `offset` instead of the beginning.
    pub async fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset)).await?;
        self.position = offset;
        Ok(())
    }

    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            // The last byte waits for the check: if the upload turns out
            // wrong, the response is cut, never complete with bad bytes.
            let readable = match (progress.state, self.upload.expected) {
                (State::Done, _) | (_, None) => progress.written,
                (_, Some(expected)) => progress.written.min(expected.saturating_sub(1)),
            };
            if self.position < readable {
                let length = (readable - self.position).min(CHUNK as u64) as usize;
                let mut buffer = self.buffers.take();
                if let Err(e) = self.file.read_exact(&mut buffer[..length]).await {
                    return Some(Err(e));
                }
                self.position += length as u64;
                return Some(Ok(self.buffers.lend(buffer, length)));
            }
            match progress.state {
                State::Done => return None,
                State::Failed | State::Missing => {
                    return Some(Err(io::Error::other(format!(
                        "the upload of {} failed",
                        self.upload.key()
                    ))));
                }
                State::Asking | State::Writing => {
                    if self.progress.changed().await.is_err() {
                        return Some(Err(io::Error::other("the upload vanished")));
                    }
                }
            }
        }
    }
}
