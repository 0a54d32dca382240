//! What granary's remote tier and its server share: where things live in
//! a remote, and in what form, and the trait every store of blobs
//! implements.
//!
//! A remote is a flat store of blobs by key ([`BlobStore`]): a bucket, a
//! cache server's HTTP API, a REAPI cache over gRPC. [`layout`] says which
//! key holds what in each [`Format`](layout::Format), and what a
//! [`Namespace`](layout::Namespace) (a REAPI instance name) may be.
//! [`pack`] is the framing of many action entries in one body: the packs
//! that fresh runners prefetch, and the answer of `granary serve`'s batch
//! requests, which the server writes and the client reads.
//!
//! Architecture invariant: this crate knows no store and no client. The
//! object stores, the HTTP and gRPC clients and the action cache built on
//! them live in `granary-remote`; `granary-server` depends on this crate
//! alone, so a change to a client never rebuilds the server, and the
//! server never links an object-store SDK it reaches only through
//! [`BlobStore`].

mod blob;
pub mod layout;
pub mod pack;

pub use blob::{BatchAnswer, BlobStore, ByteStream, Listed, STREAM_ABOVE};
pub use layout::{Format, Namespace};

/// Why a remote call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote refused our credentials or our permissions: asking again
    /// will not help.
    #[error("access denied: {0}")]
    Denied(String),
    /// The request failed or was cut off; another one may succeed.
    #[error("{0}")]
    Failed(String),
    /// What the remote holds under `key` is not a valid entry.
    #[error("damaged remote entry {key}: {why}")]
    Damaged { key: String, why: String },
    /// The remote is fine, but the settings are not.
    #[error("{0}")]
    Config(String),
    /// A fetched body could not be written where it was to go.
    #[error("cannot write the fetched body: {0}")]
    Sink(#[source] std::io::Error),
    /// The local file to upload could not be read, or changed meanwhile:
    /// the remote is not to blame.
    #[error("{0}")]
    LocalFile(String),
}
