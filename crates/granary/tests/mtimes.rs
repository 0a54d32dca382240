//! `granary mtimes` with the real go command and git: a test that reads
//! testdata is `(cached)` on a fresh checkout only with canonical times,
//! and never when its input changed, even in place to the same size.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::server::Server;
use common::*;

/// A repository holding a module whose test reads a file and lists a
/// folder of testdata.
fn origin(sb: &Sandbox) -> std::path::PathBuf {
    let repo = sb.path("origin");
    fs::create_dir_all(repo.join("testdata/more")).unwrap();
    fs::write(repo.join("go.mod"), "module example.com/reads\n\ngo 1.24\n").unwrap();
    fs::write(repo.join("reads.go"), "package reads\n").unwrap();
    fs::write(
        repo.join("reads_test.go"),
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
	entries, err := os.ReadDir("testdata/more")
	if err != nil || len(entries) == 0 {
		t.Fatal(err)
	}
	t.Logf("input: %s", data)
}
"#,
    )
    .unwrap();
    fs::write(repo.join("testdata/input.txt"), "original\n").unwrap();
    fs::write(repo.join("testdata/more/a.txt"), "a\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a module"]);
    repo
}

/// `granary mtimes` in `dir`.
fn mtimes(dir: &Path) -> serde_json::Value {
    let out = run_ok(Command::new(granary()).args(["mtimes", "--json"]).arg(dir));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `go test ./...` in `dir` by a runner whose local tier is `cache`,
/// sharing `remote`: whether the result came from a cache.
fn cached(sb: &Sandbox, remote: &Server, cache: &str, dir: &Path) -> bool {
    let stats = sb.path("stats.json");
    let mut go = sb.go_granary(&sb.path(cache), dir, &stats, &["test", "./..."]);
    let out = run_ok(go.env("GRANARY_REMOTE", &remote.url));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("ok  \texample.com/reads"), "{text}");
    text.contains("(cached)")
}

/// Each runner starts with an empty local tier and shares `granary serve`.
#[test]
fn fresh_runners_reuse_test_results_and_changed_inputs_never_do() {
    let sb = Sandbox::new();
    let origin = origin(&sb);
    let server = Server::start(&[]);
    let work = sb.path("runner/src");
    fs::create_dir_all(work.parent().unwrap()).unwrap();

    // Runner A: a fresh checkout, canonical times, the test runs once.
    fresh_clone(&origin, &work);
    let report = mtimes(&work);
    assert_eq!(report["files"], 5, "{report}");
    assert_eq!(report["hashed"], 0, "{report}");
    assert!(report["dirs"].as_u64().unwrap() >= 3, "{report}");
    assert!(!cached(&sb, &server, "a", &work));
    assert!(cached(&sb, &server, "a", &work));

    // Runner B, same commit, fresh checkout at the same path: without
    // canonical times every file is new and the test runs again...
    fresh_clone(&origin, &work);
    assert!(!cached(&sb, &server, "b", &work), "new times, no reuse");
    // ... runner C, with them, reuses runner A's result from the server.
    fresh_clone(&origin, &work);
    mtimes(&work);
    assert!(cached(&sb, &server, "c", &work), "same content, same times");

    // Changed in place to the same size, uncommitted: hashed, a new time,
    // and the test runs.
    let input = work.join("testdata/input.txt");
    fs::write(&input, "changed!\n").unwrap();
    assert_eq!(fs::metadata(&input).unwrap().len(), 9);
    let report = mtimes(&work);
    assert_eq!(report["hashed"], 1, "{report}");
    assert!(
        !cached(&sb, &server, "d", &work),
        "a changed input reran the test"
    );
    // Back to the commit's content: its time again, the old result.
    fs::write(&input, "original\n").unwrap();
    mtimes(&work);
    assert!(cached(&sb, &server, "e", &work));

    // A file added to a folder the test lists changes its key.
    fs::write(work.join("testdata/more/b.txt"), "b\n").unwrap();
    mtimes(&work);
    assert!(
        !cached(&sb, &server, "f", &work),
        "a folder's new entry reran the test"
    );
}

#[test]
fn outside_a_work_tree_it_says_so() {
    let sb = Sandbox::new();
    let plain = sb.path("plain");
    fs::create_dir_all(&plain).unwrap();
    let out = Command::new(granary())
        .arg("mtimes")
        .arg(&plain)
        .env("GIT_CEILING_DIRECTORIES", sb.path(""))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not in a git work tree"), "{stderr}");
}

/// A sparse checkout leaves tracked files out of the work tree while git's
/// index calls them unchanged (found on a checkout of Hugo): they are left
/// alone, and the rest gets its times.
#[test]
fn files_a_sparse_checkout_left_out_are_skipped() {
    let sb = Sandbox::new();
    let origin = origin(&sb);
    let work = sb.path("sparse");
    git(
        &sb.path(""),
        &[
            "clone",
            "-q",
            "--no-checkout",
            origin.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    git(
        &work,
        &[
            "sparse-checkout",
            "set",
            "--no-cone",
            "/*",
            "!/testdata/more/",
        ],
    );
    git(&work, &["checkout", "-q", "main"]);
    assert!(!work.join("testdata/more/a.txt").exists());
    let report = mtimes(&work);
    assert_eq!(
        (report["files"].clone(), report["skipped"].clone()),
        (4.into(), 1.into()),
        "{report}"
    );
}
