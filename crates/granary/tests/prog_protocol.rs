//! `granary prog` driven straight through its protocol, as cmd/go would,
//! with the inputs cmd/go never sends: each bad request gets a clear answer
//! and publishes nothing.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use granary_id::Id;
use granary_protocol::{Request, write_request, write_request_header};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::*;

fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

#[test]
fn put_get_round_trip_keeps_the_put_time() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    let before = SystemTime::now();
    h.request(&put(1, 7, b"hello, go"), b"hello, go");
    let stored = h.response();
    assert_eq!(stored["ID"], 1);
    let path = stored["DiskPath"].as_str().expect("a DiskPath");
    assert!(Path::new(path).is_absolute() && Path::new(path).extension().is_none());
    assert_eq!(fs::read(path).unwrap(), b"hello, go");

    h.request(
        &Request::Get {
            id: 2,
            action_id: Id([7; 32]),
        },
        &[],
    );
    h.request(
        &Request::Get {
            id: 3,
            action_id: Id([8; 32]),
        },
        &[],
    );
    let mut answers = [h.response(), h.response()];
    answers.sort_by_key(|a| a["ID"].as_i64());
    let hit = &answers[0];
    assert_eq!(hit["DiskPath"], path);
    assert_eq!(hit["Size"], 9);
    assert_eq!(hit["OutputID"], b64(&Sha256::digest(b"hello, go")));
    let time = humantime::parse_rfc3339(hit["Time"].as_str().unwrap()).unwrap();
    assert!(time >= before - Duration::from_secs(1) && time <= SystemTime::now());
    assert_eq!(answers[1], serde_json::json!({"ID": 3, "Miss": true}));

    // A zero-length body has no body line.
    h.request(&put(4, 9, b""), b"");
    assert!(h.response()["DiskPath"].is_string());
    let (status, stderr) = h.close();
    assert!(status.success());
    assert_eq!(stderr, "", "stderr stays silent on success");
    let s = stats(&sb.path("stats.json"));
    assert_eq!(
        (s.gets, s.hits, s.misses, s.puts, s.errors),
        (2, 1, 1, 2, 0)
    );
    assert_eq!((s.hit_bytes, s.put_bytes), (9, 9));
}

/// Sends `bytes` (one bad request), then a valid get: the bad one must be
/// answered with an error naming `reason`, the get answered after it, and
/// nothing published.
fn rejected_in_step(bytes: &[u8], id: i64, reason: &str) {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    h.send(bytes);
    h.request(
        &Request::Get {
            id: 50,
            action_id: Id([1; 32]),
        },
        &[],
    );
    // Answers may come in any order.
    let mut answers = [h.response(), h.response()];
    answers.sort_by_key(|a| a["ID"].as_i64() == Some(50));
    let [error, get] = answers;
    assert_eq!(error["ID"], id, "{error}");
    let message = error["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("an Err: {error}"));
    assert!(
        message.contains(reason),
        "{message:?} should say {reason:?}"
    );
    assert_eq!(get, serde_json::json!({"ID": 50, "Miss": true}));
    assert_eq!(
        entry_files(&h.cache.clone()),
        0,
        "a bad request published something"
    );
    let stats_path = h.stats.clone();
    let (status, _) = h.close();
    assert!(status.success());
    assert_eq!(stats(&stats_path).errors, 1);
}

fn header(request: &Request) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_request_header(&mut bytes, request).unwrap();
    bytes
}

#[test]
fn unknown_command_is_an_error() {
    rejected_in_step(
        b"{\"ID\":5,\"Command\":\"frobnicate\"}\n\n",
        5,
        "unknown command",
    );
}

#[test]
fn id_of_the_wrong_length_is_an_error() {
    let bytes = format!(
        "{{\"ID\":6,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n",
        b64(&[1; 20])
    );
    rejected_in_step(bytes.as_bytes(), 6, "20 bytes");
    let bytes = format!(
        "{{\"ID\":7,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\"}}\n\n",
        b64(&[1; 32]),
        b64(&[1; 33])
    );
    rejected_in_step(bytes.as_bytes(), 7, "OutputID has 33 bytes");
}

#[test]
fn missing_body_line_is_an_error() {
    rejected_in_step(&header(&put(8, 1, b"abc")), 8, "body line is missing");
}

#[test]
fn non_base64_body_is_an_error() {
    let mut bytes = header(&put(9, 1, b"abc"));
    bytes.extend_from_slice(b"\"YW*j\"\n");
    rejected_in_step(&bytes, 9, "not valid padded standard base64");
}

#[test]
fn short_body_is_an_error() {
    let mut bytes = header(&put(10, 1, b"abcdef"));
    bytes.extend_from_slice(format!("\"{}\"\n", b64(b"abc")).as_bytes());
    rejected_in_step(&bytes, 10, "has 3 bytes but BodySize is 6");
}

#[test]
fn long_body_is_an_error() {
    let mut bytes = header(&put(11, 1, b"ab"));
    bytes.extend_from_slice(format!("\"{}\"\n", b64(b"abcdef")).as_bytes());
    rejected_in_step(&bytes, 11, "more bytes than BodySize 2");
}

#[test]
fn body_that_is_not_its_output_id_is_an_error() {
    let mut request = put(12, 1, b"real");
    if let Request::Put { output_id, .. } = &mut request {
        *output_id = Id::of(b"fake");
    }
    let mut bytes = Vec::new();
    write_request(&mut bytes, &request, b"real").unwrap();
    rejected_in_step(&bytes, 12, "SHA-256");
}

#[test]
fn large_streamed_body_with_a_bad_hash_is_an_error() {
    let body = vec![7u8; 3 << 20];
    let mut request = put(13, 1, &body);
    if let Request::Put { output_id, .. } = &mut request {
        output_id.0[0] ^= 1;
    }
    let mut bytes = Vec::new();
    write_request(&mut bytes, &request, &body).unwrap();
    rejected_in_step(&bytes, 13, "SHA-256");
}

#[test]
fn malformed_json_loses_framing_and_exits_non_zero() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    h.request(&put(1, 3, b"kept"), b"kept");
    assert!(h.response()["DiskPath"].is_string());
    h.send(b"{\"ID\": 2, \"Command\": \"get\", oops\n\n");
    let (status, stderr) = h.finish();
    assert!(!status.success());
    assert!(stderr.contains("not a JSON object"), "{stderr}");
    // What was stored before stays stored.
    assert_eq!(entry_files(&sb.cache()), 2);
}

/// A request that names its ID twice cannot be answered: under which ID?
/// (It was answered under the last one.)
#[test]
fn a_request_with_two_ids_loses_framing() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    h.send(b"{\"ID\":1,\"Command\":\"get\",\"ID\":2}\n");
    let (status, stderr) = h.finish();
    assert!(!status.success());
    assert!(stderr.contains("names its ID more than once"), "{stderr}");
}

/// A cache directory that is a file is named as such, once, whatever the
/// command; not as a config file that cannot be read.
#[test]
fn a_cache_directory_that_is_a_file_says_so() {
    let sb = Sandbox::new();
    let file = sb.path("a-file");
    fs::write(&file, b"").unwrap();
    for args in [&["prog"][..], &["du"], &["trim"], &["stats"]] {
        let out = without_granary_env(&mut Command::new(granary()))
            .arg("--dir")
            .arg(&file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("is not a directory; choose another with --dir")
                && !stderr.contains("config")
                && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn end_of_input_inside_a_body_exits_non_zero() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    let mut bytes = header(&put(1, 1, &[5u8; 1000]));
    bytes.extend_from_slice(b"\"BQUFBQUF");
    h.send(&bytes);
    let (status, stderr) = h.finish_expecting_error(1);
    assert!(!status.success());
    assert!(stderr.contains("ended inside a put body"), "{stderr}");
    assert_eq!(entry_files(&sb.cache()), 0);
}

impl Helper {
    /// Like [`Helper::finish`], but first reads the error answer to `id`.
    fn finish_expecting_error(mut self, id: i64) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let answer = self.response();
        assert_eq!(answer["ID"], id);
        assert!(answer["Err"].is_string(), "{answer}");
        self.finish()
    }
}

#[test]
fn end_of_input_without_close_answers_pending_work_and_exits_cleanly() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    let body = vec![1u8; 2 << 20];
    let mut bytes = Vec::new();
    write_request(&mut bytes, &put(1, 1, &body), &body).unwrap();
    for id in 2..40 {
        write_request(
            &mut bytes,
            &Request::Get {
                id,
                action_id: Id([1; 32]),
            },
            &[],
        )
        .unwrap();
    }
    h.send(&bytes);
    drop(h.stdin.take());
    let mut ids: Vec<i64> = (0..39)
        .map(|_| h.response()["ID"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (1..40).collect::<Vec<_>>(),
        "every ID answered exactly once"
    );
    let (status, stderr) = h.finish();
    assert!(status.success(), "{stderr}");
}

#[test]
fn close_waits_for_pending_puts() {
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    let mut bytes = Vec::new();
    let bodies: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![i; 100_000 * usize::from(i)])
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        write_request(&mut bytes, &put(i as i64 + 1, i as u8, body), body).unwrap();
    }
    write_request(&mut bytes, &Request::Close { id: 100 }, &[]).unwrap();
    h.send(&bytes);
    let answers: Vec<Value> = (0..21).map(|_| h.response()).collect();
    assert_eq!(answers.last().unwrap()["ID"], 100, "close is answered last");
    let (status, _) = h.finish();
    assert!(status.success());
    assert_eq!(objects(&sb.cache()).len(), 20);
    assert!(objects_with_wrong_hash(&sb.cache()).is_empty());
}

/// The helper's stderr after one get (a miss) and close, with `var` set.
fn stderr_of_one_get(var: (&str, &str)) -> String {
    let sb = Sandbox::new();
    let mut cmd = Command::new(granary());
    cmd.env(var.0, var.1);
    let mut h = Helper::start_with(&sb, cmd);
    h.request(
        &Request::Get {
            id: 1,
            action_id: Id([1; 32]),
        },
        &[],
    );
    h.response();
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    stderr
}

#[test]
fn verbose_prints_one_summary_line_at_close() {
    let stderr = stderr_of_one_get(("GRANARY_VERBOSE", "1"));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("granary: 1 gets, 0 hits"), "{stderr}");
}

#[test]
fn debug_lines_say_when_they_happened() {
    let stderr = stderr_of_one_get(("GRANARY_LOG", "debug"));
    // "   0.001234567s DEBUG closing": seconds since the helper started,
    // in order, up to the close.
    let times: Vec<f64> = stderr
        .lines()
        .map(|line| {
            let (time, _) = line.trim_start().split_once("s ").expect(&stderr);
            time.parse().unwrap_or_else(|_| panic!("{line}"))
        })
        .collect();
    assert!(times.is_sorted(), "{stderr}");
    for step in ["miss for action", "closing", "closed"] {
        assert!(stderr.contains(step), "no {step:?} in:\n{stderr}");
    }
}

#[test]
fn handshake_comes_at_once() {
    let sb = Sandbox::new();
    let start = Instant::now();
    let h = Helper::start(&sb);
    let elapsed = start.elapsed();
    // Generous bound for a loaded CI machine; a real regression (slow work
    // before the handshake) shows up as seconds.
    assert!(
        elapsed < Duration::from_secs(2),
        "handshake took {elapsed:?}"
    );
    h.close();
}

#[test]
fn go_env_w_gocache_is_the_default_directory() {
    let sb = Sandbox::new();
    let env_file = sb.path("goenv");
    let cache = sb.path("from-go-env");
    let mut go_env = Command::new(go());
    go_env
        .args(["env", "-w"])
        .arg(format!("GOCACHE={}", cache.display()))
        .env("GOENV", &env_file)
        .env_remove("GOCACHE");
    run_ok(&mut go_env);

    let mut cmd = Command::new(granary());
    cmd.args(["prog"])
        .env_remove("GOCACHE")
        .env_remove("GRANARY_DIR")
        .env("GOENV", &env_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut bytes = Vec::new();
    write_request(&mut bytes, &put(1, 1, b"x"), b"x").unwrap();
    write_request(&mut bytes, &Request::Close { id: 2 }, &[]).unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"DiskPath\":\"{}/", cache.display())),
        "{text}"
    );
    assert_eq!(objects(&cache).len(), 1);
}

#[test]
fn unwritable_stats_file_is_a_warning_not_a_failure() {
    let sb = Sandbox::new();
    let mut child = Command::new(granary())
        .args(["prog", "--stats-file"])
        .arg(sb.path("no-such-dir/stats.json"))
        .env("GRANARY_DIR", sb.cache())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    write_request(&mut bytes, &Request::Close { id: 1 }, &[]).unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("{\"ID\":1}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write the stats file"), "{stderr}");
}

#[test]
fn unusable_cache_directory_is_a_clear_error() {
    let sb = Sandbox::new();
    let file = sb.path("not-a-dir");
    fs::write(&file, b"").unwrap();
    let out = Command::new(granary())
        .args(["prog", "--dir"])
        .arg(file.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--dir or GRANARY_DIR"), "{stderr}");
}

/// A 300 MB put, streamed: the helper's peak RSS must stay far below the
/// body's size. Reads the peak from /proc.
#[cfg(target_os = "linux")]
#[test]
fn huge_put_streams_in_bounded_memory() {
    const SIZE: usize = 300 << 20;
    const LIMIT_KB: u64 = 64 << 10;
    let sb = Sandbox::new();
    let mut h = Helper::start(&sb);
    let pid = h.child.id();
    let answer = put_big(&mut h, 1, 1, SIZE, || Box::new(big_output(SIZE)));
    let path = answer["DiskPath"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(fs::metadata(path).unwrap().len(), SIZE as u64);

    let peak_kb = peak_rss_kib(pid);
    eprintln!(
        "peak RSS of granary during a 300 MB put: {:.1} MB",
        peak_kb as f64 / 1024.0
    );
    assert!(
        peak_kb < LIMIT_KB,
        "peak RSS {peak_kb} kB is over the {LIMIT_KB} kB bound"
    );
    assert!(objects_with_wrong_hash(&sb.cache()).is_empty());
    h.close();
}

/// A write that fails half-way (here: the file size limit, standing in for a
/// full disk) answers that put with an error, publishes nothing, leaves no
/// temporary file, and the helper goes on serving.
#[cfg(unix)]
#[test]
fn failing_disk_write_is_an_error_and_publishes_nothing() {
    let sb = Sandbox::new();
    let mut cmd = Command::new("sh");
    // Ignored SIGXFSZ makes writes past the limit fail with EFBIG instead of
    // killing the process; `ulimit -f` counts blocks of 512 or 1024 bytes.
    cmd.args([
        "-c",
        "trap '' XFSZ; ulimit -f 200; exec \"$0\" \"$@\"",
        granary().to_str().unwrap(),
    ]);
    let mut h = Helper::start_with(&sb, cmd);
    let big = vec![3u8; 1 << 20];
    h.request(&put(1, 1, &big), &big);
    let answer = h.response();
    let message = answer["Err"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(message.contains("File too large"), "{message}");

    h.request(&put(2, 2, b"small"), b"small");
    assert!(h.response()["DiskPath"].is_string());
    h.request(
        &Request::Get {
            id: 3,
            action_id: Id([1; 32]),
        },
        &[],
    );
    assert_eq!(h.response(), serde_json::json!({"ID": 3, "Miss": true}));
    let (status, _) = h.close();
    assert!(status.success());
    assert_eq!(objects(&sb.cache()).len(), 1);
    assert_eq!(
        temporaries(&sb.cache()),
        Vec::<std::path::PathBuf>::new(),
        "the failed put left a temporary file"
    );
}
