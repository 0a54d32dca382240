//! S3-compatible object storage as a [`BlobStore`], on the `object_store`
//! crate. The only file that knows that crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use crate::{BlobStore, ByteStream, Listed, RemoteError};

/// Parts of a streamed upload: S3 takes parts of 5 MiB to 5 GiB.
const MULTIPART_PART: usize = 8 << 20;
/// Parts sent at once: what a streamed upload holds in memory, with the
/// one being filled.
const MULTIPART_PARTS_IN_FLIGHT: usize = 2;

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Keys go under this prefix; empty for the bucket's root.
    pub prefix: String,
    /// The endpoint of an S3-compatible store, e.g. `http://127.0.0.1:8333`;
    /// `None` for AWS.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Whether to address the bucket as `<endpoint>/<bucket>` rather than
    /// `<bucket>.<endpoint>`. `None`: path style with an endpoint (what
    /// MinIO, SeaweedFS and Ceph expect), virtual-hosted style for AWS.
    pub path_style: Option<bool>,
    /// `None`: the AWS chain (`AWS_*` variables, web identity, container
    /// and instance credentials).
    pub credentials: Option<S3Credentials>,
    /// How long one HTTP request may take, body included.
    pub request_timeout: Duration,
}

/// A static key pair. Its `Debug` form hides the secret.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Settings for `s3://bucket/prefix`; the rest stays at its default.
    pub fn from_url(url: &str) -> Result<S3Settings, RemoteError> {
        let bad = |why: &str| {
            RemoteError::Config(format!(
                "`{url}` is not a remote this build knows ({why}); use s3://BUCKET or s3://BUCKET/PREFIX"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_chars =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c);
        if bucket.is_empty() || !bucket.chars().all(bucket_chars) {
            return Err(bad(
                "bucket names are lower-case letters, digits, `.` and `-`",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..")
            || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
        {
            return Err(bad("the prefix has an empty, `.` or `..` part"));
        }
        Ok(S3Settings {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            request_timeout: Duration::from_secs(10),
            ..S3Settings::default()
        })
    }
}

/// A bucket under a prefix.
#[derive(Debug)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

impl S3Blobs {
    /// Configures the client. Sends no request.
    pub fn new(settings: &S3Settings) -> Result<S3Blobs, RemoteError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        let path_style = settings.path_style.unwrap_or(settings.endpoint.is_some());
        builder = builder.with_virtual_hosted_style_request(!path_style);
        if let Some(credentials) = &settings.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
        }
        // The caller sets the deadlines and decides when to give up, so a
        // failed request is retried once, quickly, not for minutes.
        let retry = RetryConfig {
            max_retries: 1,
            retry_timeout: settings.request_timeout,
            ..RetryConfig::default()
        };
        let plain_http = settings
            .endpoint
            .as_ref()
            .is_some_and(|e| e.starts_with("http://"));
        let options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_timeout(settings.request_timeout)
            .with_connect_timeout(settings.request_timeout.min(Duration::from_secs(5)));
        let store = builder
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot set up the S3 client: {e}")))?;
        Ok(S3Blobs {
            store: Arc::new(store),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
        })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }
}

impl fmt::Display for S3Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn credentials_advice(&self, writes: bool) -> String {
        format!(
            "set GRANARY_S3_ACCESS_KEY_ID and GRANARY_S3_SECRET_ACCESS_KEY (or the AWS_* \
             variables) to a key that may read{} the bucket",
            if writes { " and write" } else { "" }
        )
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

fn remote_error(e: object_store::Error) -> RemoteError {
    use std::error::Error;
    let mut message = e.to_string();
    // The root cause ("connection refused", "InvalidAccessKeyId") is what
    // tells the user what to fix; object_store nests it a few levels down.
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => RemoteError::Denied(message),
        _ => RemoteError::Failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let s = S3Settings::from_url("s3://ci-cache/go/linux").unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefix.as_str()),
            ("ci-cache", "go/linux")
        );
        let s = S3Settings::from_url("s3://ci-cache/").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("ci-cache", ""));
        let s = S3Settings::from_url("s3://ci-cache").unwrap();
        assert_eq!(s.prefix, "");
        for bad in [
            "ci-cache",
            "http://x/y",
            "s3://",
            "s3:///p",
            "s3://Bad/p",
            "s3://b/a//c",
            "s3://b/../c",
        ] {
            let e = S3Settings::from_url(bad).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET"), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let credentials = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("token".into()),
        };
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("AKIDEXAMPLE") && !shown.contains("wJalr") && !shown.contains("token")
        );
    }
}
