//! granary's remote tier: a cache shared across machines.
//!
//! The remote is modelled as the Bazel remote-execution API models a cache:
//! an *action cache* that maps an action ID to an [`ActionRecord`] (output ID,
//! size, original put time), and a *content-addressed store* that maps an
//! output ID to the output's bytes. Small outputs travel inside their action
//! record, so that most remote hits cost one request; larger ones are
//! separate objects, written before the record that names them, so that a
//! reader never finds a record whose object is missing because it is still
//! on its way. Every body is a zstd frame: zstd keeps a block raw where
//! compressing it does not pay. See [`layout`] for the keys under the prefix.
//!
//! [`RemoteCache`] implements that model on any [`BlobStore`], a flat store
//! of immutable blobs by key. [`ObjectSettings::client`] gives the blob store
//! of object storage: S3-compatible (AWS S3, MinIO, R2, SeaweedFS, Ceph),
//! Google Cloud Storage and Azure Blob Storage, built on the `object_store`
//! crate; nothing outside the `object` module touches that crate, so it can
//! be upgraded or replaced in one place. [`HttpBlobs`] and
//! [`GrpcBlobs`] reach cache servers (bazel-remote's HTTP protocol, and
//! REAPI over gRPC) in the REAPI format ([`Format::Reapi`]).
//!
//! Reading is suspicious: a record that does not parse, names another
//! action, or carries a body of the wrong size is [`RemoteError::Damaged`],
//! which callers treat as a miss. A body's hash is checked by whoever stores
//! it (the local tier checks every body against its output ID before
//! publishing it).
//!
//! Architecture invariant: this crate knows nothing about the local tier,
//! the go command, deadlines or statistics. It is asynchronous (tokio) and
//! answers one question per call; the `prog` engine decides when to ask,
//! how long to wait and when to give up on the remote.

mod cache;
mod credential;
mod grpc;
mod http;
pub mod manifest;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
mod object;
pub mod reapi;
mod record;

pub use cache::{Fetched, INLINE_LIMIT, Made, Probe, RemoteCache, SealedPack, Sent};
pub use credential::{Credential, GITLAB_ID_TOKEN_VARIABLE, GithubIdToken};
pub use granary_format::pack::{PackReader, PackWriter, RawEntry};
pub use granary_format::{
    BatchAnswer, BlobStore, ByteStream, Format, Listed, Namespace, RemoteError, STREAM_ABOVE,
    layout, pack,
};
pub use grpc::{GrpcBlobs, GrpcSettings};
pub use http::{HttpBlobs, HttpSettings};
pub use manifest::{Group, Manifest, PackRef};
pub use object::{
    AzureCredentials, AzureSettings, GcsSettings, OBJECT_URLS, ObjectSettings, S3Credentials,
    S3Settings, StoreSettings,
};
pub use record::{ActionRecord, MAX_BUILD_TIME, Placement};
