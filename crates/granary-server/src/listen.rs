//! Accepting connections: TCP_NODELAY, optional TLS, a cap on connections,
//! a deadline on stalled ones, and a graceful end. A plain connection's
//! first reads may be answered outside hyper (see `sendfile.rs`).
//!
//! A connection is stalled when no request has started, none is being
//! handled and no response has sent data for the idle timeout. Bytes on
//! the socket alone are not progress: an HTTP/2 client that pings, or
//! opens streams it never reads, would otherwise keep its connection for
//! ever.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::Request;
use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tonic::codegen::Service as _;
use tonic::service::Routes;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::batch::BATCHES_PER_CONNECTION;
use crate::http::Body;
use crate::metrics::RequestLabels;
#[cfg(target_os = "linux")]
use crate::sendfile::{self, Ended};
use crate::service::Service;

/// Requests one HTTP/2 connection may have under way at once: each holds
/// a little memory (a chunk of its answer, a file, a pin against
/// eviction), so one client cannot open thousands.
const MAX_STREAMS: u32 = 128;

/// Serves `listener` until `shutdown` completes, then lets requests in
/// flight finish for up to `grace`. Each connection holds one of `slots`
/// (shared by the server's listeners); gRPC calls go to `grpc`, the rest
/// to `service`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Arc<Service>,
    grpc: Routes,
    slots: Arc<Semaphore>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // Tells connections answered outside hyper to end between requests.
    let closing = CancellationToken::new();
    let idle = service.idle_timeout;
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: the kernel's backlog holds the rest.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, don't spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let grpc = grpc.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let serve = |io| {
                let service = service.clone();
                let grpc = grpc.clone();
                let activity = activity.clone();
                let batches = Arc::new(Semaphore::new(BATCHES_PER_CONNECTION));
                // No header timeout for HTTP/1: `Stalls` already ends a
                // connection whose request never arrives, and hyper's
                // would set a timer for every request.
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS);
                let connection = builder
                    .serve_connection(
                        TokioIo::new(io),
                        service_fn(move |request: Request<Incoming>| {
                            let handling = activity.handling();
                            let activity = activity.clone();
                            let response = match is_grpc(&request) {
                                true => answer_grpc(
                                    grpc.clone(),
                                    request,
                                    service.clone(),
                                    batches.clone(),
                                )
                                .boxed(),
                                false => service
                                    .clone()
                                    .handle(request, batches.clone())
                                    .map(|response| response.map(|response| (response, None)))
                                    .boxed(),
                            };
                            async move {
                                let (response, turns) = response.await?;
                                drop(handling);
                                Ok::<_, Infallible>(response.map(|body| {
                                    Tracked {
                                        body,
                                        activity,
                                        _turns: turns,
                                    }
                                    .boxed_unsync()
                                }))
                            }
                        }),
                    )
                    .into_owned();
                watcher.watch(connection)
            };
            let result = match tls {
                None => match plain(stream, &service, &closing).await {
                    Some((stream, read)) => {
                        // A request has come, or the connection has just
                        // opened.
                        activity.progress();
                        serve(Stalls::new(stream, read, idle, activity.clone())).await
                    }
                    None => Ok(()),
                },
                Some(tls) => match tokio::time::timeout(idle, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        activity.progress();
                        let stream = Box::new(stream);
                        serve(Stalls::new(stream, Bytes::new(), idle, activity.clone())).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer} failed: {e}");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake with {peer} timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!("connection with {peer}: {e:?}");
            }
            drop(slot);
        });
    }
    drop(listener);
    closing.cancel();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after {grace:?}; stopping anyway");
        }
    }
}

/// A plain connection, for hyper once [`sendfile`](crate::sendfile) has
/// answered the reads it could, with the bytes read from it already;
/// `None` if it has ended there.
#[cfg(target_os = "linux")]
async fn plain(
    mut stream: TcpStream,
    service: &Arc<Service>,
    closing: &CancellationToken,
) -> Option<(Box<dyn Stream>, Bytes)> {
    match sendfile::answer_reads(&mut stream, service, closing).await {
        Ok(Ended::HandedOff(read)) => Some((Box::new(stream), read)),
        Ok(Ended::Closed) => None,
        Err(e) => {
            tracing::debug!("connection answered by sendfile: {e}");
            None
        }
    }
}

/// A plain connection, for hyper.
#[cfg(not(target_os = "linux"))]
async fn plain(
    stream: TcpStream,
    _service: &Arc<Service>,
    _closing: &CancellationToken,
) -> Option<(Box<dyn Stream>, Bytes)> {
    Some((Box::new(stream), Bytes::new()))
}

/// Whether a request is a gRPC call (`application/grpc`, `+proto` and
/// the other subtypes).
fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC call whose answers are batches of whole blobs.
const BATCH_READ: &str =
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs";

/// The turns a batch answer holds until its body is sent or dropped: one
/// of its connection's and one of the server's.
type Turns = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A gRPC call's answer, its body (trailers and all) as the HTTP
/// answers' body type. A BatchReadBlobs answer holds up to 4 MiB until
/// the client reads it, so it takes the turns of HTTP's `/batch` first
/// (see [`batch`](crate::batch)): a client that opens hundreds of streams
/// and reads none holds two answers, and the whole server at most
/// [`BATCHES_AT_ONCE`](crate::batch::BATCHES_AT_ONCE).
async fn answer_grpc(
    mut grpc: Routes,
    request: Request<Incoming>,
    service: Arc<Service>,
    connection_batches: Arc<Semaphore>,
) -> Result<(http::Response<Body>, Option<Turns>), Infallible> {
    let turns = match request.uri().path() == BATCH_READ {
        false => None,
        true => match batch_turns(&service, connection_batches).await {
            Ok(turns) => Some(turns),
            // Counted as tonic's answers are: this one never reaches it.
            Err(status) => {
                service
                    .metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        method: "BatchReadBlobs",
                        kind: "cas",
                        status: status.code() as u16,
                    })
                    .inc();
                return Ok((status.into_http::<Body>(), None));
            }
        },
    };
    let response = grpc.call(request).await?;
    let response = response.map(|body| {
        body.map_err(|status| io::Error::other(status.message().to_owned()))
            .boxed_unsync()
    });
    Ok((response, turns))
}

/// The connection's turn, then the server's, each within the idle timeout.
async fn batch_turns(
    service: &Service,
    connection_batches: Arc<Semaphore>,
) -> Result<Turns, tonic::Status> {
    let idle = service.idle_timeout;
    let Ok(connection) = tokio::time::timeout(idle, connection_batches.acquire_owned()).await
    else {
        return Err(tonic::Status::resource_exhausted(format!(
            "this connection has {BATCHES_PER_CONNECTION} batch answers under way; read them first"
        )));
    };
    let Ok(server) = tokio::time::timeout(idle, service.batch_turns.clone().acquire_owned()).await
    else {
        return Err(tonic::Status::resource_exhausted(
            "the server is busy sending other batch answers; read the blobs through \
             ByteStream, or try again",
        ));
    };
    Ok((
        connection.expect("never closed"),
        server.expect("never closed"),
    ))
}

/// Any connection stream.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a connection's requests have done lately: the progress that keeps
/// it open.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// When a request last started or finished, or a response sent data,
    /// in milliseconds since `opened`.
    last: AtomicU64,
    /// Requests whose handler is running (each bounds its own waits).
    handling: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        }
    }

    fn progress(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// When the connection last made progress; now while a handler runs.
    fn last_progress(&self) -> Instant {
        if self.handling.load(Ordering::Relaxed) > 0 {
            self.progress();
        }
        self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Counts a request as being handled until the guard is dropped
    /// (progress then; meanwhile [`Activity::last_progress`] is now).
    fn handling(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::Relaxed);
        Handling(self.clone())
    }
}

/// A request being handled; progress while it is and when it ends.
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.progress();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that counts each frame it yields as progress, and
/// holds its request's batch turns until it is sent or dropped.
struct Tracked {
    body: Body,
    activity: Arc<Activity>,
    _turns: Option<Turns>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_some() {
            self.activity.progress();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection that fails once it has made no progress (see [`Activity`])
/// for `limit` while reading or writing waits: a client that stops
/// sending, stops reading, or only pings gives its connection back. The
/// timer is moved when it fires early, so a busy connection does not touch
/// the timer wheel on every read and write.
struct Stalls {
    inner: Box<dyn Stream>,
    /// Bytes read from `inner` already (by `sendfile.rs`), read first.
    read: Bytes,
    limit: Duration,
    activity: Arc<Activity>,
    deadline: Pin<Box<Sleep>>,
}

impl Stalls {
    fn new(
        inner: Box<dyn Stream>,
        read: Bytes,
        limit: Duration,
        activity: Arc<Activity>,
    ) -> Stalls {
        Stalls {
            inner,
            read,
            limit,
            activity,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Called when an operation is pending: has the connection stalled?
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.deadline.as_mut().poll(cx));
            let deadline = self.activity.last_progress() + self.limit;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {:?}", self.limit),
                ));
            }
            self.deadline.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Stalls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let length = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(length));
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl AsyncWrite for Stalls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
