//! What an upload must be, checked while it streams in: a CAS blob must
//! hash to its key, an action-cache entry must be an `ActionResult`. Used
//! for clients' uploads and for fetches from the backing store alike.
//! Refusals say why in protocol-neutral terms ([`Why`]).

use std::io;

use bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult;
use granary_id::Id;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::disk::Refusal;
use crate::key::{Key, Kind};

/// Action results are small; a larger one is not a Go or Bazel entry.
pub const MAX_ACTION_RESULT: u64 = 4 * 1024 * 1024;

/// Why an upload was refused; each face says it with its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Larger than a limit.
    TooLarge,
    /// The disk is full for now.
    Full,
    /// The server could not write it.
    Io,
    /// Fewer or more bytes than announced, or the body was cut.
    Incomplete,
    /// The client sent too slowly.
    TimedOut,
    HashMismatch,
    /// Not what the key's store holds (an action cache entry that is no
    /// `ActionResult`, a damaged compressed stream).
    Invalid,
}

impl Why {
    /// The `reason` label of the rejected-uploads metric.
    pub fn reason(self) -> &'static str {
        match self {
            Why::TooLarge => "too_large",
            Why::Full => "full",
            Why::Io => "io",
            Why::Incomplete | Why::TimedOut => "incomplete",
            Why::HashMismatch => "hash_mismatch",
            Why::Invalid => "invalid",
        }
    }
}

/// An upload refused, and why.
#[derive(Debug)]
pub struct Rejected {
    pub why: Why,
    pub message: String,
}

impl Rejected {
    pub fn new(why: Why, message: impl Into<String>) -> Rejected {
        Rejected {
            why,
            message: message.into(),
        }
    }

    pub fn incomplete(message: impl Into<String>) -> Rejected {
        Rejected::new(Why::Incomplete, message)
    }

    pub fn from_refusal(refusal: &Refusal) -> Rejected {
        let why = match refusal {
            Refusal::TooLarge { .. } => Why::TooLarge,
            Refusal::Full { .. } => Why::Full,
            Refusal::Io(e) if e.kind() == io::ErrorKind::StorageFull => Why::Full,
            Refusal::Io(_) => Why::Io,
        };
        Rejected::new(why, refusal.to_string())
    }
}

/// What a PUT's body must be: for the CAS, bytes of the key's hash; for the
/// action cache, an `ActionResult` message.
#[derive(Debug)]
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
                        Why::TooLarge,
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
                        Why::HashMismatch,
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
                        Why::Invalid,
                        format!("not an ActionResult message ({e}); nothing stored"),
                    ));
                }
            }
        }
        Ok(())
    }
}
