//! The HTTP API: bazel-remote's cache protocol, plus `/status`, `/healthz`
//! and `/metrics`.
//!
//! | request                     | answer                                      |
//! |-----------------------------|---------------------------------------------|
//! | `GET /{ac,cas}/<hex>`       | 200 with the blob, 404                      |
//! | `HEAD /{ac,cas}/<hex>`      | 200 with its length, 404                    |
//! | `PUT /{ac,cas}/<hex>`       | 200 stored; 400 hash mismatch or not an ActionResult; 413 too large; 507 full |
//! | any of those, bad key       | 400                                         |
//! | no or unknown token         | 401; a read-only token writing: 403        |
//! | `POST /batch`               | a pack of many action entries (see [`batch`](crate::batch)) |
//! | `GET /`, `/dashboard.json`  | the dashboard and its figures (see [`dashboard`](crate::dashboard)) |
//!
//! Bodies stream in both directions: a PUT goes to disk as it arrives, in
//! writes batched while the client sends faster than the disk takes them;
//! a GET reads the file as the client takes it (hyper asks for the next
//! chunk only when the connection can take it), so a slow client holds one
//! chunk of memory, not the blob. On Linux, the reads of a plain HTTP/1.1
//! connection that need no wait are answered before hyper sees them, by
//! `sendfile.rs`; this file answers everything else.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, TryStreamExt};
use http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::Semaphore;

use crate::auth::Identity;
use crate::batch;
use crate::check::{MAX_ACTION_RESULT, Rejected, Why};
use crate::dashboard::{self, Face};
use crate::grant::{Access, NAMESPACE_SOURCES};
use crate::key::{Key, Kind, batch_instance};
use crate::pace::Pace;
use crate::service::{Held, Opened, Service, Unreadable, read_whole, stored_bytes};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Blobs up to this size are read whole and sent in one piece.
pub const SMALL_BLOB: u64 = 64 * 1024;

impl Service {
    /// Who sent `request`; a refused credential is counted.
    pub async fn identify<B>(&self, request: &Request<B>) -> Identity {
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        self.identify_header(authorization).await
    }

    /// Answers one request of a connection whose batch answers under way
    /// are counted by `connection_batches`.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        connection_batches: Arc<Semaphore>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let method = method_name(request.method());
        self.dashboard.count(Face::Http);
        let (kind, response) = self.route(request, connection_batches).await;
        let took = started.elapsed().as_secs_f64();
        self.metrics
            .answered(method, kind, response.status().as_u16(), took);
        Ok(response)
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        connection_batches: Arc<Semaphore>,
    ) -> (&'static str, Response<Body>) {
        let path = request.uri().path();
        if let Some(instance) = batch_instance(path) {
            let instance = instance.to_owned();
            return (
                "batch",
                self.batch(request, &instance, connection_batches).await,
            );
        }
        let Some((key, instance)) = Key::from_path(path) else {
            let monitoring = matches!(path, "/status" | "/metrics" | "/" | "/dashboard.json");
            let may_monitor = !monitoring || self.identify(&request).await.may_monitor();
            let response = match (request.method(), path) {
                (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
                // A browser asks its user for a password on this challenge:
                // any user name, and the token as the password.
                (&Method::GET, "/" | "/dashboard.json") if !may_monitor => {
                    let mut response = unauthorized(None);
                    response.headers_mut().append(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Basic realm=\"granary serve: a read token as the password\"",
                        ),
                    );
                    response
                }
                (&Method::GET, "/status" | "/metrics") if !may_monitor => unauthorized(None),
                (&Method::GET, "/") => self.dashboard_page(),
                (&Method::GET, "/dashboard.json") => self.dashboard_figures(request.uri().query()),
                (&Method::GET, "/status") => self.status(),
                (&Method::GET, "/metrics") => {
                    let mut response = text(
                        StatusCode::OK,
                        self.metrics.render(&self.disk.usage(), &self.frames),
                    );
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                }
                (_, "/healthz" | "/status" | "/metrics" | "/" | "/dashboard.json") => {
                    text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
                }
                _ if path.contains("/ac/") || path.contains("/cas/") => {
                    text(StatusCode::BAD_REQUEST, not_a_key(path))
                }
                _ => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
            };
            let kind = match path {
                "/healthz" => "healthz",
                "/status" => "status",
                "/metrics" => "metrics",
                "/" | "/dashboard.json" => "dashboard",
                _ => "other",
            };
            return (kind, response);
        };
        let identity = self.identify(&request).await;
        let access = identity.access;
        let needed = match *request.method() {
            Method::GET | Method::HEAD => Access::Read,
            Method::PUT => Access::Write,
            _ => {
                return (
                    key.kind.name(),
                    text(StatusCode::METHOD_NOT_ALLOWED, "use GET, HEAD or PUT\n"),
                );
            }
        };
        if access < needed {
            // Without a token, the answer is "send one", whatever
            // anonymous users may do; with one, "not with this one".
            let response = match (identity.presented, access) {
                (true, Access::Read) => forbidden(),
                _ => unauthorized(Some(&identity)),
            };
            if needed == Access::Write {
                self.metrics.reject(match response.status() {
                    StatusCode::FORBIDDEN => "forbidden",
                    _ => "unauthorized",
                });
            }
            return (key.kind.name(), response);
        }
        let write = needed == Access::Write;
        if key.kind == Kind::Ac {
            if !identity.may_use_namespace(instance, write) {
                if write {
                    self.metrics.reject("namespace");
                }
                return (key.kind.name(), outside_namespaces(instance));
            }
            self.dashboard.count_namespace(instance);
        }
        let response = match *request.method() {
            Method::PUT => self.put(key, request).await,
            ref method => {
                let zstd = batch::accepts_zstd(request.headers());
                self.get(key, *method == Method::HEAD, zstd).await
            }
        };
        (key.kind.name(), response)
    }

    /// `POST /batch`: see [`batch`](crate::batch). The connection's turn
    /// is taken before the request is read and kept until the answer is
    /// sent or dropped; the server's turn only while it is written.
    async fn batch(
        self: &Arc<Self>,
        request: Request<Incoming>,
        instance: &str,
        connection_batches: Arc<Semaphore>,
    ) -> Response<Body> {
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        let identity = self.identify(&request).await;
        if identity.access < Access::Read {
            return unauthorized(Some(&identity));
        }
        if !identity.may_use_namespace(instance, false) {
            return outside_namespaces(instance);
        }
        self.dashboard.count_namespace(instance);
        // Bounded: a handler that waits keeps its connection open.
        let Ok(connection_turn) =
            tokio::time::timeout(self.idle_timeout, connection_batches.acquire_owned()).await
        else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this connection has {} batch answers under way; read them first\n",
                    batch::BATCHES_PER_CONNECTION
                ),
            );
        };
        let connection_turn = connection_turn.expect("never closed");
        let zstd = batch::accepts_zstd(request.headers());
        let limit = batch::MAX_BATCH * 66;
        let body = match http_body_util::Limited::new(request.into_body(), limit)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "cannot read the batch request ({e}); send at most {} action IDs\n",
                        batch::MAX_BATCH
                    ),
                );
            }
        };
        let keys = match batch::parse(&body, instance) {
            Ok(keys) => keys,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let Ok(server_turn) =
            tokio::time::timeout(self.idle_timeout, self.batch_turns.clone().acquire_owned()).await
        else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy writing other batch answers; ask for the entries one by one\n",
            );
        };
        let server_turn = server_turn.expect("never closed");
        let chunks = batch::answer(self.clone(), keys, zstd, server_turn);
        let stream = futures_util::stream::unfold(
            (chunks, connection_turn),
            |(mut chunks, turn)| async move {
                let chunk = chunks.recv().await?;
                Some((chunk.map(Frame::data), (chunks, turn)))
            },
        );
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-granary-pack"),
        );
        if zstd {
            let headers = response.headers_mut();
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        response
    }

    /// A GET or HEAD; with `zstd`, a blob stored compressed is sent as it
    /// is stored.
    async fn get(&self, key: Key, head: bool, zstd: bool) -> Response<Body> {
        let response = match head {
            true => match self.held(&key).await {
                Held::Stored(size) => {
                    let mut response = empty(StatusCode::OK);
                    set_length(&mut response, size);
                    response
                }
                Held::InBacking => empty(StatusCode::OK),
                Held::Absent => empty(StatusCode::NOT_FOUND),
            },
            false => match self.open(key).await {
                Ok(opened) => self.send(key, opened, zstd).await,
                Err(unreadable) => unreadable_response(&unreadable),
            },
        };
        match response.status() {
            StatusCode::OK => self.metrics.looked_up(key.kind, true),
            StatusCode::NOT_FOUND => self.metrics.looked_up(key.kind, false),
            _ => {}
        }
        response
    }

    /// An opened blob: a small stored one read at once and sent in one
    /// piece; others streamed as the client takes them. With `zstd`, a
    /// blob stored compressed goes as it is stored.
    async fn send(&self, key: Key, opened: Opened, zstd: bool) -> Response<Body> {
        let (length, encoded, varies) = match &opened {
            Opened::Stored(blob) if blob.compressed() && zstd => (Some(blob.stored), true, true),
            Opened::Stored(blob) => (Some(blob.size), false, blob.compressed()),
            Opened::Arriving(follower) => (follower.expected(), false, false),
        };
        let mut response = match opened {
            Opened::Stored(blob) if blob.size <= SMALL_BLOB => {
                // A read from the page cache, shorter than a trip to the
                // blocking pool.
                match read_whole(key, &blob, zstd) {
                    Ok(whole) => {
                        self.metrics.bytes_sent.inc_by(whole.bytes.len() as u64);
                        text(StatusCode::OK, whole.bytes)
                    }
                    Err(unreadable) => return unreadable_response(&unreadable),
                }
            }
            opened => {
                let stream = match (opened, encoded) {
                    (Opened::Stored(blob), true) => stored_bytes(key, blob, 0),
                    (opened, _) => self.bytes_from(key, opened, 0).await,
                };
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(unreadable) => return unreadable_response(&unreadable),
                };
                let sent = self.metrics.bytes_sent.clone();
                let stream = stream.inspect_ok(move |chunk| {
                    sent.inc_by(chunk.len() as u64);
                });
                Response::new(StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync())
            }
        };
        if let Some(length) = length {
            set_length(&mut response, length);
        }
        if encoded {
            let headers = response.headers_mut();
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        }
        if varies {
            let headers = response.headers_mut();
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        response
    }

    async fn put(self: &Arc<Self>, key: Key, request: Request<Incoming>) -> Response<Body> {
        let length = match request.headers().get(CONTENT_LENGTH) {
            None => None,
            Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(length) => Some(length),
                None => return text(StatusCode::BAD_REQUEST, "bad Content-Length\n"),
            },
        };
        if key.kind == Kind::Ac && length.is_some_and(|l| l > MAX_ACTION_RESULT) {
            self.metrics.reject(Why::TooLarge.reason());
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an action result is at most {MAX_ACTION_RESULT} bytes\n"),
            );
        }
        match self.put_body(key, length, request.into_body()).await {
            Ok(()) => empty(StatusCode::OK),
            Err(rejected) => {
                self.metrics.reject(rejected.why.reason());
                text(status_of(rejected.why), format!("{}\n", rejected.message))
            }
        }
    }

    /// Stores a PUT's body. A small body that is already here in full is
    /// stored in one trip to the blocking pool (no one could follow it
    /// anyway); any other streams in as it comes.
    async fn put_body(
        self: &Arc<Self>,
        key: Key,
        length: Option<u64>,
        mut body: Incoming,
    ) -> Result<(), Rejected> {
        let mut first = Vec::new();
        let mut complete = false;
        if length.is_some_and(|length| length <= SMALL_BLOB) {
            while let Some(frame) = body.frame().now_or_never() {
                let Some(frame) = frame else {
                    complete = true;
                    break;
                };
                if let Ok(data) = frame.map_err(cut)?.into_data() {
                    first.extend_from_slice(&data);
                }
            }
        }
        self.metrics.bytes_received.inc_by(first.len() as u64);
        if complete {
            if length != Some(first.len() as u64) {
                return Err(short(first.len() as u64, length));
            }
            return self.store(key, first).await;
        }
        let mut receiving = self.receive(key, length)?;
        receiving.take(&first).await?;
        let mut pace = Pace::new(self.idle_timeout);
        pace.received(first.len() as u64);
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    // The client paused: let followers have what came so far.
                    receiving.flush().await?;
                    tokio::time::timeout_at(pace.deadline(), body.frame())
                        .await
                        .map_err(|_| Rejected::new(Why::TimedOut, pace.too_slow()))?
                }
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(cut)?.into_data() else {
                continue;
            };
            self.metrics.bytes_received.inc_by(data.len() as u64);
            pace.received(data.len() as u64);
            receiving.take(&data).await?;
        }
        self.finish(receiving, length).await
    }

    /// The dashboard: static, so it is made once, with its policy.
    fn dashboard_page(&self) -> Response<Body> {
        let (page, policy) = self.dashboard.page();
        let mut response = text(StatusCode::OK, page);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert("content-security-policy", policy);
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        response
    }

    /// `/dashboard.json?since=T`: the figures now, and the samples after T.
    fn dashboard_figures(&self, query: Option<&str>) -> Response<Body> {
        let now = self.dashboard.sample(&self.disk, &self.metrics);
        let answer = self.dashboard.answer(
            dashboard::since(query),
            now,
            self.disk.limits(),
            self.started.elapsed(),
            self.backing.is_some(),
        );
        let body = serde_json::to_vec(&answer).expect("the figures serialize");
        let mut response = text(StatusCode::OK, body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
        response
    }

    fn status(&self) -> Response<Body> {
        let usage = self.disk.usage();
        let limits = self.disk.limits();
        let status = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "dir": self.disk.dir(),
            "uptime_s": self.started.elapsed().as_secs(),
            "bytes": usage.bytes,
            "reserved_bytes": usage.reserved,
            "ac_blobs": usage.ac_blobs,
            "cas_blobs": usage.cas_blobs,
            "uploads_in_progress": usage.uploads,
            "evicted": usage.evicted,
            "evicted_bytes": usage.evicted_bytes,
            "max_size": limits.max_size,
            "low_watermark": limits.low_watermark,
            "hard_limit": limits.hard_limit,
            "max_blob": limits.max_blob,
            "auth": self.auth.describe(),
            "tls": self.tls,
            "backing": self.backing.as_ref().map(ToString::to_string),
        });
        let mut response = text(StatusCode::OK, format!("{status:#}\n"));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn cut(error: hyper::Error) -> Rejected {
    Rejected::incomplete(format!("the body was cut: {error}"))
}

fn short(received: u64, length: Option<u64>) -> Rejected {
    Rejected::incomplete(format!(
        "{received} bytes received of {}",
        length.unwrap_or_default()
    ))
}

/// The status that says why an upload was refused.
fn status_of(why: Why) -> StatusCode {
    match why {
        Why::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Why::Full => StatusCode::INSUFFICIENT_STORAGE,
        Why::Io => StatusCode::INTERNAL_SERVER_ERROR,
        Why::TimedOut => StatusCode::REQUEST_TIMEOUT,
        Why::Incomplete | Why::HashMismatch | Why::Invalid => StatusCode::BAD_REQUEST,
    }
}

/// The answer to a read that cannot be served.
fn unreadable_response(unreadable: &Unreadable) -> Response<Body> {
    let status = match unreadable {
        Unreadable::Missing(_) => return empty(StatusCode::NOT_FOUND),
        Unreadable::UploadFailed(_) => StatusCode::BAD_GATEWAY,
        Unreadable::Stalled { .. } => StatusCode::GATEWAY_TIMEOUT,
        Unreadable::Refused(refusal) => status_of(Rejected::from_refusal(refusal).why),
        Unreadable::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, format!("{unreadable}\n"))
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Why `path`, which looks like a cache key, is none: its instance name, or
/// the rest.
fn not_a_key(path: &str) -> String {
    let before_kind = ["/ac/", "/cas/"]
        .iter()
        .filter_map(|kind| path.rfind(kind))
        .max()
        .unwrap_or_default();
    let instance = path.get(1..before_kind).unwrap_or_default();
    match granary_format::Namespace::new(instance) {
        Err(why) => format!("not a cache key: instance names are namespaces: {why}\n"),
        Ok(_) => "not a cache key: use [/INSTANCE]/ac/<sha256> or [/INSTANCE]/cas/<sha256>, \
                  64 lower-case hex digits\n"
            .to_owned(),
    }
}

/// 401, with why the credential was refused if it was.
fn unauthorized(identity: Option<&Identity>) -> Response<Body> {
    let message = match identity {
        Some(identity) => identity.unauthorized_message(),
        None => "a valid token is needed: send `Authorization: Bearer <token>`".to_owned(),
    };
    let mut response = text(StatusCode::UNAUTHORIZED, format!("{message}\n"));
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden() -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        "this token may only read; writing needs a token of scope write\n",
    )
}

fn outside_namespaces(instance: &str) -> Response<Body> {
    let instance = match instance {
        "" => "the default namespace".to_owned(),
        name => format!("namespace {name}"),
    };
    text(
        StatusCode::FORBIDDEN,
        format!("this token may not use the action cache of {instance}; {NAMESPACE_SOURCES}\n"),
    )
}

fn set_length(response: &mut Response<Body>, length: u64) {
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}
