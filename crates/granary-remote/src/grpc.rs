//! A REAPI cache over gRPC (granary serve, bazel-remote, BuildBuddy,
//! Buildbarn, NativeLink, EngFlow) as a [`BlobStore`], on tonic. The only
//! file that knows tonic and the REAPI services.
//!
//! Keys are those of [`Format::Reapi`](crate::Format::Reapi):
//! `[<ns>/]ac/<hex>` is the ActionCache entry of that action digest in
//! instance `<ns>` (or the URL's instance), `cas/<hex>` the CAS blob of
//! that hash. The action cache is keyed by a digest of hash and size: a Go
//! action has no Action message whose size could be given, so every
//! action digest carries [`ACTION_SIZE`], the same for every granary.
//!
//! The server's capabilities are asked once, with the first call: its
//! batch limit decides which blobs go through BatchRead/BatchUpdateBlobs
//! and which through ByteStream, and zstd is used where it is offered. A
//! refusal that carries a RetryInfo is retried after the delay it asks
//! for, a few times; every other retry is the engine's business.
//!
//! On granary serve, which answers HTTP and gRPC on one port, a fresh
//! runner's prefetch asks for its entries with the server's batch request
//! (a plain HTTP/2 request to the gRPC address), as HTTP runners do, so
//! runners of either protocol read the manifests of both; other REAPI
//! servers refuse it once, and then packs in their CAS serve instead.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
    action_cache_client::ActionCacheClient, batch_update_blobs_request,
    capabilities_client::CapabilitiesClient, compressor,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::OnceCell;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::reapi::OUTPUT_PATH;
use crate::{BatchAnswer, BlobStore, ByteStream, Credential, INLINE_LIMIT, RemoteError};

/// The size in every action digest granary sends: the length of a Go
/// action ID.
pub const ACTION_SIZE: i64 = 32;
/// The batch limit assumed when a server announces none: gRPC's
/// customary message limit.
const DEFAULT_BATCH: u64 = 4 * 1024 * 1024;
/// Room left in a batch for the messages' framing.
const BATCH_FRAMING: u64 = 64 * 1024;
/// The largest message accepted from a server.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// HTTP/2 flow-control windows of reads: at most this much of one
/// answer, and of all, waits unread in memory.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Bytes per ByteStream.Write message.
const WRITE_CHUNK: usize = 64 * 1024;
/// Connections for batch requests (see `Connected::batch_channels`).
const BATCH_CONNECTIONS: usize = 4;
/// Retries of a call refused with a RetryInfo, and the longest delay
/// honoured.
const RETRIES: u32 = 3;
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(5);
/// The type URL of google.rpc.RetryInfo in a status's details.
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Where the server is and how to reach it.
#[derive(Clone, Default)]
pub struct GrpcSettings {
    /// `grpc://host:port[/instance]` or `grpcs://...`.
    pub url: String,
    /// A bearer credential, sent as `authorization: Bearer <token>`.
    pub credential: Option<Credential>,
    /// Headers sent with every call, for servers that take credentials
    /// of their own (`x-buildbuddy-api-key`).
    pub headers: Vec<(String, String)>,
    /// PEM certificates to trust beside the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub connect_timeout: Duration,
}

impl fmt::Debug for GrpcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcSettings")
            .field("url", &self.url)
            .field("credential", &self.credential)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("ca_file", &self.ca_file)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// A REAPI cache reached over gRPC.
pub struct GrpcBlobs {
    /// How to connect; the channel is made with the first call, inside the
    /// runtime.
    endpoint: Endpoint,
    /// The URL, for messages.
    url: String,
    /// The instance in the URL's path.
    instance: String,
    /// Headers sent with every call, a fixed token's among them.
    metadata: MetadataMap,
    /// A credential renewed as it goes (an ID token), added per call.
    renewed: Option<Credential>,
    connected: OnceCell<Connected>,
    /// Whether the server answers granary serve's batch requests on the
    /// gRPC connection: [`UNKNOWN`], [`BATCHES`] or [`NO_BATCHES`].
    batches: AtomicU8,
}

const UNKNOWN: u8 = 0;
const BATCHES: u8 = 1;
const NO_BATCHES: u8 = 2;

impl fmt::Debug for GrpcBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBlobs")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for GrpcBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// A channel, and what the server said it can do.
#[derive(Debug)]
struct Connected {
    channel: Channel,
    /// Connections of their own for batch requests, taken in turn: granary
    /// serve answers two batches at a time per connection, and a prefetch
    /// asks for up to eight.
    batch_channels: Vec<Channel>,
    next_batch_channel: AtomicUsize,
    /// Bytes a batch call may carry.
    batch: u64,
    /// zstd in ByteStream resource names, and in BatchUpdateBlobs.
    zstd: bool,
    zstd_batch_update: bool,
}

/// Where a key lives.
enum Located {
    Action { instance: String, hash: String },
    Blob { hash: String },
}

impl GrpcBlobs {
    pub fn new(settings: &GrpcSettings) -> Result<GrpcBlobs, RemoteError> {
        let url = settings.url.trim_end_matches('/');
        let usage = "use grpc://HOST:PORT[/INSTANCE] or grpcs://...";
        let (tls, rest) = match url.split_once("://") {
            Some(("grpc", rest)) => (false, rest),
            Some(("grpcs", rest)) => (true, rest),
            _ => {
                return Err(RemoteError::Config(format!(
                    "`{url}` is not a gRPC URL; {usage}"
                )));
            }
        };
        let (authority, instance) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(RemoteError::Config(format!(
                "`{url}` names no host, or carries credentials; {usage}, with the token in \
                 GRANARY_TOKEN or a --token-file"
            )));
        }
        let config = |e: &dyn fmt::Display| {
            RemoteError::Config(format!(
                "`{url}` is not a usable gRPC address ({e}); {usage}"
            ))
        };
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map_err(|e| config(&e))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            // Room for a few packs in flight per round trip: the window
            // updates a reader sends take a round trip too, and hyper's
            // 5 MiB would cap a 20 ms link at 250 MB/s.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if tls {
            endpoint = endpoint
                .tls_config(tls_config(settings)?)
                .map_err(|e| config(&e))?;
        } else if settings.ca_file.is_some() || settings.client_identity.is_some() {
            return Err(RemoteError::Config(format!(
                "`{url}` is plain gRPC; certificates need grpcs://"
            )));
        }
        let mut metadata = MetadataMap::new();
        // A fixed token goes into every call's metadata once; an ID token
        // is asked for per call, as it may have been renewed.
        let renewed = match &settings.credential {
            Some(Credential::Token(token)) => {
                metadata.insert("authorization", authorization(token)?);
                None
            }
            other => other.clone(),
        };
        for (name, value) in &settings.headers {
            let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(
                |_| RemoteError::Config(format!("`{name}` is not a header name (--remote-header)")),
            )?;
            let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
                RemoteError::Config(format!(
                    "the value of header {name} holds characters a header cannot carry"
                ))
            })?;
            metadata.append(key, value);
        }
        Ok(GrpcBlobs {
            endpoint,
            url: url.to_owned(),
            instance: instance.to_owned(),
            metadata,
            renewed,
            connected: OnceCell::new(),
            batches: AtomicU8::new(UNKNOWN),
        })
    }

    /// The channel, connected and its capabilities asked on first use.
    async fn connected(&self) -> Result<&Connected, RemoteError> {
        self.connected
            .get_or_try_init(|| async {
                let metadata = self.metadata().await?;
                let channel = self.endpoint.connect_lazy();
                let mut client =
                    CapabilitiesClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
                let asked = client
                    .get_capabilities(with_metadata(
                        &metadata,
                        GetCapabilitiesRequest {
                            instance_name: self.instance.clone(),
                        },
                    ))
                    .await;
                let capabilities = match asked {
                    Ok(answer) => answer.into_inner().cache_capabilities.unwrap_or_default(),
                    // Some caches answer only the cache services.
                    Err(status) if status.code() == Code::Unimplemented => Default::default(),
                    Err(status) => return Err(self.error(&status)),
                };
                let zstd = compressor::Value::Zstd as i32;
                let batch = match u64::try_from(capabilities.max_batch_total_size_bytes) {
                    Ok(0) | Err(_) => DEFAULT_BATCH,
                    Ok(limit) => limit.min(DEFAULT_BATCH),
                };
                Ok(Connected {
                    channel,
                    batch_channels: (0..BATCH_CONNECTIONS)
                        .map(|_| self.endpoint.connect_lazy())
                        .collect(),
                    next_batch_channel: AtomicUsize::new(0),
                    batch: batch.saturating_sub(BATCH_FRAMING),
                    zstd: capabilities.supported_compressors.contains(&zstd),
                    zstd_batch_update: capabilities
                        .supported_batch_update_compressors
                        .contains(&zstd),
                })
            })
            .await
    }

    /// The metadata of the calls about to be made: the headers, and the
    /// credential as of now.
    async fn metadata(&self) -> Result<MetadataMap, RemoteError> {
        let mut metadata = self.metadata.clone();
        if let Some(credential) = &self.renewed {
            metadata.insert("authorization", authorization(&credential.bearer().await?)?);
        }
        Ok(metadata)
    }

    fn locate(&self, key: &str) -> Result<Located, RemoteError> {
        let bad = || RemoteError::Config(format!("{key} is not a key of a REAPI cache"));
        if let Some(hash) = key.strip_prefix("cas/") {
            return Ok(Located::Blob {
                hash: hash.to_owned(),
            });
        }
        let (namespace, hash) = match key.split_once("ac/") {
            Some(("", hash)) => ("", hash),
            Some((namespace, hash)) => (namespace.strip_suffix('/').ok_or_else(bad)?, hash),
            None => return Err(bad()),
        };
        let instance = match (self.instance.as_str(), namespace) {
            (base, "") => base.to_owned(),
            ("", namespace) => namespace.to_owned(),
            (base, namespace) => format!("{base}/{namespace}"),
        };
        Ok(Located::Action {
            instance,
            hash: hash.to_owned(),
        })
    }

    /// The instance of CAS calls.
    fn instance(&self) -> String {
        self.instance.clone()
    }

    fn error(&self, status: &Status) -> RemoteError {
        let message = status.message().chars().take(300).collect::<String>();
        match status.code() {
            Code::Unauthenticated => RemoteError::Denied(format!(
                "{} refused the credentials (UNAUTHENTICATED): {message}",
                self.url
            )),
            Code::PermissionDenied => RemoteError::Denied(format!(
                "{} refused the call (PERMISSION_DENIED): {message}",
                self.url
            )),
            code => RemoteError::Failed(format!("{} answered {code:?}: {message}", self.url)),
        }
    }

    async fn get_action(
        &self,
        instance: String,
        hash: String,
    ) -> Result<Option<ByteStream>, RemoteError> {
        let connected = self.connected().await?;
        let metadata = self.metadata().await?;
        let client = ActionCacheClient::new(connected.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE);
        let answer = retrying(|| {
            let mut client = client.clone();
            let request = with_metadata(
                &metadata,
                GetActionResultRequest {
                    instance_name: instance.clone(),
                    action_digest: Some(action_digest(&hash)),
                    // Caches that keep outputs in the CAS put small ones
                    // back, saving a call per hit.
                    inline_output_files: vec![OUTPUT_PATH.to_owned()],
                    ..GetActionResultRequest::default()
                },
            );
            async move { client.get_action_result(request).await }
        })
        .await;
        match answer {
            Ok(result) => {
                let mut result = result.into_inner();
                // Servers inline more than granary does (bazel-remote up to
                // 3 MiB); granary holds records of at most 64 KiB in memory
                // and streams larger outputs from the CAS.
                for file in &mut result.output_files {
                    if file.contents.len() as u64 > INLINE_LIMIT {
                        file.contents = Vec::new();
                    }
                }
                Ok(Some(one_chunk(result.encode_to_vec().into())))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.error(&status)),
        }
    }

    async fn put_action(
        &self,
        instance: String,
        hash: String,
        body: Bytes,
    ) -> Result<(), RemoteError> {
        let result = ActionResult::decode(body).map_err(|e| {
            RemoteError::Config(format!(
                "an action entry for a REAPI cache must be an ActionResult: {e}"
            ))
        })?;
        let connected = self.connected().await?;
        let metadata = self.metadata().await?;
        let client = ActionCacheClient::new(connected.channel.clone());
        retrying(|| {
            let mut client = client.clone();
            let request = with_metadata(
                &metadata,
                UpdateActionResultRequest {
                    instance_name: instance.clone(),
                    action_digest: Some(action_digest(&hash)),
                    action_result: Some(result.clone()),
                    ..UpdateActionResultRequest::default()
                },
            );
            async move { client.update_action_result(request).await }
        })
        .await
        .map_err(|status| self.error(&status))?;
        Ok(())
    }

    /// The blob `hash` of `size` bytes; zstd on the wire if the server
    /// offers it and `compressible`.
    async fn read_blob(
        &self,
        hash: &str,
        size: u64,
        compressible: bool,
    ) -> Result<Option<ByteStream>, RemoteError> {
        if size == 0 {
            // The empty blob is never fetched: every CAS holds it.
            return Ok(Some(futures_util::stream::empty().boxed()));
        }
        let connected = self.connected().await?;
        let metadata = self.metadata().await?;
        let zstd = connected.zstd && compressible;
        let digest = Digest {
            hash: hash.to_owned(),
            size_bytes: size as i64,
        };
        if size <= connected.batch {
            let client = ContentAddressableStorageClient::new(connected.channel.clone())
                .max_decoding_message_size(MAX_MESSAGE);
            let acceptable = match zstd {
                true => vec![compressor::Value::Zstd as i32],
                false => Vec::new(),
            };
            let answer = retrying(|| {
                let mut client = client.clone();
                let request = with_metadata(
                    &metadata,
                    BatchReadBlobsRequest {
                        instance_name: self.instance(),
                        digests: vec![digest.clone()],
                        acceptable_compressors: acceptable.clone(),
                        ..BatchReadBlobsRequest::default()
                    },
                );
                async move { client.batch_read_blobs(request).await }
            })
            .await
            .map_err(|status| self.error(&status))?;
            let Some(blob) = answer.into_inner().responses.into_iter().next() else {
                return Err(RemoteError::Failed(format!(
                    "{} answered a batch read with no blob",
                    self.url
                )));
            };
            let status = blob.status.unwrap_or_default();
            match Code::from(status.code) {
                Code::Ok => {}
                Code::NotFound => return Ok(None),
                _ => return Err(self.error(&rpc_status(status))),
            }
            let data = match compressor::Value::try_from(blob.compressor) {
                Ok(compressor::Value::Identity) => blob.data,
                // At most the digest's size: a small bomb stays small.
                Ok(compressor::Value::Zstd) => zstd::bulk::decompress(&blob.data, size as usize)
                    .map_err(|e| {
                        RemoteError::Failed(format!(
                            "{} sent zstd data for cas/{hash} that does not decompress to its \
                             {size} bytes: {e}",
                            self.url
                        ))
                    })?,
                _ => {
                    return Err(RemoteError::Failed(format!(
                        "{} answered in compressor {}, which granary did not ask for",
                        self.url, blob.compressor
                    )));
                }
            };
            return Ok(Some(one_chunk(data.into())));
        }
        let mut client =
            ByteStreamClient::new(connected.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let resource = match zstd {
            true => format!("compressed-blobs/zstd/{hash}/{size}"),
            false => format!("blobs/{hash}/{size}"),
        };
        let answer = client
            .read(with_metadata(
                &metadata,
                ReadRequest {
                    resource_name: instance_path(&self.instance, &resource),
                    read_offset: 0,
                    read_limit: 0,
                },
            ))
            .await;
        let stream = match answer {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.error(&status)),
        };
        let url = self.url.clone();
        let chunks = stream
            .map_ok(|answer| Bytes::from(answer.data))
            .map_err(move |status| {
                RemoteError::Failed(format!(
                    "{url} cut the read of cas/{}: {}",
                    digest.hash,
                    status.message()
                ))
            })
            .boxed();
        Ok(Some(match zstd {
            true => decompressed(chunks, size, self.url.clone()),
            false => chunks,
        }))
    }

    async fn has_blob(&self, hash: &str, size: u64) -> Result<bool, RemoteError> {
        if size == 0 {
            return Ok(true);
        }
        let connected = self.connected().await?;
        let metadata = self.metadata().await?;
        let client = ContentAddressableStorageClient::new(connected.channel.clone());
        let digest = Digest {
            hash: hash.to_owned(),
            size_bytes: size as i64,
        };
        let answer = retrying(|| {
            let mut client = client.clone();
            let request = with_metadata(
                &metadata,
                FindMissingBlobsRequest {
                    instance_name: self.instance(),
                    blob_digests: vec![digest.clone()],
                    ..FindMissingBlobsRequest::default()
                },
            );
            async move { client.find_missing_blobs(request).await }
        })
        .await
        .map_err(|status| self.error(&status))?;
        Ok(answer.into_inner().missing_blob_digests.is_empty())
    }

    async fn write_blob(&self, hash: &str, body: ByteStream, size: u64) -> Result<(), RemoteError> {
        if size == 0 {
            return Ok(());
        }
        let connected = self.connected().await?;
        let metadata = self.metadata().await?;
        if size <= connected.batch {
            let data: Vec<Bytes> = body.try_collect().await?;
            let data = data.concat();
            let (data, used) = match connected.zstd_batch_update {
                true => (
                    zstd::bulk::compress(&data, 1).map_err(|e| {
                        RemoteError::LocalFile(format!("cannot compress a blob: {e}"))
                    })?,
                    compressor::Value::Zstd,
                ),
                false => (data, compressor::Value::Identity),
            };
            let client = ContentAddressableStorageClient::new(connected.channel.clone())
                .max_encoding_message_size(MAX_MESSAGE);
            let request = BatchUpdateBlobsRequest {
                instance_name: self.instance(),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(Digest {
                        hash: hash.to_owned(),
                        size_bytes: size as i64,
                    }),
                    data,
                    compressor: used as i32,
                }],
                ..BatchUpdateBlobsRequest::default()
            };
            let answer = retrying(|| {
                let mut client = client.clone();
                let request = with_metadata(&metadata, request.clone());
                async move { client.batch_update_blobs(request).await }
            })
            .await
            .map_err(|status| self.error(&status))?;
            return match answer.into_inner().responses.into_iter().next() {
                Some(blob) => match blob.status.unwrap_or_default() {
                    status if status.code == Code::Ok as i32 => Ok(()),
                    status => Err(self.error(&rpc_status(status))),
                },
                None => Err(RemoteError::Failed(format!(
                    "{} answered a batch upload with no status",
                    self.url
                ))),
            };
        }
        let resource = match connected.zstd {
            true => format!("compressed-blobs/zstd/{hash}/{size}"),
            false => format!("blobs/{hash}/{size}"),
        };
        let name = instance_path(
            &self.instance,
            &format!("uploads/{}/{resource}", upload_id()),
        );
        let body = match connected.zstd {
            true => compressing(body),
            false => body,
        };
        // The body's own failure (a local file that changed) is kept, and
        // the stream ends without finish_write: nothing is stored.
        let failure = Arc::new(Mutex::new(None));
        let messages = write_requests(name, body, failure.clone());
        let mut client = ByteStreamClient::new(connected.channel.clone());
        let answer = client.write(with_metadata(&metadata, messages)).await;
        if let Some(error) = failure.lock().expect("never poisoned").take() {
            return Err(error);
        }
        answer.map_err(|status| self.error(&status))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for GrpcBlobs {
    fn credentials_advice(&self, writes: bool) -> String {
        let common = "for a server that takes its own header, --remote-header NAME=VALUE \
                      (BuildBuddy: x-buildbuddy-api-key=KEY); for mTLS, --remote-cert and \
                      --remote-key";
        match writes {
            true => format!(
                "set GRANARY_TOKEN (or --token-file) to a token that may write, or build \
                 with --read-only; {common}"
            ),
            false => format!("set GRANARY_TOKEN (or --token-file) to a valid token; {common}"),
        }
    }

    /// Packs go to the CAS unless the server answered a batch request:
    /// then it serves fresh runners without them, as granary serve does
    /// its HTTP clients, and a mixed team's gRPC runners read the
    /// manifests its HTTP runners publish.
    fn keeps_packs(&self) -> bool {
        self.batches.load(Ordering::Relaxed) != BATCHES
    }

    /// granary serve's `POST /[INSTANCE/]batch`, sent as a plain HTTP/2
    /// request to the gRPC address (granary serve answers both
    /// protocols on one port). A REAPI server answers it with 415 or a
    /// gRPC status: then `None`, and it is not asked again.
    async fn batch(
        &self,
        prefix: &str,
        request: Bytes,
    ) -> Result<Option<BatchAnswer>, RemoteError> {
        if self.batches.load(Ordering::Relaxed) == NO_BATCHES {
            return Ok(None);
        }
        let connected = self.connected().await?;
        let turn = connected.next_batch_channel.fetch_add(1, Ordering::Relaxed);
        let mut channel = connected.batch_channels[turn % BATCH_CONNECTIONS].clone();
        let instance = match (self.instance.as_str(), prefix.trim_end_matches('/')) {
            (base, "") => base.to_owned(),
            ("", namespace) => namespace.to_owned(),
            (base, namespace) => format!("{base}/{namespace}"),
        };
        let path = match instance.as_str() {
            "" => "/batch".to_owned(),
            instance => format!("/{instance}/batch"),
        };
        let mut post = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .header(http::header::ACCEPT_ENCODING, "zstd")
            .body(tonic::body::Body::new(http_body_util::Full::new(request)))
            .map_err(|e| RemoteError::Config(format!("cannot make a batch request: {e}")))?;
        post.headers_mut()
            .extend(self.metadata().await?.into_headers());
        let failed = |e: &dyn fmt::Display| {
            RemoteError::Failed(format!("{}: a batch request failed: {e}", self.url))
        };
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
            .await
            .map_err(|e| failed(&e))?;
        let response = tower_service::Service::call(&mut channel, post)
            .await
            .map_err(|e| failed(&e))?;
        let headers = response.headers();
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let status = response.status();
        if grpc
            || matches!(
                status,
                http::StatusCode::BAD_REQUEST
                    | http::StatusCode::NOT_FOUND
                    | http::StatusCode::METHOD_NOT_ALLOWED
                    | http::StatusCode::UNSUPPORTED_MEDIA_TYPE
                    | http::StatusCode::NOT_IMPLEMENTED
            )
        {
            self.batches.store(NO_BATCHES, Ordering::Relaxed);
            return Ok(None);
        }
        match status {
            http::StatusCode::OK => {}
            http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => {
                return Err(RemoteError::Denied(format!(
                    "{} refused a batch request ({status})",
                    self.url
                )));
            }
            status => return Err(failed(&status)),
        }
        let zstd = match headers.get(http::header::CONTENT_ENCODING) {
            None => false,
            Some(encoding) if encoding.as_bytes().eq_ignore_ascii_case(b"zstd") => true,
            Some(encoding) => {
                return Err(failed(&format!(
                    "the answer came in the {encoding:?} encoding; granary asked for zstd or none"
                )));
            }
        };
        self.batches.store(BATCHES, Ordering::Relaxed);
        let url = self.url.clone();
        let body = http_body_util::BodyExt::into_data_stream(response.into_body())
            .map_err(move |status| {
                RemoteError::Failed(format!("{url}: a batch answer broke off: {status}"))
            })
            .boxed();
        Ok(Some(BatchAnswer { body, zstd }))
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError> {
        match self.locate(key)? {
            Located::Action { instance, hash } => self.get_action(instance, hash).await,
            Located::Blob { .. } => Err(sizeless(key)),
        }
    }

    async fn get_object(&self, key: &str, size: u64) -> Result<Option<ByteStream>, RemoteError> {
        match self.locate(key)? {
            Located::Blob { hash } => self.read_blob(&hash, size, true).await,
            Located::Action { instance, hash } => self.get_action(instance, hash).await,
        }
    }

    async fn get_compressed_object(
        &self,
        key: &str,
        size: u64,
    ) -> Result<Option<ByteStream>, RemoteError> {
        match self.locate(key)? {
            Located::Blob { hash } => self.read_blob(&hash, size, false).await,
            Located::Action { instance, hash } => self.get_action(instance, hash).await,
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        match self.locate(key)? {
            Located::Action { instance, hash } => {
                Ok(self.get_action(instance, hash).await?.is_some())
            }
            Located::Blob { .. } => Err(sizeless(key)),
        }
    }

    async fn has_object(&self, key: &str, size: u64) -> Result<bool, RemoteError> {
        match self.locate(key)? {
            Located::Blob { hash } => self.has_blob(&hash, size).await,
            Located::Action { .. } => self.exists(key).await,
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        match self.locate(key)? {
            Located::Action { instance, hash } => self.put_action(instance, hash, body).await,
            Located::Blob { hash } => {
                let size = body.len() as u64;
                self.write_blob(&hash, one_chunk(body), size).await
            }
        }
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), RemoteError> {
        match (self.locate(key)?, length) {
            (Located::Blob { hash }, Some(size)) => self.write_blob(&hash, body, size).await,
            (Located::Blob { .. }, None) => Err(sizeless(key)),
            (Located::Action { instance, hash }, _) => {
                let chunks: Vec<Bytes> = body.try_collect().await?;
                self.put_action(instance, hash, chunks.concat().into())
                    .await
            }
        }
    }
}

/// Runs a unary call, again after the delay of a RetryInfo the server
/// sends with a refusal, a few times.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(status) if tries < RETRIES => match retry_delay(&status) {
                Some(delay) => {
                    tries += 1;
                    tokio::time::sleep(delay.min(LONGEST_RETRY_DELAY)).await;
                }
                None => return Err(status),
            },
            result => return result,
        }
    }
}

fn sizeless(key: &str) -> RemoteError {
    RemoteError::Config(format!(
        "a REAPI CAS names blobs by hash and size; {key} was asked for without its size"
    ))
}

fn action_digest(hash: &str) -> Digest {
    Digest {
        hash: hash.to_owned(),
        size_bytes: ACTION_SIZE,
    }
}

/// `path` under `instance` (REAPI leaves the slash out for the empty one).
fn instance_path(instance: &str, path: &str) -> String {
    match instance {
        "" => path.to_owned(),
        instance => format!("{instance}/{path}"),
    }
}

/// A fresh id for a ByteStream upload, as REAPI asks (a version 4 UUID).
fn upload_id() -> String {
    let mut bytes = [0u8; 16];
    // Without the system's randomness, the clock keeps ids apart enough.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn one_chunk(bytes: Bytes) -> ByteStream {
    futures_util::stream::once(async move { Ok(bytes) }).boxed()
}

fn rpc_status(status: RpcStatus) -> Status {
    Status::new(Code::from(status.code), status.message)
}

/// The delay a refusal's RetryInfo asks for, if it has one and its code
/// is one to retry.
fn retry_delay(status: &Status) -> Option<Duration> {
    if !matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    ) {
        return None;
    }
    let details = RpcStatus::decode(status.details()).ok()?;
    let info = details
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(&info.value[..]).ok()?.retry_delay?;
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(delay.seconds), u32::try_from(delay.nanos))
    else {
        return None;
    };
    Some(Duration::new(seconds, nanos.min(999_999_999)))
}

/// google.rpc.RetryInfo, which the generated types leave out.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<bazel_remote_apis::google::protobuf::Duration>,
}

/// The messages of a ByteStream.Write of `body` to `name`: data in
/// chunks of at most [`WRITE_CHUNK`], then `finish_write`. A failure of
/// `body` goes to `failure` and ends the messages without `finish_write`.
fn write_requests(
    name: String,
    body: ByteStream,
    failure: Arc<Mutex<Option<RemoteError>>>,
) -> impl futures_util::Stream<Item = WriteRequest> + Send + 'static {
    let pieces = body.flat_map(|chunk| {
        let pieces: Vec<Result<Bytes, RemoteError>> = match chunk {
            Ok(chunk) => (0..chunk.len())
                .step_by(WRITE_CHUNK)
                .map(|at| Ok(chunk.slice(at..(at + WRITE_CHUNK).min(chunk.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(pieces)
    });
    futures_util::stream::unfold(
        (pieces.boxed(), Some(name), 0i64, false),
        move |(mut pieces, mut name, offset, finished)| {
            let failure = failure.clone();
            async move {
                if finished {
                    return None;
                }
                let resource_name = name.take().unwrap_or_default();
                match pieces.next().await {
                    Some(Ok(data)) => {
                        let next = offset + data.len() as i64;
                        Some((
                            WriteRequest {
                                resource_name,
                                write_offset: offset,
                                finish_write: false,
                                data: data.to_vec(),
                            },
                            (pieces, name, next, false),
                        ))
                    }
                    Some(Err(e)) => {
                        *failure.lock().expect("never poisoned") = Some(e);
                        None
                    }
                    None => Some((
                        WriteRequest {
                            resource_name,
                            write_offset: offset,
                            finish_write: true,
                            data: Vec::new(),
                        },
                        (pieces, name, offset, true),
                    )),
                }
            }
        },
    )
}

/// `body` as one zstd stream (level 1, cheap on the client's CPU).
fn compressing(body: ByteStream) -> ByteStream {
    let encoder = match zstd::stream::write::Encoder::new(Vec::new(), 1) {
        Ok(encoder) => encoder,
        Err(e) => {
            let error = RemoteError::LocalFile(format!("cannot start compressing: {e}"));
            return futures_util::stream::once(async move { Err(error) }).boxed();
        }
    };
    futures_util::stream::unfold((body, Some(encoder)), |(mut body, encoder)| async move {
        let mut encoder = encoder?;
        let failed = |e: std::io::Error| RemoteError::LocalFile(format!("cannot compress: {e}"));
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = std::io::Write::write_all(&mut encoder, &chunk) {
                        return Some((Err(failed(e)), (body, None)));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(out.into()), (body, Some(encoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (body, None))),
                None => {
                    return Some((
                        encoder.finish().map(Bytes::from).map_err(failed),
                        (body, None),
                    ));
                }
            }
        }
    })
    .boxed()
}

/// A zstd stream of a blob of `size` bytes, decoded in pieces of at most
/// 256 KiB; more than `size` bytes is an error, so a small bomb stays
/// small.
fn decompressed(compressed: ByteStream, size: u64, url: String) -> ByteStream {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let decoder = match Decoder::new() {
        Ok(decoder) => decoder,
        Err(e) => {
            let error = RemoteError::Failed(format!("cannot start decompressing: {e}"));
            return futures_util::stream::once(async move { Err(error) }).boxed();
        }
    };
    let state = (compressed, decoder, Bytes::new(), 0u64, false);
    futures_util::stream::try_unfold(
        state,
        move |(mut compressed, mut decoder, mut input, mut produced, mut ended)| {
            let url = url.clone();
            async move {
                loop {
                    if input.is_empty() {
                        match compressed.next().await {
                            Some(chunk) => input = chunk?,
                            None if ended => return Ok(None),
                            None => {
                                return Err(RemoteError::Failed(format!(
                                    "{url} sent a zstd stream that ends in the middle of a frame"
                                )));
                            }
                        }
                        continue;
                    }
                    let mut piece = vec![0; 256 * 1024];
                    let mut in_buffer = InBuffer::around(&input[..]);
                    let mut out_buffer = OutBuffer::around(&mut piece[..]);
                    let hint = decoder.run(&mut in_buffer, &mut out_buffer).map_err(|e| {
                        RemoteError::Failed(format!("{url} sent a damaged zstd stream: {e}"))
                    })?;
                    let (consumed, written) = (in_buffer.pos(), out_buffer.pos());
                    ended = hint == 0;
                    input = input.slice(consumed..);
                    produced += written as u64;
                    if produced > size {
                        return Err(RemoteError::Failed(format!(
                            "{url} sent a zstd stream longer than its {size} bytes"
                        )));
                    }
                    if written > 0 {
                        piece.truncate(written);
                        return Ok(Some((
                            Bytes::from(piece),
                            (compressed, decoder, input, produced, ended),
                        )));
                    }
                }
            }
        },
    )
    .boxed()
}

fn tls_config(settings: &GrpcSettings) -> Result<ClientTlsConfig, RemoteError> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            RemoteError::Config(format!("cannot read the {what} {}: {e}", path.display()))
        })
    };
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca_file) = &settings.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read(ca_file, "CA file")?));
    }
    if let Some((certificate, key)) = &settings.client_identity {
        config = config.identity(Identity::from_pem(
            read(certificate, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    Ok(config)
}

/// `message` with `metadata`.
fn with_metadata<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request
}

/// The `authorization` value that carries `token`.
fn authorization(token: &str) -> Result<AsciiMetadataValue, RemoteError> {
    AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| RemoteError::Config("the token holds characters a header cannot carry".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn blobs(url: &str) -> GrpcBlobs {
        GrpcBlobs::new(&GrpcSettings {
            url: url.to_owned(),
            ..GrpcSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn keys_map_to_instances_and_urls_are_checked() {
        let hex = "ab".repeat(32);
        let instance = |blobs: &GrpcBlobs, key: &str| match blobs.locate(key).unwrap() {
            Located::Action { instance, hash } => {
                assert_eq!(hash, hex);
                instance
            }
            Located::Blob { .. } => panic!("{key} is an action"),
        };
        let plain = blobs("grpc://cache:9092");
        assert_eq!(instance(&plain, &format!("ac/{hex}")), "");
        assert_eq!(instance(&plain, &format!("main/ac/{hex}")), "main");
        let team = blobs("grpcs://cache:9092/team/");
        assert_eq!(instance(&team, &format!("ac/{hex}")), "team");
        assert_eq!(instance(&team, &format!("pr-1/ac/{hex}")), "team/pr-1");
        assert!(matches!(
            team.locate(&format!("cas/{hex}")).unwrap(),
            Located::Blob { hash } if hash == hex
        ));
        assert!(team.locate("granary-v1/manifests/x").is_err());
        for bad in [
            "http://cache:9092",
            "grpc://",
            "grpc://user:secret@cache:9092",
            "cache:9092",
        ] {
            let e = GrpcBlobs::new(&GrpcSettings {
                url: bad.to_owned(),
                ..GrpcSettings::default()
            })
            .unwrap_err();
            assert!(e.to_string().contains("grpc://HOST:PORT"), "{bad}: {e}");
        }
        let e = GrpcBlobs::new(&GrpcSettings {
            url: "grpc://cache:9092".into(),
            ca_file: Some("/etc/ca.pem".into()),
            ..GrpcSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("grpcs://"), "{e}");
        let e = GrpcBlobs::new(&GrpcSettings {
            url: "grpc://cache:9092".into(),
            headers: vec![("bad header".into(), "x".into())],
            ..GrpcSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--remote-header"), "{e}");
    }

    /// A refusal as a server sends it: a google.rpc.Status with a
    /// RetryInfo in its details.
    fn refusal(code: Code, delay: Duration) -> Status {
        let details = RpcStatus {
            code: code as i32,
            message: "full".into(),
            details: vec![bazel_remote_apis::google::protobuf::Any {
                type_url: RETRY_INFO_TYPE.into(),
                value: RetryInfo {
                    retry_delay: Some(bazel_remote_apis::google::protobuf::Duration {
                        seconds: delay.as_secs() as i64,
                        nanos: delay.subsec_nanos() as i32,
                    }),
                }
                .encode_to_vec(),
            }],
        };
        Status::with_details(code, "full", details.encode_to_vec().into())
    }

    #[tokio::test]
    async fn a_refusal_with_a_retry_info_is_retried_after_its_delay() {
        let delay = Duration::from_millis(60);
        assert_eq!(
            retry_delay(&refusal(Code::ResourceExhausted, delay)),
            Some(delay)
        );
        // Only codes that a retry can cure.
        assert_eq!(retry_delay(&refusal(Code::InvalidArgument, delay)), None);
        assert_eq!(retry_delay(&Status::unavailable("down")), None);

        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let answer = retrying(|| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                match attempt {
                    0 => Err(refusal(Code::Unavailable, delay)),
                    _ => Ok(attempt),
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 1);
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

        // A server that asks for ever is given up on after a few tries.
        let attempts = AtomicU32::new(0);
        let answer: Result<(), Status> = retrying(|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err(refusal(Code::Unavailable, Duration::from_millis(1))) }
        })
        .await;
        assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
        assert_eq!(attempts.load(Ordering::Relaxed), RETRIES + 1);
    }

    fn chunks(bytes: Vec<u8>, size: usize) -> ByteStream {
        let pieces: Vec<Result<Bytes, RemoteError>> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(pieces).boxed()
    }

    async fn collected(stream: ByteStream) -> Result<Vec<u8>, RemoteError> {
        let pieces: Vec<Bytes> = stream.try_collect().await?;
        Ok(pieces.concat())
    }

    #[tokio::test]
    async fn zstd_from_a_server_is_decoded_in_bounded_pieces_never_past_its_size() {
        let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 13) as u8).collect();
        let compressed = zstd::bulk::compress(&blob, 3).unwrap();
        let url = "grpc://test".to_owned();
        let out = collected(decompressed(
            chunks(compressed.clone(), 1000),
            1_000_000,
            url.clone(),
        ))
        .await
        .unwrap();
        assert!(out == blob);
        // A megabyte of zeros, announced as a kilobyte: refused.
        let bomb = zstd::bulk::compress(&vec![0; 1 << 20], 19).unwrap();
        let e = collected(decompressed(chunks(bomb, 100), 1024, url.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        // A stream cut in the middle of its frame.
        let cut = compressed[..compressed.len() / 2].to_vec();
        let e = collected(decompressed(chunks(cut, 1000), 1_000_000, url))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("middle of a frame"), "{e}");
        // What the client compresses, it can decode.
        let round = collected(compressing(chunks(blob.clone(), 4096)))
            .await
            .unwrap();
        assert!(zstd::decode_all(&round[..]).unwrap() == blob);
    }

    #[tokio::test]
    async fn a_write_sends_offsets_then_finishes_unless_its_body_fails() {
        let failure = Arc::new(Mutex::new(None));
        let body = chunks(vec![7; 150_000], 100_000);
        let messages: Vec<WriteRequest> =
            write_requests("uploads/u/blobs/x/150000".into(), body, failure.clone())
                .collect()
                .await;
        let summary: Vec<(bool, i64, usize, bool)> = messages
            .iter()
            .map(|m| {
                (
                    !m.resource_name.is_empty(),
                    m.write_offset,
                    m.data.len(),
                    m.finish_write,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (true, 0, 65536, false),
                (false, 65536, 34464, false),
                (false, 100_000, 50_000, false),
                (false, 150_000, 0, true),
            ]
        );
        assert!(failure.lock().unwrap().is_none());

        let failing: ByteStream = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"some")),
            Err(RemoteError::LocalFile("changed".into())),
        ])
        .boxed();
        let messages: Vec<WriteRequest> = write_requests("n".into(), failing, failure.clone())
            .collect()
            .await;
        assert!(messages.iter().all(|m| !m.finish_write), "{messages:?}");
        assert!(matches!(
            failure.lock().unwrap().take(),
            Some(RemoteError::LocalFile(_))
        ));
    }

    #[test]
    fn upload_ids_are_version_4_uuids() {
        let (a, b) = (upload_id(), upload_id());
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]),
            "{a}"
        );
    }
}
