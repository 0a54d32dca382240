//! A CI system's OpenID Connect issuer on loopback: discovery, the JWKS,
//! and GitHub Actions' ID-token endpoint, with ES256 keys made per test and
//! tokens minted on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The secret the fake runner wants for its ID-token endpoint.
pub const RUNNER_SECRET: &str = "runner-request-token";

/// A key the issuer signs with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.to_owned(),
            key,
            jwk,
        }
    }

    /// `claims` signed with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

struct State {
    keys: Vec<SigningKey>,
    /// What the runner endpoint's tokens claim (besides aud, iat, exp).
    runner_claims: Value,
    runner_lifetime: Duration,
}

/// The issuer, serving until dropped.
pub struct Issuer {
    pub url: String,
    state: Arc<Mutex<State>>,
    pub token_requests: Arc<AtomicUsize>,
    pub jwks_requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Issuer {
    pub fn start() -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            keys: vec![SigningKey::new("key-1")],
            runner_claims: json!({}),
            runner_lifetime: Duration::from_secs(300),
        }));
        let token_requests = Arc::new(AtomicUsize::new(0));
        let jwks_requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (url, state, stop) = (url.clone(), state.clone(), stop.clone());
            let (tokens, jwks) = (token_requests.clone(), jwks_requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        answer(stream, &url, &state, &tokens, &jwks);
                    }
                }
            })
        };
        Issuer {
            url,
            state,
            token_requests,
            jwks_requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The key the issuer signs with now.
    pub fn key(&self) -> SigningKey {
        self.state.lock().unwrap().keys.last().unwrap().clone()
    }

    /// Replaces the published keys with a new one, as issuers rotate.
    pub fn rotate(&self, kid: &str) -> SigningKey {
        let key = SigningKey::new(kid);
        self.state.lock().unwrap().keys = vec![key.clone()];
        key
    }

    /// The published keys, as a JWKS document.
    pub fn jwks(&self) -> String {
        jwks(&self.state.lock().unwrap().keys)
    }

    /// GitHub's claims for a job of `repository` on `git_ref` run by
    /// `event`, for `audience`, valid for five minutes.
    pub fn github_claims(&self, repository: &str, git_ref: &str, event: &str) -> Value {
        json!({
            "iss": self.url,
            "aud": "granary",
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository,
            "repository_owner": repository.split('/').next().unwrap(),
            "ref": git_ref,
            "event_name": event,
            "iat": now() - 5,
            "nbf": now() - 5,
            "exp": now() + 300,
        })
    }

    /// A token for these claims, signed with the current key.
    pub fn mint(&self, claims: &Value) -> String {
        self.key().sign(claims)
    }

    /// What the runner endpoint's tokens say, and how long they last.
    pub fn set_runner(&self, claims: Value, lifetime: Duration) {
        let mut state = self.state.lock().unwrap();
        state.runner_claims = claims;
        state.runner_lifetime = lifetime;
    }

    /// The variables a GitHub Actions runner gives a job with
    /// `permissions: id-token: write`.
    pub fn runner_env(&self) -> [(&'static str, String); 2] {
        [
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                format!("{}/runner/token?api-version=2.0", self.url),
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_SECRET.to_owned()),
        ]
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn jwks(keys: &[SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn answer(
    stream: TcpStream,
    url: &str,
    state: &Mutex<State>,
    token_requests: &AtomicUsize,
    jwks_requests: &AtomicUsize,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut authorization = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = value.trim().to_owned();
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, body) = match path {
        "/.well-known/openid-configuration" => (
            200,
            json!({ "issuer": url, "jwks_uri": format!("{url}/keys") }).to_string(),
        ),
        "/keys" => {
            jwks_requests.fetch_add(1, Ordering::SeqCst);
            (200, jwks(&state.lock().unwrap().keys))
        }
        "/runner/token" if authorization != format!("Bearer {RUNNER_SECRET}") => {
            (401, "{}".to_owned())
        }
        "/runner/token" => {
            token_requests.fetch_add(1, Ordering::SeqCst);
            let audience = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("audience="))
                .unwrap_or_default();
            let state = state.lock().unwrap();
            let mut claims = state.runner_claims.clone();
            claims["aud"] = json!(audience);
            claims["iat"] = json!(now());
            claims["exp"] = json!(now() + state.runner_lifetime.as_secs());
            let token = state.keys.last().unwrap().sign(&claims);
            (200, json!({ "value": token }).to_string())
        }
        _ => (404, "{}".to_owned()),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
