//! `granary explain` with the real go command, git and `granary serve`: a
//! fresh runner reads another runner's records from the remote and names
//! what changed (a source file, a file a test reads, a variable, a flag).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::server::Server;
use common::*;

/// A repository of a module: a library, and a test that reads a file and
/// a variable.
fn origin(sb: &Sandbox) -> PathBuf {
    let repo = sb.path("origin");
    fs::create_dir_all(repo.join("lib")).unwrap();
    fs::create_dir_all(repo.join("reads/testdata")).unwrap();
    fs::write(
        repo.join("go.mod"),
        "module example.com/explain\n\ngo 1.24\n",
    )
    .unwrap();
    fs::write(
        repo.join("lib/lib.go"),
        "package lib\n\nfunc Answer() int { return 42 }\n",
    )
    .unwrap();
    fs::write(
        repo.join("reads/reads.go"),
        "package reads\n\nimport \"example.com/explain/lib\"\n\nfunc Twice() int { return 2 * lib.Answer() }\n",
    )
    .unwrap();
    fs::write(
        repo.join("reads/reads_test.go"),
        r#"package reads

import (
	"os"
	"testing"
)

func TestReads(t *testing.T) {
	data, err := os.ReadFile("testdata/input.txt")
	if err != nil || len(data) == 0 {
		t.Fatal(err)
	}
	t.Logf("flavour %q, input %s, twice %d", os.Getenv("EXPLAIN_FLAVOUR"), data, Twice())
}

func TestOther(t *testing.T) {}
"#,
    )
    .unwrap();
    fs::write(repo.join("reads/testdata/input.txt"), "original\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a module"]);
    repo
}

/// A fresh checkout of `origin` at `path`, with canonical times.
fn checkout(origin: &Path, path: &Path) {
    fresh_clone(origin, path);
    run_ok(Command::new(granary()).arg("mtimes").arg(path));
}

/// `granary explain FLAGS -- go ARGS` in `dir` by a runner whose local tier
/// is `cache`, with `envs` set.
fn explain(
    sb: &Sandbox,
    cache: &str,
    dir: &Path,
    flags: &[&str],
    go_args: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let cache = sb.path(cache);
    let mut cmd = Command::new(granary());
    sb.go_environment(&mut cmd, &cache);
    cmd.arg("explain")
        .args(flags)
        .arg("--")
        .arg(go())
        .args(go_args)
        .current_dir(dir)
        .env("GRANARY_TRIM_INTERVAL", "none")
        .envs(envs.iter().copied());
    run_ok(&mut cmd)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_fresh_runner_is_told_what_changed_since_another_runners_run() {
    let sb = Sandbox::new();
    let origin = origin(&sb);
    let server = Server::start(&[]);
    let (secret, public) = {
        let secret = sb.path("main.key");
        run_ok(
            Command::new(granary())
                .args(["key", "generate"])
                .arg(&secret),
        );
        (secret, sb.path("main.key.pub"))
    };
    let work = sb.path("runner/src");
    let main_flags = [
        "--remote",
        &server.url,
        "--namespace",
        "main",
        "--signing-key",
        secret.to_str().unwrap(),
    ];

    // Runner A, on main: every action runs, and is recorded.
    checkout(&origin, &work);
    let a = explain(&sb, "a", &work, &main_flags, &["test", "./..."], &[]);
    let text = stderr(&a);
    assert!(
        text.contains("have no recorded run to compare with"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("ok  \texample.com/explain/reads"),
        "go's own output is passed on: {a:?}"
    );

    // Runner B, the same commit, an empty local tier: nothing misses.
    checkout(&origin, &work);
    let b = explain(&sb, "b", &work, &main_flags, &["test", "./..."], &[]);
    let text = stderr(&b);
    assert!(text.contains("granary explain: 0 of "), "{text}");
    assert!(String::from_utf8_lossy(&b.stdout).contains("(cached)"));

    // Runner C, a pull request with a changed library, a changed test
    // input, a variable the test reads and another flag; it reads main's
    // records, trusting main's key.
    checkout(&origin, &work);
    fs::write(
        work.join("lib/lib.go"),
        "package lib\n\nfunc Answer() int { return 43 }\n",
    )
    .unwrap();
    fs::write(work.join("reads/testdata/input.txt"), "changed!\n").unwrap();
    run_ok(Command::new(granary()).arg("mtimes").arg(&work));
    let pr_flags = [
        "--remote",
        &server.url,
        "--namespace",
        "pr-1",
        "--read-namespaces",
        "main",
        "--trusted-keys",
        public.to_str().unwrap(),
    ];
    let c = explain(
        &sb,
        "c",
        &work,
        &pr_flags,
        &["test", "-run", "TestReads", "./..."],
        &[("EXPLAIN_FLAVOUR", "spicy")],
    );
    let text = stderr(&c);
    for expected in [
        "build example.com/explain/lib: against the run of",
        "(namespace main)",
        "source file lib.go: changed",
        "dependency example.com/explain/lib: changed",
        "variable EXPLAIN_FLAVOUR, read by the test: set",
        "input.txt, read by the test: content changed",
        "the test's flags:",
        "-test.run=TestReads",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }
    assert!(!text.contains("cannot read a record"), "{text}");

    // The job's summary shows them.
    let summary = run_ok(
        Command::new(granary())
            .args(["stats", "--markdown", "--since", "1h"])
            .env("GRANARY_DIR", sb.path("c")),
    );
    let summary = String::from_utf8_lossy(&summary.stdout);
    assert!(
        summary.contains("Why actions missed") && summary.contains("source file lib.go: changed"),
        "{summary}"
    );

    // A reader that trusts another key refuses main's record, and says so.
    let other = sb.path("other.key");
    run_ok(
        Command::new(granary())
            .args(["key", "generate"])
            .arg(&other),
    );
    let other_public = sb.path("other.key.pub").to_str().unwrap().to_owned();
    let untrusting = [
        "--remote",
        &server.url,
        "--namespace",
        "pr-2",
        "--read-namespaces",
        "main",
        "--trusted-keys",
        &other_public,
    ];
    let d = explain(&sb, "d", &work, &untrusting, &["test", "./..."], &[]);
    let text = stderr(&d);
    assert!(
        text.contains("cannot read a record") && text.contains("untrusted"),
        "{text}"
    );
    assert!(!text.contains("source file lib.go: changed"), "{text}");
}

/// A go command that fails fails explain with its status, and its errors
/// reach the user.
#[test]
fn the_go_commands_errors_and_status_pass_through() {
    let sb = Sandbox::new();
    let module = sb.path("broken");
    fs::create_dir_all(&module).unwrap();
    fs::write(
        module.join("go.mod"),
        "module example.com/broken\n\ngo 1.24\n",
    )
    .unwrap();
    fs::write(
        module.join("broken.go"),
        "package broken\n\nfunc f() { undefined() }\n",
    )
    .unwrap();
    let cache = sb.path("cache");
    let mut cmd = Command::new(granary());
    sb.go_environment(&mut cmd, &cache);
    let out = cmd
        .args(["explain", "--"])
        .arg(go())
        .args(["build", "./..."])
        .current_dir(&module)
        .env("GRANARY_TRIM_INTERVAL", "none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stderr(&out);
    assert!(text.contains("undefined: undefined"), "{text}");
    assert!(!text.contains("HASH["), "debug lines are taken in: {text}");
}

/// A remote that accepts connections and never answers costs explain one
/// --remote-timeout for its records, asked all at once, and one for
/// storing its own, and it says so.
#[test]
fn a_silent_remote_costs_one_timeout_and_is_named() {
    let sb = Sandbox::new();
    let module = sb.module("silent", 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = explain(
        &sb,
        "cache",
        &module,
        &[
            "--remote",
            &url,
            "--remote-timeout",
            "1s",
            "--scope-fallback",
            "main,release",
            "--read-namespaces",
            "main",
        ],
        // Quick, and asks the cache nothing: explain's waits are the time.
        &["env", "GOVERSION"],
        &[],
    );
    let took = started.elapsed();
    let text = stderr(&out);
    assert!(
        text.contains("cannot read a record") && text.contains("no answer within 1s"),
        "{text}"
    );
    assert!(
        text.contains("storing the record in the remote timed out"),
        "{text}"
    );
    // Six records (two namespaces, three scopes) asked at once: one second,
    // not six, then one to store.
    assert!(took < std::time::Duration::from_secs(4), "{took:?}: {text}");
}
