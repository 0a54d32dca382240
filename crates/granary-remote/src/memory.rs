//! A blob store in memory, for tests (the `memory` feature): it serves
//! blobs in small chunks as a network would, counts what it was asked, and
//! can be told to misbehave in the ways a real remote does and a real
//! server cannot be made to on demand: fail, refuse our credentials, or
//! answer slowly.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BlobStore, ByteStream, RemoteError};

/// How [`MemoryBlobs`] misbehaves, from the next request on.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every request fails, as one to a dead server does.
    pub fail: bool,
    /// Every request is refused for its credentials.
    pub deny: bool,
    /// Every request waits this long before it is answered.
    pub delay: Duration,
}

/// Blobs by key, in memory.
#[derive(Debug, Default)]
pub struct MemoryBlobs {
    blobs: Mutex<HashMap<String, Bytes>>,
    faults: Mutex<Faults>,
    /// The keys of the gets and puts asked for, in order.
    gets: Mutex<Vec<String>>,
    puts: Mutex<Vec<String>>,
}

impl fmt::Display for MemoryBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

impl MemoryBlobs {
    /// Sets how the store misbehaves from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// The keys that gets asked for, in order.
    pub fn gets(&self) -> Vec<String> {
        self.gets.lock().unwrap().clone()
    }

    /// The keys that puts stored, in order.
    pub fn puts(&self) -> Vec<String> {
        self.puts.lock().unwrap().clone()
    }

    /// The blob under `key`, if there is one.
    pub fn blob(&self, key: &str) -> Option<Bytes> {
        self.blobs.lock().unwrap().get(key).cloned()
    }

    /// Stores `bytes` under `key`, as another writer would.
    pub fn insert(&self, key: &str, bytes: impl Into<Bytes>) {
        self.blobs
            .lock()
            .unwrap()
            .insert(key.to_owned(), bytes.into());
    }

    /// Removes the blob under `key`, as a lifecycle rule would.
    pub fn remove(&self, key: &str) {
        self.blobs.lock().unwrap().remove(key);
    }

    /// Changes the blob under `key` in place, as damage would.
    pub fn edit(&self, key: &str, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut blobs = self.blobs.lock().unwrap();
        let mut blob = blobs[key].to_vec();
        edit(&mut blob);
        blobs.insert(key.to_owned(), blob.into());
    }

    async fn misbehave(&self) -> Result<(), RemoteError> {
        let faults = self.faults.lock().unwrap().clone();
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if faults.deny {
            return Err(RemoteError::Denied("memory refused the credentials".into()));
        }
        if faults.fail {
            return Err(RemoteError::Failed("memory is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    fn credentials_advice(&self, writes: bool) -> String {
        format!(
            "give memory a key that may read{}",
            if writes { " and write" } else { "" }
        )
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError> {
        self.gets.lock().unwrap().push(key.to_owned());
        self.misbehave().await?;
        let blob = self.blob(key);
        // In small chunks, as a network delivers them.
        Ok(blob.map(|blob| {
            let chunks: Vec<_> = blob
                .chunks(1000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            futures_util::stream::iter(chunks).boxed()
        }))
    }

    async fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        self.misbehave().await?;
        Ok(self.blobs.lock().unwrap().contains_key(key))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        self.misbehave().await?;
        self.puts.lock().unwrap().push(key.to_owned());
        self.insert(key, body);
        Ok(())
    }
}
