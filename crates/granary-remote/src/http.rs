//! A Bazel HTTP cache server (granary serve, bazel-remote) as a
//! [`BlobStore`], on `reqwest` (which only this file and `object/gcs.rs` know).
//!
//! Keys are paths under the server's URL: `ac/<hex>` and `cas/<hex>` (see
//! [`Format::Reapi`](crate::Format::Reapi)). A path in the URL is kept, so
//! `http://cache:8080/team` reaches bazel-remote's `/team/ac/...`.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, DATE};
use reqwest::{Client, StatusCode};

use crate::{BatchAnswer, BlobStore, ByteStream, Credential, RemoteError};

/// Where the server is and how to reach it.
#[derive(Clone, Default)]
pub struct HttpSettings {
    /// `http://host:port[/prefix]` or `https://...`.
    pub url: String,
    /// A bearer credential, sent with every request.
    pub credential: Option<Credential>,
    /// PEM certificates to trust beside the system's, for a server whose
    /// certificate a private authority signed.
    pub ca_file: Option<PathBuf>,
    /// How long connecting may take; whole requests have the caller's
    /// deadlines.
    pub connect_timeout: Duration,
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("url", &self.url)
            .field("credential", &self.credential)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A Bazel HTTP cache.
#[derive(Debug)]
pub struct HttpBlobs {
    client: Client,
    /// The URL without a trailing slash.
    base: String,
    credential: Option<Credential>,
    /// The server answered a batch request as one without the endpoint
    /// (bazel-remote): packs go to its CAS instead.
    no_batch: AtomicBool,
}

impl fmt::Display for HttpBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl HttpBlobs {
    pub fn new(settings: &HttpSettings) -> Result<HttpBlobs, RemoteError> {
        let url = settings.url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            RemoteError::Config(format!(
                "`{url}` is not a URL ({e}); use http://HOST:PORT[/PREFIX] or https://..."
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(RemoteError::Config(format!(
                "`{url}` is not a cache server URL; use http://HOST:PORT[/PREFIX] or https://..."
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(RemoteError::Config(format!(
                "`{}` carries credentials; put the token in GRANARY_TOKEN or a --token-file instead",
                parsed.host_str().unwrap_or_default()
            )));
        }
        let mut client = Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64);
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| {
                RemoteError::Config(format!(
                    "cannot read the CA file {}: {e}",
                    ca_file.display()
                ))
            })?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RemoteError::Config(format!(
                    "{} holds no PEM certificate: {e}",
                    ca_file.display()
                ))
            })? {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(HttpBlobs {
            client,
            base: url.to_owned(),
            credential: settings.credential.clone(),
            no_batch: AtomicBool::new(false),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, RemoteError> {
        let mut request = self.client.request(method, format!("{}/{key}", self.base));
        if let Some(credential) = &self.credential {
            request = request.bearer_auth(credential.bearer().await?);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| failed(&e))?;
        self.checked(response).await
    }

    /// The response if it succeeded or found nothing; else why not.
    async fn checked(&self, response: reqwest::Response) -> Result<reqwest::Response, RemoteError> {
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(response),
            StatusCode::UNAUTHORIZED => Err(RemoteError::Denied(format!(
                "{} refused the token (HTTP 401)",
                self.base
            ))),
            StatusCode::FORBIDDEN => Err(RemoteError::Denied(format!(
                "{} refused the request (HTTP 403): the token may not do that",
                self.base
            ))),
            status => {
                let why = response.text().await.unwrap_or_default();
                Err(RemoteError::Failed(format!(
                    "{} answered {status}: {}",
                    self.base,
                    why.trim().chars().take(200).collect::<String>()
                )))
            }
        }
    }
}

impl HttpBlobs {
    /// A PUT's answer: stored, unless the server has no cache there.
    fn stored(&self, key: &str, response: &reqwest::Response) -> Result<(), RemoteError> {
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RemoteError::Failed(format!(
                "{} has no cache at {key} (HTTP 404); check the URL's path",
                self.base
            )));
        }
        Ok(())
    }
}

fn failed(error: &reqwest::Error) -> RemoteError {
    // reqwest's Display stops at the outermost cause; the reason is deeper.
    let mut why = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        why = format!("{why}: {cause}");
        source = cause.source();
    }
    RemoteError::Failed(why)
}

#[async_trait]
impl BlobStore for HttpBlobs {
    fn credentials_advice(&self, writes: bool) -> String {
        match writes {
            true => "set GRANARY_TOKEN (or --token-file) to a token of scope write, \
                     or build with --read-only"
                .to_owned(),
            false => {
                "set GRANARY_TOKEN (or --token-file) to a valid token of scope read".to_owned()
            }
        }
    }

    fn keeps_packs(&self) -> bool {
        self.no_batch.load(Ordering::Relaxed)
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError> {
        let response = self.send(reqwest::Method::GET, key, None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(
            response.bytes_stream().map_err(|e| failed(&e)).boxed(),
        ))
    }

    async fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        let response = self.send(reqwest::Method::HEAD, key, None).await?;
        Ok(response.status() != StatusCode::NOT_FOUND)
    }

    async fn clock_skew_ms(&self, key: &str) -> Result<Option<i64>, RemoteError> {
        let before = SystemTime::now();
        let response = self.send(reqwest::Method::HEAD, key, None).await?;
        let after = SystemTime::now();
        let Some(date) = response
            .headers()
            .get(DATE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| httpdate::parse_http_date(value).ok())
        else {
            return Ok(None);
        };
        // `Date` is truncated to the second: the server's clock read
        // between `date` and `date` + 1 s, ours between `before` and
        // `after`; compare the middles.
        let theirs = date + Duration::from_millis(500);
        let ours = before + after.duration_since(before).unwrap_or_default() / 2;
        Ok(Some(match theirs.duration_since(ours) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        }))
    }

    async fn batch(
        &self,
        prefix: &str,
        request: Bytes,
    ) -> Result<Option<BatchAnswer>, RemoteError> {
        // A server does not grow a batch endpoint during a run.
        if self.no_batch.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut post = self
            .client
            .post(format!("{}/{prefix}batch", self.base))
            .header(ACCEPT_ENCODING, "zstd");
        if let Some(credential) = &self.credential {
            post = post.bearer_auth(credential.bearer().await?);
        }
        let response = post.body(request).send().await.map_err(|e| failed(&e))?;
        // bazel-remote and other servers answer an endpoint they do not
        // have with 400, 404 or 405.
        if matches!(
            response.status(),
            StatusCode::BAD_REQUEST
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::NOT_IMPLEMENTED
        ) {
            self.no_batch.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let response = self.checked(response).await?;
        let zstd = match response.headers().get(CONTENT_ENCODING) {
            None => false,
            Some(encoding) if encoding.as_bytes().eq_ignore_ascii_case(b"identity") => false,
            Some(encoding) if encoding.as_bytes().eq_ignore_ascii_case(b"zstd") => true,
            Some(encoding) => {
                return Err(RemoteError::Failed(format!(
                    "{} answered a batch in the {encoding:?} encoding; granary asked for zstd or none",
                    self.base
                )));
            }
        };
        Ok(Some(BatchAnswer {
            body: response.bytes_stream().map_err(|e| failed(&e)).boxed(),
            zstd,
        }))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        let response = self
            .send(reqwest::Method::PUT, key, Some(body.into()))
            .await?;
        self.stored(key, &response)
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), RemoteError> {
        let mut request = self.client.put(format!("{}/{key}", self.base));
        if let Some(credential) = &self.credential {
            request = request.bearer_auth(credential.bearer().await?);
        }
        // Servers of the Bazel protocol want the length of a CAS upload.
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        let response = request
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| failed(&e))?;
        let response = self.checked(response).await?;
        self.stored(key, &response)
    }
}
