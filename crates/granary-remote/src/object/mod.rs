//! Object storage as a [`BlobStore`]: S3-compatible stores, Google Cloud
//! Storage and Azure Blob Storage, on the `object_store` crate (for GCS,
//! its credentials only). Nothing outside this module knows that crate.
//!
//! What the kinds share lives here: URL parsing, deadlines and retries, the
//! blob operations on an object_store client, error mapping. Each kind is
//! one file that reads its own settings (`GRANARY_<KIND>_*` and its cloud's
//! usual variables), sets up its client, and says which settings to change
//! when the store refuses us. Adding a kind is that file, a
//! [`StoreSettings`] variant, its URL scheme in [`ObjectSettings::from_url`]
//! and its arm in [`ObjectSettings::client`]. GCS brings its own blob
//! operations (see `gcs.rs` for why).

mod azure;
mod gcs;
mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

pub use azure::{AzureCredentials, AzureSettings};
pub use gcs::GcsSettings;
pub use s3::{S3Credentials, S3Settings};

use crate::{BlobStore, ByteStream, Listed, RemoteError};

/// Parts of a streamed upload: S3 takes parts of 5 MiB to 5 GiB, Azure
/// blocks up to 4000 MiB.
const MULTIPART_PART: usize = 8 << 20;
/// Parts sent at once: what a streamed upload holds in memory, with the
/// one being filled.
const MULTIPART_PARTS_IN_FLIGHT: usize = 2;

/// How long connecting may take at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The URLs [`ObjectSettings::from_url`] takes, for messages.
pub const OBJECT_URLS: &str = "s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], \
     az://CONTAINER[/PREFIX] or https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]";

/// Which store, where in it, and how long a request may take.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    pub store: StoreSettings,
    /// Keys go under this prefix; empty for the bucket's root.
    pub prefix: String,
    /// How long one HTTP request may take, body included.
    pub request_timeout: Duration,
}

/// The settings of one kind of store.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    S3(S3Settings),
    Gcs(GcsSettings),
    Azure(AzureSettings),
}

impl ObjectSettings {
    /// The settings for an object-store URL, completed from the kind's
    /// variables, which `var` reads. `Ok(None)`: `url` names no object
    /// store (a cache server's, say).
    pub fn from_url(
        url: &str,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ObjectSettings>, RemoteError> {
        /// The kinds, as their URLs name them.
        enum Kind {
            S3,
            Gcs,
            /// The account and its endpoint, when the URL names them.
            Azure(Option<(String, String)>),
        }
        let (kind, rest) = if let Some(rest) = url.strip_prefix("s3://") {
            (Kind::S3, rest)
        } else if let Some(rest) = url.strip_prefix("gs://") {
            (Kind::Gcs, rest)
        } else if let Some(rest) = ["az://", "azure://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
        {
            (Kind::Azure(None), rest)
        } else if let Some((account, endpoint, rest)) = azure::account_url(url) {
            (Kind::Azure(Some((account, endpoint))), rest)
        } else {
            return Ok(None);
        };
        let (name, prefix) = match kind {
            Kind::S3 => bucket(url, rest, s3::USAGE, s3::valid_bucket)?,
            Kind::Gcs => bucket(url, rest, gcs::USAGE, gcs::valid_bucket)?,
            Kind::Azure(_) => bucket(url, rest, azure::USAGE, azure::valid_container)?,
        };
        let store = match kind {
            Kind::S3 => StoreSettings::S3(S3Settings::new(name, var)?),
            Kind::Gcs => StoreSettings::Gcs(GcsSettings::new(name, var)),
            Kind::Azure(account) => StoreSettings::Azure(AzureSettings::new(name, account, var)?),
        };
        Ok(Some(ObjectSettings {
            store,
            prefix,
            request_timeout: Duration::from_secs(10),
        }))
    }

    /// The store's client. Sends no request.
    pub fn client(&self) -> Result<Arc<dyn BlobStore>, RemoteError> {
        // The caller sets the deadlines and decides when to give up, so a
        // failed request is retried once, quickly, not for minutes.
        let timeout = self.request_timeout;
        let retry = RetryConfig {
            max_retries: 1,
            retry_timeout: timeout,
            ..RetryConfig::default()
        };
        let options = |endpoint: Option<&String>| {
            ClientOptions::new()
                .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
                .with_timeout(timeout)
                .with_connect_timeout(timeout.min(CONNECT_TIMEOUT))
        };
        let blobs = |store, scheme, bucket, advice| ObjectBlobs {
            store,
            name: format!("{scheme}://{bucket}/{}", self.prefix),
            prefix: self.prefix.clone(),
            advice,
        };
        Ok(match &self.store {
            StoreSettings::S3(s3) => Arc::new(blobs(
                s3.build(options(s3.endpoint.as_ref()), retry)?,
                "s3",
                &s3.bucket,
                s3::credentials_advice,
            )),
            StoreSettings::Azure(azure) => Arc::new(blobs(
                azure.build(options(azure.endpoint.as_ref()), retry)?,
                "az",
                &azure.container,
                azure::credentials_advice,
            )),
            StoreSettings::Gcs(gcs) => Arc::new(gcs.client(&self.prefix, timeout)?),
        })
    }
}

/// The bucket (or container) and the prefix of `rest`, the part of `url`
/// after its scheme; `usage` says what the URL should look like.
fn bucket(
    url: &str,
    rest: &str,
    usage: &str,
    valid: fn(&str) -> bool,
) -> Result<(String, String), RemoteError> {
    let bad = |why: &str| {
        RemoteError::Config(format!(
            "`{url}` is not a remote this build knows ({why}); use {usage}"
        ))
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || !valid(bucket) {
        return Err(bad("that is not a valid bucket or container name"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..")
        || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
    {
        return Err(bad("the prefix has an empty, `.` or `..` part"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// A bucket or container under a prefix, on an object_store client.
#[derive(Debug)]
struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// The URL it was set up from, for messages.
    name: String,
    prefix: String,
    advice: fn(bool) -> String,
}

impl ObjectBlobs {
    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// Why a kind's client could not be set up.
fn setup_error(kind: &str, e: object_store::Error) -> RemoteError {
    RemoteError::Config(format!(
        "cannot set up the {kind} client: {}",
        with_causes(&e)
    ))
}

impl fmt::Display for ObjectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    fn credentials_advice(&self, writes: bool) -> String {
        (self.advice)(writes)
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, RemoteError> {
        match self.store.get(&self.path(key)).await {
            Ok(found) => Ok(Some(found.into_stream().map_err(remote_error).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote_error(e)),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(body))
            .await
            .map(drop)
            .map_err(remote_error)
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        _length: Option<u64>,
    ) -> Result<(), RemoteError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(remote_error)?;
        let mut write = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        let sent = async {
            while let Some(chunk) = body.next().await {
                write
                    .wait_for_capacity(MULTIPART_PARTS_IN_FLIGHT)
                    .await
                    .map_err(remote_error)?;
                write.write(&chunk?);
            }
            Ok::<_, RemoteError>(())
        }
        .await;
        match sent {
            Ok(()) => write.finish().await.map(drop).map_err(remote_error),
            Err(e) => {
                // Nothing of an abandoned upload is left to pay for.
                let _ = write.abort().await;
                Err(e)
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let strip = match self.prefix.is_empty() {
            true => 0,
            false => self.prefix.len() + 1,
        };
        self.store
            .list(Some(&self.path(prefix.trim_end_matches('/'))))
            .map_ok(|meta| Listed {
                key: meta.location.as_ref()[strip..].to_owned(),
                modified: meta.last_modified.into(),
            })
            .try_collect()
            .await
            .map_err(remote_error)
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_error(e)),
        }
    }
}

/// `e` with its causes: the root cause ("connection refused",
/// "InvalidAccessKeyId") is what tells the user what to fix, and the
/// clients nest it a few levels down.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

fn remote_error(e: object_store::Error) -> RemoteError {
    let message = with_causes(&e);
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => RemoteError::Denied(message),
        _ => RemoteError::Failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Option<ObjectSettings>, RemoteError> {
        ObjectSettings::from_url(url, &|_| None)
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let s = settings("s3://ci-cache/go/linux").unwrap().unwrap();
        let StoreSettings::S3(s3) = &s.store else {
            panic!("{s:?}")
        };
        assert_eq!(
            (s3.bucket.as_str(), s.prefix.as_str()),
            ("ci-cache", "go/linux")
        );
        assert_eq!(settings("s3://ci-cache/").unwrap().unwrap().prefix, "");
        assert_eq!(settings("s3://ci-cache").unwrap().unwrap().prefix, "");
        for bad in [
            "s3://",
            "s3:///p",
            "s3://Bad/p",
            "s3://b/a//c",
            "s3://b/../c",
        ] {
            let e = settings(bad).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET"), "{bad}: {e}");
        }
        for other in [
            "ci-cache",
            "http://x/y",
            "grpc://x:1",
            "https://example.com/c",
        ] {
            assert!(settings(other).unwrap().is_none(), "{other}");
        }
    }

    #[test]
    fn each_cloud_has_its_urls() {
        let s = settings("gs://team_cache.eu/go").unwrap().unwrap();
        let StoreSettings::Gcs(gcs) = &s.store else {
            panic!("{s:?}")
        };
        assert_eq!(
            (gcs.bucket.as_str(), s.prefix.as_str()),
            ("team_cache.eu", "go")
        );

        for url in ["az://ci-cache/go", "azure://ci-cache/go"] {
            let s = ObjectSettings::from_url(url, &|name| {
                (name == "GRANARY_AZURE_ACCOUNT").then(|| "acme".to_owned())
            })
            .unwrap()
            .unwrap();
            let StoreSettings::Azure(azure) = &s.store else {
                panic!("{s:?}")
            };
            assert_eq!(azure.container, "ci-cache");
            assert_eq!(azure.account.as_deref(), Some("acme"));
            assert_eq!(s.prefix, "go");
        }

        let s = settings("https://acme.blob.core.windows.net/ci-cache/go/linux")
            .unwrap()
            .unwrap();
        let StoreSettings::Azure(azure) = &s.store else {
            panic!("{s:?}")
        };
        assert_eq!(
            (
                azure.account.as_deref(),
                azure.container.as_str(),
                s.prefix.as_str()
            ),
            (Some("acme"), "ci-cache", "go/linux")
        );
        assert_eq!(
            azure.endpoint.as_deref(),
            Some("https://acme.blob.core.windows.net")
        );

        for (bad, usage) in [
            ("gs://Team/go", "gs://BUCKET"),
            ("gs://b/../go", "gs://BUCKET"),
            ("az://Ci_Cache/go", "az://CONTAINER"),
            ("https://acme.blob.core.windows.net/", "az://CONTAINER"),
        ] {
            let e = settings(bad).unwrap_err().to_string();
            assert!(e.contains(usage), "{bad}: {e}");
        }
    }

    #[test]
    fn each_store_is_named_by_its_url_and_advises_on_its_own_settings() {
        let azure_account =
            |name: &str| (name == "GRANARY_AZURE_ACCOUNT").then(|| "acme".to_owned());
        for (url, var, advice) in [
            (
                "s3://ci/go",
                &(|_: &str| None) as &dyn Fn(&str) -> Option<String>,
                "GRANARY_S3_ACCESS_KEY_ID",
            ),
            ("gs://ci/go", &|_: &str| None, "GRANARY_GCS_CREDENTIALS"),
            ("az://ci/go", &azure_account, "GRANARY_AZURE_ACCESS_KEY"),
        ] {
            let settings = ObjectSettings::from_url(url, var).unwrap().unwrap();
            let blobs = settings.client().unwrap();
            assert_eq!(blobs.to_string(), url);
            let written = blobs.credentials_advice(true);
            assert!(
                written.contains(advice) && written.contains("write"),
                "{written}"
            );
            assert!(!blobs.credentials_advice(false).contains("write"));
        }
    }
}
