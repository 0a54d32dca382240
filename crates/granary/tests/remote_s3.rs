//! The remote tier against a real S3 server (SeaweedFS on loopback), with
//! the real go command; faults come from scripts/s3_proxy.py in between.
//!
//! Two runners are two cache directories: they build the same module
//! directory, as two CI runners build the same checkout path.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::clouds::a_store_dying_mid_build_leaves_the_build_working;
use common::s3::{Proxy, S3Server, configure};
use common::*;

/// `go <args>` in `module` through granary, with `cache` as the local tier
/// and the remote set by `remote`.
fn go_remote(
    sb: &Sandbox,
    cache: &Path,
    module: &Path,
    stats: &Path,
    args: &[&str],
    remote: impl FnOnce(&mut Command),
) -> Command {
    let mut cmd = sb.go_granary(cache, module, stats, args);
    remote(&mut cmd);
    cmd
}

fn bin(sb: &Sandbox, name: &str) -> PathBuf {
    sb.path("bin").join(name)
}

fn build(
    sb: &Sandbox,
    cache: &str,
    module: &Path,
    out: &str,
    remote: impl FnOnce(&mut Command),
) -> (Stats, Output) {
    let stats_file = sb.path(&format!("{cache}-{out}.json"));
    let target = bin(sb, out);
    let output = run_ok(&mut go_remote(
        sb,
        &sb.path(cache),
        module,
        &stats_file,
        &["build", "-x", "-o", target.to_str().unwrap(), "."],
        remote,
    ));
    (stats(&stats_file), output)
}

#[test]
fn a_fresh_runner_gets_every_action_from_the_bucket() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("shared", 3);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci/linux");

    let (a, _) = build(&sb, "runner-a", &module, "a", remote);
    assert!(a.puts > 20 && a.remote.uploads == a.puts, "{a:?}");
    assert_eq!(a.remote.remote_misses, a.misses, "{a:?}");
    assert_eq!(
        (a.remote.uploads_dropped, a.remote.remote_errors),
        (0, 0),
        "{a:?}"
    );
    assert!(
        a.remote.remote_bytes_up < a.put_bytes / 2,
        "compressed: {a:?}"
    );
    let a_test = run_ok(&mut go_remote(
        &sb,
        &sb.path("runner-a"),
        &module,
        &sb.path("a-test.json"),
        &["test", "./..."],
        remote,
    ));
    assert!(!String::from_utf8_lossy(&a_test.stdout).contains("(cached)"));
    assert!(s3.keys("ci/linux", "ac") >= a.puts as usize);

    let (b, out) = build(&sb, "runner-b", &module, "b", remote);
    assert_eq!(compiled_packages(&out.stderr), Vec::<String>::new());
    assert!(b.misses <= 1, "only the link may miss: {b:?}");
    assert_eq!(b.remote.remote_hits, b.hits, "{b:?}");
    assert_eq!(b.remote.local_hits, 0);
    assert!(b.hits > 20 && b.remote.remote_bytes_down > 0, "{b:?}");
    assert_eq!(
        b.errors + b.corrupt_entries + b.remote.remote_errors + b.remote.remote_damaged,
        0,
        "{b:?}"
    );
    assert_eq!(
        fs::read(bin(&sb, "a")).unwrap(),
        fs::read(bin(&sb, "b")).unwrap()
    );

    // The test result travels too, and counts as cached: its put time
    // came along with it.
    let b_test = run_ok(&mut go_remote(
        &sb,
        &sb.path("runner-b"),
        &module,
        &sb.path("b-test.json"),
        &["test", "./..."],
        remote,
    ));
    let b_test_out = String::from_utf8_lossy(&b_test.stdout);
    assert!(b_test_out.contains("(cached)"), "{b_test_out}");
    assert_eq!(stats(&sb.path("b-test.json")).puts, 0);
    // Every action entry runner B fetched is byte for byte runner A's:
    // output ID, size and put time to the nanosecond. Only the entry of
    // the link that B redid (its one miss) has B's own put time.
    let b_actions = actions(&sb.path("runner-b"));
    assert!(b_actions.len() > 20);
    let mut redone = Vec::new();
    for entry in b_actions {
        let relative = entry.strip_prefix(sb.path("runner-b")).unwrap();
        let original =
            fs::read(sb.path("runner-a").join(relative)).expect("runner A has the entry");
        if fs::read(&entry).unwrap() != original {
            redone.push(relative.to_owned());
        }
    }
    assert!(
        redone.len() as u64 <= b.puts,
        "{redone:?} differ, but B put {}",
        b.puts
    );
    assert!(objects_with_wrong_hash(&sb.path("runner-b")).is_empty());
}

#[test]
fn read_only_runners_read_the_bucket_and_never_write_it() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let trusted = sb.module("trusted", 2);
    let untrusted = sb.module("untrusted", 2);
    let writable = |cmd: &mut Command| s3.configure(cmd, "shared");
    let read_only = |cmd: &mut Command| {
        s3.configure(cmd, "shared");
        cmd.env("GRANARY_READ_ONLY", "1");
    };
    build(&sb, "writer", &trusted, "w", writable);
    let keys = (s3.keys("shared", "ac"), s3.keys("shared", "cas"));
    assert!(keys.0 > 10 && keys.1 > 0, "{keys:?}");

    let (hits, _) = build(&sb, "reader", &trusted, "r1", read_only);
    assert!(hits.remote.remote_hits > 10, "{hits:?}");
    let (misses, _) = build(&sb, "reader", &untrusted, "r2", read_only);
    assert!(misses.puts > 10, "{misses:?}");
    assert_eq!(
        (
            misses.remote.uploads,
            misses.remote.uploads_dropped,
            misses.remote.remote_bytes_up
        ),
        (0, 0, 0)
    );
    assert_eq!(
        (s3.keys("shared", "ac"), s3.keys("shared", "cas")),
        keys,
        "the bucket is unchanged"
    );
}

#[test]
fn a_server_killed_mid_build_switches_the_remote_off_and_the_build_succeeds() {
    a_store_dying_mid_build_leaves_the_build_working(S3Server::start());
}

#[test]
fn wrong_credentials_give_one_warning_and_a_local_build() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("denied", 2);
    let (denied, out) = build(&sb, "cache", &module, "d", |cmd| {
        s3.configure(cmd, "denied");
        cmd.env("GRANARY_S3_SECRET_ACCESS_KEY", "not-the-secret");
    });
    let warnings = warnings(&out.stderr);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("refused our credentials")
            && warnings[0].contains("GRANARY_S3_SECRET_ACCESS_KEY"),
        "{warnings:?}"
    );
    assert!(
        denied.remote.remote_off.contains("credentials"),
        "{denied:?}"
    );
    assert!(denied.puts > 10 && denied.remote.uploads == 0, "{denied:?}");
    assert_eq!(s3.keys("denied", "ac"), 0);
    run_ok(&mut Command::new(bin(&sb, "d")));
}

#[test]
fn damaged_or_cut_bodies_are_misses_and_nothing_bad_is_kept() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("faults", 2);
    build(&sb, "source", &module, "source", |cmd| {
        s3.configure(cmd, "faults")
    });
    let expected = fs::read(bin(&sb, "source")).unwrap();

    for fault in ["flip", "short", "cut"] {
        let proxy = Proxy::start(&s3.endpoint, &["--fault", fault]);
        let cache = format!("cache-{fault}");
        let (seen, _) = build(&sb, &cache, &module, fault, |cmd| {
            configure(cmd, &proxy.endpoint, "faults")
        });
        assert_eq!(seen.remote.remote_hits, 0, "{fault}: {seen:?}");
        assert!(
            seen.remote.remote_damaged + seen.remote.remote_errors > 0,
            "{fault}: {seen:?}"
        );
        if fault != "cut" {
            assert!(seen.remote.remote_damaged > 0, "{fault}: {seen:?}");
        }
        assert_eq!(seen.errors, 0, "{fault}: {seen:?}");
        assert!(
            objects_with_wrong_hash(&sb.path(&cache)).is_empty(),
            "{fault}"
        );
        assert!(temporaries(&sb.path(&cache)).is_empty(), "{fault}");
        assert_eq!(fs::read(bin(&sb, fault)).unwrap(), expected, "{fault}");
    }
}

/// `granary prog` on `sb`'s cache, with the remote at `endpoint`/`prefix`
/// and the extra variables `env`.
fn helper(sb: &Sandbox, endpoint: &str, prefix: &str, env: &[(&str, &str)]) -> Helper {
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd);
    configure(&mut cmd, endpoint, prefix);
    cmd.envs(env.iter().copied());
    Helper::start_with(sb, cmd)
}

/// Puts `body` as the output of action `action` into the remote, through
/// a helper of its own.
fn seed(s3: &S3Server, prefix: &str, action: u8, body: &[u8]) {
    let sb = Sandbox::new();
    let mut writer = helper(&sb, &s3.endpoint, prefix, &[]);
    writer.request(&put(1, action, body), body);
    assert!(writer.response()["DiskPath"].is_string());
    let (seen, _) = close(writer);
    assert_eq!(seen.remote.uploads, 1);
}

/// Closes `helper`, which must exit cleanly, and returns the statistics
/// it wrote and its stderr.
fn close(helper: Helper) -> (Stats, String) {
    let path = helper.stats.clone();
    let (status, stderr) = helper.close();
    assert!(status.success(), "{stderr}");
    (stats(&path), stderr)
}

#[test]
fn concurrent_gets_of_one_action_fetch_it_once() {
    let s3 = S3Server::start();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    seed(&s3, "flight", 5, &body);
    // Each request takes 300 ms through the proxy, so the three gets
    // below all arrive while the first lookup is still running.
    let proxy = Proxy::start(&s3.endpoint, &["--delay-ms", "300"]);

    let alone = Sandbox::new();
    let mut one = helper(&alone, &proxy.endpoint, "flight", &[]);
    one.request(&get(1, 5), &[]);
    assert!(one.response()["DiskPath"].is_string());
    let single = close(one).0.remote.remote_bytes_down;
    assert!(single > 0);

    let together = Sandbox::new();
    let mut many = helper(&together, &proxy.endpoint, "flight", &[]);
    for id in 1..=3 {
        many.request(&get(id, 5), &[]);
    }
    let answers: Vec<_> = (0..3).map(|_| many.response()).collect();
    let (seen, _) = close(many);
    for answer in &answers {
        assert_eq!(answer["Size"], body.len());
        assert_eq!(answer["DiskPath"], answers[0]["DiskPath"]);
    }
    assert_eq!(
        fs::read(answers[0]["DiskPath"].as_str().unwrap()).unwrap(),
        body
    );
    assert_eq!((seen.hits, seen.remote.remote_hits), (3, 3), "{seen:?}");
    assert_eq!(seen.remote.remote_bytes_down, single, "one fetch: {seen:?}");
}

#[test]
fn uploads_left_at_the_deadline_are_dropped_and_counted() {
    let s3 = S3Server::start();
    let proxy = Proxy::start(&s3.endpoint, &["--delay-ms", "3000"]);
    let sb = Sandbox::new();
    let mut slow = helper(
        &sb,
        &proxy.endpoint,
        "deadline",
        &[("GRANARY_UPLOAD_DEADLINE", "300ms")],
    );
    for id in 1..=3u8 {
        let body = vec![id; 1000];
        slow.request(&put(id.into(), id, &body), &body);
        assert!(
            slow.response()["DiskPath"].is_string(),
            "answered before the upload"
        );
    }
    let (seen, stderr) = close(slow);
    assert_eq!(
        (seen.puts, seen.remote.uploads, seen.remote.uploads_dropped),
        (3, 0, 3),
        "{seen:?}"
    );
    assert!(
        stderr.contains("3 uploads") && stderr.contains("--upload-deadline"),
        "{stderr}"
    );
}

#[test]
fn slow_remotes_are_switched_off_by_the_deadline_or_the_budget() {
    let s3 = S3Server::start();
    let proxy = Proxy::start(&s3.endpoint, &["--delay-ms", "1000"]);
    let sequential_misses = |helper: &mut Helper, n: i64| {
        for id in 1..=n {
            helper.request(&get(id, id as u8), &[]);
            assert_eq!(helper.response()["Miss"], true);
        }
    };

    // Every lookup outlives its deadline: five in a row switch it off,
    // and the rest are plain misses.
    let sb = Sandbox::new();
    let mut timed = helper(
        &sb,
        &proxy.endpoint,
        "slow",
        &[("GRANARY_REMOTE_TIMEOUT", "200ms")],
    );
    sequential_misses(&mut timed, 7);
    let (seen, stderr) = close(timed);
    assert_eq!((seen.misses, seen.remote.remote_errors), (7, 5), "{seen:?}");
    assert!(
        seen.remote
            .remote_off
            .contains("5 requests failed in a row"),
        "{seen:?}"
    );
    let off = &seen.remote.remote_off;
    assert!(
        off.contains("timed out") || off.contains("--remote-timeout"),
        "{off}"
    );
    assert_eq!(warnings(stderr.as_bytes()).len(), 1, "{stderr}");

    // Each lookup answers, a miss, but slowly (at least 1 s): the budget
    // holds one and runs out on the second, whatever the machine's load.
    let sb = Sandbox::new();
    let mut budget = helper(
        &sb,
        &proxy.endpoint,
        "slow",
        &[("GRANARY_REMOTE_BUDGET", "1900ms")],
    );
    sequential_misses(&mut budget, 4);
    let (seen, _) = close(budget);
    assert_eq!(
        (
            seen.misses,
            seen.remote.remote_misses,
            seen.remote.remote_errors
        ),
        (4, 2, 0),
        "{seen:?}"
    );
    assert!(
        seen.remote.remote_off.contains("--remote-budget"),
        "{seen:?}"
    );
    // With the prefetch on, the manifest's read times out too: the first
    // get waits for it (one deadline), and it counts towards switching off.
    let sb = Sandbox::new();
    let mut prefetching = helper(
        &sb,
        &proxy.endpoint,
        "slow",
        &[
            ("GRANARY_REMOTE_TIMEOUT", "200ms"),
            ("GRANARY_PREFETCH", "true"),
        ],
    );
    let started = std::time::Instant::now();
    sequential_misses(&mut prefetching, 7);
    let took = started.elapsed();
    let (seen, stderr) = close(prefetching);
    assert_eq!((seen.misses, seen.remote.remote_errors), (7, 5), "{seen:?}");
    assert!(
        seen.remote
            .remote_off
            .contains("5 requests failed in a row"),
        "{seen:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(warnings(stderr.as_bytes()).len(), 1, "{stderr}");
}
