//! The REAPI face: Capabilities, ActionCache, ContentAddressableStorage and
//! ByteStream over gRPC (tonic), on the same disk tier, tokens, limits,
//! backing store and metrics as the HTTP API.
//!
//! | call                        | here                                         |
//! |-----------------------------|----------------------------------------------|
//! | `GetCapabilities`           | SHA-256, zstd, the batch and blob limits; AC updates for write tokens |
//! | `GetActionResult`           | the action cache of the instance; NOT_FOUND also when an output it names is gone from the CAS |
//! | `UpdateActionResult`        | stored once it encodes within 4 MiB          |
//! | `FindMissingBlobs`          | the disk, then the backing store             |
//! | `BatchReadBlobs`            | up to [`MAX_BATCH`] bytes, zstd if accepted  |
//! | `BatchUpdateBlobs`          | each blob checked against its digest         |
//! | `ByteStream.Read`/`Write`   | see [`bytestream`]                           |
//! | `GetTree`, chunking calls   | UNIMPLEMENTED: a build cache keeps no trees  |
//!
//! One file per service: `capabilities.rs`, `action_cache.rs`, `cas.rs` and
//! `bytestream.rs`; this one holds what they share (who may call, how a
//! call is counted, how a blob is read whole or followed, the statuses).
//!
//! The instance name is the namespace, as the path before `/ac/` is on
//! HTTP: an action result PUT to `/team/main/ac/<hex>` is what
//! GetActionResult finds for instance `team/main`, and the other way round.
//! The CAS is shared.
//! Tokens come as `authorization: Bearer <token>` metadata; the HTTP
//! statuses' counterparts are UNAUTHENTICATED, PERMISSION_DENIED,
//! INVALID_ARGUMENT (a blob that does not hash to its digest is never
//! stored) and RESOURCE_EXHAUSTED (limits; with a RetryInfo when the disk
//! is full for a moment).
//!
//! gRPC requests arrive through the HTTP listener (`listen.rs` sends a
//! request whose content type is `application/grpc` here), so connection
//! caps, stall deadlines, TLS and graceful shutdown are the same for both.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
pub(crate) mod resource;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Digest, action_cache_server::ActionCacheServer, capabilities_server::CapabilitiesServer,
    content_addressable_storage_server::ContentAddressableStorageServer, digest_function,
};
use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer;
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use granary_id::Id;
use prost::Message;
use tonic::service::Routes;
use tonic::{Code, Request, Status};

use crate::auth::Identity;
use crate::check::{Rejected, Why};
use crate::dashboard::Face;
use crate::grant::{Access, NAMESPACE_SOURCES};
use crate::key::{Key, Kind};
use crate::service::{Held, Service, Unreadable, Whole};

/// The most bytes one BatchReadBlobs or BatchUpdateBlobs may carry, as
/// announced; a little under gRPC's customary 4 MiB message limit.
pub const MAX_BATCH: u64 = 4 * 1024 * 1024 - 64 * 1024;
/// Messages may be this large: a full batch and its framing.
const MAX_MESSAGE: usize = 4 * 1024 * 1024 + 64 * 1024;
/// What a client is told to wait before it tries a full disk again.
const FULL_RETRY: Duration = Duration::from_secs(1);

/// The gRPC services, ready to be called with HTTP/2 requests, and the
/// task that reaps broken-off ByteStream uploads (run it beside them).
pub fn routes(service: Arc<Service>) -> (Routes, impl Future<Output = ()> + Send + 'static) {
    let uploads = Arc::new(bytestream::Partials::new(service.idle_timeout));
    let reaper = uploads.clone().reap_forever();
    let reapi = Reapi { service, uploads };
    let routes = Routes::new(CapabilitiesServer::new(reapi.clone()))
        .add_service(ActionCacheServer::new(reapi.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(
            ContentAddressableStorageServer::new(reapi.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(ByteStreamServer::new(reapi).max_decoding_message_size(MAX_MESSAGE));
    (routes, reaper)
}

/// What every call needs: the server's state and the ByteStream uploads
/// that wait to be resumed.
#[derive(Debug, Clone)]
struct Reapi {
    service: Arc<Service>,
    uploads: Arc<bytestream::Partials>,
}

impl Reapi {
    /// Refuses a call whose token may not do `needed` in `instance` (on
    /// its action cache, if `action_cache`).
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        instance: &str,
        needed: Access,
        action_cache: bool,
    ) -> Result<(), Status> {
        check_instance(instance)?;
        let identity = self.identify(request).await;
        let write = needed == Access::Write;
        if identity.access < needed {
            let (status, reason) = match (identity.presented, identity.access) {
                (true, Access::Read) => (
                    Status::permission_denied(
                        "this token may only read; writing needs a token of scope write",
                    ),
                    "forbidden",
                ),
                _ => (
                    Status::unauthenticated(identity.unauthorized_message()),
                    "unauthorized",
                ),
            };
            if write {
                self.service.metrics.reject(reason);
            }
            return Err(status);
        }
        if action_cache && !identity.may_use_namespace(instance, write) {
            if write {
                self.service.metrics.reject("namespace");
            }
            return Err(Status::permission_denied(format!(
                "this token may not use the action cache of {}; {NAMESPACE_SOURCES}",
                match instance {
                    "" => "the default instance".to_owned(),
                    name => format!("instance {name}"),
                }
            )));
        }
        if action_cache {
            self.service.dashboard.count_namespace(instance);
        }
        Ok(())
    }

    /// Who sent a call.
    async fn identify<T>(&self, request: &Request<T>) -> Identity {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        self.service.identify_header(authorization).await
    }

    /// Counts a call's outcome and duration, as the HTTP API counts
    /// requests (the status is the gRPC code).
    fn observe<T>(
        &self,
        method: &'static str,
        kind: &'static str,
        started: Instant,
        result: &Result<T, Status>,
    ) {
        self.service.dashboard.count(Face::Grpc);
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        let took = started.elapsed().as_secs_f64();
        self.service
            .metrics
            .answered(method, kind, code as u16, took);
    }

    /// Runs a call, counting it as [`Reapi::observe`] says.
    async fn observed<T>(
        &self,
        method: &'static str,
        kind: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = call.await;
        self.observe(method, kind, started, &result);
        result
    }

    fn count(&self, kind: Kind, found: bool) {
        self.service.metrics.looked_up(kind, found);
    }

    /// A whole blob of at most `limit` bytes; `None` if there is none, or
    /// it is larger. With `zstd`, one stored compressed comes as stored.
    async fn read_whole(&self, key: Key, limit: u64, zstd: bool) -> Result<Option<Whole>, Status> {
        match self.service.read_whole(key, limit, zstd).await {
            Ok(Some(whole)) => {
                let sent = whole.bytes.len() as u64;
                self.service.metrics.bytes_sent.inc_by(sent);
                Ok(Some(whole))
            }
            Ok(None) | Err(Unreadable::Missing(_)) => Ok(None),
            Err(unreadable) => Err(unreadable_status(unreadable)),
        }
    }

    /// Whether the CAS has the blob of `digest` (the empty blob always).
    async fn has(&self, key: Key, size: u64) -> bool {
        if size == 0 && key.hash == empty_hash() {
            return true;
        }
        match self.service.held(&key).await {
            Held::Stored(stored) => stored == size,
            Held::InBacking => true,
            Held::Absent => false,
        }
    }

    /// The status for a refused upload, counted.
    fn rejected(&self, rejected: Rejected) -> Status {
        self.service.metrics.reject(rejected.why.reason());
        rejected_status(rejected)
    }
}

/// The gRPC status of a refused upload: RESOURCE_EXHAUSTED for limits,
/// with a RetryInfo when room is being freed.
fn rejected_status(rejected: Rejected) -> Status {
    let Rejected { why, message } = rejected;
    match why {
        Why::TooLarge => Status::resource_exhausted(message),
        Why::Full => retry_later(Code::ResourceExhausted, message),
        Why::Io => Status::internal(message),
        Why::TimedOut => Status::deadline_exceeded(message),
        Why::Incomplete | Why::HashMismatch | Why::Invalid => Status::invalid_argument(message),
    }
}

/// The gRPC status of a read that cannot be served.
fn unreadable_status(unreadable: Unreadable) -> Status {
    match unreadable {
        Unreadable::Missing(key) => not_found(key),
        Unreadable::UploadFailed(_) | Unreadable::Stalled { .. } => {
            Status::unavailable(unreadable.to_string())
        }
        Unreadable::Refused(refusal) => rejected_status(Rejected::from_refusal(&refusal)),
        Unreadable::Io { .. } => Status::internal(unreadable.to_string()),
    }
}

/// google.rpc.RetryInfo, which the generated types leave out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<bazel_remote_apis::google::protobuf::Duration>,
}

/// The type URL of [`RetryInfo`] in a status's details.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn retry_later(code: Code, message: String) -> Status {
    let details = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![Any {
            type_url: RETRY_INFO_TYPE.to_owned(),
            value: RetryInfo {
                retry_delay: Some(bazel_remote_apis::google::protobuf::Duration {
                    seconds: FULL_RETRY.as_secs() as i64,
                    nanos: 0,
                }),
            }
            .encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

fn rpc_status(code: Code, message: String) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message,
        details: Vec::new(),
    }
}

fn not_found(key: Key) -> Status {
    Status::not_found(format!("no {key}"))
}

/// The hash of the empty blob, which every CAS holds.
fn empty_hash() -> Id {
    Id::of(b"")
}

/// Instance names are namespaces (see `granary_format::Namespace`), or
/// empty.
fn check_instance(instance: &str) -> Result<(), Status> {
    granary_format::Namespace::new(instance)
        .map(drop)
        .map_err(|why| Status::invalid_argument(format!("instance names are namespaces: {why}")))
}

fn check_digest_function(value: i32) -> Result<(), Status> {
    match digest_function::Value::try_from(value) {
        Ok(digest_function::Value::Unknown | digest_function::Value::Sha256) => Ok(()),
        _ => Err(Status::invalid_argument(
            "this server keeps SHA-256 digests only; set the digest function to SHA256",
        )),
    }
}

/// The key and size a digest names.
fn digest_key(kind: Kind, digest: Option<&Digest>) -> Result<(Key, u64), Status> {
    let digest = digest.ok_or_else(|| Status::invalid_argument("the request has no digest"))?;
    let key = Key::new(kind, &digest.hash).ok_or_else(|| {
        Status::invalid_argument(format!(
            "`{}` is not a SHA-256 digest: use 64 lower-case hex digits",
            digest.hash.chars().take(80).collect::<String>()
        ))
    })?;
    let size = u64::try_from(digest.size_bytes).map_err(|_| {
        Status::invalid_argument(format!("a blob of {} bytes cannot be", digest.size_bytes))
    })?;
    Ok((key, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Refusal;

    #[test]
    fn a_full_disk_asks_the_client_to_retry_in_a_second_and_limits_do_not() {
        let full = Rejected::from_refusal(&Refusal::Full { used: 2, limit: 1 });
        let status = rejected_status(full);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = RpcStatus::decode(status.details()).unwrap();
        let [info] = &details.details[..] else {
            panic!("{details:?}")
        };
        assert_eq!(info.type_url, RETRY_INFO_TYPE);
        let delay = RetryInfo::decode(&info.value[..])
            .unwrap()
            .retry_delay
            .unwrap();
        assert_eq!((delay.seconds, delay.nanos), (1, 0));
        let status = rejected_status(Rejected::from_refusal(&Refusal::TooLarge { limit: 1 }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.details().is_empty());
    }

    #[test]
    fn digests_and_instances_are_checked() {
        let hex = "0c".repeat(32);
        let digest = |hash: &str, size_bytes| Digest {
            hash: hash.to_owned(),
            size_bytes,
        };
        let (key, size) = digest_key(Kind::Cas, Some(&digest(&hex, 5))).unwrap();
        assert_eq!((key.hex(), size), (hex.clone(), 5));
        for bad in [
            digest(&hex, -1),
            digest(&"0C".repeat(32), 5),
            digest("abc", 5),
        ] {
            let status = digest_key(Kind::Cas, Some(&bad)).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        }
        assert!(digest_key(Kind::Ac, None).is_err());
        for good in ["", "main", "pr-12", "team/main"] {
            assert!(check_instance(good).is_ok(), "{good}");
        }
        for bad in ["a//b", "..", "a b", "ü", "team/uploads", "actionResults"] {
            assert_eq!(
                check_instance(bad).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
        assert!(check_digest_function(digest_function::Value::Sha256 as i32).is_ok());
        assert!(check_digest_function(digest_function::Value::Blake3 as i32).is_err());
    }
}
