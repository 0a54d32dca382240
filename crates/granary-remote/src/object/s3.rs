//! S3-compatible storage: AWS S3, MinIO, R2, SeaweedFS, Ceph, GCS interop.

use std::fmt;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::setup_error;
use crate::RemoteError;

pub(super) const USAGE: &str = "s3://BUCKET or s3://BUCKET/PREFIX";

/// S3's bucket names: lower-case letters, digits, `.` and `-`.
pub(super) fn valid_bucket(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
}

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
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
    /// The bucket, with the key pair in `GRANARY_S3_ACCESS_KEY_ID` and
    /// `GRANARY_S3_SECRET_ACCESS_KEY` (and `GRANARY_S3_SESSION_TOKEN`) if
    /// set. The endpoint, region and path style are the caller's: they are
    /// flags and config keys too.
    pub(super) fn new(
        bucket: String,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Settings, RemoteError> {
        let credentials = match (
            var("GRANARY_S3_ACCESS_KEY_ID"),
            var("GRANARY_S3_SECRET_ACCESS_KEY"),
        ) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("GRANARY_S3_SESSION_TOKEN"),
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(RemoteError::Config(
                    "set both GRANARY_S3_ACCESS_KEY_ID and GRANARY_S3_SECRET_ACCESS_KEY, or \
                     neither (to use the AWS_* variables and the rest of the AWS chain)"
                        .into(),
                ));
            }
        };
        Ok(S3Settings {
            bucket,
            credentials,
            ..S3Settings::default()
        })
    }

    pub(super) fn build(
        &self,
        options: ClientOptions,
        retry: RetryConfig,
    ) -> Result<Arc<dyn ObjectStore>, RemoteError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let path_style = self.path_style.unwrap_or(self.endpoint.is_some());
        builder = builder.with_virtual_hosted_style_request(!path_style);
        if let Some(credentials) = &self.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| setup_error("S3", e))?;
        Ok(Arc::new(store))
    }
}

pub(super) fn credentials_advice(writes: bool) -> String {
    format!(
        "set GRANARY_S3_ACCESS_KEY_ID and GRANARY_S3_SECRET_ACCESS_KEY (or the AWS_* \
         variables) to a key that may read{} the bucket",
        if writes { " and write" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(set: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let set: Vec<(String, String)> = set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| set.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn granary_variables_give_a_key_pair_or_none() {
        let none = S3Settings::new("b".into(), &vars(&[])).unwrap();
        assert!(none.credentials.is_none());
        let pair = S3Settings::new(
            "b".into(),
            &vars(&[
                ("GRANARY_S3_ACCESS_KEY_ID", "id"),
                ("GRANARY_S3_SECRET_ACCESS_KEY", "secret"),
                ("GRANARY_S3_SESSION_TOKEN", "token"),
            ]),
        )
        .unwrap();
        let credentials = pair.credentials.unwrap();
        assert_eq!(credentials.access_key_id, "id");
        assert_eq!(credentials.session_token.as_deref(), Some("token"));
        let half = S3Settings::new("b".into(), &vars(&[("GRANARY_S3_ACCESS_KEY_ID", "id")]))
            .unwrap_err()
            .to_string();
        assert!(half.contains("GRANARY_S3_SECRET_ACCESS_KEY"), "{half}");
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
