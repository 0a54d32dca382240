//! `granary du`, `trim`, `prune` and `stats` as users run them, the
//! background trim of `prog`, and trims racing with processes that use the
//! cache.
#![cfg(unix)] // it sets file modes; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use granary_id::Id;
use granary_protocol::Request;
use granary_store::{Store, TRIM_MARKER};
use serde_json::Value;

use common::server::Server;
use common::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `granary --dir <cache> <args>`, untouched by the caller's GRANARY_* variables.
fn granary_in(cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .arg("--dir")
        .arg(cache)
        .args(args);
    cmd
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "granary failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// An entry with a distinct body, last used `age` ago; returns its action
/// ID, object path and body.
fn entry(store: &Store, n: u32, age: Duration) -> (Id, PathBuf, Vec<u8>) {
    let mut id = [0; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[4] = 0xa5;
    let action = Id(id);
    let body = format!("body of entry {n}").repeat(20).into_bytes();
    let stored = store.put_bytes(&action, &body).unwrap();
    let used = SystemTime::now() - age;
    set_mtime(&store.action_path(&action), used);
    set_mtime(&stored.object, used);
    (action, stored.object, body)
}

#[test]
fn du_reports_sizes_ages_and_what_a_trim_would_free() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    let fresh: Vec<_> = (0..4).map(|n| entry(&store, n, Duration::ZERO)).collect();
    (4..7).for_each(|n| drop(entry(&store, n, 2 * DAY)));
    (7..9).for_each(|n| drop(entry(&store, n, 10 * DAY)));
    fs::remove_dir_all(cache.join("granary-tmp")).unwrap();

    let report = json(&granary_in(&cache, &["du", "--json"]).output().unwrap());
    assert_eq!(report["actions"]["files"], 9);
    assert_eq!(report["objects"]["files"], 9);
    assert_eq!(report["total"]["files"], 18);
    let by_age: Vec<u64> = report["by_age"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["files"].as_u64().unwrap())
        .collect();
    assert_eq!(by_age, [8, 0, 6, 4, 0]);
    assert_eq!(
        report["would_free"]["files"], 4,
        "the default max-age is 5 days"
    );
    assert_eq!(report["policy"]["max_age_secs"], 5 * 24 * 3600);
    assert_eq!(report["policy"]["max_size"], Value::Null);
    assert!(report["total"]["bytes"].as_u64().unwrap() >= 18 * 4096 / 2);

    let report = json(
        &granary_in(&cache, &["du", "--json", "--max-age=1d"])
            .output()
            .unwrap(),
    );
    assert_eq!(report["would_free"]["files"], 10);
    let report = json(
        &granary_in(&cache, &["du", "--json", "--max-size=0"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        report["would_free"]["files"], 10,
        "not what is in the grace window"
    );
    assert!(report["shortfall_bytes"].as_u64().unwrap() > 0);

    let human = granary_in(&cache, &["du", "-v"]).output().unwrap();
    let human = text(&human);
    assert!(human.contains("9 action records"), "{human}");
    assert!(human.contains("a trim now would free"), "{human}");
    assert!(human.contains("largest objects"), "{human}");
    assert!(human.contains(fresh[0].1.to_str().unwrap()), "{human}");
    assert!(
        !cache.join("granary-tmp").exists(),
        "du must not write to the cache"
    );

    let missing = granary_in(&sb.path("nowhere"), &["du"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(text(&missing).contains("not a cache directory"));
}

#[test]
fn trim_applies_flags_variables_and_the_config_file() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    let fresh: Vec<_> = (0..3).map(|n| entry(&store, n, Duration::ZERO)).collect();
    let old: Vec<_> = (3..8)
        .map(|n| entry(&store, n, 2 * DAY + n * 3600 * Duration::from_secs(1)))
        .collect();

    let dry = json(
        &granary_in(&cache, &["trim", "--dry-run", "--max-age=1d", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(dry["selected"]["files"], 10);
    assert_eq!(dry["removed"]["files"], 0);
    assert_eq!(entry_files(&cache), 16, "a dry run removes nothing");
    assert!(!cache.join(TRIM_MARKER).exists());

    // The config file sets max-age; a flag overrides it.
    fs::write(cache.join("granary.toml"), "max-age = \"1d\"\n").unwrap();
    let overridden = json(
        &granary_in(&cache, &["trim", "--max-age=none", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(overridden["removed"]["files"], 0);
    // A variable sets a ceiling that holds about two old entries more than the fresh ones.
    let before = json(&granary_in(&cache, &["du", "--json"]).output().unwrap());
    let per_entry = before["total"]["bytes"].as_u64().unwrap() / 8;
    let ceiling = 5 * per_entry + per_entry / 2;
    let trimmed = json(
        &granary_in(&cache, &["trim", "--max-age=none", "--json"])
            .env("GRANARY_MAX_SIZE", ceiling.to_string())
            .output()
            .unwrap(),
    );
    assert_eq!(
        trimmed["removed"]["files"], 6,
        "the three least recently used"
    );
    let gone: Vec<bool> = old.iter().map(|(_, o, _)| !o.exists()).collect();
    assert_eq!(
        gone,
        [false, false, true, true, true],
        "least recently used first"
    );
    assert!(cache.join(TRIM_MARKER).exists());

    // Now the file's max-age applies.
    let human = text(&granary_in(&cache, &["trim"]).output().unwrap());
    assert!(human.contains("removed 4 files"), "{human}");
    assert!(fresh.iter().all(|(_, o, _)| o.exists()));
    assert_eq!(entry_files(&cache), 6);

    fs::write(cache.join("granary.toml"), "max-size = \"lots\"\n").unwrap();
    let broken = granary_in(&cache, &["trim"]).output().unwrap();
    assert!(!broken.status.success());
    assert!(
        text(&broken).contains("key max-size of"),
        "{}",
        text(&broken)
    );
}

#[test]
fn trim_if_due_runs_once_per_interval_and_after_a_bad_marker() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    entry(&store, 1, 9 * DAY);
    let due = |cache: &Path| {
        json(
            &granary_in(cache, &["trim", "--if-due", "--trim-interval=1h", "--json"])
                .output()
                .unwrap(),
        )
    };
    let first = due(&cache);
    assert_eq!(first["removed"]["files"], 2);
    entry(&store, 2, 9 * DAY);
    assert_eq!(due(&cache)["due"], false, "trimmed a moment ago");
    assert_eq!(entry_files(&cache), 2);
    fs::write(cache.join(TRIM_MARKER), "not a time\n").unwrap();
    assert_eq!(due(&cache)["removed"]["files"], 2);
    assert_eq!(entry_files(&cache), 0);
}

#[test]
fn prune_removes_all_or_older_but_keeps_the_grace_window() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    // Last used two seconds ago: `--grace 0s` keeps only what was used
    // within the current second.
    (0..2).for_each(|n| drop(entry(&store, n, Duration::from_secs(2))));
    (2..4).for_each(|n| drop(entry(&store, n, 5 * 3600 * Duration::from_secs(1))));
    (4..6).for_each(|n| drop(entry(&store, n, 3 * DAY)));

    let older = json(
        &granary_in(&cache, &["prune", "--older-than=2d", "--force", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(older["removed"]["files"], 4);
    // Not on a terminal: no question.
    let all = granary_in(&cache, &["prune", "--all"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all_text = text(&all);
    assert!(all.status.success(), "{all_text}");
    assert!(all_text.contains("removed 4 files"), "{all_text}");
    assert!(
        all_text.contains("kept 4 files used within the grace window"),
        "{all_text}"
    );
    let everything = json(
        &granary_in(&cache, &["prune", "--all", "--grace=0s", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(everything["removed"]["files"], 4);
    assert_eq!(entry_files(&cache), 0);

    let neither = granary_in(&cache, &["prune"]).output().unwrap();
    assert_eq!(neither.status.code(), Some(2));
    assert!(text(&neither).contains("--all"), "{}", text(&neither));
}

/// Runs `granary` on a pseudo-terminal (through Python's pty module, which
/// every machine that runs these tests has), answers its question with
/// `answer`, and returns its exit code and everything it printed.
fn on_terminal(cache: &Path, args: &[&str], answer: &str) -> (i32, String) {
    const DRIVER: &str = r#"
import os, pty, sys
answer = sys.argv[1].encode()
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
seen = b""
while b"[y/N]" not in seen:
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    seen += chunk
os.write(fd, answer + b"\n")
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(DRIVER)
        .arg(answer)
        .arg(granary())
        .arg("--dir")
        .arg(cache)
        .args(args);
    let out = without_granary_env(&mut cmd)
        .output()
        .expect("python3 runs (it is needed to make a terminal)");
    (out.status.code().unwrap_or(-1), text(&out))
}

#[cfg(unix)]
#[test]
fn prune_asks_on_a_terminal_unless_forced() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    (0..3).for_each(|n| drop(entry(&store, n, 3 * DAY)));

    let (code, out) = on_terminal(&cache, &["prune", "--all"], "n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Remove 6 files"), "{out}");
    assert!(out.contains("nothing removed"), "{out}");
    assert_eq!(entry_files(&cache), 6);

    let (code, out) = on_terminal(&cache, &["prune", "--all"], "y");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed 6 files"), "{out}");
    assert_eq!(entry_files(&cache), 0);
}

#[test]
fn stats_shows_the_runs_prog_recorded() {
    let sb = Sandbox::new();
    let none = text(&granary_in(&sb.cache(), &["stats"]).output().unwrap());
    assert!(none.contains("no runs recorded yet"), "{none}");

    let mut helper = Helper::start(&sb);
    for (id, body) in [(1, &b"one"[..]), (2, b"two")] {
        helper.request(&put(id, id as u8, body), body);
        assert!(helper.response()["DiskPath"].is_string());
    }
    for (id, action) in [(3, 1), (4, 2), (5, 9)] {
        helper.request(&get(id, action), &[]);
        helper.response();
    }
    assert!(helper.close().0.success());
    let mut helper = Helper::start(&sb);
    helper.request(&get(1, 1), &[]);
    helper.response();
    assert!(helper.close().0.success());
    // A run that served nothing is not recorded.
    assert!(Helper::start(&sb).close().0.success());

    let report = json(
        &granary_in(&sb.cache(), &["stats", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(report["total"]["runs"], 2);
    assert_eq!(report["total"]["gets"], 4);
    assert_eq!(report["total"]["hits"], 3);
    assert_eq!(report["total"]["puts"], 2);
    assert_eq!(report["runs"][0]["misses"], 1);
    assert_eq!(report["by_day"].as_object().unwrap().len(), 1);
    let human = text(
        &granary_in(&sb.cache(), &["stats", "--last=1"])
            .output()
            .unwrap(),
    );
    assert!(human.contains("last 1 of 2 runs"), "{human}");
    assert!(human.contains("75.0%"), "{human}");
}

/// The job summary of a fresh CI runner's two builds through a cache
/// server: the first all prefetched, the second after a change, whose
/// misses are rebuilt and tell what a hit saves.
#[test]
fn stats_in_markdown_sum_up_a_job_by_tier_with_the_time_saved() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let module = sb.module("job", 3);
    sb.build_sharing(&server.url, "filler", &module, &[]);
    let (_, first) = sb.build_sharing(&server.url, "runner", &module, &[]);
    let p1 = module.join("p1/p1.go");
    let source = fs::read_to_string(&p1).unwrap();
    fs::write(&p1, source.replace("job-p1", "changed-p1")).unwrap();
    age_tree(&module, Duration::from_secs(2 * 3600));
    let (out, second) = sb.build_sharing(&server.url, "runner", &module, &[]);
    assert!(!compiled_packages(&out.stderr).is_empty());
    assert!(
        first.prefetch.prefetch_used > 10 && second.misses > 0,
        "{first:?} {second:?}"
    );
    // The filler's records carry what each output took it to build (not
    // the subkeys go puts beside an action's output, such as its stdout:
    // they took no time of their own).
    assert!(
        first.saved_hits * 2 > first.hits && first.saved_ms > 0,
        "{first:?}"
    );

    let summary = text(
        &granary_in(
            &sb.path("runner"),
            &["stats", "--markdown", "--since", "1h"],
        )
        .output()
        .unwrap(),
    );
    let gets = first.gets + second.gets;
    let hits = first.hits + second.hits;
    let prefetched = first.prefetch.prefetch_used + second.prefetch.prefetch_used;
    let remote = first.remote.remote_hits + second.remote.remote_hits;
    let local = hits - prefetched - remote;
    let misses = first.misses + second.misses;
    assert!(summary.contains("in 2 runs"), "{summary}");
    let row = format!("| {gets} | {hits} (");
    assert!(summary.contains(&row), "{row} in {summary}");
    for cell in [
        format!("| {local} ("),
        format!("| {prefetched} ("),
        format!("| {remote} ("),
        format!("| {misses} |"),
    ] {
        assert!(summary.contains(&cell), "{cell} in {summary}");
    }
    assert!(summary.contains("**Saved**: about"), "{summary}");
    assert!(
        summary.contains("as measured where they were built"),
        "{summary}"
    );
    assert!(summary.contains(&server.url) && summary.contains("never switched off"));
    assert!(
        summary.contains("**Untrusted records**: none."),
        "{summary}"
    );
    assert_eq!(
        summary.matches("\n| 20").count(),
        2,
        "a row per run: {summary}"
    );

    let later = text(
        &granary_in(
            &sb.path("runner"),
            &["stats", "--markdown", "--since", "2099-01-01T00:00:00Z"],
        )
        .output()
        .unwrap(),
    );
    assert!(later.contains("No runs recorded in this period"), "{later}");
    let both = granary_in(&sb.path("runner"), &["stats", "--markdown", "--json"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    let bad = granary_in(&sb.path("runner"), &["stats", "--since", "yesterday-ish"])
        .output()
        .unwrap();
    assert!(text(&bad).contains("RFC 3339"), "{}", text(&bad));
}

#[test]
fn an_unwritable_history_does_not_fail_the_run() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.cache().join("granary-stats.jsonl")).unwrap();
    let mut helper = Helper::start(&sb);
    helper.request(&put(1, 1, b"body"), b"body");
    assert!(helper.response()["DiskPath"].is_string());
    let stats_file = helper.stats.clone();
    let (status, stderr) = helper.close();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stats(&stats_file).puts,
        1,
        "the stats file is still written"
    );
    let report = granary_in(&sb.cache(), &["stats"]).output().unwrap();
    assert!(
        !report.status.success(),
        "a history that is a directory is an error to read"
    );
    assert!(
        text(&report).contains("granary-stats.jsonl"),
        "{}",
        text(&report)
    );
}

/// Waits until a background trim has finished: its marker is written and
/// its lock released.
fn wait_for_background_trim(cache: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = Store::at(cache);
    loop {
        if cache.join(TRIM_MARKER).exists() && store.try_lock_trimmer().unwrap().is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no background trim finished in 60 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prog_trims_in_the_background_when_due_and_only_then() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    let (used, used_object, _) = entry(&store, 1, 9 * DAY);
    let (_, unused_object, _) = entry(&store, 2, 9 * DAY);
    let (_, fresh_object, _) = entry(&store, 3, Duration::ZERO);

    // A verbose `prog` with background trims due hourly, asked for `used`.
    let run_using = |action: Id| {
        let mut cmd = Command::new(granary());
        cmd.env("GRANARY_TRIM_INTERVAL", "1h")
            .env("GRANARY_VERBOSE", "1");
        let mut helper = Helper::start_with(&sb, cmd);
        helper.request(
            &Request::Get {
                id: 1,
                action_id: action,
            },
            &[],
        );
        assert!(helper.response()["DiskPath"].is_string());
        let (status, stderr) = helper.close();
        assert!(status.success(), "{stderr}");
        stderr
    };
    let stderr = run_using(used);
    assert!(
        stderr.contains("trimming the cache in the background"),
        "{stderr}"
    );
    wait_for_background_trim(&cache);
    assert!(used_object.exists(), "used in this run");
    assert!(!unused_object.exists(), "nine days unused");
    assert!(fresh_object.exists());

    // Trimmed a moment ago: the next run starts no trim.
    let (_, old_object, _) = entry(&store, 4, 9 * DAY);
    let stderr = run_using(used);
    assert!(!stderr.contains("trimming"), "{stderr}");
    assert!(old_object.exists());

    // A broken config file: the run goes on, says why, and trims nothing.
    fs::remove_file(cache.join(TRIM_MARKER)).unwrap();
    fs::write(cache.join("granary.toml"), "max-age = \"ages\"\n").unwrap();
    let stderr = run_using(used);
    assert!(
        stderr.contains("will not be trimmed until this is fixed"),
        "{stderr}"
    );
    assert!(!cache.join(TRIM_MARKER).exists());
}

/// Two `granary trim` processes race each other and a `granary prog` that
/// looks up every entry: the trims each remove a share, with no error and
/// no file counted twice, and every path the helper handed out still holds
/// its bytes afterwards.
#[test]
fn concurrent_trims_never_remove_a_file_twice_or_what_was_just_used() {
    const ENTRIES: u32 = 3000;
    let mut overlapped = false;
    for round in 0..5 {
        let sb = Sandbox::new();
        let cache = sb.cache();
        let store = Store::open(&cache).unwrap();
        let entries: Vec<_> = (0..ENTRIES).map(|n| entry(&store, n, 10 * DAY)).collect();

        let mut helper = Helper::start(&sb);
        let trims: Vec<_> = (0..2)
            .map(|_| {
                granary_in(&cache, &["trim", "--max-size=0", "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let (mut hits, mut misses) = (Vec::new(), 0);
        for (i, (action, _, body)) in entries.iter().enumerate() {
            helper.request(
                &Request::Get {
                    id: i as i64 + 1,
                    action_id: *action,
                },
                &[],
            );
            match helper.response()["DiskPath"].as_str() {
                Some(path) => hits.push((PathBuf::from(path), body)),
                None => misses += 1,
            }
        }
        let removed: u64 = trims
            .into_iter()
            .map(|trim| {
                json(&trim.wait_with_output().unwrap())["removed"]["files"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert!(helper.close().0.success());

        for (path, body) in &hits {
            assert_eq!(
                fs::read(path).ok().as_ref(),
                Some(*body),
                "{} was handed out and then removed",
                path.display()
            );
        }
        let left = entry_files(&cache) as u64;
        assert_eq!(
            removed + left,
            2 * u64::from(ENTRIES),
            "a file counted twice or lost"
        );
        eprintln!(
            "round {round}: {} hits, {misses} misses, {removed} removed",
            hits.len()
        );
        if !hits.is_empty() && misses > 0 {
            overlapped = true;
            break;
        }
    }
    assert!(
        overlapped,
        "the lookups never overlapped the trims' removals"
    );
}

/// Real builds while a trim with a one-byte ceiling loops: the builds
/// succeed, their binaries work, the trims did remove the old entries, and
/// what the builds wrote or used is still there for the next build.
#[test]
fn builds_succeed_while_a_trim_loops_with_a_tiny_ceiling() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let old_module = sb.module("oldmod", 3);
    let new_module = sb.module("newmod", 3);
    let stats = sb.path("stats.json");
    run_ok(&mut sb.go_granary(
        &cache,
        &old_module,
        &stats,
        &["build", "-o", "../bin/old", "."],
    ));
    // Everything in the cache is ten days old now; the next builds use part of it.
    age_tree(&cache, 10 * DAY);
    let old_files = entry_files(&cache);

    let stop = Arc::new(AtomicBool::new(false));
    let trimmer = {
        let (stop, cache) = (stop.clone(), cache.clone());
        thread::spawn(move || {
            let (mut passes, mut removed) = (0, 0);
            while !stop.load(Ordering::Relaxed) || passes == 0 {
                let report = json(
                    &granary_in(&cache, &["trim", "--max-size=1", "--json"])
                        .output()
                        .unwrap(),
                );
                removed += report["removed"]["files"].as_u64().unwrap();
                passes += 1;
            }
            (passes, removed)
        })
    };
    let builds: Vec<_> = [
        (old_module.clone(), vec!["build", "-o", "../bin/old", "."]),
        (new_module.clone(), vec!["build", "-o", "../bin/new", "."]),
        (new_module.clone(), vec!["test", "./..."]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (dir, args))| {
        let stats = sb.path(&format!("stats-{i}.json"));
        let mut cmd = sb.go_granary(&cache, &dir, &stats, &args);
        thread::spawn(move || run_ok(&mut cmd))
    })
    .collect();
    for build in builds {
        build.join().expect("a build failed while trims ran");
    }
    stop.store(true, Ordering::Relaxed);
    let (passes, removed) = trimmer.join().unwrap();
    eprintln!("{passes} trim passes removed {removed} of {old_files} old files");
    assert!(removed > 0, "the trims removed nothing");

    for (bin, name) in [("old", "OLDMOD"), ("new", "NEWMOD")] {
        let out = run_ok(&mut Command::new(sb.path("bin").join(bin)));
        assert!(String::from_utf8_lossy(&out.stdout).contains(name));
    }
    assert!(objects_with_wrong_hash(&cache).is_empty());
    // What the builds wrote is inside the grace window: the next build of
    // the new module compiles nothing.
    let again = run_ok(&mut sb.go_granary(
        &cache,
        &new_module,
        &stats,
        &["build", "-x", "-o", "../bin/new", "."],
    ));
    assert_eq!(compiled_packages(&again.stderr), Vec::<String>::new());
}

/// A cache directory may be shared or writable by others: a subdirectory
/// or an entry that is a link to a folder elsewhere is never followed by
/// `verify --repair`, `trim` or `prune`, which would delete there the
/// files named like entries (and a directory named like an executable
/// entry, whole).
#[test]
fn maintenance_never_follows_a_link_out_of_the_cache() {
    let sb = Sandbox::new();
    let cache = sb.cache();
    let store = Store::open(&cache).unwrap();
    let (_, kept_object, _) = entry(&store, 1, 3 * DAY);
    // Elsewhere: what a link in the cache leads to, named like entries,
    // old, and damaged (an action file that parses as nothing).
    let elsewhere = sb.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let name = |suffix: &str| format!("fe{}{suffix}", "ab".repeat(31));
    let victims = [
        elsewhere.join(name("-a")),
        elsewhere.join(name("-d")),
        elsewhere.join(format!("fd{}-d", "ab".repeat(31))),
    ];
    fs::write(&victims[0], b"not an action entry").unwrap();
    fs::write(&victims[1], b"an object that hashes to nothing").unwrap();
    // An executable entry's shape: a directory holding one file.
    fs::create_dir_all(&victims[2]).unwrap();
    fs::write(victims[2].join("tool"), b"precious").unwrap();
    for victim in &victims {
        set_mtime(victim, SystemTime::now() - 30 * DAY);
    }
    // `fe/` as a link to the folder, and in `fd/` an entry that is a link
    // to the directory.
    fs::remove_dir_all(cache.join("fe")).ok();
    std::os::unix::fs::symlink(&elsewhere, cache.join("fe")).unwrap();
    fs::create_dir_all(cache.join("fd")).unwrap();
    let linked_entry = cache.join("fd").join(format!("fd{}-d", "cd".repeat(31)));
    std::os::unix::fs::symlink(&victims[2], linked_entry).unwrap();
    let commands: [&[&str]; 4] = [
        &["verify", "--repair"],
        &["trim", "--max-age", "1d", "--grace=0s"],
        &["trim", "--max-size", "1", "--grace=0s"],
        &["prune", "--all", "--grace=0s", "--force"],
    ];
    for args in commands {
        let out = granary_in(&cache, args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        for victim in &victims {
            assert!(
                victim.exists(),
                "granary {args:?} deleted {} outside the cache: {}",
                victim.display(),
                text(&out)
            );
        }
        assert!(victims[2].join("tool").exists(), "granary {args:?}");
    }
    // The cache's own entries went as usual.
    assert!(
        !kept_object.exists(),
        "prune --all removes the real entries"
    );
    assert!(
        cache.join("fe").is_symlink(),
        "the link itself is left alone"
    );
}

/// A CI job starts many go commands, some at once (a linter's, vet's,
/// the tests'), each with a helper of its own; `--stats-file` is one
/// helper's. The job's view is the history, to which every helper appends
/// at close under a lock: `granary stats --since` sums all of them, which
/// is what the job summary shows.
#[test]
fn the_history_sums_every_helper_of_a_job_written_at_once() {
    let sb = Sandbox::new();
    let module = sb.module("job", 3);
    let cache = sb.path("job-cache");
    let commands: [&[&str]; 4] = [
        &["build", "./..."],
        &["vet", "./..."],
        &["test", "./..."],
        &["list", "-export", "./..."],
    ];
    let gets: u64 = thread::scope(|scope| {
        let runs: Vec<_> = commands
            .iter()
            .enumerate()
            .map(|(n, args)| {
                let (sb, module, cache) = (&sb, &module, &cache);
                scope.spawn(move || {
                    let stats_file = sb.path(&format!("helper-{n}.json"));
                    run_ok(&mut sb.go_granary(cache, module, &stats_file, args));
                    stats(&stats_file).gets
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).sum()
    });
    let report = json(
        &granary_in(&cache, &["stats", "--json", "--since", "1h"])
            .output()
            .unwrap(),
    );
    assert_eq!(report["total"]["runs"], commands.len(), "{report}");
    assert_eq!(report["total"]["gets"], gets, "{report}");
    assert_eq!(report["unreadable_lines"], 0, "{report}");
}
