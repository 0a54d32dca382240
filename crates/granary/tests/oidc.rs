//! CI identity instead of long-lived secrets: `granary serve` takes OIDC ID
//! tokens of a loopback issuer (tests/common/oidc.rs) whose keys it fetches
//! through discovery or reads from a file, and its `[[serve.oidc.rule]]`s
//! turn claims into namespaces; `granary prog --oidc github|gitlab` gets
//! the job's token from the runner, renews it, and shares a real go build.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use base64_simd::URL_SAFE_NO_PAD;
use common::oidc::{Issuer, SigningKey, now};
use common::server::{self, Server, request, sha256_hex};
use common::*;
use serde_json::json;

/// Rules as a team would write them: main's pushes write `main`, a pull
/// request writes `pr-<number>` and reads `main`, a pull_request_target
/// job (which runs for forks) only reads `main`.
fn config(sb: &Sandbox, issuer: &str, jwks_file: Option<&Path>) -> String {
    let jwks_file = jwks_file
        .map(|path| format!("jwks-file = \"{}\"\n", path.display()))
        .unwrap_or_default();
    let text = format!(
        r#"[serve]
[[serve.oidc]]
issuer = "{issuer}"
audience = "granary"
{jwks_file}
[[serve.oidc.rule]]
claims = {{ repository = "acme/app", event_name = "push", ref = "refs/heads/main" }}
write = ["main"]

[[serve.oidc.rule]]
claims = {{ repository = "acme/app", event_name = "pull_request", ref = "refs/pull/*/merge" }}
write = ["pr-{{ref.1}}"]
read = ["main"]

[[serve.oidc.rule]]
claims = {{ repository = "acme/app", event_name = "pull_request_target" }}
read = ["main"]
"#
    );
    let path = sb.path("granary.toml");
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn start(sb: &Sandbox, issuer: &Issuer, extra: &[&str]) -> Server {
    let config = config(sb, &issuer.url, None);
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A valid action-cache entry (an ActionResult) and its key.
fn action_entry() -> (String, Vec<u8>) {
    let entry = granary_remote::reapi::encode(
        &granary_remote::ActionRecord {
            action: granary_id::Id([0xcd; 32]),
            output: granary_id::Id::of(b"y"),
            size: 1,
            put_time: std::time::SystemTime::now(),
            placement: granary_remote::Placement::Inline,
            build_time: None,
            signature: None,
        },
        Some(b"y"),
    );
    ("cd".repeat(32), entry)
}

/// A request with `token` as the bearer: the status and the body.
fn send(server: &Server, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    let (status, body) = request(
        server.addr,
        method,
        path,
        &[("Authorization", bearer.as_str())],
        body,
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn id_tokens_read_and_write_as_the_rules_say() {
    let sb = Sandbox::new();
    let issuer = Issuer::start();
    let server = start(&sb, &issuer, &[]);
    assert!(server.log().contains("OIDC tokens of"), "{}", server.log());
    let (action, entry) = action_entry();
    let main = issuer.mint(&issuer.github_claims("acme/app", "refs/heads/main", "push"));
    let pr = issuer.mint(&issuer.github_claims("acme/app", "refs/pull/42/merge", "pull_request"));
    let fork =
        issuer.mint(&issuer.github_claims("acme/app", "refs/heads/main", "pull_request_target"));
    let ac = |namespace: &str| format!("/{namespace}/ac/{action}");

    assert_eq!(send(&server, &main, "PUT", &ac("main"), &entry).0, 200);
    assert_eq!(send(&server, &main, "GET", &ac("main"), b"").0, 200);
    assert_eq!(send(&server, &main, "PUT", &ac("pr-42"), &entry).0, 403);
    assert_eq!(send(&server, &main, "GET", "/status", b"").0, 200);

    assert_eq!(send(&server, &pr, "PUT", &ac("pr-42"), &entry).0, 200);
    assert_eq!(send(&server, &pr, "GET", &ac("main"), b"").0, 200);
    let (status, body) = send(&server, &pr, "PUT", &ac("main"), &entry);
    assert_eq!(status, 403, "a pull request may not write main: {body}");
    assert!(body.contains("[[serve.oidc.rule]]"), "{body}");
    assert_eq!(send(&server, &pr, "GET", &ac("pr-7"), b"").0, 403);

    assert_eq!(send(&server, &fork, "GET", &ac("main"), b"").0, 200);
    assert_eq!(send(&server, &fork, "PUT", &ac("main"), &entry).0, 403);
    let cas = sha256_hex(b"fork body");
    assert_eq!(
        send(
            &server,
            &fork,
            "PUT",
            &format!("/main/cas/{cas}"),
            b"fork body"
        )
        .0,
        403,
        "a read-only identity writes no CAS blob either"
    );
    // Without a credential nothing is allowed: OIDC makes the server closed.
    assert_eq!(request(server.addr, "GET", &ac("main"), &[], b"").0, 401);
    assert_eq!(
        issuer
            .jwks_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the keys are fetched once and the verified tokens remembered"
    );
}

#[test]
fn bad_id_tokens_are_refused_with_a_reason_and_a_metric() {
    let sb = Sandbox::new();
    let issuer = Issuer::start();
    let mut server = start(&sb, &issuer, &[]);
    let (action, entry) = action_entry();
    let path = format!("/main/ac/{action}");
    let good = issuer.github_claims("acme/app", "refs/heads/main", "push");
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        issuer.mint(&claims)
    };
    let valid = issuer.mint(&good);
    let unsigned = {
        let header =
            URL_SAFE_NO_PAD.encode_to_string(r#"{"alg":"none","typ":"JWT","kid":"key-1"}"#);
        let payload = URL_SAFE_NO_PAD.encode_to_string(good.to_string());
        format!("{header}.{payload}.")
    };
    let hmac = {
        // Signed with the issuer's public key as an HMAC secret: the
        // classic confusion attack.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("key-1".into());
        jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(issuer.jwks().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let tampered = {
        let other = with(&|c| c["ref"] = json!("refs/heads/evil"));
        let mut parts: Vec<&str> = valid.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        parts.join(".")
    };
    let cases = [
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 120)),
            "expired",
        ),
        (
            "not_yet_valid",
            with(&|c| c["nbf"] = json!(now() + 600)),
            "not valid yet",
        ),
        (
            "audience",
            with(&|c| c["aud"] = json!("someone-else")),
            "audience",
        ),
        (
            "issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            "does not trust",
        ),
        (
            "unknown_key",
            SigningKey::new("stranger").sign(&good),
            "has no key stranger",
        ),
        ("malformed", unsigned, "algorithm `none`"),
        ("algorithm", hmac, "HMAC"),
        ("signature", tampered, "signature"),
        (
            "no_rule",
            with(&|c| {
                c["repository"] = json!("evil/app");
                c["sub"] = json!("repo:evil/app:ref:refs/heads/main");
            }),
            "repo:evil/app",
        ),
    ];
    for (reason, token, says) in &cases {
        let (status, body) = send(&server, token, "PUT", &path, &entry);
        assert_eq!(status, 401, "{reason}: {body}");
        assert!(body.contains(says), "{reason}: {body}");
    }
    assert_eq!(send(&server, &valid, "PUT", &path, &entry).0, 200);
    server.monitor_token = Some(valid);
    for (reason, _, _) in &cases {
        assert_eq!(
            server.metric(
                "granary_refused_credentials_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}"
        );
    }
}

#[test]
fn a_key_rotation_at_the_issuer_is_picked_up() {
    let sb = Sandbox::new();
    let issuer = Issuer::start();
    let server = start(&sb, &issuer, &[]);
    let (action, entry) = action_entry();
    let path = format!("/main/ac/{action}");
    let claims = issuer.github_claims("acme/app", "refs/heads/main", "push");
    let old_key = issuer.key();
    assert_eq!(
        send(&server, &old_key.sign(&claims), "PUT", &path, &entry).0,
        200
    );
    let new_key = issuer.rotate("key-2");
    // Unknown key ids refetch the keys at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = send(&server, &new_key.sign(&claims), "PUT", &path, &entry);
    assert_eq!(status, 200, "{body}");
    let mut later = claims.clone();
    later["jti"] = json!("another token");
    let (status, body) = send(&server, &old_key.sign(&later), "GET", &path, b"");
    assert_eq!(status, 401, "the retired key no longer signs: {body}");
    assert!(body.contains("has no key key-1"), "{body}");
}

#[test]
fn an_air_gapped_server_reads_the_keys_from_a_file() {
    let sb = Sandbox::new();
    let issuer = Issuer::start();
    let jwks = sb.path("jwks.json");
    fs::write(&jwks, issuer.jwks()).unwrap();
    // The issuer's URL is never reached: only tokens name it.
    let config = config(&sb, "https://token.ci.example", Some(&jwks));
    let server = Server::start(&["--config", &config]);
    let mut claims = issuer.github_claims("acme/app", "refs/heads/main", "push");
    claims["iss"] = json!("https://token.ci.example");
    let (action, entry) = action_entry();
    let path = format!("/main/ac/{action}");
    assert_eq!(
        send(&server, &issuer.mint(&claims), "PUT", &path, &entry).0,
        200
    );
    // A rotation is the file rewritten.
    let new_key = issuer.rotate("key-2");
    fs::write(&jwks, issuer.jwks()).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        send(&server, &new_key.sign(&claims), "GET", &path, b"").0,
        200
    );
    assert_eq!(
        issuer
            .jwks_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// An issuer that takes connections and never answers costs each request
/// at most the key fetch's 10 s bound, then a clear refusal, however many
/// arrive together: they share one fetch, and the next fetch waits (backs
/// off). The server keeps serving.
#[test]
fn a_silent_issuer_costs_one_bounded_wait() {
    let sb = Sandbox::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    silent.set_nonblocking(true).unwrap();
    let held = std::thread::spawn(move || {
        // Accept and hold every connection, answering nothing, until the
        // test is done.
        let mut held = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match silent.accept() {
                Ok((stream, _)) => {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let config = config(&sb, &silent_url, None);
    let server = Server::start(&["--config", &config]);
    let issuer = Issuer::start();
    let (action, _) = action_entry();
    // Five fresh tokens at once: none is in the server's memory of
    // verified tokens, each needs the keys.
    let tokens: Vec<String> = (0..5)
        .map(|run| {
            let mut claims = issuer.github_claims("acme/app", "refs/heads/main", "push");
            claims["iss"] = json!(silent_url);
            claims["run_id"] = json!(run.to_string());
            issuer.mint(&claims)
        })
        .collect();
    let path = format!("/main/ac/{action}");
    let started = std::time::Instant::now();
    let answers: Vec<(u16, String, Duration)> = std::thread::scope(|scope| {
        let asks: Vec<_> = tokens
            .iter()
            .map(|token| {
                let (server, path) = (&server, &path);
                scope.spawn(move || {
                    let (status, body) = send(server, token, "GET", path, b"");
                    (status, body, started.elapsed())
                })
            })
            .collect();
        asks.into_iter().map(|ask| ask.join().unwrap()).collect()
    });
    for (status, body, waited) in &answers {
        assert_eq!(*status, 401, "{body}");
        assert!(body.contains("cannot get the keys"), "{body}");
        assert!(
            *waited >= Duration::from_secs(9) && *waited < Duration::from_secs(15),
            "each request waits at most the fetch's 10 s bound: {answers:?}"
        );
    }
    // The fetch failed a moment ago: a new token is refused at once, not
    // after another 10 s.
    let mut claims = issuer.github_claims("acme/app", "refs/heads/main", "push");
    claims["iss"] = json!(silent_url);
    claims["run_id"] = json!("late");
    let asked = std::time::Instant::now();
    let (status, body) = send(&server, &issuer.mint(&claims), "GET", &path, b"");
    assert_eq!(status, 401, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "a failed fetch backs off: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch for all five"
    );
    assert_eq!(request(server.addr, "GET", "/healthz", &[], b"").0, 200);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    held.join().unwrap();
}

#[test]
fn settings_that_cannot_work_stop_the_server_with_the_reason() {
    let sb = Sandbox::new();
    let config = sb.path("granary.toml");
    fs::write(
        &config,
        "[[serve.oidc]]\nissuer = \"http://issuer.example\"\naudience = \"granary\"\n\
         [[serve.oidc.rule]]\nclaims = { repository = \"acme/app\" }\nwrite = [\"main\"]\n",
    )
    .unwrap();
    let scratch = server::scratch();
    let dir = scratch.path().join("cache");
    let log = Server::start_in(scratch, &dir, &["--config", config.to_str().unwrap()], &[])
        .err()
        .expect("a plain-http issuer is refused");
    assert!(log.contains("must be https://"), "{log}");
}

/// Two CI jobs share a real go build through the server with no secret:
/// main's push job gets its ID token from the (fake) GitHub runner, which
/// issues tokens that expire within about a minute, so granary asks for
/// new ones during the build; a pull request's job on GitLab-style
/// `id_tokens:` reads main over gRPC and compiles nothing.
#[test]
fn ci_jobs_share_a_build_with_id_tokens_instead_of_secrets() {
    let sb = Sandbox::new();
    let issuer = Issuer::start();
    let mut server = start(&sb, &issuer, &["--grpc-listen", "127.0.0.1:0"]);
    let module = sb.module("app", 6);
    let build = |cache: &str, remote: &str, envs: &[(&str, String)]| {
        let mut envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envs.push(("GRANARY_SCOPE", "oidc"));
        let (out, stats) = sb.build_sharing(remote, cache, &module, &envs);
        (stats, compiled_packages(&out.stderr))
    };

    // Tokens live 62 s: each is replaced after about 2 s.
    issuer.set_runner(
        issuer.github_claims("acme/app", "refs/heads/main", "push"),
        Duration::from_secs(62),
    );
    let mut github = vec![
        ("GRANARY_NAMESPACE", "main".to_owned()),
        ("GRANARY_OIDC", "github".to_owned()),
    ];
    github.extend(issuer.runner_env().map(|(k, v)| (k, v)));
    let (main, compiled) = build("main", &server.url, &github);
    assert!(!compiled.is_empty());
    assert!(main.remote.uploads > 10, "{main:?}");
    assert_eq!(
        main.remote.remote_errors + main.remote.uploads_dropped,
        0,
        "{main:?}"
    );
    let asked = issuer
        .token_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        asked >= 2,
        "the token is renewed before it expires: {asked} request(s)"
    );

    let pr_token =
        issuer.mint(&issuer.github_claims("acme/app", "refs/pull/42/merge", "pull_request"));
    let grpc = server.grpc_url.clone().unwrap();
    let gitlab = [
        ("GRANARY_NAMESPACE", "pr-42".to_owned()),
        ("GRANARY_READ_NAMESPACES", "main".to_owned()),
        ("GRANARY_OIDC", "gitlab".to_owned()),
        ("GRANARY_ID_TOKEN", pr_token.clone()),
    ];
    let (pr, compiled) = build("pr", &grpc, &gitlab);
    assert_eq!(
        compiled,
        Vec::<String>::new(),
        "the pull request reads main"
    );
    assert_eq!(pr.remote.remote_errors, 0, "{pr:?}");

    server.monitor_token = Some(pr_token);
    assert_eq!(
        server.metric("granary_refused_credentials_total", ""),
        0.0,
        "no request went out with an expired or refused token"
    );

    // Without the runner's variables, the job is told what it lacks, and
    // builds with the local cache alone.
    let mut cmd = sb.go_granary(
        &sb.path("lost"),
        &module,
        &sb.path("lost.json"),
        &["build", "."],
    );
    cmd.env("GRANARY_REMOTE", &server.url)
        .env("GRANARY_OIDC", "github")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL");
    let out = run_ok(&mut cmd);
    let warnings = warnings(&out.stderr);
    assert!(
        warnings.len() == 1 && warnings[0].contains("id-token: write"),
        "{warnings:?}"
    );
}
