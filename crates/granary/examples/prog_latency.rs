//! Measures the round-trip latency of `granary prog` for get hits, the cost
//! that a warm build pays about a thousand times: `cargo run --release
//! --example prog_latency -- [ROUNDS] [CONCURRENT]`. Used by
//! bench/prog_latency.sh.
#![allow(clippy::print_stdout)] // a benchmark's output is its result

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use granary_id::Id;
use granary_protocol::{Request, write_request};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrent: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let granary = std::env::var("GRANARY_BIN").unwrap_or_else(|_| "target/release/granary".into());
    let dir = tempfile::tempdir().expect("temp dir");

    let mut child = Command::new(&granary)
        .args(["prog", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("granary starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut answer = |stdout: &mut BufReader<_>| {
        line.clear();
        stdout.read_line(&mut line).expect("an answer");
        assert!(line.contains("\"ID\""), "bad answer {line:?}");
    };
    answer(&mut stdout);

    let body = vec![b'x'; 1300];
    let output_id = Id::of(&body);
    let mut bytes = Vec::new();
    let put = Request::Put {
        id: 1,
        action_id: Id([1; 32]),
        output_id,
        body_size: 1300,
    };
    write_request(&mut bytes, &put, &body).expect("encode");
    stdin
        .write_all(&bytes)
        .and_then(|()| stdin.flush())
        .expect("send");
    answer(&mut stdout);

    let mut id = 2;
    let start = Instant::now();
    for _ in 0..rounds {
        bytes.clear();
        for _ in 0..concurrent {
            write_request(
                &mut bytes,
                &Request::Get {
                    id,
                    action_id: Id([1; 32]),
                },
                &[],
            )
            .expect("encode");
            id += 1;
        }
        stdin
            .write_all(&bytes)
            .and_then(|()| stdin.flush())
            .expect("send");
        for _ in 0..concurrent {
            answer(&mut stdout);
        }
    }
    let per_round = start.elapsed() / rounds as u32;
    println!("{per_round:?} per round trip of {concurrent} concurrent get hit(s)");
    drop(stdin);
    child.wait().expect("granary exits");
}
