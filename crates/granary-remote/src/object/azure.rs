//! Azure Blob Storage, which has no S3 API: block blobs in a container of
//! a storage account.

use std::fmt;
use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::setup_error;
use crate::RemoteError;

pub(super) const USAGE: &str = "az://CONTAINER[/PREFIX] (with GRANARY_AZURE_ACCOUNT) or \
     https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]";

/// Azure's container names: lower-case letters, digits and `-`.
pub(super) fn valid_container(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The account, its endpoint and the rest of a blob service URL such as
/// `https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX` (any Azure
/// cloud's `blob.core.` domain), as users paste it from the portal.
pub(super) fn account_url(url: &str) -> Option<(String, String, &str)> {
    let rest = url.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (account, domain) = host.split_once('.')?;
    domain
        .starts_with("blob.core.")
        .then(|| (account.to_owned(), format!("https://{host}"), path))
}

/// Where the container is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct AzureSettings {
    pub container: String,
    /// The storage account: from the URL, else `GRANARY_AZURE_ACCOUNT`,
    /// else `AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    /// `None`: Azure's usual variables (`AZURE_STORAGE_ACCOUNT_KEY`,
    /// `AZURE_STORAGE_SAS_KEY`, a service principal's `AZURE_CLIENT_ID`
    /// and friends, workload identity), else the managed identity.
    pub credentials: Option<AzureCredentials>,
    /// The account's blob endpoint (`GRANARY_AZURE_ENDPOINT`), e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1` for Azurite. `None`:
    /// `https://ACCOUNT.blob.core.windows.net`.
    pub endpoint: Option<String>,
}

/// granary's own Azure credentials. The `Debug` form hides the secret.
#[derive(Clone)]
pub enum AzureCredentials {
    /// The account's access key (`GRANARY_AZURE_ACCESS_KEY`).
    AccessKey(String),
    /// A shared access signature (`GRANARY_AZURE_SAS_TOKEN`), the query
    /// string the portal gives, with or without its `?`.
    SasToken(String),
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AzureCredentials::AccessKey(_) => "AccessKey(..)",
            AzureCredentials::SasToken(_) => "SasToken(..)",
        })
    }
}

impl AzureSettings {
    /// The container, with the account and endpoint of its URL if it named
    /// them, and granary's variables.
    pub(super) fn new(
        container: String,
        from_url: Option<(String, String)>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AzureSettings, RemoteError> {
        let (url_account, url_endpoint) = from_url.unzip();
        let credentials = match (
            var("GRANARY_AZURE_ACCESS_KEY"),
            var("GRANARY_AZURE_SAS_TOKEN"),
        ) {
            (Some(key), None) => Some(AzureCredentials::AccessKey(key)),
            (None, Some(token)) => Some(AzureCredentials::SasToken(
                token.trim_start_matches('?').to_owned(),
            )),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(RemoteError::Config(
                    "set GRANARY_AZURE_ACCESS_KEY or GRANARY_AZURE_SAS_TOKEN, not both".into(),
                ));
            }
        };
        Ok(AzureSettings {
            container,
            account: url_account.or_else(|| var("GRANARY_AZURE_ACCOUNT")),
            credentials,
            endpoint: var("GRANARY_AZURE_ENDPOINT").or(url_endpoint),
        })
    }

    pub(super) fn build(
        &self,
        options: ClientOptions,
        retry: RetryConfig,
    ) -> Result<Arc<dyn ObjectStore>, RemoteError> {
        let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(&self.container);
        if let Some(account) = &self.account {
            builder = builder.with_account(account);
        }
        match &self.credentials {
            Some(AzureCredentials::AccessKey(key)) => builder = builder.with_access_key(key),
            Some(AzureCredentials::SasToken(token)) => {
                builder = builder.with_config(AzureConfigKey::SasKey, token);
            }
            None => {}
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
        }
        let store = builder
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| {
                let error = setup_error("Azure", e);
                match self.account {
                    Some(_) => error,
                    None => RemoteError::Config(format!(
                        "{error}; name the storage account: set GRANARY_AZURE_ACCOUNT, or use \
                         https://ACCOUNT.blob.core.windows.net/{}",
                        self.container
                    )),
                }
            })?;
        Ok(Arc::new(store))
    }
}

pub(super) fn credentials_advice(writes: bool) -> String {
    format!(
        "set GRANARY_AZURE_ACCESS_KEY to the storage account's key, or GRANARY_AZURE_SAS_TOKEN \
         to a SAS that may read{} the container (or the AZURE_* variables of an identity with \
         the role {})",
        if writes { " and write" } else { "" },
        if writes {
            "Storage Blob Data Contributor"
        } else {
            "Storage Blob Data Reader"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granary_variables_come_first_and_secrets_stay_hidden() {
        let vars = |name: &str| match name {
            "GRANARY_AZURE_ACCOUNT" => Some("fromvar".to_owned()),
            "GRANARY_AZURE_SAS_TOKEN" => Some("?sv=2024&sig=secret".to_owned()),
            _ => None,
        };
        let settings = AzureSettings::new("ci".into(), None, &vars).unwrap();
        assert_eq!(settings.account.as_deref(), Some("fromvar"));
        assert!(matches!(
            &settings.credentials,
            Some(AzureCredentials::SasToken(token)) if token == "sv=2024&sig=secret"
        ));
        assert!(!format!("{settings:?}").contains("secret"));

        let from_url = Some((
            "acme".to_owned(),
            "https://acme.blob.core.windows.net".to_owned(),
        ));
        let settings = AzureSettings::new("ci".into(), from_url, &vars).unwrap();
        assert_eq!(
            settings.account.as_deref(),
            Some("acme"),
            "the URL's account wins"
        );

        let both = |name: &str| {
            matches!(name, "GRANARY_AZURE_ACCESS_KEY" | "GRANARY_AZURE_SAS_TOKEN")
                .then(|| "x".to_owned())
        };
        let e = AzureSettings::new("ci".into(), None, &both).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn a_container_without_an_account_says_how_to_name_one() {
        let settings = AzureSettings::new("ci".into(), None, &|_| None).unwrap();
        let options = ClientOptions::new();
        match settings.build(options, RetryConfig::default()) {
            Err(e) => assert!(e.to_string().contains("GRANARY_AZURE_ACCOUNT"), "{e}"),
            // The machine's AZURE_STORAGE_ACCOUNT_NAME named one.
            Ok(_) => assert!(std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_some()),
        }
    }
}
