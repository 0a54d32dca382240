//! What a client shows a cache server: a fixed token, or the CI job's
//! OpenID Connect ID token.
//!
//! An ID token names the job (repository, ref, event) and is signed by the
//! CI system, so the server can grant by identity instead of by a
//! long-lived secret. GitLab puts the token in a variable the pipeline
//! names (`id_tokens:`), valid for the whole job. GitHub hands one out on
//! request (`ACTIONS_ID_TOKEN_REQUEST_URL` and `_TOKEN`, given to jobs
//! with `permissions: id-token: write`) for the audience asked; those
//! expire within minutes, so the token is asked for again a minute before
//! it expires, and the requests never send an expired one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::RemoteError;

/// How long before its expiry an ID token is replaced.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// How long asking the CI runner for an ID token may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The variable GitLab's `id_tokens:` fills for granary.
pub const GITLAB_ID_TOKEN_VARIABLE: &str = "GRANARY_ID_TOKEN";

/// A bearer credential.
#[derive(Clone)]
pub enum Credential {
    /// The same token on every request.
    Token(String),
    /// GitHub Actions' ID token, renewed before it expires.
    GithubIdToken(Arc<GithubIdToken>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(<hidden>)"),
            Credential::GithubIdToken(source) => {
                write!(f, "GithubIdToken(audience {})", source.audience)
            }
        }
    }
}

impl Credential {
    /// The token to send now.
    pub async fn bearer(&self) -> Result<String, RemoteError> {
        match self {
            Credential::Token(token) => Ok(token.clone()),
            Credential::GithubIdToken(source) => source.current().await,
        }
    }

    /// The GitHub Actions job's ID token for `audience`, from the
    /// runner's variables as `var` reads them.
    pub fn github(
        audience: &str,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Credential, RemoteError> {
        let (Some(url), Some(request_token)) = (
            var("ACTIONS_ID_TOKEN_REQUEST_URL"),
            var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
        ) else {
            return Err(RemoteError::Config(
                "--oidc github needs the runner's ACTIONS_ID_TOKEN_REQUEST_URL and \
                 ACTIONS_ID_TOKEN_REQUEST_TOKEN: give the job `permissions: id-token: write` \
                 (pull requests from forks never get them)"
                    .into(),
            ));
        };
        let mut url = reqwest::Url::parse(&url).map_err(|e| {
            RemoteError::Config(format!("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: {e}"))
        })?;
        url.query_pairs_mut().append_pair("audience", audience);
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Credential::GithubIdToken(Arc::new(GithubIdToken {
            client,
            url,
            request_token,
            audience: audience.to_owned(),
            current: tokio::sync::Mutex::new(None),
        })))
    }

    /// The GitLab CI job's ID token, from the variable its pipeline's
    /// `id_tokens:` names [`GITLAB_ID_TOKEN_VARIABLE`].
    pub fn gitlab(var: &dyn Fn(&str) -> Option<String>) -> Result<Credential, RemoteError> {
        match var(GITLAB_ID_TOKEN_VARIABLE).filter(|token| !token.trim().is_empty()) {
            Some(token) => Ok(Credential::Token(token.trim().to_owned())),
            None => Err(RemoteError::Config(format!(
                "--oidc gitlab needs the job's ID token in {GITLAB_ID_TOKEN_VARIABLE}: add \
                 `id_tokens: {{{GITLAB_ID_TOKEN_VARIABLE}: {{aud: <the server's audience>}}}}` \
                 to the job"
            ))),
        }
    }
}

/// Asks the GitHub Actions runner for ID tokens.
#[derive(Debug)]
pub struct GithubIdToken {
    client: reqwest::Client,
    url: reqwest::Url,
    request_token: String,
    audience: String,
    /// The token and when it expires; held while a new one is asked for.
    current: tokio::sync::Mutex<Option<(String, SystemTime)>>,
}

impl GithubIdToken {
    async fn current(&self) -> Result<String, RemoteError> {
        let mut current = self.current.lock().await;
        if let Some((token, expires)) = &*current
            && SystemTime::now() + REFRESH_BEFORE < *expires
        {
            return Ok(token.clone());
        }
        let token = self.request().await?;
        let expires = expiry(&token).ok_or_else(|| {
            RemoteError::Failed("the runner's ID token has no readable expiry (exp)".into())
        })?;
        *current = Some((token.clone(), expires));
        Ok(token)
    }

    async fn request(&self) -> Result<String, RemoteError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            value: String,
        }
        let failed = |e: reqwest::Error| {
            RemoteError::Failed(format!("cannot get an ID token from the runner: {e}"))
        };
        let response = self
            .client
            .get(self.url.clone())
            .bearer_auth(&self.request_token)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        if status.is_client_error() {
            return Err(RemoteError::Denied(format!(
                "the runner refused to issue an ID token (HTTP {status}); give the job \
                 `permissions: id-token: write`"
            )));
        }
        if !status.is_success() {
            return Err(RemoteError::Failed(format!(
                "the runner could not issue an ID token (HTTP {status})"
            )));
        }
        let answer: Answer = response.json().await.map_err(failed)?;
        Ok(answer.value)
    }
}

/// When a JWT expires, read from its claims without checking its
/// signature: the server does that.
fn expiry(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwts_expiry_is_read_from_its_claims() {
        let payload = base64_simd::URL_SAFE_NO_PAD.encode_to_string(r#"{"exp":1900000000}"#);
        assert_eq!(
            expiry(&format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln")),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(expiry("not-a-jwt"), None);
    }

    #[test]
    fn missing_runner_variables_say_what_the_job_needs() {
        let none = |_: &str| None;
        let github = Credential::github("granary", &none)
            .unwrap_err()
            .to_string();
        assert!(github.contains("id-token: write"), "{github}");
        let gitlab = Credential::gitlab(&none).unwrap_err().to_string();
        assert!(gitlab.contains("id_tokens:"), "{gitlab}");
        let set = |name: &str| (name == GITLAB_ID_TOKEN_VARIABLE).then(|| " eyJ.a.b\n".to_owned());
        let Credential::Token(token) = Credential::gitlab(&set).unwrap() else {
            panic!("GitLab's token is fixed for the job");
        };
        assert_eq!(token, "eyJ.a.b");
        let runner = |name: &str| match name {
            "ACTIONS_ID_TOKEN_REQUEST_URL" => {
                Some("https://runner.example/token?api-version=2.0".to_owned())
            }
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some("secret".to_owned()),
            _ => None,
        };
        let Credential::GithubIdToken(source) = Credential::github("granary", &runner).unwrap()
        else {
            panic!("GitHub's token is asked for");
        };
        assert_eq!(
            source.url.as_str(),
            "https://runner.example/token?api-version=2.0&audience=granary"
        );
        assert!(!format!("{:?}", Credential::Token("secret".into())).contains("secret"));
    }

    /// A runner that takes the connection and never answers costs one
    /// request its 10 s bound, then an error the remote tier counts.
    #[tokio::test]
    async fn a_silent_runner_costs_the_request_timeout() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/token?api-version=2.0",
            silent.local_addr().unwrap()
        );
        let runner = |name: &str| match name {
            "ACTIONS_ID_TOKEN_REQUEST_URL" => Some(url.clone()),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some("secret".to_owned()),
            _ => None,
        };
        let credential = Credential::github("granary", &runner).unwrap();
        let started = std::time::Instant::now();
        let error = credential.bearer().await.unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(error, RemoteError::Failed(_)), "{error}");
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
            "{waited:?}"
        );
        drop(silent);
    }
}
