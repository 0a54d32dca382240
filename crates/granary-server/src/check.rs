//! What an upload must be, checked while it streams in: a CAS blob must
//! hash to its key, an action-cache entry must be an `ActionResult`. Used
//! for clients' uploads and for fetches from the backing store alike.

use std::io;

use bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult;
use granary_id::Id;
use http::StatusCode;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::disk::Refusal;
use crate::key::{Key, Kind};

/// Action results are small; a larger one is not a Go or Bazel entry.
pub const MAX_ACTION_RESULT: u64 = 4 * 1024 * 1024;

/// A PUT refused part-way, and why.
#[derive(Debug)]
pub struct Rejected {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Rejected {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Rejected {
        Rejected {
            status,
            reason,
            message: message.into(),
        }
    }

    pub fn from_refusal(refusal: &Refusal) -> Rejected {
        Rejected::new(
            refusal_status(refusal),
            refusal_reason(refusal),
            refusal.to_string(),
        )
    }
}

/// What a PUT's body must be: for the CAS, bytes of the key's hash; for the
/// action cache, an `ActionResult` message.
pub enum Check {
    Cas(Sha256),
    Ac(Vec<u8>),
}

impl Check {
    pub fn new(kind: Kind) -> Check {
        match kind {
            Kind::Cas => Check::Cas(Sha256::new()),
            Kind::Ac => Check::Ac(Vec::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), Rejected> {
        match self {
            Check::Cas(hasher) => hasher.update(data),
            Check::Ac(bytes) => {
                if (bytes.len() + data.len()) as u64 > MAX_ACTION_RESULT {
                    return Err(Rejected::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("an action result is at most {MAX_ACTION_RESULT} bytes"),
                    ));
                }
                bytes.extend_from_slice(data);
            }
        }
        Ok(())
    }

    pub fn finish(self, key: &Key) -> Result<(), Rejected> {
        match self {
            Check::Cas(hasher) => {
                let hash = Id(hasher.finalize().into());
                if hash != key.hash {
                    return Err(Rejected::new(
                        StatusCode::BAD_REQUEST,
                        "hash_mismatch",
                        format!(
                            "the body's SHA-256 is {}, not the key {}; nothing stored",
                            hash,
                            key.hex()
                        ),
                    ));
                }
            }
            Check::Ac(bytes) => {
                if let Err(e) = ActionResult::decode(&bytes[..]) {
                    return Err(Rejected::new(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        format!("not an ActionResult message ({e}); nothing stored"),
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Refusal::Io(e) if e.kind() == io::ErrorKind::StorageFull => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        Refusal::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn refusal_reason(refusal: &Refusal) -> &'static str {
    match refusal_status(refusal) {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::INSUFFICIENT_STORAGE => "full",
        _ => "io",
    }
}
