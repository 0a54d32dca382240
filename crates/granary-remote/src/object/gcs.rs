//! Google Cloud Storage, through its JSON API, with Google's own
//! credentials.
//!
//! The credentials (service-account keys, application default credentials,
//! the metadata server) are object_store's; the requests are ours, on
//! `reqwest`. object_store's GCS client speaks the XML API, whose uploads no
//! emulator that installs here accepts (fake-gcs-server takes XML uploads
//! only with signed URLs; gcp-storage-emulator answers them without an
//! ETag), so it could not be tested. The JSON API is the one Google's own
//! client libraries use, and fake-gcs-server speaks it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::StaticCredentialProvider;
use object_store::gcp::{GcpCredential, GcpCredentialProvider, GoogleCloudStorageBuilder};
use reqwest::header::{CONTENT_RANGE, LOCATION};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;

use super::with_causes;
use crate::{BlobStore, ByteStream, Listed, RemoteError};

pub(super) const USAGE: &str = "gs://BUCKET or gs://BUCKET/PREFIX";

/// Where Google serves the JSON API.
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// Pieces of a streamed (resumable) upload: a multiple of 256 KiB, as the
/// API demands; what such an upload holds in memory.
const UPLOAD_PIECE: usize = 8 << 20;

/// GCS's bucket names: lower-case letters, digits, `-`, `_` and `.`.
pub(super) fn valid_bucket(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct GcsSettings {
    pub bucket: String,
    /// A service-account key file (`GRANARY_GCS_CREDENTIALS`). `None`:
    /// Google's usual chain: `GOOGLE_APPLICATION_CREDENTIALS`, the
    /// application default credentials of `gcloud`, else the metadata
    /// server of the machine (workload identity).
    pub credentials_file: Option<PathBuf>,
    /// Another endpoint than storage.googleapis.com
    /// (`GRANARY_GCS_ENDPOINT`): a private endpoint or an emulator.
    pub endpoint: Option<String>,
}

impl GcsSettings {
    pub(super) fn new(bucket: String, var: &dyn Fn(&str) -> Option<String>) -> GcsSettings {
        GcsSettings {
            bucket,
            credentials_file: var("GRANARY_GCS_CREDENTIALS").map(PathBuf::from),
            endpoint: var("GRANARY_GCS_ENDPOINT"),
        }
    }

    /// The bucket's client, under `prefix`, whose requests may take
    /// `timeout` each, body included. Sends no request.
    pub(super) fn client(&self, prefix: &str, timeout: Duration) -> Result<GcsBlobs, RemoteError> {
        let endpoint = self
            .endpoint
            .as_deref()
            .unwrap_or(GOOGLE_ENDPOINT)
            .trim_end_matches('/');
        let base = Url::parse(endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| {
                RemoteError::Config(format!(
                    "GRANARY_GCS_ENDPOINT `{endpoint}` is not an http(s):// URL"
                ))
            })?;
        let credentials = self.credentials(base.scheme() == "http")?;
        let client = Client::builder()
            .connect_timeout(timeout.min(super::CONNECT_TIMEOUT))
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot set up the GCS client: {e}")))?;
        Ok(GcsBlobs {
            client,
            base,
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            credentials,
        })
    }

    /// Google's credential chain, as object_store resolves it.
    fn credentials(&self, plain_http: bool) -> Result<GcpCredentialProvider, RemoteError> {
        // Google serves nothing over plain HTTP: such an endpoint is an
        // emulator, and no token is sent in clear text unasked.
        if plain_http && self.credentials_file.is_none() {
            let nobody = GcpCredential {
                bearer: String::new(),
            };
            return Ok(Arc::new(StaticCredentialProvider::new(nobody)));
        }
        let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&self.bucket);
        if let Some(file) = &self.credentials_file {
            builder = builder.with_service_account_path(file.to_string_lossy());
        }
        let store = builder.build().map_err(|e| {
            let why = with_causes(&e);
            RemoteError::Config(match &self.credentials_file {
                Some(file) => format!(
                    "cannot read Google credentials: {why}; GRANARY_GCS_CREDENTIALS names {}, \
                     which must be a service-account key file (JSON) as the Google Cloud \
                     console downloads it",
                    file.display()
                ),
                None => format!(
                    "cannot read Google credentials: {why}; check GOOGLE_APPLICATION_CREDENTIALS, \
                     or set GRANARY_GCS_CREDENTIALS to a service-account key file"
                ),
            })
        })?;
        Ok(Arc::clone(store.credentials()))
    }
}

/// A bucket under a prefix.
pub(super) struct GcsBlobs {
    client: Client,
    /// The endpoint, e.g. `https://storage.googleapis.com`.
    base: Url,
    bucket: String,
    prefix: String,
    credentials: GcpCredentialProvider,
}

impl fmt::Debug for GcsBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsBlobs")
            .field("base", &self.base.as_str())
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for GcsBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.prefix)
    }
}

/// A page of `objects.list`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectItem>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ObjectItem {
    name: String,
    /// RFC 3339.
    updated: String,
}

impl GcsBlobs {
    fn name(&self, key: &str) -> String {
        match self.prefix.is_empty() {
            true => key.to_owned(),
            false => format!("{}/{key}", self.prefix),
        }
    }

    /// `{base}/{api}/b/{bucket}/o[/{object}]`, each part escaped (an
    /// object's `/` too, as the JSON API wants).
    fn url(&self, api: &[&str], object: Option<&str>) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL");
            path.pop_if_empty()
                .extend(api)
                .extend(["b", &self.bucket, "o"]);
            if let Some(object) = object {
                path.push(object);
            }
        }
        url
    }

    fn object_url(&self, key: &str) -> Url {
        self.url(&["storage", "v1"], Some(&self.name(key)))
    }

    fn upload_url(&self, key: &str, upload_type: &str) -> Url {
        let mut url = self.url(&["upload", "storage", "v1"], None);
        url.query_pairs_mut()
            .append_pair("uploadType", upload_type)
            .append_pair("name", &self.name(key));
        url
    }

    /// Sends `request` with the current token; the response if it
    /// succeeded, or found nothing; else why not.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RemoteError> {
        let credential =
            self.credentials.get_credential().await.map_err(|e| {
                RemoteError::Denied(format!("no Google token: {}", with_causes(&e)))
            })?;
        let request = match credential.bearer.is_empty() {
            true => request,
            false => request.bearer_auth(&credential.bearer),
        };
        let response = request
            .send()
            .await
            .map_err(|e| RemoteError::Failed(format!("GCS request failed: {}", with_causes(&e))))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND || status.as_u16() == 308 {
            return Ok(response);
        }
        let url = response.url().path().to_owned();
        let body = response.text().await.unwrap_or_default();
        let why = format!(
            "{} {url}: HTTP {status}: {}",
            self.bucket,
            body.chars().take(200).collect::<String>()
        );
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RemoteError::Denied(why),
            _ => RemoteError::Failed(why),
        })
    }

    /// Sends one piece of a resumable upload; `total` on the last.
    async fn send_piece(
        &self,
        session: &str,
        offset: u64,
        piece: Bytes,
        total: Option<u64>,
    ) -> Result<(), RemoteError> {
        let length = piece.len() as u64;
        let range = match (length, total) {
            (0, Some(total)) => format!("bytes */{total}"),
            (_, total) => format!(
                "bytes {offset}-{}/{}",
                offset + length - 1,
                total.map_or("*".to_owned(), |t| t.to_string())
            ),
        };
        let response = self
            .send(
                self.client
                    .put(session)
                    .header(CONTENT_RANGE, range)
                    .body(piece),
            )
            .await?;
        match (response.status().as_u16(), total) {
            (308, None) | (200 | 201, Some(_)) => Ok(()),
            (status, _) => Err(RemoteError::Failed(format!(
                "GCS answered a piece of an upload to {} with HTTP {status}",
                self.bucket
            ))),
        }
    }
}

#[async_trait]
impl BlobStore for GcsBlobs {
    fn credentials_advice(&self, writes: bool) -> String {
        credentials_advice(writes)
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError> {
        let mut url = self.object_url(key);
        url.query_pairs_mut().append_pair("alt", "media");
        let response = self.send(self.client.get(url)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response
            .bytes_stream()
            .map_err(|e| RemoteError::Failed(format!("GCS download cut off: {}", with_causes(&e))));
        Ok(Some(body.boxed()))
    }

    async fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        let mut url = self.object_url(key);
        url.query_pairs_mut().append_pair("fields", "name");
        let response = self.send(self.client.get(url)).await?;
        Ok(response.status() != StatusCode::NOT_FOUND)
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        let request = self.client.post(self.upload_url(key, "media")).body(body);
        match self.send(request).await?.status() {
            StatusCode::NOT_FOUND => Err(no_bucket(&self.bucket)),
            _ => Ok(()),
        }
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        _length: Option<u64>,
    ) -> Result<(), RemoteError> {
        let started = self
            .send(self.client.post(self.upload_url(key, "resumable")))
            .await?;
        if started.status() == StatusCode::NOT_FOUND {
            return Err(no_bucket(&self.bucket));
        }
        let session = started
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| RemoteError::Failed("GCS began an upload without a session".into()))?
            .to_owned();
        let sent = async {
            let mut pending = BytesMut::new();
            let mut offset = 0;
            while let Some(chunk) = body.next().await {
                pending.extend_from_slice(&chunk?);
                while pending.len() >= UPLOAD_PIECE {
                    let piece = pending.split_to(UPLOAD_PIECE).freeze();
                    self.send_piece(&session, offset, piece, None).await?;
                    offset += UPLOAD_PIECE as u64;
                }
            }
            let total = offset + pending.len() as u64;
            self.send_piece(&session, offset, pending.freeze(), Some(total))
                .await
        }
        .await;
        if sent.is_err() {
            // Nothing of an abandoned upload is kept.
            let _ = self.send(self.client.delete(&session)).await;
        }
        sent
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let strip = match self.prefix.is_empty() {
            true => 0,
            false => self.prefix.len() + 1,
        };
        let mut listed = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut url = self.url(&["storage", "v1"], None);
            url.query_pairs_mut()
                .append_pair("prefix", &self.name(prefix))
                .append_pair("fields", "items(name,updated),nextPageToken");
            if let Some(token) = &page_token {
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let response = self.send(self.client.get(url)).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Err(no_bucket(&self.bucket));
            }
            let page: ObjectList = response.json().await.map_err(|e| {
                RemoteError::Failed(format!(
                    "GCS listed objects unreadably: {}",
                    with_causes(&e)
                ))
            })?;
            for item in page.items {
                let modified =
                    humantime::parse_rfc3339_weak(&item.updated).unwrap_or(SystemTime::UNIX_EPOCH);
                let key = item.name.get(strip..).unwrap_or_default().to_owned();
                listed.push(Listed { key, modified });
            }
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => return Ok(listed),
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.send(self.client.delete(self.object_url(key)))
            .await
            .map(drop)
    }
}

fn no_bucket(bucket: &str) -> RemoteError {
    RemoteError::Failed(format!(
        "there is no GCS bucket {bucket}; create it, or fix the URL (gs://BUCKET/PREFIX)"
    ))
}

pub(super) fn credentials_advice(writes: bool) -> String {
    format!(
        "set GRANARY_GCS_CREDENTIALS (or GOOGLE_APPLICATION_CREDENTIALS) to the key file of a \
         service account that may read{} the bucket (role {}), or run with application default \
         credentials that may",
        if writes { " and write" } else { "" },
        if writes {
            "roles/storage.objectUser"
        } else {
            "roles/storage.objectViewer"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(endpoint: Option<&str>, prefix: &str) -> GcsBlobs {
        let settings = GcsSettings {
            bucket: "ci".into(),
            endpoint: endpoint.map(str::to_owned),
            ..GcsSettings::default()
        };
        settings.client(prefix, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn object_names_are_one_escaped_path_segment() {
        let b = blobs(Some("http://127.0.0.1:4443/"), "go/linux");
        assert_eq!(
            b.object_url("granary-v1/ac/ab").as_str(),
            "http://127.0.0.1:4443/storage/v1/b/ci/o/go%2Flinux%2Fgranary-v1%2Fac%2Fab"
        );
        assert_eq!(
            b.upload_url("cas/cd", "media").as_str(),
            "http://127.0.0.1:4443/upload/storage/v1/b/ci/o?uploadType=media&name=go%2Flinux%2Fcas%2Fcd"
        );
        let b = blobs(None, "");
        assert_eq!(
            b.object_url("ac/ab").as_str(),
            "https://storage.googleapis.com/storage/v1/b/ci/o/ac%2Fab"
        );
    }

    #[test]
    fn bad_endpoints_and_credential_files_say_which_setting() {
        let settings = GcsSettings {
            bucket: "ci".into(),
            endpoint: Some("storage.example".into()),
            ..GcsSettings::default()
        };
        let e = settings.client("", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("GRANARY_GCS_ENDPOINT"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.json");
        std::fs::write(&file, "{\"type\": \"service_account\"}").unwrap();
        let settings = GcsSettings {
            bucket: "ci".into(),
            credentials_file: Some(file),
            endpoint: None,
        };
        let e = settings.client("", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("GRANARY_GCS_CREDENTIALS"), "{e}");
    }
}
