//! `granary verify` on a cache with damaged entries.
#![cfg(unix)] // it sets file modes and reads signals; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use granary_id::Id;
use granary_store::Store;

fn verify(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::granary())
        .arg("verify")
        .args(args)
        .env("GRANARY_DIR", dir)
        .env_remove("GRANARY_VERIFY_REPAIR")
        .env_remove("GRANARY_JSON")
        .output()
        .expect("granary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn verify_reports_damage_and_repair_removes_exactly_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let store = Store::open(&dir).unwrap();
    let stored: Vec<_> = (0..5u8)
        .map(|i| store.put_bytes(&Id([i; 32]), &vec![i; 4096]).unwrap())
        .collect();

    fs::remove_dir(dir.join("granary-tmp")).unwrap();
    let clean = verify(&dir, &[]);
    assert!(clean.status.success(), "{}", stdout(&clean));
    assert!(
        !dir.join("granary-tmp").exists(),
        "verify must not write to the cache"
    );
    assert!(stdout(&clean).contains("checked 5 action records and 5 objects"));
    assert!(stdout(&clean).contains("no damaged entries"));

    let mut flipped = fs::read(&stored[0].object).unwrap();
    flipped[100] ^= 0x20;
    fs::write(&stored[0].object, flipped).unwrap();
    fs::write(&stored[1].object, b"short").unwrap();
    let garbled = store.action_path(&Id([2; 32]));
    fs::write(&garbled, b"v1 this is not an action record\n").unwrap();

    let found = verify(&dir, &["--json"]);
    assert_eq!(
        found.status.code(),
        Some(1),
        "damage without --repair exits 1"
    );
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let mut paths: Vec<String> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    let mut expected: Vec<String> = [&stored[0].object, &stored[1].object, &garbled]
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(paths, expected);
    assert_eq!(report["removed"], 0);

    let repaired = verify(&dir, &["--repair"]);
    assert!(repaired.status.success(), "{}", stdout(&repaired));
    assert!(
        stdout(&repaired).contains("removed 3 of them"),
        "{}",
        stdout(&repaired)
    );
    for path in &expected {
        assert!(!Path::new(path).exists(), "{path} should be gone");
    }
    assert!(stored[3].object.exists() && stored[4].object.exists());

    let after = verify(&dir, &[]);
    assert!(after.status.success());
    assert!(stdout(&after).contains("checked 4 action records and 3 objects"));
}

#[test]
fn verify_of_a_missing_directory_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = verify(&tmp.path().join("nothing-here"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a cache directory"), "{stderr}");
    assert!(
        !tmp.path().join("nothing-here").exists(),
        "verify must not create it"
    );
}

/// A report whose reader has gone (`granary verify --json | head`) ends
/// quietly, as `ls` does: by SIGPIPE, not with a panic.
#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let store = Store::open(&dir).unwrap();
    for i in 0..3u8 {
        store.put_bytes(&Id([i; 32]), &[i; 100]).unwrap();
    }
    for args in [&["verify", "--json"][..], &["du"], &["stats"]] {
        // The reader is gone before granary writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(common::granary())
            .args(args)
            .env("GRANARY_DIR", &dir)
            .env_remove("GRANARY_JSON")
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
