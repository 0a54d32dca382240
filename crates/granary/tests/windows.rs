//! granary's Windows build under Wine: `granary.exe prog` answers the
//! protocol with Windows paths that hold the bodies, and Go for Windows
//! builds a module twice through it, the second time compiling nothing.
//!
//! scripts/test.sh builds `granary.exe` (x86_64-pc-windows-gnu) before the
//! suite and prepares Wine with scripts/windows/wine.sh, whose variables
//! these tests read.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use granary_id::Id;
use granary_protocol::{Request, write_request};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::*;

fn variable(environment: &[(String, String)], key: &str) -> PathBuf {
    let (_, value) = environment
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("scripts/windows/wine.sh sets no {key}"));
    PathBuf::from(value)
}

/// The Windows build of granary, made by scripts/test.sh.
fn granary_exe() -> PathBuf {
    let exe = repo_root().join("target/x86_64-pc-windows-gnu/debug/granary.exe");
    assert!(
        exe.is_file(),
        "no {exe:?}: build it with `eval \"$(bash scripts/windows/wine.sh)\" && cargo build \
         --target x86_64-pc-windows-gnu -p granary` (scripts/test.sh does)"
    );
    exe
}

/// What a Windows program calls `path`: Wine's drive Z: is the root.
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// A Windows path under Z: back on this machine.
fn unix_path(windows: &str) -> PathBuf {
    let rest = windows
        .strip_prefix("Z:")
        .or_else(|| windows.strip_prefix("z:"))
        .unwrap_or_else(|| panic!("{windows:?} is not on Wine's drive Z:"));
    PathBuf::from(rest.replace('\\', "/"))
}

fn wine(environment: &[(String, String)], program: &Path) -> Command {
    let mut cmd = Command::new("wine");
    cmd.arg(program).envs(environment.iter().cloned());
    cmd
}

/// How long granary.exe may take to answer a request under Wine (its first
/// answer includes Wine's start).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// granary.exe prog, its answers read by a thread so that each wait is
/// bounded; killed when dropped.
struct Prog {
    child: Child,
    answers: Receiver<String>,
}

impl Prog {
    fn start(mut cmd: Command) -> Prog {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wine starts granary.exe");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Prog { child, answers }
    }

    fn send(&mut self, request: &Request, body: &[u8]) {
        let mut bytes = Vec::new();
        write_request(&mut bytes, request, body).unwrap();
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn answer(&mut self) -> Value {
        let line = match self.answers.recv_timeout(ANSWER_WITHIN) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("granary.exe gave no answer in {ANSWER_WITHIN:?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("granary.exe closed its stdout"),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn granary_exe_answers_a_put_and_a_get_with_a_windows_path_to_the_body() {
    let environment = wine_environment();
    let sb = Sandbox::new();
    let cache = sb.path("cache");
    let mut cmd = wine(&environment, &granary_exe());
    cmd.arg("prog")
        .env("GRANARY_DIR", windows_path(&cache))
        .env("GRANARY_TRIM_INTERVAL", "none");
    let mut prog = Prog::start(cmd);
    assert_eq!(
        prog.answer()["KnownCommands"],
        serde_json::json!(["get", "put", "close"])
    );

    let body = b"built on Windows";
    let output = Id(Sha256::digest(body).into());
    prog.send(
        &Request::Put {
            id: 1,
            action_id: Id([7; 32]),
            output_id: output,
            body_size: body.len() as u64,
        },
        body,
    );
    let stored = prog.answer();
    let disk_path = stored["DiskPath"].as_str().expect("a DiskPath").to_owned();
    assert!(
        disk_path.starts_with("Z:\\") && !disk_path.contains('/'),
        "a Windows path, as go expects: {disk_path}"
    );
    assert_eq!(fs::read(unix_path(&disk_path)).unwrap(), body);

    prog.send(
        &Request::Get {
            id: 2,
            action_id: Id([7; 32]),
        },
        &[],
    );
    let hit = prog.answer();
    assert_eq!(hit["DiskPath"], disk_path.as_str());
    assert_eq!(hit["Size"], body.len());
    prog.send(&Request::Close { id: 3 }, &[]);
    assert_eq!(prog.answer()["ID"], 3);
    let status = prog.child.wait().unwrap();
    let mut stderr = String::new();
    let _ = prog
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr);
    assert!(status.success(), "{stderr}");
}

#[test]
fn go_for_windows_builds_twice_through_granary_exe_the_second_compiles_nothing() {
    let environment = wine_environment();
    let go = variable(&environment, "GRANARY_WINDOWS_GO");
    let helper = granary_exe();
    let sb = Sandbox::new();
    let module = sb.module("windows", 3);
    let cache = sb.path("cache");
    for round in 1..=2 {
        let stats = sb.path(&format!("stats-{round}.json"));
        let mut cmd = wine(&environment, &go);
        sb.go_environment(&mut cmd, &cache);
        // -work: go keeps its work folder (here, in the sandbox) instead
        // of removing it, which Wine 8 cannot do the way go 1.27 asks
        // ("unlinkat ...: Invalid function").
        let exe = windows_path(&sb.path(&format!("windows-{round}.exe")));
        let work = sb.path("go-work");
        fs::create_dir_all(&work).unwrap();
        cmd.args(["build", "-work", "-x", "-o", &exe, "."])
            .current_dir(&module)
            .env("GOTMPDIR", windows_path(&work))
            .env("GOCACHE", windows_path(&cache))
            .env("GOPATH", windows_path(&sb.path("gopath")))
            .env(
                "GOCACHEPROG",
                format!(
                    "{} prog --stats-file {}",
                    windows_path(&helper),
                    windows_path(&stats)
                ),
            )
            .env("GRANARY_TRIM_INTERVAL", "none");
        let out = run_ok(&mut cmd);
        let compiled = compiled_packages(&out.stderr);
        let run = common::stats(&stats);
        match round {
            1 => assert!(run.puts > 10 && !compiled.is_empty(), "{run:?}"),
            _ => assert!(
                compiled.is_empty() && run.hits > 10,
                "the second build compiles nothing: {compiled:?} {run:?}"
            ),
        }
    }
    let built = sb.path("windows-2.exe");
    let ran = run_ok(&mut wine(&environment, &built));
    assert!(
        String::from_utf8_lossy(&ran.stdout).contains("WINDOWS-P2"),
        "the program built from the cache runs"
    );
}
