//! A lying remote can only slow a build by a bounded amount: `granary prog`
//! against a hostile cache server (a loopback HTTP server in this file that
//! answers whatever a test tells it to) and a hostile bucket (SeaweedFS
//! edited through `granary-remote`, and scripts/s3_proxy.py). Every get
//! must be answered within a bound that follows from --remote-timeout,
//! whatever the remote sends; each test asserts that bound.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::s3::{Proxy, S3Server, only_manifest, put_blob};
use common::*;
use granary_id::Id;
use granary_remote::layout::manifest_action;
use granary_remote::{ActionRecord, Format, Group, Manifest, Placement};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The scope granary qualifies `ci` to, with the platform these tests set.
const SCOPE: &str = "ci testos/testarch go";
/// What the remote waits at most for one answer, in these tests.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on one get: a wait for the prefetch (the timeout, plus the
/// watchdog's tick), then an ordinary lookup (the timeout), plus slack for
/// a loaded machine.
const GET_BOUND: Duration = Duration::from_millis(2 * 1000 + 250 + 1500);

/// What the hostile server answers.
enum Reply {
    Full(u16, Vec<u8>),
    /// A chunked body: `next(i)` is chunk `i`, sent every `every`; `None`
    /// ends the body. Streams end after two minutes whatever they say.
    Stream {
        every: Duration,
        next: Box<dyn FnMut(usize) -> Option<Vec<u8>> + Send>,
    },
}

type Handler = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// A loopback HTTP/1.1 server that answers each request as its handler
/// says (method, path). Stops when dropped.
struct Hostile {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Hostile {
    fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (handler, stop, requests) =
                            (handler.clone(), stop2.clone(), requests2.clone());
                        thread::spawn(move || serve(stream, &*handler, &stop, &requests));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Hostile {
            addr,
            stop,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, handler: &Handler, stop: &AtomicBool, requests: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while !stop.load(Ordering::Relaxed) {
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => continue,
            }
        }
        let Some((method, path)) = head
            .first()
            .and_then(|l| l.split_once(' '))
            .map(|(m, rest)| {
                (
                    m.to_owned(),
                    rest.split(' ').next().unwrap_or("").to_owned(),
                )
            })
        else {
            return;
        };
        let length: usize = head
            .iter()
            .filter_map(|h| h.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.lock().unwrap().push(format!("{method} {path}"));
        let written = match handler(&method, &path) {
            Reply::Full(status, body) => out
                .write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                )
                .and_then(|()| out.write_all(&body)),
            Reply::Stream { every, mut next } => {
                let ends = Instant::now() + Duration::from_secs(120);
                let mut sent =
                    out.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let mut i = 0;
                while sent.is_ok() && !stop.load(Ordering::Relaxed) && Instant::now() < ends {
                    let Some(chunk) = next(i) else { break };
                    i += 1;
                    sent = out
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .and_then(|()| out.write_all(&chunk))
                        .and_then(|()| out.write_all(b"\r\n"))
                        .and_then(|()| out.flush());
                    thread::sleep(every);
                }
                sent.and_then(|()| out.write_all(b"0\r\n\r\n"))
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// The action result of a Go entry whose output is `body`, put at `time`.
fn action_result(action: Id, body: &[u8], time: SystemTime) -> Vec<u8> {
    let record = ActionRecord {
        action,
        output: Id::of(body),
        size: body.len() as u64,
        put_time: time,
        placement: Placement::Inline,
        build_time: None,
        signature: None,
    };
    granary_remote::reapi::encode(&record, Some(body))
}

/// A manifest of scope [`SCOPE`] naming `actions` as loose entries, its
/// `written` line replaced by `written`.
fn manifest(actions: &[Id], written: &str) -> Vec<u8> {
    let manifest = Manifest {
        scope: SCOPE.into(),
        written: SystemTime::now(),
        groups: vec![Group {
            pack: None,
            pack_in: None,
            actions: actions.to_vec(),
            earlier: Vec::new(),
        }],
        build_times: Default::default(),
    };
    let text = zstd::bulk::decompress(&manifest.encode(), 1 << 20).unwrap();
    let text = String::from_utf8(text).unwrap();
    let line = text.lines().find(|l| l.starts_with("written ")).unwrap();
    let text = text.replace(line, &format!("written {written}"));
    zstd::bulk::compress(text.as_bytes(), 3).unwrap()
}

/// The path at which a cache server keeps the manifest of [`SCOPE`], and
/// what it answers there: the manifest as the output of an action result.
fn manifest_entry(bytes: &[u8]) -> (String, Vec<u8>) {
    let path = format!("/{}", Format::Reapi.manifest_key("", SCOPE));
    (
        path,
        action_result(manifest_action(SCOPE), bytes, SystemTime::now()),
    )
}

fn ac_path(action: Id) -> String {
    format!("/{}", Format::Reapi.action_key("", &action))
}

/// `granary prog` against `remote`, with a one-second remote timeout.
/// Killed after a minute if it has not finished by then, so that a hang
/// fails the test instead of stalling the suite.
fn helper(sb: &Sandbox, remote: impl FnOnce(&mut Command), prefetch: bool) -> Helper {
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .env("GRANARY_SCOPE", "ci")
        .env("GOOS", "testos")
        .env("GOARCH", "testarch")
        // No toolchain to name: the scope ends in `go` (SCOPE).
        .env_remove("GOROOT")
        .env("PATH", sb.path("no-go"))
        .env("GRANARY_PREFETCH", prefetch.to_string())
        .env("GRANARY_REMOTE_TIMEOUT", "1s")
        .env("GRANARY_REMOTE_BUDGET", "30s")
        .env("GRANARY_UPLOAD_DEADLINE", "2s");
    remote(&mut cmd);
    let helper = Helper::start_with(sb, cmd);
    let pid = helper.child.id();
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    helper
}

fn http(url: String) -> impl FnOnce(&mut Command) {
    move |cmd: &mut Command| {
        cmd.env("GRANARY_REMOTE", url);
    }
}

/// Sends a get of `action` and waits for its answer.
fn timed_get(h: &mut Helper, id: i64, action: Id) -> (Value, Duration) {
    let started = Instant::now();
    h.request(
        &granary_protocol::Request::Get {
            id,
            action_id: action,
        },
        &[],
    );
    let answer = h.response();
    assert_eq!(answer["ID"], id, "{answer}");
    (answer, started.elapsed())
}

fn assert_bounded(answer: &Value, took: Duration, bound: Duration) {
    assert!(
        took <= bound,
        "the get took {took:?}, more than the bound {bound:?}: {answer}"
    );
}

/// A manifest written at a time that overflows (it once panicked the
/// prefetch, and every later get waited forever) is damage: ignored with a
/// warning, with the prefetch on, and at close with it off.
#[test]
fn a_manifest_from_beyond_the_end_of_time_is_damage_not_a_hang() {
    for written in ["18446744073709551615", "9223372036854775000"] {
        for prefetch in [true, false] {
            let (path, entry) = manifest_entry(&manifest(&[Id([7; 32])], written));
            let remote = Hostile::start(move |method, p| match method {
                "GET" if p == path => Reply::Full(200, entry.clone()),
                "PUT" => Reply::Full(200, Vec::new()),
                _ => Reply::Full(404, Vec::new()),
            });
            let sb = Sandbox::new();
            let mut h = helper(&sb, http(remote.url()), prefetch);
            let (answer, took) = timed_get(&mut h, 1, Id([7; 32]));
            assert_eq!(answer["Miss"], true, "{answer}");
            assert_bounded(&answer, took, GET_BOUND);
            // Something used, so that a run without prefetch reads the
            // manifest at close.
            h.request(&put(2, 9, b"nine"), b"nine");
            assert!(h.response()["DiskPath"].is_string());
            let (status, stderr) = h.close();
            assert!(status.success(), "{stderr}");
            assert!(
                stderr.contains("ignored the manifest of scope ci testos/testarch go")
                    && !stderr.contains("panic"),
                "{written} {prefetch}: {stderr}"
            );
            let s = stats(&sb.path("stats.json"));
            assert_eq!(
                s.prefetch.prefetch_damaged, 1,
                "{written} {prefetch}: {s:?}"
            );
            assert_eq!((s.remote.remote_errors, s.errors), (0, 0), "{s:?}");
        }
    }
}

/// An action result dated in the year 10000 once passed the decoder and
/// broke the answer after the hit was counted: the get was never
/// answered. It is damage, a miss.
#[test]
fn an_action_result_from_the_year_10000_is_a_miss() {
    let year_10000 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
    for prefetch in [true, false] {
        let result = action_result(Id([7; 32]), b"seven", year_10000);
        let remote = Hostile::start(move |method, path| match method {
            "GET" if path == ac_path(Id([7; 32])) => Reply::Full(200, result.clone()),
            _ => Reply::Full(404, Vec::new()),
        });
        let sb = Sandbox::new();
        let mut h = helper(&sb, http(remote.url()), prefetch);
        let (answer, took) = timed_get(&mut h, 1, Id([7; 32]));
        assert_eq!(answer, serde_json::json!({"ID": 1, "Miss": true}));
        assert_bounded(&answer, took, GET_BOUND);
        let (status, stderr) = h.close();
        assert!(status.success(), "{stderr}");
        let s = stats(&sb.path("stats.json"));
        assert_eq!(
            (s.hits, s.misses, s.remote.remote_damaged, s.errors),
            (0, 1, 1, 0),
            "{s:?}"
        );
        assert!(entry_files(&sb.cache()) == 0, "nothing of it is stored");
    }
}

/// The batch answer a hostile server sends for the prefetch: `entries(i)`
/// is the i-th entry (action ID, then a zero length: missing), sent every
/// `every`.
fn batch_stream(every: Duration, entries: impl Fn(usize) -> Option<Id> + Send + 'static) -> Reply {
    Reply::Stream {
        every,
        next: Box::new(move |i| {
            let mut chunk = if i == 0 {
                granary_remote::pack::MAGIC.to_vec()
            } else {
                Vec::new()
            };
            chunk.extend_from_slice(&entries(i)?.0);
            chunk.extend_from_slice(&0u32.to_be_bytes());
            Some(chunk)
        }),
    }
}

/// A server whose manifest names `planned` as loose entries, whose batch
/// answer is `batch`, and which holds a sound entry for `wanted`.
fn batch_server(planned: Vec<Id>, wanted: Id, batch: fn() -> Reply) -> Hostile {
    let (manifest_path, manifest_entry) = manifest_entry(&manifest(
        &planned,
        &SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string(),
    ));
    let result = action_result(wanted, b"the output", SystemTime::now());
    Hostile::start(move |method, path| match (method, path) {
        ("GET", p) if p == manifest_path => Reply::Full(200, manifest_entry.clone()),
        ("GET", p) if p == ac_path(wanted) => Reply::Full(200, result.clone()),
        ("POST", "/batch") => batch(),
        ("PUT", _) => Reply::Full(200, Vec::new()),
        _ => Reply::Full(404, Vec::new()),
    })
}

/// A batch answer of entries nobody asked for, forever, once held a get
/// forever (the stall deadline was per entry, not per transfer). Such an
/// answer is damage; the get goes on to an ordinary lookup and hits.
#[test]
fn an_endless_batch_of_unrelated_entries_is_refused() {
    let wanted = Id([7; 32]);
    let remote = batch_server(vec![wanted], wanted, || {
        batch_stream(Duration::from_millis(100), |i| {
            Some(Id([(i % 200) as u8 + 20; 32]))
        })
    });
    let sb = Sandbox::new();
    let mut h = helper(&sb, http(remote.url()), true);
    let (answer, took) = timed_get(&mut h, 1, wanted);
    assert_eq!(answer["Size"], 10, "a hit through the lookup: {answer}");
    assert_bounded(&answer, took, GET_BOUND);
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("not asked for"), "{stderr}");
    let s = stats(&sb.path("stats.json"));
    assert_eq!(
        (s.remote.remote_hits, s.prefetch.prefetch_damaged, s.errors),
        (1, 1, 0),
        "{s:?}"
    );
    assert!(remote.requests().contains(&"POST /batch".to_owned()));
}

/// A batch that answers what was asked, in order, but each entry just
/// inside the per-read deadline: the 50th would come after 40 s. A get
/// waits for it --remote-timeout at most, then looks it up, and the wait
/// counts against the budget.
#[test]
fn a_trickling_batch_holds_a_get_no_longer_than_the_timeout() {
    let planned: Vec<Id> = (1..=50u8).map(|i| Id([i; 32])).collect();
    let wanted = Id([50; 32]);
    let remote = batch_server(planned, wanted, || {
        batch_stream(Duration::from_millis(800), |i| {
            (i < 50).then_some(Id([i as u8 + 1; 32]))
        })
    });
    let sb = Sandbox::new();
    let mut h = helper(&sb, http(remote.url()), true);
    let (answer, took) = timed_get(&mut h, 1, wanted);
    assert_eq!(answer["Size"], 10, "a hit through the lookup: {answer}");
    assert_bounded(&answer, took, GET_BOUND);
    assert!(
        took >= TIMEOUT,
        "it waited for the prefetch first: {took:?}"
    );
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    let s = stats(&sb.path("stats.json"));
    assert_eq!((s.remote.remote_hits, s.errors), (1, 0), "{s:?}");
    assert_eq!(s.remote.remote_off, "", "one timeout is within the budget");
}

/// The wait for the prefetch counts against --remote-budget: with a
/// budget below one timeout, the first get that gives up on a trickling
/// batch switches the remote off, and the next gets are local misses at
/// once.
#[test]
fn waits_for_the_prefetch_count_against_the_budget() {
    let planned: Vec<Id> = (1..=50u8).map(|i| Id([i; 32])).collect();
    let remote = batch_server(planned, Id([50; 32]), || {
        batch_stream(Duration::from_millis(800), |i| {
            (i < 50).then_some(Id([i as u8 + 1; 32]))
        })
    });
    let sb = Sandbox::new();
    let mut h = helper(
        &sb,
        |cmd| {
            cmd.env("GRANARY_REMOTE", remote.url())
                .env("GRANARY_REMOTE_BUDGET", "500ms");
        },
        true,
    );
    let (answer, took) = timed_get(&mut h, 1, Id([49; 32]));
    assert_eq!(answer["Miss"], true, "{answer}");
    assert_bounded(&answer, took, GET_BOUND);
    let (answer, took) = timed_get(&mut h, 2, Id([48; 32]));
    assert_eq!(answer["Miss"], true, "{answer}");
    assert!(
        took < Duration::from_millis(500),
        "the remote is off: {took:?}"
    );
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    let s = stats(&sb.path("stats.json"));
    assert!(s.remote.remote_off.contains("--remote-budget"), "{s:?}");
}

/// A bucket can lie as a server can: a manifest from beyond the end of
/// time and a record from the year 2554 (past what cmd/go's format holds)
/// are damage, answered as misses within the bound.
#[test]
fn a_bucket_with_times_out_of_range_costs_misses_only() {
    let s3 = S3Server::start();
    let blobs = s3.bucket("ci");
    put_blob(
        &*blobs,
        &Format::Granary.manifest_key("", SCOPE),
        manifest(&[Id([7; 32])], "18446744073709551615"),
    );
    let body = b"seven";
    let record = format!(
        "granary-ac 1 {} {} {} 18446744073709551615 inline\n",
        hex::encode([8; 32]),
        hex::encode(Sha256::digest(body)),
        body.len()
    );
    let mut record = record.into_bytes();
    record.extend_from_slice(&zstd::bulk::compress(body, 3).unwrap());
    put_blob(
        &*blobs,
        &Format::Granary.action_key("", &Id([8; 32])),
        record,
    );
    for prefetch in [true, false] {
        let sb = Sandbox::new();
        let mut h = helper(&sb, |cmd| s3.configure(cmd, "ci"), prefetch);
        for (id, action) in [(1, Id([7; 32])), (2, Id([8; 32]))] {
            let (answer, took) = timed_get(&mut h, id, action);
            assert_eq!(answer["Miss"], true, "{answer}");
            assert_bounded(&answer, took, GET_BOUND);
        }
        let (status, stderr) = h.finish();
        assert!(status.success(), "{stderr}");
        let s = stats(&sb.path("stats.json"));
        assert_eq!(s.remote.remote_damaged, 1, "the record: {s:?}");
        assert_eq!(
            s.prefetch.prefetch_damaged,
            u64::from(prefetch),
            "the manifest: {s:?}"
        );
        assert_eq!(entry_files(&sb.cache()), 0);
    }
}

/// A helper writing to `s3` under `prefix`, with time for SeaweedFS's
/// first writes, which create its volumes.
fn patient_writer(sb: &Sandbox, s3: &S3Server, prefix: &str) -> Helper {
    helper(
        sb,
        |cmd| {
            s3.configure(cmd, prefix);
            cmd.env("GRANARY_REMOTE_TIMEOUT", "30s")
                .env("GRANARY_UPLOAD_DEADLINE", "60s");
        },
        true,
    )
}

/// A helper reading and writing `s3` under `ci`, through `proxy`, with
/// the settings `extra`.
fn through(sb: &Sandbox, s3: &S3Server, proxy: &Proxy, extra: &[(&str, &str)]) -> Helper {
    helper(
        sb,
        |cmd| {
            s3.configure(cmd, "ci");
            cmd.env("GRANARY_S3_ENDPOINT", &proxy.endpoint)
                .envs(extra.iter().copied());
        },
        true,
    )
}

/// A pack that trickles in through a proxy, each entry in time for the
/// per-read deadline, the last after many seconds: a get of the last
/// waits for it no longer than the timeout, then finds its entry by an
/// ordinary lookup. (The S3 client's own deadline on a whole request
/// bounds this too; the batch test above is the one that needs the
/// prefetch's watchdog.)
#[test]
fn a_trickling_pack_holds_a_get_no_longer_than_the_timeout() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    // A writer publishes a manifest and a pack of 30 entries.
    let mut writer = patient_writer(&sb, &s3, "ci");
    for action in 1..=30u8 {
        let id = i64::from(action);
        let body = vec![action; 1000];
        writer.request(&put(id, action, &body), &body);
        assert!(writer.response()["DiskPath"].is_string());
    }
    let (status, stderr) = writer.close();
    assert!(status.success(), "{stderr}");
    let written = stats(&sb.path("stats.json"));
    assert_eq!(written.prefetch.packs_uploaded, 1, "{written:?}");

    let proxy = Proxy::start(&s3.endpoint, &["--fault", "trickle", "--only", "/packs/"]);
    let fresh = Sandbox::new();
    let mut h = through(&fresh, &s3, &proxy, &[]);
    let (answer, took) = timed_get(&mut h, 1, Id([30; 32]));
    assert_eq!(answer["Size"], 1000, "a hit through the lookup: {answer}");
    assert_bounded(&answer, took, GET_BOUND);
    assert!(took >= TIMEOUT, "it waited for the pack first: {took:?}");
    let (status, stderr) = h.finish();
    assert!(status.success(), "{stderr}");
    let s = stats(&fresh.path("stats.json"));
    assert_eq!((s.remote.remote_hits, s.errors), (1, 0), "{s:?}");
}

/// SeaweedFS, its volumes made (its first writes create them, which must
/// not count against the one-second timeout of these tests), behind a
/// proxy that never answers the upload of a pack.
fn stalling_pack_uploads() -> (S3Server, Proxy) {
    let sb = Sandbox::new();
    let s3 = S3Server::start();
    let mut warm = patient_writer(&sb, &s3, "warm");
    warm.request(&put(1, 1, b"warm"), b"warm");
    assert!(warm.response()["DiskPath"].is_string());
    let (status, stderr) = warm.close();
    assert!(status.success(), "{stderr}");
    let proxy = Proxy::start(&s3.endpoint, &["--fault", "stall", "--only", "/packs/"]);
    (s3, proxy)
}

/// Five puts through `h`.
fn put_five(h: &mut Helper) {
    for action in 1..=5u8 {
        let body = vec![action; 1000];
        h.request(&put(i64::from(action), action, &body), &body);
        assert!(h.response()["DiskPath"].is_string());
    }
}

/// The run's statistics and the bucket's one manifest, which names the
/// five entries and no pack: the pack's upload never ended.
fn published_without_pack(s3: &S3Server, stats_file: &std::path::Path) {
    let s = stats(stats_file);
    assert_eq!(
        (s.prefetch.packs_uploaded, s.prefetch.manifest_entries),
        (0, 5),
        "{s:?}"
    );
    let (_, manifest) = only_manifest(&*s3.bucket("ci"), "granary-v1/");
    assert!(
        manifest.groups.iter().all(|g| g.pack.is_none()),
        "{manifest:?}"
    );
}

/// A run that cannot detach (its log in the cache directory cannot be
/// opened) says why and closes as without --detach: it answers after its
/// uploads and manifest, and nothing is lost.
#[test]
fn a_close_that_cannot_detach_waits_and_says_why() {
    let remote = Hostile::start(|method, _| match method {
        "PUT" => Reply::Full(200, Vec::new()),
        _ => Reply::Full(404, Vec::new()),
    });
    let sb = Sandbox::new();
    fs::create_dir_all(sb.cache().join("granary-journal/detached.log")).unwrap();
    let url = remote.url();
    let mut h = helper(
        &sb,
        |cmd| {
            http(url)(cmd);
            cmd.env("GRANARY_DETACH", "true");
        },
        true,
    );
    put_five(&mut h);
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("cannot detach"), "{stderr}");
    let s = stats(&sb.path("stats.json"));
    assert_eq!(
        (s.remote.uploads, s.prefetch.manifest_entries),
        (5, 5),
        "{s:?}"
    );
    assert!(
        remote
            .requests()
            .iter()
            .any(|r| r.starts_with("PUT") && r.contains("ac/")),
        "{:?}",
        remote.requests()
    );
}

/// A store that never answers a pack's upload holds the close for about
/// one --remote-timeout: the manifest goes out beside the pack, then again
/// without it, and the manifest left names no pack.
#[test]
fn a_pack_upload_that_never_ends_holds_the_close_one_timeout() {
    let (s3, proxy) = stalling_pack_uploads();
    let fresh = Sandbox::new();
    let mut h = through(&fresh, &s3, &proxy, &[]);
    put_five(&mut h);
    let started = Instant::now();
    let (status, stderr) = h.close();
    let took = started.elapsed();
    assert!(status.success(), "{stderr}");
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(1500),
        "the close took {took:?}: {stderr}"
    );
    published_without_pack(&s3, &fresh.path("stats.json"));
}

/// With --detach the same stalled upload holds nothing: `close` is
/// answered and stdout and stderr end at once, as the go command and
/// whatever reads its output need, while the helper goes on publishing.
/// `granary stats` waits for it within its bound: one that gives up early
/// says so, one that waits long enough counts the run.
#[test]
fn a_detached_close_lets_the_go_command_go_and_publishes_after() {
    let (s3, proxy) = stalling_pack_uploads();
    let fresh = Sandbox::new();
    let mut h = through(&fresh, &s3, &proxy, &[("GRANARY_DETACH", "true")]);
    put_five(&mut h);
    let started = Instant::now();
    h.request(&granary_protocol::Request::Close { id: 999 }, &[]);
    assert_eq!(h.response(), serde_json::json!({"ID": 999}));
    drop(h.stdin.take());
    let mut rest = String::new();
    h.stdout.read_to_string(&mut rest).unwrap();
    let stderr = h.stderr();
    let let_go = started.elapsed();
    assert_eq!(rest, "", "nothing may follow the last answer");
    assert!(
        let_go < TIMEOUT / 2,
        "stdout and stderr ended {let_go:?} after the close: {stderr}"
    );
    assert!(h.child.try_wait().unwrap().is_none(), "still publishing");

    let stats_command = |wait: &str| {
        let mut cmd = Command::new(granary());
        without_granary_env(&mut cmd)
            .env("GRANARY_DIR", &h.cache)
            .args(["stats", "--json", "--wait", wait]);
        let began = Instant::now();
        let out = run_ok(&mut cmd);
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            began.elapsed(),
        )
    };
    let (impatient, took) = stats_command("100ms");
    assert!(
        impatient.contains("still publishing") && took < TIMEOUT / 2,
        "{took:?}: {impatient}"
    );
    let (patient, took) = stats_command("10s");
    let done = started.elapsed();
    assert!(
        patient.is_empty() && done >= TIMEOUT && took < Duration::from_secs(5),
        "waited {took:?}, {done:?} after the close: {patient}"
    );
    assert!(h.child.wait().unwrap().success());
    published_without_pack(&s3, &fresh.path("stats.json"));
}

/// A cache server that refuses the token: the advice names the token
/// settings, not a bucket's keys (it once gave S3 advice), read-only runs
/// included.
#[test]
fn a_server_refusing_the_token_gets_advice_about_tokens() {
    for read_only in [false, true] {
        let remote = Hostile::start(|_, _| Reply::Full(401, b"who are you?".to_vec()));
        let sb = Sandbox::new();
        let url = remote.url();
        let mut h = helper(
            &sb,
            |cmd| {
                cmd.env("GRANARY_REMOTE", url)
                    .env("GRANARY_READ_ONLY", read_only.to_string());
            },
            false,
        );
        let (answer, took) = timed_get(&mut h, 1, Id([7; 32]));
        assert_eq!(answer["Miss"], true, "{answer}");
        assert_bounded(&answer, took, GET_BOUND);
        let (status, stderr) = h.close();
        assert!(status.success(), "{stderr}");
        let off = stats(&sb.path("stats.json")).remote.remote_off;
        let scope = if read_only {
            "scope read"
        } else {
            "scope write"
        };
        assert!(
            off.starts_with("it refused our credentials; set GRANARY_TOKEN")
                && off.contains(scope)
                && off.contains("HTTP 401")
                && !off.contains("GRANARY_S3"),
            "{off}"
        );
        assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    }
}

/// `granary explain` reads its records from the remote; one that claims a
/// body larger than a record may be (a remote could answer a small lookup
/// with the promise of gigabytes) is refused on its record alone, and its
/// body is never asked for.
#[test]
fn an_explain_record_larger_than_a_record_may_be_is_not_fetched() {
    let endless = Id::of(b"an explain record that never ends");
    let record = ActionRecord {
        action: Id([0; 32]),
        output: endless,
        size: granary_explain::record::MAX_RECORD + 1,
        put_time: SystemTime::now(),
        placement: Placement::Object,
        build_time: None,
        signature: None,
    };
    let answer = granary_remote::reapi::encode(&record, None);
    let server = Hostile::start(move |method, path| match (method, path) {
        ("GET", p) if p.starts_with("/ac/") => Reply::Full(200, answer.clone()),
        ("GET", _) => Reply::Stream {
            every: Duration::from_millis(10),
            next: Box::new(|_| Some(vec![0; 64 * 1024])),
        },
        _ => Reply::Full(200, Vec::new()),
    });
    let sb = Sandbox::new();
    let started = Instant::now();
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .arg("explain")
        .args(["--dir", sb.path("cache").to_str().unwrap()])
        .args(["--remote", &server.url(), "--remote-timeout", "2s"])
        .args(["--", "go", "version"])
        .current_dir(sb.path(""));
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("more than a record may be"), "{stderr}");
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.contains("/ac/")),
        "the record was looked up: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("GET") && r.contains("/cas/")),
        "its body was asked for: {requests:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}
