//! `granary doctor` against real setups: a good one on each object store
//! (whose probe must leave nothing behind) and on a cache server, and a
//! broken one whose every failure says what to fix.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::clouds::{Azurite, Cloud, FakeGcs};
use common::s3::S3Server;
use common::server::Server;
use common::*;
use serde_json::Value;

/// `granary doctor --json` with the cache `cache`, GOCACHEPROG set to the
/// granary under test unless `gocacheprog` is false, and `envs`.
fn doctor(cache: &Path, gocacheprog: bool, envs: &[(String, String)]) -> (Output, Value) {
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .env_remove("GOCACHEPROG")
        .env_remove("GOFLAGS")
        .env("GOENV", "off")
        .arg("--dir")
        .arg(cache)
        .args(["doctor", "--json"])
        .envs(envs.iter().map(|(k, v)| (k, v)));
    // The go command the other tests use, first on PATH.
    let go_dir = go().parent().unwrap().to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = [go_dir].into_iter().chain(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).unwrap());
    if gocacheprog {
        cmd.env("GOCACHEPROG", format!("{} prog", granary().display()));
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

fn generate_key(sb: &Sandbox) -> (String, String) {
    let secret = sb.path("signer");
    run_ok(
        Command::new(granary())
            .args(["key", "generate"])
            .arg(&secret),
    );
    let public = format!("{}.pub", secret.display());
    (secret.display().to_string(), public)
}

#[test]
fn a_good_setup_passes_on_every_object_store_and_the_probe_leaves_nothing() {
    let sb = Sandbox::new();
    let (secret, public) = generate_key(&sb);
    let clouds: [Box<dyn Cloud>; 3] = [
        Box::new(S3Server::start()),
        Box::new(Azurite::start()),
        Box::new(FakeGcs::start()),
    ];
    for cloud in &clouds {
        let mut envs = cloud.envs("doctor");
        envs.push(("GRANARY_SIGNING_KEY".into(), secret.clone()));
        envs.push(("GRANARY_TRUSTED_KEYS".into(), public.clone()));
        envs.push(("GRANARY_NAMESPACE".into(), "main".into()));
        let (out, report) = doctor(&sb.cache(), true, &envs);
        assert!(out.status.success(), "{report:#}");
        assert_eq!(report["ok"], true);
        for name in [
            "go",
            "GOCACHEPROG",
            "cache",
            "remote",
            "clock",
            "signing key",
            "trusted keys",
        ] {
            assert_eq!(check(&report, name)["status"], "ok", "{report:#}");
        }
        let remote = check(&report, "remote")["detail"].as_str().unwrap();
        assert!(
            remote.contains("reads and writes") && remote.contains("namespace main"),
            "{remote}"
        );
        assert!(
            check(&report, "clock")["detail"]
                .as_str()
                .unwrap()
                .contains("within")
        );
        assert_eq!(
            cloud.objects("doctor/"),
            0,
            "the probe left something: {report:#}"
        );
    }
}

#[test]
fn a_cache_server_is_probed_read_only_or_with_the_empty_blob() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let remote = vec![("GRANARY_REMOTE".to_owned(), server.url.clone())];
    let (out, report) = doctor(&sb.cache(), true, &remote);
    assert!(out.status.success(), "{report:#}");
    let detail = check(&report, "remote")["detail"].as_str().unwrap();
    assert!(detail.contains("reads and writes"), "{detail}");
    let platform = check(&report, "platform")["detail"].as_str().unwrap();
    assert!(
        platform.starts_with("unix:") && platform.contains("mode 600"),
        "what this platform checks: {platform}"
    );
    let clock = check(&report, "clock");
    assert_eq!(clock["status"], "ok", "its Date header: {clock}");

    let mut read_only = remote.clone();
    read_only.push(("GRANARY_READ_ONLY".into(), "true".into()));
    let (out, report) = doctor(&sb.cache(), true, &read_only);
    assert!(out.status.success(), "{report:#}");
    let detail = check(&report, "remote")["detail"].as_str().unwrap();
    assert!(detail.contains("read-only"), "{detail}");
    assert_eq!(check(&report, "clock")["status"], "ok");
}

/// A server whose clock is ten minutes slow: its `Date` gives it away, and
/// OIDC tokens' and entries' times would be judged wrong.
#[test]
fn a_cache_server_with_a_slow_clock_is_reported() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::SystemTime;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let slow = SystemTime::now() - Duration::from_secs(600);
            let _ = write!(
                &stream,
                "HTTP/1.1 404 Not Found\r\nDate: {}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                httpdate::fmt_http_date(slow)
            );
        }
    });
    let sb = Sandbox::new();
    let remote = vec![
        ("GRANARY_REMOTE".to_owned(), url),
        ("GRANARY_READ_ONLY".to_owned(), "true".to_owned()),
    ];
    let (_, report) = doctor(&sb.cache(), true, &remote);
    let clock = check(&report, "clock");
    assert_eq!(clock["status"], "warn", "{report:#}");
    let detail = clock["detail"].as_str().unwrap();
    let seconds: f64 = detail.split(' ').next().unwrap().parse().unwrap();
    assert!((595.0..605.0).contains(&seconds), "{detail}");
    assert!(detail.contains("ahead of the remote's"), "{detail}");
    assert!(clock["fix"].as_str().unwrap().contains("NTP"));
}

#[test]
fn a_broken_setup_fails_and_each_failure_says_what_to_fix() {
    let azurite = Azurite::start();
    let sb = Sandbox::new();
    let mut envs = azurite.envs("broken");
    for (key, value) in &mut envs {
        if key == "GRANARY_AZURE_ACCESS_KEY" {
            *value = base64_simd::STANDARD.encode_to_string([7u8; 64]);
        }
    }
    let missing = sb.path("no-such-trusted-keys");
    envs.push(("GRANARY_TRUSTED_KEYS".into(), missing.display().to_string()));
    let (out, report) = doctor(&sb.cache(), false, &envs);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let fix = |name: &str| {
        let check = check(&report, name);
        assert_eq!(check["status"], "fail", "{report:#}");
        check["fix"].as_str().unwrap().to_owned()
    };
    assert!(fix("GOCACHEPROG").contains("export GOCACHEPROG="));
    assert!(fix("remote").contains("GRANARY_AZURE_ACCESS_KEY"));
    assert!(fix("trusted keys").contains("--trusted-keys"));
    assert!(
        check(&report, "trusted keys")["detail"]
            .as_str()
            .unwrap()
            .contains("no-such-trusted-keys")
    );
    assert_eq!(
        check(&report, "go")["status"],
        "ok",
        "one failure hides no other"
    );
    assert_eq!(azurite.objects("broken/"), 0);

    // The human form says the same, and ends with what to do.
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .env_remove("GOCACHEPROG")
        .arg("--dir")
        .arg(sb.cache())
        .arg("doctor")
        .envs(envs.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("FAIL  remote") && text.contains("fix: set GRANARY_AZURE_ACCESS_KEY"),
        "{text}"
    );
    assert!(text.ends_with("then run it again\n"), "{text}");
}

/// A remote that takes connections and never answers: the check fails
/// after three remote timeouts, not never.
#[test]
fn a_silent_remote_fails_its_check_within_the_bound() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let sb = Sandbox::new();
    let envs = [
        (
            "GRANARY_REMOTE",
            format!("http://{}", silent.local_addr().unwrap()),
        ),
        ("GRANARY_REMOTE_TIMEOUT", "1s".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let started = Instant::now();
    let (out, report) = doctor(&sb.cache(), true, &envs);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let detail = check(&report, "remote")["detail"].as_str().unwrap();
    assert!(detail.contains("no answer within 3s"), "{detail}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
}
