//! `granary serve` end to end: the real binary on loopback, real HTTP from
//! raw sockets, reqwest and the `prog` client, and the real go command.
#![cfg(unix)] // it sets file modes and compares inodes; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use common::server::*;
use common::*;

fn put_cas(server: &Server, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let path = format!("/cas/{}", sha256_hex(body));
    let (status, _) = request(server.addr, "PUT", &path, headers, body);
    (status, path)
}

/// An `ActionResult` with one output file, as the prog client writes it.
fn action_result(output: &[u8]) -> Vec<u8> {
    use bazel_remote_apis::build::bazel::remote::execution::v2::{
        ActionResult, Digest, OutputFile,
    };
    use prost::Message;
    ActionResult {
        output_files: vec![OutputFile {
            path: "go-output".into(),
            digest: Some(Digest {
                hash: sha256_hex(output),
                size_bytes: output.len() as i64,
            }),
            ..OutputFile::default()
        }],
        ..ActionResult::default()
    }
    .encode_to_vec()
}

/// PUTs the action result of `output` under action `id` (hex).
fn put_result(server: &Server, id: &str, output: &[u8]) {
    let path = format!("/ac/{id}");
    let (status, _) = request(server.addr, "PUT", &path, &[], &action_result(output));
    assert_eq!(status, 200, "PUT {path}");
}

/// Starts a PUT of `total` bytes on a raw connection and sends `first`.
fn start_put(server: &Server, path: &str, total: usize, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(first).unwrap();
    stream
}

fn make_token(scope: &str) -> (String, String) {
    serve_token(&["--scope", scope, "--name", scope])
}

fn tokens_file(dir: &Path, lines: &[&str], mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn two_runners_share_one_https_server_with_tokens() {
    let scratch = scratch();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = scratch.path().join("cert.pem");
    let key = scratch.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (writer, write_line) = make_token("write");
    let (reader, read_line) = make_token("read");
    let tokens = tokens_file(scratch.path(), &[&write_line, &read_line], 0o600);
    let dir = scratch.path().join("cache");
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        &dir,
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("GRANARY_LOG", "debug")],
    )
    .unwrap();
    assert!(server.url.starts_with("https://"), "{}", server.url);

    let sb = Sandbox::new();
    let module = sb.module("shared", 3);
    let build = |cache: &str, token: &str, extra: &[(&str, &str)]| {
        let stats_file = sb.path(&format!("{cache}.json"));
        let out = sb.path(&format!("bin/{cache}"));
        let mut cmd = sb.go_granary(
            &sb.path(cache),
            &module,
            &stats_file,
            &["build", "-x", "-o", out.to_str().unwrap(), "."],
        );
        // Every get is a lookup here; tests/prefetch.rs covers batches.
        cmd.env("GRANARY_REMOTE", &server.url)
            .env("GRANARY_PREFETCH", "false")
            .env("GRANARY_REMOTE_CA", &cert)
            .env("GRANARY_TOKEN", token)
            .envs(extra.iter().copied());
        let output = run_ok(&mut cmd);
        (stats(&stats_file), output, std::fs::read(out).unwrap())
    };

    let (a, _, a_bin) = build("runner-a", &writer, &[]);
    assert!(a.puts > 20 && a.remote.uploads == a.puts, "{a:?}");
    assert_eq!(
        (a.remote.remote_errors, a.remote.uploads_dropped),
        (0, 0),
        "{a:?}"
    );
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let status: serde_json::Value = client
        .get(format!("{}/status", server.url))
        .bearer_auth(&reader)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(status["ac_blobs"].as_u64().unwrap() >= a.puts, "{status}");
    assert_eq!(status["tls"], true);

    let (b, out, b_bin) = build("runner-b", &reader, &[("GRANARY_READ_ONLY", "1")]);
    assert_eq!(compiled_packages(&out.stderr), Vec::<String>::new());
    assert!(b.misses <= 1, "only the link may miss: {b:?}");
    assert_eq!(b.remote.remote_hits, b.hits, "{b:?}");
    assert!(b.hits > 20, "{b:?}");
    assert_eq!(b.remote.uploads, 0);
    assert_eq!(a_bin, b_bin);

    // A read token without --read-only: the first upload is refused, the
    // remote goes off with one warning, the build succeeds.
    let other = sb.module("other", 1);
    let stats_file = sb.path("c.json");
    let mut cmd = sb.go_granary(&sb.path("runner-c"), &other, &stats_file, &["build", "."]);
    cmd.env("GRANARY_REMOTE", &server.url)
        .env("GRANARY_REMOTE_CA", &cert)
        .env("GRANARY_TOKEN", &reader);
    let output = run_ok(&mut cmd);
    let c = stats(&stats_file);
    // Advice for a cache server's tokens, not a bucket's keys (as once).
    let off = &c.remote.remote_off;
    assert!(
        off.contains("refused our credentials")
            && off.contains("GRANARY_TOKEN")
            && off.contains("scope write")
            && off.contains("--read-only")
            && !off.contains("GRANARY_S3"),
        "{c:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");

    // Tokens never reach the server's log, even at debug level.
    let log = server.log();
    for token in [&writer, &reader] {
        assert!(!log.contains(token.as_str()), "a token in the log:\n{log}");
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn writes_need_a_write_token() {
    let scratch = scratch();
    let (writer, write_line) = make_token("write");
    let (reader, read_line) = make_token("read");
    let tokens = tokens_file(scratch.path(), &[&write_line, &read_line], 0o600);
    let dir = scratch.path().join("cache");
    let mut server = Server::start_in(
        tempfile::tempdir().unwrap(),
        &dir,
        &["--tokens", tokens.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let body = pattern(5000, 1);
    let bearer = |t: &str| format!("Bearer {t}");
    let (status, path) = put_cas(&server, &body, &[]);
    assert_eq!(status, 401, "anonymous write");
    let (status, _) = put_cas(&server, &body, &[("Authorization", &bearer(&reader))]);
    assert_eq!(status, 403, "read-only token writing");
    let (status, _) = put_cas(&server, &body, &[("Authorization", &bearer("gry_guessed"))]);
    assert_eq!(status, 401, "unknown token");
    assert!(blob_files(&dir).is_empty(), "nothing stored");
    assert_eq!(
        request(server.addr, "GET", &path, &[], b"").0,
        401,
        "anonymous read"
    );
    let (status, _) = put_cas(&server, &body, &[("Authorization", &bearer(&writer))]);
    assert_eq!(status, 200);
    let (status, got) = request(
        server.addr,
        "GET",
        &path,
        &[("Authorization", &bearer(&reader))],
        b"",
    );
    assert_eq!((status, got), (200, body.clone()));
    assert_monitoring_needs_a_token(&mut server, &reader);
    assert_eq!(
        server.metric("granary_rejected_writes_total", "unauthorized"),
        2.0
    );
    assert_eq!(
        server.metric("granary_rejected_writes_total", "forbidden"),
        1.0
    );
    drop(server);

    // Anonymous reading, when asked for.
    let mut server = Server::start_in(
        tempfile::tempdir().unwrap(),
        &dir,
        &["--tokens", tokens.to_str().unwrap(), "--anonymous-read"],
        &[],
    )
    .unwrap();
    assert_eq!(request(server.addr, "GET", &path, &[], b"").0, 200);
    assert_eq!(put_cas(&server, &pattern(10, 2), &[]).0, 401);
    assert_monitoring_needs_a_token(&mut server, &reader);
}

/// With tokens, `/status` and `/metrics` (paths, limits, the backing
/// store, every counter) need a valid token, whoever may read blobs;
/// `/healthz` stays open.
fn assert_monitoring_needs_a_token(server: &mut Server, token: &str) {
    for path in ["/status", "/metrics"] {
        for headers in [&[][..], &[("Authorization", "Bearer gry_guessed")][..]] {
            let (status, body) = request(server.addr, "GET", path, headers, b"");
            assert_eq!(
                status,
                401,
                "{path} {headers:?}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                !String::from_utf8_lossy(&body).contains("cache"),
                "nothing leaks"
            );
        }
    }
    assert_eq!(request(server.addr, "GET", "/healthz", &[], b"").0, 200);
    server.monitor_token = Some(token.to_owned());
    assert!(server.status()["cas_blobs"].is_u64());
}

#[test]
fn a_bad_tokens_file_stops_the_server_with_a_clear_error() {
    let scratch = scratch();
    let (_, line) = make_token("write");
    for (lines, mode, says) in [
        (vec![line.as_str()], 0o644, "chmod 600"),
        (vec!["write not-a-hash ci"], 0o600, "line 1"),
        (vec!["# ok", "admin 00 x"], 0o600, "line 2"),
    ] {
        let tokens = tokens_file(scratch.path(), &lines, mode);
        let log = Server::start_in(
            tempfile::tempdir().unwrap(),
            &scratch.path().join("cache"),
            &["--tokens", tokens.to_str().unwrap()],
            &[],
        )
        .err()
        .expect("the server refuses to start");
        assert!(
            log.contains(says) && log.contains("tokens"),
            "{lines:?}: {log}"
        );
    }
    let log = Server::start_in(
        tempfile::tempdir().unwrap(),
        &scratch.path().join("cache"),
        &["--tokens", "/nonexistent/tokens"],
        &[],
    )
    .err()
    .unwrap();
    assert!(log.contains("/nonexistent/tokens"), "{log}");
    assert_eq!(
        log.matches("No such file or directory").count(),
        1,
        "the cause is said once: {log}"
    );
}

/// A runner whose remote URL has a path that cannot be a namespace is told
/// so when it starts, and asks the server nothing (it once failed five
/// requests, switched the remote off, and blamed nothing in particular).
#[test]
fn a_remote_path_that_cannot_be_a_namespace_is_refused_at_start() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let module = sb.module("named", 2);
    let url = format!("{}/team/ac", server.url);
    let (out, stats) = sb.build_sharing(&url, "runner", &module, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names the namespace") && stderr.contains("`ac` has a meaning"),
        "{stderr}"
    );
    assert_eq!(
        (stats.remote.remote_errors, stats.remote.uploads),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        server.metric("granary_requests_total", ""),
        0.0,
        "{}",
        server.log()
    );
}

#[test]
fn hostile_paths_and_bad_uploads_are_refused_and_nothing_is_stored() {
    let server = Server::start(&["--max-blob", "1MiB"]);
    let hex = "ab".repeat(32);
    for path in [
        "/cas/../../../etc/passwd".to_owned(),
        format!("/cas/..%2f..%2f{}", &hex[..58]),
        format!("/cas/{}", "AB".repeat(32)),
        format!("/cas/{}", &hex[..63]),
        format!("/cas/{hex}/extra"),
        format!("//cas/{hex}"),
        format!("/a//cas/{hex}"),
        format!("/../cas/{hex}"),
        "/cas/".to_owned(),
    ] {
        let (status, _) = request(server.addr, "PUT", &path, &[], b"x");
        assert!(matches!(status, 400 | 404), "{path}: {status}");
        let (status, _) = request(server.addr, "GET", &path, &[], b"");
        assert!(matches!(status, 400 | 404), "{path}: {status}");
    }
    // An instance name of several segments is one; one with a word of the
    // protocols in it is refused, saying so.
    assert_eq!(
        request(
            server.addr,
            "GET",
            &format!("/team/main/cas/{hex}"),
            &[],
            b""
        )
        .0,
        404
    );
    for (path, why) in [
        (format!("/team/blobs/ac/{hex}"), "`blobs` has a meaning"),
        (format!("/team/ac/ac/{hex}"), "`ac` has a meaning"),
        (format!("/team/.x/cas/{hex}"), "segment `.x`"),
    ] {
        let (status, message) = request(server.addr, "GET", &path, &[], b"");
        let message = String::from_utf8_lossy(&message);
        assert_eq!(status, 400, "{path}: {message}");
        assert!(
            message.contains(why) && message.contains("team/main"),
            "{path}: {message}"
        );
    }
    let (status, _) = request(server.addr, "DELETE", &format!("/cas/{hex}"), &[], b"");
    assert_eq!(status, 405);

    // Hash mismatch: refused, nothing kept, followers would have failed.
    let body = pattern(300_000, 3);
    let wrong = format!("/cas/{}", sha256_hex(b"something else"));
    let (status, message) = request(server.addr, "PUT", &wrong, &[], &body);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&message).contains("nothing stored"));
    assert_eq!(request(server.addr, "GET", &wrong, &[], b"").0, 404);
    // Not an ActionResult.
    let (status, _) = request(
        server.addr,
        "PUT",
        &format!("/ac/{hex}"),
        &[],
        b"\xff\xff\xff\xff",
    );
    assert_eq!(status, 400);
    // Too large, announced or not.
    let big = pattern(2 << 20, 4);
    assert_eq!(put_cas(&server, &big, &[]).0, 413);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "PUT /cas/{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        sha256_hex(&big)
    )
    .unwrap();
    for chunk in big.chunks(64 * 1024) {
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    assert_eq!(read_response(&mut stream).0, 413);
    // A body shorter than announced.
    let mut short = start_put(
        &server,
        &format!("/cas/{}", sha256_hex(&body)),
        body.len(),
        &body[..1000],
    );
    short.shutdown(std::net::Shutdown::Write).unwrap();
    let (status, _) = read_response(&mut short);
    assert!(matches!(status, 400), "{status}");

    wait_until("no upload in progress", Duration::from_secs(5), || {
        server.status()["uploads_in_progress"] == 0
    });
    assert!(
        blob_files(&server.dir).is_empty(),
        "{:?}",
        blob_files(&server.dir)
    );
    assert_eq!(tmp_files(&server.dir), 0);
    let status = server.status();
    assert_eq!(
        (status["bytes"].as_u64(), status["reserved_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        server.metric("granary_rejected_writes_total", "hash_mismatch"),
        1.0
    );
    assert_eq!(
        server.metric("granary_rejected_writes_total", "too_large"),
        2.0
    );
    assert_eq!(
        server.metric("granary_rejected_writes_total", "invalid"),
        1.0
    );
    // The server is fine.
    assert_eq!(put_cas(&server, &body, &[]).0, 200);
}

/// A request to a server whose every connection `stalled` holds is
/// answered once they time out (a 1 s idle timeout), not before, and not
/// never.
fn assert_served_once_stalls_time_out(server: &Server, stalled: &str) {
    let started = Instant::now();
    let (status, _) = request(server.addr, "GET", "/healthz", &[], b"");
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "served once {stalled} timed out, after {waited:?}"
    );
}

#[test]
fn slow_clients_time_out_without_exhausting_the_server() {
    let server = Server::start(&["--idle-timeout", "1s", "--max-connections", "8"]);
    // Eight connections that never finish their request: all the server takes.
    let mut stalled: Vec<TcpStream> = (0..7)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(b"GET /cas/").unwrap();
            stream
        })
        .collect();
    let body = pattern(100_000, 5);
    let slow_body = start_put(
        &server,
        &format!("/cas/{}", sha256_hex(&body)),
        body.len(),
        &body[..10],
    );
    stalled.push(slow_body);
    assert_served_once_stalls_time_out(&server, "the stalled connections");
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Closed: end of stream, or a reset; still open: the read times out.
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "the stalled connection is still open"
            ),
        }
    }
    wait_until(
        "the abandoned upload is gone",
        Duration::from_secs(5),
        || server.status()["uploads_in_progress"] == 0,
    );
    assert_eq!(tmp_files(&server.dir), 0);
    assert!(blob_files(&server.dir).is_empty());
}

#[test]
fn a_thousand_gets_follow_one_streaming_put() {
    const READERS: usize = 1000;
    let scratch = scratch();
    let dir = scratch.path().join("cache");
    let server = Server::start_in(scratch, &dir, &[], &[("GRANARY_LOG", "debug")]).unwrap();
    // Compressed when it is published, under its readers.
    let body = compressible(1 << 20, 6);
    let path = format!("/cas/{}", sha256_hex(&body));
    let mut put = start_put(&server, &path, body.len(), &body[..64 * 1024]);
    wait_until("the upload is under way", Duration::from_secs(5), || {
        server.status()["uploads_in_progress"] == 1
    });
    let sent = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (addr, path, sent) = (server.addr, path.clone(), sent.clone());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut stream = send_get(addr, &path, None);
                    sent.fetch_add(1, Ordering::SeqCst);
                    read_response(&mut stream)
                })
                .unwrap()
        })
        .collect();
    wait_until("every GET is sent", Duration::from_secs(30), || {
        sent.load(Ordering::SeqCst) == READERS
    });
    std::thread::sleep(Duration::from_millis(300));
    for chunk in body[64 * 1024..].chunks(64 * 1024) {
        put.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read_response(&mut put).0, 200);
    let results: Vec<_> = readers.into_iter().map(|r| r.join()).collect();
    if results.iter().any(Result::is_err) {
        let log = server.log();
        let mut lines: Vec<&str> = log.lines().collect();
        lines.sort();
        lines.dedup_by(|a, b| a.get(..60) == b.get(..60));
        panic!("server log:\n{}", lines.join("\n"));
    }
    for reader in results {
        let (status, got) = reader.unwrap();
        assert_eq!(status, 200);
        assert!(
            got == body,
            "a reader got {} bytes, not the blob",
            got.len()
        );
    }
    assert_eq!(blob_files(&server.dir).len(), 1, "exactly one blob");
    assert_eq!(tmp_files(&server.dir), 0);
    assert_eq!(server.metric("granary_hits_total", "cas"), READERS as f64);
}

#[test]
fn followers_get_each_byte_as_it_arrives() {
    let server = Server::start(&[]);
    let body = pattern(1000, 7);
    let path = format!("/cas/{}", sha256_hex(&body));
    let mut put = start_put(&server, &path, body.len(), &body[..1]);
    wait_until("the upload is under way", Duration::from_secs(5), || {
        server.status()["uploads_in_progress"] == 1
    });
    let mut get = send_get(server.addr, &path, None);
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let body_start = |received: &[u8]| {
        received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    };
    for sent in 1..=5 {
        // Everything sent so far arrives, and nothing more.
        loop {
            if let Some(start) = body_start(&received)
                && received.len() - start == sent
            {
                break;
            }
            let n = get.read(&mut buffer).unwrap();
            assert!(n > 0, "the response ended early");
            received.extend_from_slice(&buffer[..n]);
        }
        let start = body_start(&received).unwrap();
        assert_eq!(&received[start..], &body[..sent]);
        put.write_all(&body[sent..sent + 1]).unwrap();
    }
    put.write_all(&body[6..]).unwrap();
    assert_eq!(read_response(&mut put).0, 200);
    get.read_to_end(&mut received).unwrap();
    assert_eq!(parse_response(&received), (200, body));
}

#[test]
fn a_slow_reader_holds_the_server_back_not_its_memory() {
    let server = Server::start(&[]);
    let body = pattern(96 << 20, 8);
    let (status, path) = put_cas(&server, &body, &[]);
    assert_eq!(status, 200);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let before = rss();
    let sent_before = server.metric("granary_sent_bytes_total", "");
    let mut stream = send_get(server.addr, &path, Some(64 * 1024));
    let mut received = vec![0; 1 << 20];
    stream.read_exact(&mut received).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sent = server.metric("granary_sent_bytes_total", "") - sent_before;
    assert!(
        sent < 12.0 * 1024.0 * 1024.0,
        "the server read {sent} bytes ahead of a reader that took 1 MiB"
    );
    assert!(
        rss() < before + (32 << 20),
        "memory grew from {before} to {}",
        rss()
    );
    stream.read_to_end(&mut received).unwrap();
    assert_eq!(parse_response(&received), (200, body));
}

#[test]
fn eviction_keeps_the_size_and_spares_blobs_being_read() {
    let server = Server::start(&[
        "--max-size",
        "16MiB",
        "--low-watermark",
        "75",
        "--hard-limit",
        "24MiB",
        "--max-blob",
        "40MiB",
    ]);
    let oldest = pattern(8 << 20, 10);
    let (status, oldest_path) = put_cas(&server, &oldest, &[]);
    assert_eq!(status, 200);
    let mut paths = Vec::new();
    for seed in 11..15 {
        let (status, path) = put_cas(&server, &pattern(1 << 20, seed), &[]);
        assert_eq!(status, 200);
        paths.push(path);
    }
    // A slow reader of the oldest blob.
    let mut reader = send_get(server.addr, &oldest_path, Some(32 * 1024));
    let mut received = vec![0; 64 * 1024];
    reader.read_exact(&mut received).unwrap();
    for seed in 15..20 {
        let (status, path) = put_cas(&server, &pattern(1 << 20, seed), &[]);
        assert_eq!(status, 200);
        paths.push(path);
    }
    wait_until("eviction", Duration::from_secs(10), || {
        server.status()["evicted"].as_u64().unwrap() > 0
    });
    let status = server.status();
    assert!(status["bytes"].as_u64().unwrap() <= 16 << 20, "{status}");
    assert_eq!(
        request(server.addr, "HEAD", &oldest_path, &[], b"").0,
        200,
        "the blob being read stays"
    );
    assert_eq!(
        request(server.addr, "HEAD", &paths[0], &[], b"").0,
        404,
        "LRU goes first"
    );
    assert_eq!(
        request(server.addr, "HEAD", paths.last().unwrap(), &[], b"").0,
        200
    );
    reader.read_to_end(&mut received).unwrap();
    assert_eq!(parse_response(&received), (200, oldest));
    assert_eq!(
        blob_files(&server.dir).len() as u64,
        server.status()["cas_blobs"].as_u64().unwrap()
    );
    assert!(server.metric("granary_evictions_total", "") >= 1.0);

    // Above the hard limit, writes are refused, not crashed into.
    let huge = pattern(30 << 20, 30);
    assert_eq!(put_cas(&server, &huge, &[]).0, 507);
    assert_eq!(server.status()["reserved_bytes"], 0);
    assert_eq!(server.metric("granary_rejected_writes_total", "full"), 1.0);
}

/// The resident memory of `pid`, in bytes.
#[cfg(target_os = "linux")]
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix(" kB"))
        .unwrap();
    kib.trim().parse::<u64>().unwrap() * 1024
}

/// 200,000 blobs, sized for CI (bench/fleet.py goes to millions): the
/// index takes at most 100 bytes of memory a blob, and after `kill -9`
/// the server serves again within 10 s (what docs/guide/fleet.md promises
/// at a million).
#[cfg(target_os = "linux")]
#[test]
fn a_large_index_stays_small_and_restarts_after_kill_9_within_bounds() {
    const BLOBS: u32 = 200_000;
    let empty = Server::start(&[]);
    request(empty.addr, "GET", "/status", &[], b"");
    let empty_rss = rss(empty.pid());
    let dir = empty.dir.clone();
    let scratch = empty.kill();
    // Written straight into the layout, as a server leaves them.
    let mut paths = Vec::new();
    for i in 0..BLOBS {
        let blob = i.to_le_bytes();
        let hex = sha256_hex(&blob);
        std::fs::write(dir.join("cas").join(&hex[..2]).join(&hex), blob).unwrap();
        if i % 40_000 == 0 {
            paths.push((format!("/cas/{hex}"), blob.to_vec()));
        }
    }
    let server = Server::start_in(scratch, &dir, &[], &[]).unwrap();
    assert_eq!(server.status()["cas_blobs"], BLOBS);
    for (path, blob) in &paths {
        assert_eq!(
            request(server.addr, "GET", path, &[], b""),
            (200, blob.clone())
        );
    }
    let per_blob = (rss(server.pid()) - empty_rss) / u64::from(BLOBS);
    assert!(per_blob <= 100, "{per_blob} bytes of memory a blob");

    let scratch = server.kill();
    let started = Instant::now();
    let restarted = Server::start_in(scratch, &dir, &[], &[]).unwrap();
    let (path, blob) = &paths[paths.len() - 1];
    assert_eq!(
        request(restarted.addr, "GET", path, &[], b""),
        (200, blob.clone())
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?} to the first blob served",
        started.elapsed()
    );
    assert_eq!(restarted.status()["cas_blobs"], BLOBS);
}

#[test]
fn kill_9_under_load_leaves_only_complete_blobs() {
    let server = Server::start(&[]);
    let dir = server.dir.clone();
    let addr = server.addr;
    // A slow upload that will never finish.
    let slow = pattern(1 << 20, 40);
    let slow_path = format!("/cas/{}", sha256_hex(&slow));
    let _slow = start_put(&server, &slow_path, slow.len(), &slow[..1000]);
    let start = Arc::new(Barrier::new(5));
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut attempted = Vec::new();
                for i in 0..200u32 {
                    let len = 1000 + (i as usize * 7919) % (1 << 20);
                    let seed = w * 50 + (i % 50) as u8;
                    // Half stored compressed, half as they are.
                    let body = match w % 2 {
                        0 => pattern(len, seed),
                        _ => compressible(len, seed),
                    };
                    let path = format!("/cas/{}", sha256_hex(&body));
                    attempted.push(path.clone());
                    let Ok(mut stream) = TcpStream::connect(addr) else { break };
                    let head = format!("PUT {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
                        break;
                    }
                    let mut answer = Vec::new();
                    if stream.read_to_end(&mut answer).is_err() || answer.is_empty() {
                        break;
                    }
                }
                attempted
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(700));
    let scratch = server.kill();
    let attempted: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(attempted.len() > 8, "the load ran: {}", attempted.len());

    let restarted = Server::start_in(scratch, &dir, &[], &[]).unwrap();
    assert_eq!(tmp_files(&dir), 0, "leftovers removed at start-up");
    let files = blob_files(&dir);
    assert!(!files.is_empty());
    for file in &files {
        let (hex, blob) = read_blob_file(file);
        assert_eq!(sha256_hex(&blob), hex, "a damaged blob");
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "zst")),
        "some were stored compressed"
    );
    assert_eq!(
        restarted.status()["cas_blobs"].as_u64().unwrap(),
        files.len() as u64
    );
    assert!(restarted.log().contains("index rebuilt in"));
    assert_eq!(request(restarted.addr, "GET", &slow_path, &[], b"").0, 404);
    for path in attempted.iter().take(100) {
        let (status, body) = request(restarted.addr, "GET", path, &[], b"");
        match status {
            200 => assert_eq!(format!("/cas/{}", sha256_hex(&body)), *path),
            404 => {}
            other => panic!("{path}: {other}"),
        }
    }
}

/// Blobs that shrink by a block are kept as zstd: a client that takes
/// zstd gets them as stored, others get them decoded; the limits count
/// the blocks the files take; a restart after a crash finds each blob's
/// size in its file's name.
#[test]
fn blobs_are_stored_compressed_and_sent_as_each_client_asks() {
    let server = Server::start(&[]);
    let large = compressible(3 << 20, 1);
    let small = compressible(40_000, 2);
    let noise = pattern(100_000, 3);
    for blob in [&large, &small, &noise] {
        assert_eq!(put_cas(&server, blob, &[]).0, 200);
    }
    let files = blob_files(&server.dir);
    let compressed = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "zst"))
        .count();
    assert_eq!(compressed, 2, "{files:?}");
    let bytes = server.status()["bytes"].as_u64().unwrap();
    let plain = (large.len() + small.len()) as u64;
    assert!(
        bytes < plain / 3 + noise.len() as u64 + 8192,
        "{bytes} bytes on disk for {plain} compressible ones"
    );
    let client = reqwest::blocking::Client::new();
    for blob in [&large, &small, &noise] {
        let url = format!("{}/cas/{}", server.url, sha256_hex(blob));
        let answer = client.get(&url).send().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers().get("content-encoding"), None);
        assert_eq!(answer.content_length(), Some(blob.len() as u64));
        assert!(answer.bytes().unwrap() == **blob, "decoded on the way");
        let answer = client
            .get(&url)
            .header("Accept-Encoding", "gzip, zstd")
            .send()
            .unwrap();
        let encoded = answer.headers().get("content-encoding").cloned();
        let body = answer.bytes().unwrap();
        if std::ptr::eq(blob, &noise) {
            assert_eq!(encoded, None, "a blob stored plain goes plain");
            assert!(body == *noise);
        } else {
            assert_eq!(encoded.unwrap(), "zstd");
            assert!(
                body.len() < blob.len() / 3,
                "{} of {}",
                body.len(),
                blob.len()
            );
            assert!(zstd::decode_all(&body[..]).unwrap() == **blob);
        }
        let head = client.head(&url).send().unwrap();
        assert_eq!(head.headers()["content-length"], blob.len().to_string());
    }
    let dir = server.dir.clone();
    let restarted = Server::start_in(server.kill(), &dir, &[], &[]).unwrap();
    assert_eq!(restarted.status()["bytes"].as_u64().unwrap(), bytes);
    for blob in [&large, &small] {
        let path = format!("/cas/{}", sha256_hex(blob));
        assert!(request(restarted.addr, "GET", &path, &[], b"") == (200, blob.clone()));
    }
}

/// A directory an earlier version filled, every blob as it came: served
/// at once, and compressed in the background.
#[test]
fn an_uncompressed_directory_is_served_and_compressed_over_time() {
    let scratch = scratch();
    let dir = scratch.path().join("cache");
    let blob = compressible(500_000, 9);
    let hex = sha256_hex(&blob);
    let plain = dir.join("cas").join(&hex[..2]).join(&hex);
    std::fs::create_dir_all(plain.parent().unwrap()).unwrap();
    std::fs::write(&plain, &blob).unwrap();
    let server = Server::start_in(scratch, &dir, &[], &[]).unwrap();
    let path = format!("/cas/{hex}");
    assert!(request(server.addr, "GET", &path, &[], b"") == (200, blob.clone()));
    wait_until("the blob is compressed", Duration::from_secs(20), || {
        !plain.exists()
    });
    let files = blob_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(read_blob_file(&files[0]) == (hex, blob.clone()));
    assert!(request(server.addr, "GET", &path, &[], b"") == (200, blob.clone()));
    let bytes = server.status()["bytes"].as_u64().unwrap();
    assert!(bytes < blob.len() as u64 / 3, "{bytes}");
}

/// The responses to requests pipelined on one connection, read to its
/// end: each one's status, head and body (none for a HEAD's, whose
/// position `heads` gives).
fn responses(mut raw: &[u8], heads: &[usize]) -> Vec<(u16, String, Vec<u8>)> {
    let mut answers = Vec::new();
    while !raw.is_empty() {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let length: usize = match heads.contains(&answers.len()) {
            true => 0,
            false => head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .unwrap_or_else(|| panic!("no length in {head}"))
                .parse()
                .unwrap(),
        };
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw[split + 4..split + 4 + length].to_vec();
        raw = &raw[split + 4 + length..];
        answers.push((status, head, body));
    }
    answers
}

/// On a plain connection, reads of stored blobs are answered outside
/// hyper, the kernel sending raw files and frames from disk (sendfile). The
/// first request hyper must answer (here a PUT) hands it the connection,
/// and it answers that and the rest in order.
#[test]
fn reads_are_sent_by_the_kernel_until_a_request_for_hyper() {
    let server = Server::start(&[]);
    let noise = pattern(2 << 20, 61);
    let text = compressible(3 << 20, 62);
    let small = pattern(1_000, 63);
    for blob in [&noise, &text, &small] {
        assert_eq!(put_cas(&server, blob, &[]).0, 200);
    }
    let new = pattern(5_000, 64);
    let cas = |blob: &[u8]| format!("/cas/{}", sha256_hex(blob));
    let missing = format!("/cas/{}", "cd".repeat(32));
    let by_kernel = || server.metric("granary_sent_by_kernel_bytes_total", "");
    let before = by_kernel();

    let mut pipelined = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\n\r\n\
         HEAD {} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {missing} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: zstd\r\n\r\n\
         GET {} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n\
         PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        cas(&noise),
        cas(&small),
        cas(&text),
        cas(&small),
        cas(&new),
        new.len(),
    )
    .into_bytes();
    pipelined.extend_from_slice(&new);
    pipelined.extend_from_slice(
        format!(
            "GET {} HTTP/1.1\r\nHost: t\r\n\r\n\
             GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            cas(&noise),
            cas(&new),
        )
        .as_bytes(),
    );
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&pipelined).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let answers = responses(&raw, &[1]);
    let statuses: Vec<u16> = answers.iter().map(|answer| answer.0).collect();
    assert_eq!(statuses, [200, 200, 404, 200, 200, 200, 200, 200]);
    let [first, head, _, frame, kept, _, again, last] = &answers[..] else {
        unreachable!()
    };
    assert!(
        first.2 == noise && first.1.contains("\r\ndate: "),
        "{}",
        first.1
    );
    assert!(head.1.contains("content-length: 1000"), "{}", head.1);
    assert!(frame.1.contains("content-encoding: zstd"), "{}", frame.1);
    assert!(zstd::decode_all(&frame.2[..]).unwrap() == text);
    assert!(kept.2 == small && again.2 == noise && last.2 == new);

    // The second GET of `noise` came after the PUT: hyper copied it.
    let sent = by_kernel() - before;
    assert_eq!(sent, (noise.len() + frame.2.len()) as f64);
    let count = |method: &str, status: u16| {
        let labels = format!("method=\"{method}\",kind=\"cas\",status=\"{status}\"");
        server.metric("granary_requests_total", &labels)
    };
    assert_eq!((count("GET", 200), count("GET", 404)), (5.0, 1.0));
    assert_eq!(count("HEAD", 200), 1.0);
}

/// A request head trickled a byte at a time, each well within the idle
/// timeout, is no progress: the connection is closed once the head is not
/// whole within the timeout, and the server's one slot is free again.
#[test]
fn a_head_trickled_byte_by_byte_times_out() {
    let server = Server::start(&["--idle-timeout", "1s", "--max-connections", "1"]);
    let mut trickling = TcpStream::connect(server.addr).unwrap();
    let head = format!("GET /cas/{} HTTP/1.1\r\nHost: t\r\nX: ", "ab".repeat(32));
    let sending = std::thread::spawn(move || {
        for byte in head.bytes().chain(std::iter::repeat(b'y')).take(200) {
            if trickling.write_all(&[byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_served_once_stalls_time_out(&server, "the trickling head");
    assert!(
        sending.join().unwrap(),
        "the connection stayed open for 20 s"
    );
}

/// A blob's file cut short while the kernel sends it (a disk error, or
/// someone else's hand): the answer ends short, with nothing but the
/// blob's own bytes in it, the server goes on, and the damaged file is
/// then answered missing.
#[test]
fn a_file_cut_short_while_it_is_sent_ends_the_answer_not_the_server() {
    let server = Server::start(&[]);
    let body = pattern(32 << 20, 66);
    let (status, path) = put_cas(&server, &body, &[]);
    assert_eq!(status, 200);
    let mut reading = send_get(server.addr, &path, Some(64 * 1024));
    let mut received = vec![0; 1 << 20];
    reading.read_exact(&mut received).unwrap();
    let [file] = &blob_files(&server.dir)[..] else {
        panic!("one blob file")
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    // The connection ends: it does not wait for bytes that cannot come.
    reading
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if let Err(e) = reading.read_to_end(&mut received) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let split = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&received[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {}", body.len())));
    let sent = &received[split..];
    assert!(
        sent.len() < body.len(),
        "the whole blob came from a cut file"
    );
    assert!(sent == &body[..sent.len()], "bytes other than the blob's");
    assert_eq!(request(server.addr, "GET", &path, &[], b"").0, 404);
    assert!(
        blob_files(&server.dir).is_empty(),
        "the damaged file is gone"
    );
}

/// A client that stops reading a blob the kernel sends loses its
/// connection once it has taken nothing for the idle timeout, and the
/// server its slot with it.
#[test]
fn a_client_that_stops_reading_gives_its_connection_back() {
    let server = Server::start(&["--idle-timeout", "1s", "--max-connections", "1"]);
    let body = pattern(32 << 20, 65);
    let (status, path) = put_cas(&server, &body, &[]);
    assert_eq!(status, 200);
    let mut stalled = send_get(server.addr, &path, Some(64 * 1024));
    std::thread::sleep(Duration::from_millis(100));
    assert_served_once_stalls_time_out(&server, "the stalled reader");
    let mut received = Vec::new();
    let _ = stalled.read_to_end(&mut received);
    assert!(
        received.len() < body.len(),
        "{} bytes of {}: the stalled reader was not cut off",
        received.len(),
        body.len()
    );
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let mut server = Server::start(&[]);
    let body = pattern(2 << 20, 50);
    let path = format!("/cas/{}", sha256_hex(&body));
    // A connection kept open after a read: closed at once, not after the
    // grace.
    let (status, small) = put_cas(&server, &pattern(100, 51), &[]);
    assert_eq!(status, 200);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    write!(idle, "GET {small} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut answer = [0; 4096];
    let read = idle.read(&mut answer).unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let mut put = start_put(&server, &path, body.len(), &body[..1 << 20]);
    wait_until("the upload is under way", Duration::from_secs(5), || {
        server.status()["uploads_in_progress"] == 1
    });
    let pid = server.pid();
    let terminated = Instant::now();
    let terminating = std::thread::spawn(move || {
        let status = server.terminate();
        (server, status)
    });
    std::thread::sleep(Duration::from_millis(500));
    put.write_all(&body[1 << 20..]).unwrap();
    assert_eq!(
        read_response(&mut put).0,
        200,
        "the upload in flight finished"
    );
    let (server, status) = terminating.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        terminated.elapsed() < Duration::from_secs(10),
        "an idle connection held the server for {:?}",
        terminated.elapsed()
    );
    idle.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(idle.read(&mut answer).unwrap(), 0, "closed");
    assert!(server.log().contains("shutting down"), "{}", server.log());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let files = blob_files(&server.dir);
    assert_eq!(files.len(), 2, "the small blob and the upload");
    assert!(
        files
            .iter()
            .any(|file| std::fs::read(file).unwrap() == body)
    );
}

#[test]
fn servers_share_a_bucket_read_through_and_write_behind() {
    let s3 = S3Server::start();
    let envs = s3.backing_envs();
    let backing = format!("s3://{}/servers", BUCKET);
    let start = || {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        Server::start_in(scratch, &dir, &["--backing", &backing], &envs).unwrap()
    };
    let first = start();
    let second = start();
    // Stored compressed; the bucket holds it as sent.
    let blob = compressible(3 << 20, 60);
    let (status, blob_path) = put_cas(&first, &blob, &[]);
    assert_eq!(status, 200);
    let result = action_result(&blob);
    let result_path = format!("/ac/{}", "cd".repeat(32));
    assert_eq!(
        request(first.addr, "PUT", &result_path, &[], &result).0,
        200
    );
    wait_until("both are written behind", Duration::from_secs(20), || {
        first.metric("granary_backing_uploads_total", "") >= 2.0
    });

    // Fifty clients miss on the second server at once: one fetch.
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (addr, path) = (second.addr, blob_path.clone());
            std::thread::spawn(move || request(addr, "GET", &path, &[], b""))
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), (200, blob.clone()));
    }
    assert_eq!(second.metric("granary_backing_fetches_total", ""), 1.0);
    assert_eq!(
        request(second.addr, "GET", &result_path, &[], b""),
        (200, result)
    );
    assert_eq!(
        blob_files(&second.dir).len(),
        2,
        "both now on the second server's disk"
    );
    let absent = format!("/cas/{}", "ef".repeat(32));
    assert_eq!(request(second.addr, "GET", &absent, &[], b"").0, 404);
    assert_eq!(request(second.addr, "HEAD", &blob_path, &[], b"").0, 200);
    // Each request to the bucket is counted once: what a fleet pays for.
    wait_until("the miss is counted", Duration::from_secs(5), || {
        second.metric("granary_backing_misses_total", "") == 1.0
    });
    assert_eq!(second.metric("granary_backing_fetches_total", ""), 2.0);

    // A HEAD of a blob only in the bucket asks it once.
    let third = pattern(5_000, 43);
    let (status, third_path) = put_cas(&first, &third, &[]);
    assert_eq!(status, 200);
    wait_until(
        "the third is written behind",
        Duration::from_secs(20),
        || first.metric("granary_backing_uploads_total", "") >= 3.0,
    );
    let lookups = || second.metric("granary_backing_lookups_total", "");
    let before = lookups();
    assert_eq!(request(second.addr, "HEAD", &third_path, &[], b"").0, 200);
    assert_eq!(
        lookups() - before,
        1.0,
        "one HEAD, one question to the bucket"
    );
}

#[test]
fn a_dead_server_costs_the_build_one_warning() {
    let server = Server::start(&[]);
    let url = server.url.clone();
    drop(server.kill());
    let sb = Sandbox::new();
    let module = sb.module("alone", 2);
    let stats_file = sb.path("stats.json");
    let mut cmd = sb.go_granary(&sb.path("cache"), &module, &stats_file, &["build", "."]);
    cmd.env("GRANARY_REMOTE", &url);
    let output = run_ok(&mut cmd);
    let stats = stats(&stats_file);
    assert!(!stats.remote.remote_off.is_empty(), "{stats:?}");
    assert!(stats.remote.remote_errors >= 1, "{stats:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
}

#[test]
fn a_follower_of_a_bad_upload_never_gets_a_whole_body() {
    let server = Server::start(&[]);
    let body = pattern(10_000, 9);
    let wrong = format!("/cas/{}", sha256_hex(b"not this body"));
    let mut put = start_put(&server, &wrong, body.len(), &body[..5000]);
    wait_until("the upload is under way", Duration::from_secs(5), || {
        server.status()["uploads_in_progress"] == 1
    });
    let mut get = send_get(server.addr, &wrong, None);
    std::thread::sleep(Duration::from_millis(200));
    put.write_all(&body[5000..]).unwrap();
    assert_eq!(read_response(&mut put).0, 400);
    let mut raw = Vec::new();
    let _ = get.read_to_end(&mut raw);
    let start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(String::from_utf8_lossy(&raw[..start]).contains("content-length: 10000"));
    assert!(
        raw.len() - start < body.len(),
        "the follower got all {} bytes of a blob that failed its check",
        body.len()
    );
    assert_eq!(request(server.addr, "GET", &wrong, &[], b"").0, 404);
}

/// With `--write-through`, a write answered by one server is readable
/// through another on the same bucket at once: the guarantee a fleet
/// behind a round-robin balancer needs (docs/guide/fleet.md).
#[test]
fn servers_writing_through_read_each_others_writes_at_once() {
    let s3 = S3Server::start();
    let envs = s3.backing_envs();
    let backing = format!("s3://{}/through", BUCKET);
    let start = || {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        let args = ["--backing", &backing, "--write-through"];
        Server::start_in(scratch, &dir, &args, &envs).unwrap()
    };
    let servers = [start(), start()];
    for trial in 0..20u8 {
        let (writer, reader) = (
            &servers[trial as usize % 2],
            &servers[1 - trial as usize % 2],
        );
        // Small blobs, and one that goes to the bucket as a stream.
        let blob = match trial {
            7 => compressible(9 << 20, trial),
            _ => pattern(1000 + 97 * usize::from(trial), trial),
        };
        let (status, blob_path) = put_cas(writer, &blob, &[]);
        assert_eq!(status, 200);
        let result = action_result(&blob);
        let result_path = format!("/ac/{}", sha256_hex(&[trial]));
        assert_eq!(
            request(writer.addr, "PUT", &result_path, &[], &result).0,
            200
        );
        assert_eq!(
            request(reader.addr, "GET", &result_path, &[], b""),
            (200, result),
            "trial {trial}"
        );
        assert!(
            request(reader.addr, "GET", &blob_path, &[], b"") == (200, blob),
            "trial {trial}"
        );
    }
    let uploads = |server: &Server| server.metric("granary_backing_uploads_total", "");
    assert_eq!(uploads(&servers[0]) + uploads(&servers[1]), 40.0);
    // A blob sent again is in the bucket already: not copied twice.
    let again = pattern(1000, 0);
    assert_eq!(put_cas(&servers[0], &again, &[]).0, 200);
    assert_eq!(uploads(&servers[0]) + uploads(&servers[1]), 40.0);
}

/// A server backed by a bucket at a port where nothing listens, with
/// `args` besides.
fn start_with_a_dead_bucket(args: &[&str]) -> Server {
    start_with_a_bucket_at("http://127.0.0.1:1", args)
}

/// A server backed by the S3 endpoint `endpoint`, with `args` besides.
fn start_with_a_bucket_at(endpoint: &str, args: &[&str]) -> Server {
    let scratch = scratch();
    let dir = scratch.path().join("cache");
    let backing = format!("s3://{BUCKET}/servers");
    let args = [&["--backing", backing.as_str()], args].concat();
    Server::start_in(
        scratch,
        &dir,
        &args,
        &[
            ("GRANARY_S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("GRANARY_S3_SECRET_ACCESS_KEY", SECRET_KEY),
            ("GRANARY_S3_ENDPOINT", endpoint),
            ("GRANARY_S3_REGION", "us-east-1"),
        ],
    )
    .unwrap()
}

/// With `--write-through` and the bucket unreachable, a write fails (the
/// client must not believe other servers can read it) but is kept here.
#[test]
fn writing_through_to_a_dead_bucket_fails_the_write_and_keeps_the_blob() {
    let server = start_with_a_dead_bucket(&["--write-through"]);
    let body = pattern(5000, 71);
    let path = format!("/cas/{}", sha256_hex(&body));
    let started = Instant::now();
    let (status, answer) = request(server.addr, "PUT", &path, &[], &body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("--write-through"), "{answer}");
    assert_eq!(request(server.addr, "GET", &path, &[], b""), (200, body));
    assert_eq!(server.metric("granary_backing_uploads_total", ""), 0.0);
}

/// With `--write-through` and a bucket that takes connections and never
/// answers, a write fails within the client's deadline (10 s a request,
/// one retry) instead of waiting for ever.
#[test]
fn writing_through_to_a_silent_bucket_fails_within_its_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let holder = {
        let done = done.clone();
        // Holds every connection open, reading nothing, until the test ends.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match silent.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let server = start_with_a_bucket_at(&endpoint, &["--write-through"]);
    let body = pattern(3000, 72);
    let path = format!("/cas/{}", sha256_hex(&body));
    let started = Instant::now();
    let (status, answer) = request(server.addr, "PUT", &path, &[], &body);
    let took = started.elapsed();
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&answer));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "{took:?}"
    );
    done.store(true, Ordering::Relaxed);
    holder.join().unwrap();
}

#[test]
fn a_dead_backing_store_fails_misses_not_the_server() {
    let server = start_with_a_dead_bucket(&[]);
    let dir = server.dir.clone();
    let absent = format!("/cas/{}", "ef".repeat(32));
    let started = Instant::now();
    assert_eq!(request(server.addr, "GET", &absent, &[], b"").0, 502);
    assert_eq!(request(server.addr, "HEAD", &absent, &[], b"").0, 404);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let body = pattern(5000, 70);
    let (status, path) = put_cas(&server, &body, &[]);
    assert_eq!(status, 200, "uploads do not wait for the backing store");
    assert_eq!(request(server.addr, "GET", &path, &[], b""), (200, body));
    wait_until("the write-behind fails", Duration::from_secs(20), || {
        server.metric("granary_backing_errors_total", "") >= 3.0
    });
    assert_eq!(server.metric("granary_backing_uploads_total", ""), 0.0);
    assert_eq!(tmp_files(&dir), 0);
    assert_eq!(server.status()["uploads_in_progress"], 0);
}

/// `POST /batch` of `body` as a client that takes zstd; the answer
/// decompressed.
fn zstd_batch(server: &Server, body: &str) -> Vec<u8> {
    let compressed = reqwest::blocking::Client::new()
        .post(format!("http://{}/batch", server.addr))
        .header("Accept-Encoding", "gzip, zstd")
        .body(body.to_owned())
        .send()
        .unwrap();
    assert_eq!(compressed.status(), 200);
    assert_eq!(compressed.headers()["content-encoding"], "zstd");
    zstd::decode_all(&compressed.bytes().unwrap()[..]).unwrap()
}

/// Small CAS blobs are read from memory after their first read, in the
/// form the client asks for; with `--memory-cache 0`, always from their
/// files.
#[test]
fn small_blobs_are_kept_in_memory_after_their_first_read() {
    // The second GET of each, and the compressed one.
    for (memory, kept) in [("64MiB", 3.0), ("0", 0.0)] {
        let server = Server::start(&["--memory-cache", memory]);
        let plain = pattern(1_000, 7);
        let text = compressible(12_000, 8);
        for blob in [&plain, &text] {
            assert_eq!(put_cas(&server, blob, &[]).0, 200);
            let path = format!("/cas/{}", sha256_hex(blob));
            for _ in 0..2 {
                let (status, body) = request(server.addr, "GET", &path, &[], b"");
                assert_eq!(status, 200);
                assert!(body == *blob);
            }
        }
        let url = format!("http://{}/cas/{}", server.addr, sha256_hex(&text));
        let compressed = reqwest::blocking::Client::new()
            .get(url)
            .header("accept-encoding", "zstd")
            .send()
            .unwrap();
        assert_eq!(compressed.headers()["content-encoding"], "zstd");
        let frame = compressed.bytes().unwrap();
        assert!(frame.len() < text.len() / 3);
        assert!(zstd::decode_all(&frame[..]).unwrap() == text);
        assert_eq!(
            server.metric("granary_memory_cache_reads_total", ""),
            kept,
            "--memory-cache {memory}"
        );
        let missing = format!("/cas/{}", "ab".repeat(32));
        assert_eq!(request(server.addr, "GET", &missing, &[], b"").0, 404);
        // Counted on the handles the metrics keep for blob GETs.
        let gets = |status| {
            let labels = format!("method=\"GET\",kind=\"cas\",status=\"{status}\"");
            server.metric("granary_requests_total", &labels)
        };
        assert_eq!((gets(200), gets(404)), (5.0, 1.0));
        assert_eq!(
            (
                server.metric("granary_hits_total", "kind=\"cas\""),
                server.metric("granary_misses_total", "kind=\"cas\""),
                server.metric(
                    "granary_request_duration_seconds_count",
                    "method=\"GET\",kind=\"cas\"",
                ),
            ),
            (5.0, 1.0, 6.0)
        );
    }
}

/// Blobs too large to keep compressed, or a server that keeps none: the
/// answer is the same, compressed anew each time.
#[test]
fn batches_compress_what_they_do_not_keep() {
    let server = Server::start(&["--compressed-cache", "0"]);
    let huge = pattern(17 << 20, 3);
    let (status, _) = put_cas(&server, &huge, &[]);
    assert_eq!(status, 200);
    let id = sha256_hex(b"huge");
    put_result(&server, &id, &huge);
    let body = format!("{id}\n");
    let (status, plain) = request(server.addr, "POST", "/batch", &[], body.as_bytes());
    assert_eq!(status, 200);
    assert!(plain.len() > huge.len());
    for _ in 0..2 {
        assert!(zstd_batch(&server, &body) == plain);
    }
    assert_eq!(
        server.metric("granary_batch_frames_compressed_total", ""),
        0.0,
        "17 MiB is streamed, not framed"
    );
    let small = pattern(100_000, 4);
    let (status, _) = put_cas(&server, &small, &[]);
    assert_eq!(status, 200);
    put_result(&server, &id, &small);
    let (_, plain) = request(server.addr, "POST", "/batch", &[], body.as_bytes());
    for _ in 0..2 {
        assert!(zstd_batch(&server, &body) == plain);
    }
    assert_eq!(
        (
            server.metric("granary_batch_frames_compressed_total", ""),
            server.metric("granary_batch_frames_reused_total", ""),
            server.metric("granary_compressed_cache_bytes", "")
        ),
        (2.0, 0.0, 0.0),
        "with --compressed-cache 0, compressed each time"
    );
}

/// A CAS blob cut short on the server's disk (its file's length is not
/// the one indexed): its entry is answered missing (the client then looks
/// it up on its own and checks it), the damaged file is removed, and the
/// next upload stores the blob again.
#[test]
fn a_blob_cut_short_on_disk_is_answered_missing_and_removed() {
    let server = Server::start(&[]);
    let output = pattern(100_000, 5);
    let (status, cas) = put_cas(&server, &output, &[]);
    assert_eq!(status, 200);
    let id = sha256_hex(b"cut");
    put_result(&server, &id, &output);
    let hash = cas.trim_start_matches("/cas/");
    // Stored compressed: `<hex>.<size>.zst`.
    let file = blob_files(&server.dir)
        .into_iter()
        .find(|file| {
            file.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(hash)
        })
        .unwrap();
    let damaged = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    damaged
        .set_len(damaged.metadata().unwrap().len() / 2)
        .unwrap();
    let body = format!("{id}\n");
    let mut missing = b"granary-pack-01\n".to_vec();
    missing.extend_from_slice(&hex::decode(&id).unwrap());
    missing.extend_from_slice(&[0; 4 + 32]);
    assert_eq!(zstd_batch(&server, &body), missing);
    assert!(!file.exists(), "a damaged blob is removed");
    assert_eq!(request(server.addr, "GET", &cas, &[], b"").0, 404);
    assert_eq!(put_cas(&server, &output, &[]).0, 200, "and stored again");
    assert_eq!(request(server.addr, "GET", &cas, &[], b""), (200, output));
    assert_eq!(server.metric("granary_compressed_cache_bytes", ""), 0.0);
}

/// The batch endpoint: entries in order, absent ones marked, the end
/// marked; bad requests refused with the reason.
#[test]
fn batches_answer_in_order_and_refuse_bad_requests() {
    let server = Server::start(&[]);
    let small = pattern(1000, 1);
    let large = pattern(200_000, 2);
    let (status, _) = put_cas(&server, &large, &[]);
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    for (i, output) in [&small, &large].iter().enumerate() {
        let id = sha256_hex(&[i as u8]);
        put_result(&server, &id, output);
        ids.push(id);
    }
    let absent = "cd".repeat(32);
    let body = format!("{}\n{absent}\n{}\n", ids[1], ids[0]);
    let (status, answer) = request(server.addr, "POST", "/batch", &[], body.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(answer.starts_with(b"granary-pack-01\n"));
    assert!(answer.ends_with(&[0; 32]), "the end is marked");
    let large_at = answer
        .windows(large.len())
        .position(|w| w == &large[..])
        .expect("the CAS blob of the large output follows its result");
    let absent_at = answer
        .windows(36)
        .position(|w| w[..32] == hex::decode(&absent).unwrap()[..] && w[32..] == [0; 4])
        .expect("the absent entry is marked missing");
    assert!(large_at < absent_at, "in the order asked");
    // Another instance name has an action cache of its own.
    let mut all_missing = b"granary-pack-01\n".to_vec();
    for id in [&ids[1], &absent, &ids[0]] {
        all_missing.extend_from_slice(&hex::decode(id).unwrap());
        all_missing.extend_from_slice(&[0; 4]);
    }
    all_missing.extend_from_slice(&[0; 32]);
    assert_eq!(
        request(server.addr, "POST", "/team/batch", &[], body.as_bytes()).1,
        all_missing,
        "another instance's action cache"
    );
    // A client that takes zstd gets the same pack, compressed; the large
    // output's blob is compressed once, then sent as kept.
    for _ in 0..2 {
        assert_eq!(zstd_batch(&server, &body), answer);
    }
    assert_eq!(
        (
            server.metric("granary_batch_frames_compressed_total", ""),
            server.metric("granary_batch_frames_reused_total", "")
        ),
        (1.0, 1.0)
    );
    assert!(server.metric("granary_compressed_cache_bytes", "") > 0.0);
    for (method, body, status, why) in [
        ("GET", String::new(), 405, "use POST"),
        ("POST", "not hex\n".to_owned(), 400, "line 1"),
        ("POST", format!("{absent}\n").repeat(10_001), 400, "at most"),
    ] {
        let (got, text) = request(server.addr, method, "/batch", &[], body.as_bytes());
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, status, "{method} {text}");
        assert!(text.contains(why), "{text}");
    }
}

/// A write refused for want of room makes the evictor free it: the next
/// try succeeds. (It was refused forever while the total stayed under
/// --max-size: eviction started only above it.)
#[test]
fn a_write_refused_for_room_is_taken_once_room_is_freed() {
    let server = Server::start(&["--max-size", "1MiB"]);
    let mut paths = Vec::new();
    for seed in 0..3 {
        let (status, path) = put_cas(&server, &pattern(300 << 10, seed), &[]);
        assert_eq!(status, 200);
        paths.push(path);
    }
    let fourth = pattern(300 << 10, 3);
    let (status, _) = put_cas(&server, &fourth, &[]);
    assert_eq!(status, 507, "past the hard limit of 1.1 MiB");
    let started = Instant::now();
    wait_until("the write is taken", Duration::from_secs(3), || {
        put_cas(&server, &fourth, &[]).0 == 200
    });
    assert!(started.elapsed() < Duration::from_secs(3));
    let status = server.status();
    assert!(status["evicted"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        status["bytes"].as_u64().unwrap() <= (1 << 20) + (1 << 20) / 10,
        "{status}"
    );
    assert_eq!(
        request(server.addr, "HEAD", &paths[0], &[], b"").0,
        404,
        "LRU went"
    );
}

/// Sizes count the blocks a blob takes, at least one: thousands of empty
/// action results (0 bytes each, once) fill a 1 MiB cache and are evicted
/// like a few big blobs would be, so the disk and its inodes stay bounded.
#[test]
fn tiny_blobs_count_the_blocks_they_take() {
    let server = Server::start(&["--max-size", "1MiB"]);
    for i in 0..600u32 {
        let path = format!("/ac/{}", sha256_hex(&i.to_be_bytes()));
        // An empty message is a valid (empty) ActionResult.
        let (status, _) = request(server.addr, "PUT", &path, &[], b"");
        assert!(status == 200 || status == 507, "{status}");
    }
    wait_until("eviction", Duration::from_secs(5), || {
        server.status()["bytes"].as_u64().unwrap() <= 1 << 20
    });
    let status = server.status();
    let blobs = status["ac_blobs"].as_u64().unwrap();
    assert!(status["evicted"].as_u64().unwrap() > 0, "{status}");
    assert!(blobs * 4096 <= (1 << 20) + (1 << 20) / 10, "{status}");
    assert_eq!(status["bytes"].as_u64().unwrap(), blobs * 4096, "{status}");
    assert_eq!(blob_files(&server.dir).len() as u64, blobs);
}

/// A blob sent again is checked, not written again: the file keeps its
/// inode (a rewrite renames a new file over it). An action result with new
/// contents is written; a body that does not match the stored key is still
/// refused and leaves the stored blob alone.
#[test]
fn a_blob_sent_again_is_checked_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start(&[]);
    let file = |path: &str| {
        let (kind, hex) = path[1..].split_once('/').unwrap();
        server.dir.join(kind).join(&hex[..2]).join(hex)
    };
    let inode = |path: &str| std::fs::metadata(file(path)).unwrap().ino();
    // One body is taken whole (small), one streams through a writer.
    for body in [pattern(1000, 1), pattern(3 << 20, 2)] {
        let (status, path) = put_cas(&server, &body, &[]);
        assert_eq!(status, 200, "{path}");
        let first = inode(&path);
        let usage = server.status();
        let (status, _) = put_cas(&server, &body, &[]);
        assert_eq!(status, 200, "{path} again");
        assert_eq!(inode(&path), first, "{path} was written again");
        let again = server.status();
        assert_eq!(again["bytes"], usage["bytes"], "{again}");
        assert_eq!(again["cas_blobs"], usage["cas_blobs"], "{again}");

        let mut other = body.clone();
        other[body.len() / 2] ^= 1;
        let (status, _) = request(server.addr, "PUT", &path, &[], &other);
        assert_eq!(status, 400, "{path} with another body");
        assert_eq!(inode(&path), first);
        assert_eq!(std::fs::read(file(&path)).unwrap(), body);
    }

    let id = sha256_hex(b"an action");
    let path = format!("/ac/{id}");
    put_result(&server, &id, b"first output");
    let first = inode(&path);
    put_result(&server, &id, b"first output");
    assert_eq!(
        inode(&path),
        first,
        "the same action result was written again"
    );
    put_result(&server, &id, b"second output");
    assert_ne!(inode(&path), first, "a new action result was not written");
    let (status, stored) = request(server.addr, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    assert_eq!(stored, action_result(b"second output"));
}

/// Request bodies that trickle (a byte now and then, each pause within the
/// idle timeout) once held every connection slot: /healthz waited 45 s.
/// A body must keep up a minimum rate after its first idle timeout.
#[test]
fn trickling_bodies_give_their_connections_back() {
    let server = Server::start(&["--idle-timeout", "1s", "--max-connections", "4"]);
    let stop = Arc::new(AtomicBool::new(false));
    let tricklers: Vec<_> = (0..4u8)
        .map(|i| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                let path = format!("/cas/{}", sha256_hex(&[i; 1000]));
                let mut stream = TcpStream::connect(addr).unwrap();
                write!(
                    stream,
                    "PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n"
                )
                .unwrap();
                for _ in 0..40 {
                    if stop.load(Ordering::Relaxed) || stream.write_all(&[i]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (status, _) = request(server.addr, "GET", "/healthz", &[], b"");
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for trickler in tricklers {
        trickler.join().unwrap();
    }
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_millis(2500),
        "/healthz waited {waited:?} behind four trickling uploads"
    );
    assert!(server.metric("granary_rejected_writes_total", "incomplete") >= 1.0);
    assert!(
        blob_files(&server.dir).is_empty(),
        "nothing half-sent is stored"
    );
}

/// One HTTP/2 client opening hundreds of /batch streams, reading none of
/// them (a zero window) and pinging to look alive, once took 515 threads
/// of the blocking pool, and every other client's PUT and batch stalled.
/// Now a connection has two batch answers at most, and the server a few:
/// other clients are served within a second, threads stay few, and the
/// connection is closed once it makes no progress but pings.
#[test]
fn a_hostile_http2_client_cannot_take_the_server() {
    let server = Server::start(&["--idle-timeout", "3s"]);
    // Entries whose answers are large: the writer must wait for the client.
    let mut lines = String::new();
    for seed in 0..4u8 {
        let output = pattern(2 << 20, 100 + seed);
        assert_eq!(put_cas(&server, &output, &[]).0, 200);
        let id = sha256_hex(&[seed]);
        put_result(&server, &id, &output);
        lines.push_str(&format!("{id}\n"));
    }
    let threads_before = threads(server.pid());
    let runtime = h2_runtime();
    let addr = server.addr;
    let request_body = lines.clone();
    let (opened, hostile) = runtime.block_on(async move {
        let (client, mut connection) = h2_reading_nothing(addr).await;
        let mut ping_pong = connection.ping_pong().unwrap();
        let driver = tokio::spawn(connection);
        let mut streams = Vec::new();
        for _ in 0..600 {
            let ready = tokio::time::timeout(Duration::from_millis(200), client.clone().ready());
            let Ok(Ok(mut ready)) = ready.await else {
                break;
            };
            let request = http::Request::post(format!("http://{addr}/batch"))
                .body(())
                .unwrap();
            let (response, mut send) = ready.send_request(request, false).unwrap();
            // A stream the server has reset already takes no body: it is
            // not one the client holds open.
            if send
                .send_data(bytes::Bytes::from(request_body.clone()), true)
                .is_err()
            {
                continue;
            }
            streams.push((response, send));
        }
        let opened = streams.len();
        let pinger = tokio::spawn(async move {
            for _ in 0..40 {
                if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        (opened, (streams, pinger, driver))
    });
    assert!(opened >= 100, "the server took only {opened} streams");
    std::thread::sleep(Duration::from_millis(500));
    // Another client: a PUT and a whole batch, each within a second.
    for seed in 0..3u8 {
        let started = Instant::now();
        assert_eq!(
            put_cas(&server, &pattern(100 << 10, 200 + seed), &[]).0,
            200
        );
        let (status, body) = request(server.addr, "POST", "/batch", &[], lines.as_bytes());
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert!(body.len() > 8 << 20, "the whole answer: {}", body.len());
        assert!(
            took < Duration::from_secs(1),
            "another client waited {took:?}"
        );
    }
    let threads = threads(server.pid());
    assert!(
        threads < threads_before + 16,
        "{threads} threads (from {threads_before}) for one hostile connection"
    );
    // Pings are not progress: the server closes the connection once its
    // requests have been refused or given up on, and the idle timeout has
    // passed.
    let (streams, _pinger, driver) = hostile;
    let started = Instant::now();
    let closed =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), driver).await });
    assert!(
        closed.is_ok(),
        "the server kept a connection that only pings for {:?}",
        started.elapsed()
    );
    drop(streams);
    drop(runtime);
}

/// The number of threads of process `pid`.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// A write token once emptied the cache without sending a byte: a PUT
/// announcing more than the room left got 507 and the evictor freed the
/// room it asked for. Room is now taken by bytes that arrive: the
/// announcement evicts nothing, and the silent PUT ends by its pace.
#[test]
fn an_announced_length_holds_no_room_and_evicts_nothing() {
    let server = Server::start(&[
        "--max-size",
        "4MiB",
        "--max-blob",
        "4MiB",
        "--idle-timeout",
        "2s",
    ]);
    for seed in 0..48 {
        assert_eq!(put_cas(&server, &pattern(60 << 10, seed), &[]).0, 200);
    }
    let stored = server.status()["cas_blobs"].as_u64().unwrap();
    // 3.5 MiB announced, nothing sent.
    let mut silent = start_put(&server, &format!("/cas/{}", "cd".repeat(32)), 7 << 19, b"");
    std::thread::sleep(Duration::from_secs(1));
    let status = server.status();
    assert_eq!(status["reserved_bytes"], 0, "{status}");
    assert_eq!(status["evicted"], 0, "{status}");
    assert_eq!(status["cas_blobs"].as_u64().unwrap(), stored, "{status}");
    let started = Instant::now();
    let (code, body) = read_response(&mut silent);
    assert_eq!(code, 408, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.status()["evicted"], 0);
    // A blob that is sent finds room, and makes room for itself only.
    let sent = pattern(1 << 20, 99);
    wait_until("a sent blob is taken", Duration::from_secs(5), || {
        put_cas(&server, &sent, &[]).0 == 200
    });
    let evicted = server.status()["evicted_bytes"].as_u64().unwrap();
    assert!(evicted <= 2 << 20, "{evicted} bytes evicted for 1 MiB sent");
}

/// The file system filled before --max-size (another program took the
/// disk): the server lowers its limits to what the disk holds and evicts
/// down to them, so writes go on, instead of answering 507 for ever.
#[test]
fn a_full_file_system_lowers_the_limits_and_writes_go_on() {
    // 12 MiB, of which another program took 6.
    let server = Server::start_on_small_disk(12, 6, &["--max-size", "64MiB"]);
    let mut refused = None;
    for seed in 0..40u8 {
        let (status, _) = put_cas(&server, &pattern(256 << 10, seed), &[]);
        if status == 507 {
            refused = Some(seed);
            break;
        }
        assert_eq!(status, 200);
    }
    let refused = refused.expect("the small disk filled");
    wait_until("eviction", Duration::from_secs(5), || {
        server.status()["evicted"].as_u64().unwrap() > 0
    });
    let status = server.status();
    let max_size = status["max_size"].as_u64().unwrap();
    assert!(max_size < 6 << 20, "the limit fits the disk: {status}");
    assert!(server.log().contains("is full"), "{}", server.log());
    for seed in refused..refused + 10 {
        let (status, _) = put_cas(&server, &pattern(256 << 10, seed), &[]);
        assert_eq!(status, 200, "seed {seed}: {}", server.log());
    }
    assert!(server.status()["bytes"].as_u64().unwrap() <= max_size + (256 << 10));
}
