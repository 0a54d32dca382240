//! `granary serve`: a shared build-cache server.
//!
//! The server speaks bazel-remote's HTTP cache protocol (`GET`, `HEAD` and
//! `PUT` on `/ac/<sha256>` and `/cas/<sha256>`) and the Remote Execution
//! API's cache services over gRPC (`grpc/`, on the same connections), so
//! granary's `prog` client, Bazel and any other REAPI client can use it, and
//! granary's client can use an existing bazel-remote. Action-cache entries must be REAPI
//! `ActionResult` messages; CAS blobs must hash to their key, which is
//! checked while they stream in: a blob that does not match is never
//! stored.
//!
//! Blobs live on disk (`disk.rs`): written to a temporary file, checked,
//! compressed with zstd when that saves room, and renamed into place, so a
//! crash never leaves a half-written blob where a reader could find it,
//! and the index is rebuilt at start-up from file names and sizes alone.
//! A client that takes zstd gets a compressed blob as it is stored; others
//! get it decoded on the way. The disk tier has a size limit, counted in
//! the blocks the files take; least recently used blobs are evicted in the
//! background down to a low watermark, and above a hard limit writes are
//! refused with 507. A blob being sent is never evicted under its reader.
//! A GET of a blob whose upload is still in progress follows the upload as
//! it arrives; concurrent misses on one key fetch it once from the
//! optional backing object store (`backing.rs`),
//! which also receives every upload in the background.
//!
//! Access is by bearer tokens of scope read or write, kept hashed in a
//! tokens file (`auth.rs`), or by CI systems' OIDC ID tokens whose claims
//! the configured rules map to namespaces (`oidc.rs`), with optional
//! anonymous reading; TLS comes from
//! certificate and key files. `/` is a dashboard for the people who run the
//! server (`dashboard/`), `/status` reports sizes, counts and limits as
//! JSON, `/healthz` says whether the server answers, `/metrics` exposes
//! Prometheus metrics.
//!
//! Architecture invariant: this crate knows nothing of the go command or
//! of granary's `prog` engine and its local tier; it stores and serves
//! opaque blobs by key, checked only as REAPI defines them. It reaches the
//! backing store only through `granary_format::BlobStore`.

mod auth;
mod backing;
mod batch;
mod check;
mod chunks;
mod codec;
mod dashboard;
mod disk;
mod follow;
mod frames;
#[doc(hidden)]
pub mod fuzz;
mod grant;
mod grpc;
mod http;
mod kept;
mod key;
mod listen;
mod metrics;
mod oidc;
mod pace;
#[cfg(target_os = "linux")]
mod sendfile;
mod service;
mod table;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use granary_format::BlobStore;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use auth::{TokensError, new_token};
pub use disk::{Limits, Rebuilt};
pub use grant::Access;
pub use oidc::{OidcError, OidcIssuer, OidcRule};

/// Everything `granary serve` is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// A second address, for gRPC clients (any request there may be HTTP
    /// too, as gRPC is on `listen`).
    pub grpc_listen: Option<SocketAddr>,
    pub dir: PathBuf,
    pub limits: Limits,
    /// The tokens file; `None`: anyone may read and write.
    pub tokens: Option<PathBuf>,
    /// Issuers whose OIDC ID tokens are credentials, with their rules.
    pub oidc: Vec<OidcIssuer>,
    /// With tokens or OIDC: requests without a credential may read.
    pub anonymous_read: bool,
    pub tls: Option<TlsFiles>,
    /// How long a connection may stall (no byte in or out while waiting).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight and for uploads to
    /// the backing store.
    pub shutdown_grace: Duration,
    /// Bytes of compressed blobs kept in memory for batch answers; 0: none.
    pub compressed_cache: u64,
    /// A write is answered only once the backing store has it, so that
    /// every server on the same bucket can read it at once.
    pub write_through: bool,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot use the cache directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {address}: {source}; choose another --listen address")]
    Listen {
        address: SocketAddr,
        source: io::Error,
    },
}

/// A server bound to its address, with its index rebuilt: [`Server::run`]
/// it.
pub struct Server {
    listener: TcpListener,
    grpc_listener: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    service: Arc<service::Service>,
    settings: Settings,
    rebuilt: Rebuilt,
    backing: Option<Arc<dyn BlobStore>>,
}

impl Server {
    /// Opens the cache directory, reads the tokens and TLS files, and
    /// binds the address. Must run inside a tokio runtime.
    pub async fn bind(
        settings: Settings,
        backing: Option<Arc<dyn BlobStore>>,
    ) -> Result<Server, ServeError> {
        let oidc = match settings.oidc.is_empty() {
            true => None,
            false => Some(oidc::Oidc::new(settings.oidc.clone())?),
        };
        let auth = auth::Auth::new(settings.tokens.as_deref(), oidc, settings.anonymous_read)?;
        let tls = settings.tls.as_ref().map(tls_acceptor).transpose()?;
        let (disk, rebuilt) =
            disk::Disk::open(&settings.dir, settings.limits).map_err(|source| ServeError::Dir {
                dir: settings.dir.clone(),
                source,
            })?;
        let listener = listen(settings.listen).map_err(|source| ServeError::Listen {
            address: settings.listen,
            source,
        })?;
        let grpc_listener = settings
            .grpc_listen
            .map(|address| listen(address).map_err(|source| ServeError::Listen { address, source }))
            .transpose()?;
        let frames = Arc::new(frames::Frames::new(settings.compressed_cache));
        let metrics = Arc::new(metrics::Metrics::new(&disk, &frames));
        let service = Arc::new(service::Service {
            disk,
            auth,
            metrics,
            frames,
            backing: None,
            idle_timeout: settings.idle_timeout,
            batch_turns: Arc::new(tokio::sync::Semaphore::new(batch::BATCHES_AT_ONCE)),
            dashboard: Arc::default(),
            started: Instant::now(),
            tls: tls.is_some(),
        });
        Ok(Server {
            listener,
            grpc_listener,
            tls,
            service,
            settings,
            rebuilt,
            backing,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// The address of the gRPC listener, if there is one.
    pub fn grpc_local_addr(&self) -> Option<SocketAddr> {
        self.grpc_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound socket has an address")
        })
    }

    /// What the index was rebuilt from.
    pub fn rebuilt(&self) -> Rebuilt {
        self.rebuilt
    }

    /// How access works, for the start-up message.
    pub fn auth(&self) -> String {
        self.service.auth.describe()
    }

    /// Serves until `shutdown` completes, then finishes requests in flight
    /// and queued uploads to the backing store, each for up to the grace
    /// period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            grpc_listener,
            tls,
            service,
            settings,
            backing,
            ..
        } = self;
        let mut service = Arc::into_inner(service).expect("not shared before run");
        let write_behind = backing.map(|blobs| {
            let (backing, task) = backing::Backing::start(
                blobs,
                service.disk.clone(),
                service.metrics.clone(),
                settings.write_through,
            );
            service.backing = Some(backing);
            task
        });
        let service = Arc::new(service);
        let evictor = tokio::spawn(service.disk.clone().evict_forever());
        let compressor = tokio::spawn(service.disk.clone().compress_forever());
        let sampler = tokio::spawn(dashboard::sample_forever(
            service.dashboard.clone(),
            service.disk.clone(),
            service.metrics.clone(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let (routes, reaper) = grpc::routes(service.clone());
        let reaper = tokio::spawn(reaper);
        // One cap for the connections of both listeners.
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
        let grpc = grpc_listener.map(|listener| {
            tokio::spawn(listen::serve(
                listener,
                tls.clone(),
                service.clone(),
                routes.clone(),
                slots.clone(),
                settings.shutdown_grace,
                stop.clone().cancelled_owned(),
            ))
        });
        let http = listen::serve(
            listener,
            tls,
            service.clone(),
            routes,
            slots,
            settings.shutdown_grace,
            stop.clone().cancelled_owned(),
        );
        tokio::pin!(http);
        tokio::select! {
            () = &mut http => {}
            () = shutdown => {
                stop.cancel();
                http.await;
            }
        }
        if let Some(grpc) = grpc {
            let _ = grpc.await;
        }
        evictor.abort();
        compressor.abort();
        sampler.abort();
        reaper.abort();
        // Closing the queue lets the write-behind task finish what it has.
        drop(service);
        if let Some(task) = write_behind
            && tokio::time::timeout(settings.shutdown_grace, task)
                .await
                .is_err()
        {
            tracing::warn!(
                "uploads to the backing store still queued after {:?}; they stay on disk only",
                settings.shutdown_grace
            );
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A listening socket with a backlog long enough for a burst of a few
/// thousand clients (tokio's default, 1024, overflows when a whole CI
/// fleet connects at once, and the kernel then resets connections).
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Connections waiting to be accepted, at most (the kernel caps it at
/// net.core.somaxconn).
const BACKLOG: u32 = 8192;

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &Path, what: &str, e: &dyn std::fmt::Display| {
        ServeError::Tls(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let certificates = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read(&files.certificate, "certificate file", &e))?;
    if certificates.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no PEM certificate",
            files.certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| read(&files.key, "private key file", &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|e| ServeError::Tls(format!("the certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
