//! OpenID Connect ID tokens from CI systems as credentials.
//!
//! GitHub Actions and GitLab CI give each job a short-lived JWT signed by
//! the CI system (the issuer) and naming the job: repository, ref, event
//! and so on. A server that trusts an issuer takes such a token in place of
//! a long-lived secret: it checks the signature against the issuer's
//! published keys (its JWKS, found through OpenID discovery, or read from a
//! file where the server cannot reach the issuer), the audience, the
//! expiry and the not-before time, then turns the claims into a grant with
//! the issuer's rules: the first rule whose claim patterns all match says
//! which namespaces the job may write and read.
//!
//! Keys are fetched on first use and again when a token names a key id the
//! server does not know (the issuer rotated its keys) or the keys are an
//! hour old, at most once a second, so a client sending made-up key ids
//! cannot flood the issuer. Verified tokens are remembered (by hash) until
//! they expire, so a build's thousands of requests cost one signature check.
//!
//! Architecture invariant: only this file names `jsonwebtoken`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::grant::{Access, CredentialRefusal, Grant};

/// How long a fetch of the issuer's keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again when next needed.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The least time between two fetches of one issuer's keys; doubled after
/// each failed fetch, up to [`MAX_REFETCH`].
const MIN_REFETCH: Duration = Duration::from_secs(1);
const MAX_REFETCH: Duration = Duration::from_secs(60);
/// Clock difference tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// Verified tokens remembered at most.
const REMEMBERED_TOKENS: usize = 4096;
/// The largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1 << 20;

/// One issuer the server trusts, and its rules.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// The `iss` claim, e.g. `https://token.actions.githubusercontent.com`.
    pub issuer: String,
    /// The `aud` claim tokens must carry, e.g. `granary`.
    pub audience: String,
    /// Read the keys from this JWKS file instead of fetching them.
    pub jwks_file: Option<PathBuf>,
    pub rules: Vec<OidcRule>,
}

/// Claims a token must have, and the namespaces a matching token may use.
#[derive(Debug, Clone)]
pub struct OidcRule {
    /// Claim name and glob (`*` matches any run of characters).
    pub claims: Vec<(String, String)>,
    /// Namespaces (globs) it may write, and read; `{claim}` stands for a
    /// claim's value and `{claim.N}` for what the N-th `*` of that claim's
    /// pattern matched.
    pub write: Vec<String>,
    /// Namespaces it may read besides those it may write.
    pub read: Vec<String>,
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("[[serve.oidc]] issuer `{0}`: {1}")]
    Issuer(String, String),
    #[error("rule {rule} of issuer {issuer}: {why}")]
    Rule {
        issuer: String,
        rule: usize,
        why: String,
    },
}

/// The issuers a server trusts.
pub struct Oidc {
    issuers: Vec<Issuer>,
    client: reqwest::Client,
    /// SHA-256 of a verified token → its grant and when it expires.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|issuer| &issuer.settings.issuer))
            .finish()
    }
}

/// A verified token's grant, and when the token expires.
type Verified = (Arc<Grant>, SystemTime);

struct Issuer {
    settings: OidcIssuer,
    keys: RwLock<Option<Arc<Keys>>>,
    /// Held while the keys are fetched, so that requests arriving
    /// meanwhile take that fetch's outcome instead of each fetching in turn.
    fetches: tokio::sync::Mutex<Fetches>,
}

/// An issuer's key fetches so far.
#[derive(Debug, Default)]
struct Fetches {
    /// When the last one ended.
    ended: Option<Instant>,
    /// How many failed since the last that succeeded.
    failures: u32,
}

impl Fetches {
    /// Whether another fetch may start now.
    fn due(&self) -> bool {
        let wait = MIN_REFETCH
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_REFETCH);
        self.ended.is_none_or(|ended| ended.elapsed() >= wait)
    }
}

struct Keys {
    by_id: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    fetched: Instant,
}

impl Oidc {
    /// Checks the settings: issuer URLs, rules and their templates.
    pub fn new(issuers: Vec<OidcIssuer>) -> Result<Oidc, OidcError> {
        for settings in &issuers {
            check_issuer(settings)?;
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Issuer(String::new(), format!("no HTTP client: {e}")))?;
        Ok(Oidc {
            issuers: issuers
                .into_iter()
                .map(|settings| Issuer {
                    settings,
                    keys: RwLock::new(None),
                    fetches: tokio::sync::Mutex::new(Fetches::default()),
                })
                .collect(),
            client,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn describe(&self) -> String {
        let names: Vec<&str> = self
            .issuers
            .iter()
            .map(|issuer| issuer.settings.issuer.as_str())
            .collect();
        format!("OIDC tokens of {}", names.join(", "))
    }

    /// The grant of an ID token whose SHA-256 is `hash`, or why it has
    /// none.
    pub async fn verify(
        &self,
        token: &str,
        hash: [u8; 32],
    ) -> Result<Arc<Grant>, CredentialRefusal> {
        let now = SystemTime::now();
        if let Some((grant, expires)) = self.verified.lock().expect("not poisoned").get(&hash)
            && *expires > now
        {
            return Ok(grant.clone());
        }
        let (grant, expires) = self.check(token).await?;
        let grant = Arc::new(grant);
        let mut verified = self.verified.lock().expect("not poisoned");
        if verified.len() >= REMEMBERED_TOKENS {
            verified.retain(|_, (_, expires)| *expires > now);
            if verified.len() >= REMEMBERED_TOKENS {
                verified.clear();
            }
        }
        verified.insert(hash, (grant.clone(), expires));
        Ok(grant)
    }

    async fn check(&self, token: &str) -> Result<(Grant, SystemTime), CredentialRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            refusal(
                "malformed",
                "the bearer token is not a signed JWT this server accepts (algorithm `none` \
                 and unknown algorithms are refused)"
                    .into(),
            )
        })?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(refusal(
                "algorithm",
                "ID tokens must be signed with the issuer's private key; HMAC-signed tokens \
                 are refused"
                    .into(),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Unverified {
            iss: Option<String>,
        }
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| refusal("malformed", "the ID token's claims are not JSON".into()))?;
        let iss = unverified.iss.unwrap_or_default();
        let Some(issuer) = self.issuers.iter().find(|i| i.settings.issuer == iss) else {
            return Err(refusal(
                "issuer",
                format!(
                    "this server does not trust ID tokens of issuer `{iss}`; it trusts {}",
                    self.describe().trim_start_matches("OIDC tokens of ")
                ),
            ));
        };
        let Some(kid) = header.kid.as_deref() else {
            return Err(refusal(
                "malformed",
                "the ID token names no key id (kid)".into(),
            ));
        };
        let (key, key_algorithm) = issuer.key(kid, &self.client).await?;
        if key_algorithm.is_some_and(|algorithm| algorithm != header.alg) {
            return Err(refusal(
                "algorithm",
                format!(
                    "key {kid} of {iss} signs with {key_algorithm:?}, not {:?}",
                    header.alg
                ),
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&issuer.settings.audience]);
        validation.set_issuer(&[&issuer.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => refusal(
                    "expired",
                    "the ID token has expired; get a fresh one from the CI runner".into(),
                ),
                ErrorKind::ImmatureSignature => refusal(
                    "not_yet_valid",
                    "the ID token is not valid yet (nbf); check the clocks".into(),
                ),
                ErrorKind::InvalidAudience => refusal(
                    "audience",
                    format!(
                        "the ID token is not for audience `{}`; ask the CI runner for a token \
                         with that audience (granary prog --oidc-audience)",
                        issuer.settings.audience
                    ),
                ),
                ErrorKind::InvalidSignature => refusal(
                    "signature",
                    format!("the ID token's signature does not match key {kid} of {iss}"),
                ),
                other => refusal("malformed", format!("the ID token was refused: {other:?}")),
            })?
            .claims;
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map_or(SystemTime::UNIX_EPOCH, |exp| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(exp)
            });
        Ok((issuer.grant(&claims)?, expires))
    }
}

fn refusal(reason: &'static str, message: String) -> CredentialRefusal {
    CredentialRefusal { reason, message }
}

impl Issuer {
    /// The key `kid`, fetching the issuer's keys if it is unknown.
    async fn key(
        &self,
        kid: &str,
        client: &reqwest::Client,
    ) -> Result<(DecodingKey, Option<Algorithm>), CredentialRefusal> {
        let known = |keys: &Option<Arc<Keys>>, fresh_only: bool| {
            keys.as_ref()
                .filter(|keys| !fresh_only || keys.fetched.elapsed() < KEYS_MAX_AGE)
                .and_then(|keys| keys.by_id.get(kid).cloned())
        };
        if let Some(key) = known(&self.keys.read().expect("not poisoned"), true) {
            return Ok(key);
        }
        let unavailable = || {
            refusal(
                "keys_unavailable",
                format!(
                    "the server cannot get the keys of {} right now; try again later",
                    self.settings.issuer
                ),
            )
        };
        // One bound for the whole request, waiting for another's fetch
        // included.
        let asked = tokio::time::Instant::now();
        let deadline = asked + FETCH_TIMEOUT;
        let Ok(mut fetches) = tokio::time::timeout_at(deadline, self.fetches.lock()).await else {
            return Err(unavailable());
        };
        if let Some(key) = known(&self.keys.read().expect("not poisoned"), true) {
            return Ok(key);
        }
        // A fetch that ended while this request waited was its fetch.
        let waited_for_one = fetches.ended.is_some_and(|ended| ended > asked.into_std());
        if !waited_for_one && fetches.due() {
            let fetched = tokio::time::timeout_at(deadline, self.fetch(client))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
            fetches.ended = Some(Instant::now());
            match fetched {
                Ok(keys) => {
                    fetches.failures = 0;
                    *self.keys.write().expect("not poisoned") = Some(Arc::new(keys));
                }
                Err(why) => {
                    fetches.failures = fetches.failures.saturating_add(1);
                    tracing::warn!(
                        issuer = %self.settings.issuer,
                        "cannot get the issuer's keys: {why}"
                    );
                }
            }
        }
        drop(fetches);
        let keys = self.keys.read().expect("not poisoned");
        match known(&keys, false) {
            Some(key) => Ok(key),
            None if keys.is_none() => Err(unavailable()),
            None => Err(refusal(
                "unknown_key",
                format!(
                    "{} has no key {kid}; the token was not signed by that issuer",
                    self.settings.issuer
                ),
            )),
        }
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<Keys, String> {
        let jwks = match &self.settings.jwks_file {
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?,
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let document: Value = serde_json::from_slice(&get(client, &discovery).await?)
                    .map_err(|e| format!("{discovery} is not JSON: {e}"))?;
                let jwks_uri = document["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| format!("{discovery} names no jwks_uri"))?;
                check_url(jwks_uri)?;
                get(client, jwks_uri).await?
            }
        };
        let document: Value =
            serde_json::from_slice(&jwks).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let mut by_id = HashMap::new();
        // Keys of kinds this server cannot use are skipped, not fatal.
        for key in document["keys"].as_array().into_iter().flatten() {
            let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
                continue;
            };
            let (Some(kid), Ok(decoding)) =
                (jwk.common.key_id.clone(), DecodingKey::from_jwk(&jwk))
            else {
                continue;
            };
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|algorithm| Algorithm::try_from(algorithm).ok());
            by_id.insert(kid, (decoding, algorithm));
        }
        if by_id.is_empty() {
            return Err("the JWKS holds no usable key".into());
        }
        tracing::info!(issuer = %self.settings.issuer, keys = by_id.len(), "OIDC keys loaded");
        Ok(Keys {
            by_id,
            fetched: Instant::now(),
        })
    }

    /// What the first matching rule grants.
    fn grant(&self, claims: &Map<String, Value>) -> Result<Grant, CredentialRefusal> {
        let value = |name: &str| match claims.get(name) {
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Bool(flag)) => Some(flag.to_string()),
            Some(Value::Number(number)) => Some(number.to_string()),
            _ => None,
        };
        for rule in &self.settings.rules {
            let mut captures = HashMap::new();
            let matched = rule.claims.iter().all(|(name, pattern)| {
                let Some(text) = value(name) else {
                    return false;
                };
                match glob_captures(pattern, &text) {
                    Some(parts) => {
                        captures.insert(name.as_str(), (text, parts));
                        true
                    }
                    None => false,
                }
            });
            if !matched {
                continue;
            }
            let expand = |templates: &[String]| -> Result<Vec<String>, CredentialRefusal> {
                templates
                    .iter()
                    .map(|template| expand(template, &captures))
                    .collect()
            };
            let write = expand(&rule.write)?;
            let mut read = expand(&rule.read)?;
            read.extend(write.iter().cloned());
            return Ok(Grant {
                access: if write.is_empty() {
                    Access::Read
                } else {
                    Access::Write
                },
                write: Some(write),
                read: Some(read),
            });
        }
        let subject = value("sub").unwrap_or_default();
        Err(refusal(
            "no_rule",
            format!(
                "no rule of the server's [[serve.oidc]] for {} matches this job (sub `{subject}`)",
                self.settings.issuer
            ),
        ))
    }
}

/// `url`'s body, at most [`MAX_DOCUMENT`] bytes.
async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}: {e}"))?;
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if body.len() > MAX_DOCUMENT {
        return Err(format!("{url} is larger than {MAX_DOCUMENT} bytes"));
    }
    Ok(body.to_vec())
}

/// Keys must come over TLS, or from this machine.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "`{url}` must be https:// (plain http only on loopback): keys fetched in the clear \
             could be forged"
        )),
    }
}

fn check_issuer(settings: &OidcIssuer) -> Result<(), OidcError> {
    let issuer_error = |why: String| OidcError::Issuer(settings.issuer.clone(), why);
    if settings.jwks_file.is_none() {
        check_url(&settings.issuer).map_err(issuer_error)?;
    }
    if settings.audience.is_empty() {
        return Err(issuer_error(
            "an audience is needed (audience = \"granary\", the audience the CI job asks for)"
                .into(),
        ));
    }
    if settings.rules.is_empty() {
        return Err(issuer_error(
            "no [[serve.oidc.rule]]: its tokens would grant nothing".into(),
        ));
    }
    for (index, rule) in settings.rules.iter().enumerate() {
        let rule_error = |why: String| OidcError::Rule {
            issuer: settings.issuer.clone(),
            rule: index + 1,
            why,
        };
        if rule.claims.is_empty() {
            return Err(rule_error(
                "claims = { ... } is empty: name the repository (or project) at least".into(),
            ));
        }
        if rule.write.is_empty() && rule.read.is_empty() {
            return Err(rule_error("it grants no namespace (write or read)".into()));
        }
        for template in rule.write.iter().chain(&rule.read) {
            check_template(template, &rule.claims).map_err(rule_error)?;
        }
    }
    Ok(())
}

/// Every `{claim}` or `{claim.N}` of a namespace template names a claim
/// the rule matches, and a `*` its pattern has.
fn check_template(template: &str, claims: &[(String, String)]) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("`{template}` has a `{{` without `}}`"))?;
        let reference = &rest[open + 1..open + close];
        let (name, part) = parse_reference(reference);
        let Some((_, pattern)) = claims.iter().find(|(claim, _)| claim == name) else {
            return Err(format!(
                "`{template}` uses claim `{name}`, which the rule's claims do not match"
            ));
        };
        if let Some(part) = part {
            let stars = pattern.matches('*').count();
            if part.parse::<usize>().map_or(true, |n| n == 0 || n > stars) {
                return Err(format!(
                    "`{template}`: {{{reference}}} needs a `*` number 1 to {stars} of `{pattern}`"
                ));
            }
        }
        rest = &rest[open + close + 1..];
    }
    let literal: String = template.chars().filter(|c| !"{}.".contains(*c)).collect();
    if !literal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_*".contains(c))
    {
        return Err(format!(
            "`{template}` is not a namespace glob: letters, digits, `.`, `_`, `-` and `*` only"
        ));
    }
    Ok(())
}

fn parse_reference(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once('.') {
        Some((name, part)) if part.chars().all(|c| c.is_ascii_digit()) => (name, Some(part)),
        _ => (reference, None),
    }
}

/// A namespace glob with the claims put in; a claim value that could widen
/// the glob or leave the namespace alphabet makes the token grant nothing.
fn expand(
    template: &str,
    captures: &HashMap<&str, (String, Vec<String>)>,
) -> Result<String, CredentialRefusal> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("checked at start-up");
        out.push_str(&rest[..open]);
        let (name, part) = parse_reference(&rest[open + 1..close]);
        let (whole, parts) = &captures[name];
        let value = match part {
            Some(n) => &parts[n.parse::<usize>().expect("checked") - 1],
            None => whole,
        };
        if value.is_empty()
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(refusal(
                "no_rule",
                format!(
                    "claim {name} (`{value}`) cannot be part of a namespace: letters, digits, \
                     `.`, `_` and `-` only"
                ),
            ));
        }
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    if out.len() > 64 {
        return Err(refusal(
            "no_rule",
            format!("the namespace `{out}` would be longer than 64 characters"),
        ));
    }
    Ok(out)
}

/// What each `*` of `glob` matched in `text`, if it matches: the leftmost
/// shortest match for each, as a person reading the pattern expects.
fn glob_captures(glob: &str, text: &str) -> Option<Vec<String>> {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let mut rest = text.strip_prefix(first)?;
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty().then(Vec::new);
    };
    let mut captures = Vec::new();
    for part in middle {
        let at = rest.find(part)?;
        captures.push(rest[..at].to_owned());
        rest = &rest[at + part.len()..];
    }
    if rest.len() < last.len() || !rest.ends_with(last) {
        return None;
    }
    captures.push(rest[..rest.len() - last.len()].to_owned());
    Some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(claims: &[(&str, &str)], write: &[&str], read: &[&str]) -> OidcRule {
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        OidcRule {
            claims: claims
                .iter()
                .map(|(name, glob)| ((*name).to_owned(), (*glob).to_owned()))
                .collect(),
            write: strings(write),
            read: strings(read),
        }
    }

    fn issuer(rules: Vec<OidcRule>) -> OidcIssuer {
        OidcIssuer {
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "granary".into(),
            jwks_file: None,
            rules,
        }
    }

    #[test]
    fn globs_capture_what_their_stars_matched() {
        assert_eq!(
            glob_captures("refs/pull/*/merge", "refs/pull/42/merge"),
            Some(vec!["42".to_owned()])
        );
        assert_eq!(glob_captures("refs/pull/*/merge", "refs/heads/main"), None);
        assert_eq!(glob_captures("acme/app", "acme/app"), Some(vec![]));
        assert_eq!(glob_captures("acme/app", "acme/app2"), None);
        assert_eq!(
            glob_captures("*/*", "acme/app"),
            Some(vec!["acme".to_owned(), "app".to_owned()])
        );
        assert_eq!(glob_captures("*", ""), Some(vec![String::new()]));
    }

    #[test]
    fn rules_turn_claims_into_namespaces() {
        let settings = issuer(vec![
            rule(
                &[
                    ("repository", "acme/app"),
                    ("event_name", "push"),
                    ("ref", "refs/heads/main"),
                ],
                &["main"],
                &[],
            ),
            rule(
                &[
                    ("repository", "acme/app"),
                    ("event_name", "pull_request"),
                    ("ref", "refs/pull/*/merge"),
                ],
                &["pr-{ref.1}"],
                &["main"],
            ),
            rule(&[("repository", "acme/app")], &[], &["main"]),
        ]);
        let oidc = Oidc::new(vec![settings]).unwrap();
        let issuer = &oidc.issuers[0];
        let claims = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect()
        };
        let main = issuer
            .grant(&claims(&[
                ("repository", "acme/app"),
                ("event_name", "push"),
                ("ref", "refs/heads/main"),
            ]))
            .unwrap();
        assert_eq!(main.access, Access::Write);
        assert_eq!(main.write.as_deref(), Some(&["main".to_owned()][..]));
        let pr = issuer
            .grant(&claims(&[
                ("repository", "acme/app"),
                ("event_name", "pull_request"),
                ("ref", "refs/pull/42/merge"),
            ]))
            .unwrap();
        assert_eq!(pr.write.as_deref(), Some(&["pr-42".to_owned()][..]));
        assert_eq!(
            pr.read.as_deref(),
            Some(&["main".to_owned(), "pr-42".to_owned()][..])
        );
        let other = issuer
            .grant(&claims(&[
                ("repository", "acme/app"),
                ("event_name", "workflow_dispatch"),
            ]))
            .unwrap();
        assert_eq!(other.access, Access::Read);
        let stranger = issuer
            .grant(&claims(&[
                ("repository", "evil/app"),
                ("sub", "repo:evil/app"),
            ]))
            .unwrap_err();
        assert_eq!(stranger.reason, "no_rule");
        assert!(
            stranger.message.contains("repo:evil/app"),
            "{}",
            stranger.message
        );
        // A claim value that would widen the glob grants nothing.
        let sneaky = issuer
            .grant(&claims(&[
                ("repository", "acme/app"),
                ("event_name", "pull_request"),
                ("ref", "refs/pull/*/merge"),
            ]))
            .unwrap_err();
        assert!(sneaky.message.contains("cannot be part of a namespace"));
    }

    #[test]
    fn bad_settings_are_refused_at_start_up() {
        for (settings, says) in [
            (
                OidcIssuer {
                    issuer: "http://issuer.example".into(),
                    ..issuer(vec![rule(&[("repository", "a/b")], &["main"], &[])])
                },
                "https://",
            ),
            (
                OidcIssuer {
                    audience: String::new(),
                    ..issuer(vec![rule(&[("repository", "a/b")], &["main"], &[])])
                },
                "audience",
            ),
            (issuer(vec![]), "no [[serve.oidc.rule]]"),
            (issuer(vec![rule(&[], &["main"], &[])]), "claims"),
            (
                issuer(vec![rule(&[("repository", "a/b")], &[], &[])]),
                "grants no namespace",
            ),
            (
                issuer(vec![rule(&[("repository", "a/b")], &["pr-{ref.1}"], &[])]),
                "uses claim `ref`",
            ),
            (
                issuer(vec![rule(
                    &[("ref", "refs/pull/*/merge")],
                    &["pr-{ref.2}"],
                    &[],
                )]),
                "number 1 to 1",
            ),
            (
                issuer(vec![rule(&[("ref", "x")], &["pr/{ref}"], &[])]),
                "not a namespace glob",
            ),
        ] {
            let error = Oidc::new(vec![settings]).unwrap_err().to_string();
            assert!(error.contains(says), "{says}: {error}");
        }
        let loopback = OidcIssuer {
            issuer: "http://127.0.0.1:8080".into(),
            ..issuer(vec![rule(&[("repository", "a/b")], &["main"], &[])])
        };
        assert!(Oidc::new(vec![loopback]).is_ok());
    }
}
