//! A 1 GiB output through `granary prog` to a remote and back: memory stays
//! bounded on every path (the put, the upload, the server and its
//! write-behind to a bucket, gRPC), and the bytes arrive intact at a fresh
//! runner. Once, an upload read the whole output into memory: 5 GiB of
//! RSS for a 1 GiB output.

mod common;

use std::process::Command;
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::server::{Server, scratch};
use common::*;
use granary_id::Id;
use granary_protocol::Request;

const SIZE: usize = 1 << 30;
/// Peak RSS of `granary prog` (the put streams in 192 KiB chunks, the
/// upload holds a few 8 MiB parts).
const PROG_LIMIT_KIB: u64 = 64 << 10;
/// Peak RSS of `granary serve`.
const SERVE_LIMIT_KIB: u64 = 128 << 10;

/// A helper against the remote that `configure` sets, with deadlines long
/// enough for a gigabyte on a loaded machine.
fn helper(sb: &Sandbox, configure: impl FnOnce(&mut Command)) -> Helper {
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .env("GRANARY_PREFETCH", "false")
        .env("GRANARY_REMOTE_TIMEOUT", "60s")
        .env("GRANARY_UPLOAD_DEADLINE", "300s");
    configure(&mut cmd);
    Helper::start_with(sb, cmd)
}

/// Puts the output, waits until `uploaded` says the remote has it, then
/// checks the helper's peak memory and closes it.
fn put_and_upload(h: &mut Helper, uploaded: impl FnMut() -> bool) {
    let pid = h.child.id();
    let answer = put_big(h, 1, 1, SIZE, || Box::new(big_output(SIZE)));
    assert!(answer["DiskPath"].is_string(), "{answer}");
    wait_until("the upload is done", Duration::from_secs(300), uploaded);
    let peak = peak_rss_kib(pid);
    eprintln!(
        "peak RSS of granary prog, 1 GiB put and upload: {} MiB",
        peak / 1024
    );
    assert!(peak < PROG_LIMIT_KIB, "granary prog peaked at {peak} KiB");
}

/// A fresh runner gets the output whole, checked against its hash.
fn fetch_back(configure: impl FnOnce(&mut Command)) {
    let sb = Sandbox::new();
    let mut h = helper(&sb, configure);
    h.request(
        &Request::Get {
            id: 1,
            action_id: Id([1; 32]),
        },
        &[],
    );
    let answer = h.response();
    assert_eq!(answer["Size"], SIZE as u64, "{answer}");
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    assert!(objects_with_wrong_hash(&sb.cache()).is_empty());
    assert_eq!(stats(&sb.path("stats.json")).remote.remote_hits, 1);
}

#[test]
fn a_gigabyte_through_a_bucket_in_bounded_memory() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let mut h = helper(&sb, |cmd| s3.configure(cmd, "big"));
    put_and_upload(&mut h, || s3.keys("big", "ac") == 1);
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    let s = stats(&sb.path("stats.json"));
    assert_eq!(
        (s.remote.uploads, s.remote.uploads_dropped),
        (1, 0),
        "{s:?}"
    );
    fetch_back(|cmd| s3.configure(cmd, "big"));
}

#[test]
fn a_gigabyte_through_a_server_backed_by_a_bucket_in_bounded_memory() {
    let s3 = S3Server::start();
    let envs = s3.backing_envs();
    let backing = format!("s3://{BUCKET}/servers");
    let scratch = scratch();
    let dir = scratch.path().join("cache");
    let server = Server::start_in(
        scratch,
        &dir,
        &[
            "--backing",
            &backing,
            "--max-blob",
            "2GiB",
            "--max-size",
            "8GiB",
        ],
        &envs,
    )
    .unwrap();
    let sb = Sandbox::new();
    let url = server.url.clone();
    let remote = move |cmd: &mut Command| {
        cmd.env("GRANARY_REMOTE", &url);
    };
    let mut h = helper(&sb, remote.clone());
    // The server has the result once the output is in (uploaded first).
    put_and_upload(&mut h, || server.status()["ac_blobs"] == 1);
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    wait_until("the write-behind is done", Duration::from_secs(300), || {
        server.metric("granary_backing_uploads_total", "") >= 2.0
    });
    let peak = peak_rss_kib(server.pid());
    eprintln!(
        "peak RSS of granary serve, 1 GiB in and behind: {} MiB",
        peak / 1024
    );
    assert!(peak < SERVE_LIMIT_KIB, "granary serve peaked at {peak} KiB");
    assert_eq!(server.metric("granary_backing_errors_total", ""), 0.0);
    fetch_back(remote);
}

/// Over gRPC: ByteStream both ways, zstd-compressed in streams, the
/// server writing and reading in chunks.
#[test]
fn a_gigabyte_over_grpc_in_bounded_memory() {
    let server = Server::start(&["--max-blob", "2GiB", "--max-size", "8GiB"]);
    let sb = Sandbox::new();
    let url = server.url.replace("http://", "grpc://");
    let remote = move |cmd: &mut Command| {
        cmd.env("GRANARY_REMOTE", &url);
    };
    let mut h = helper(&sb, remote.clone());
    put_and_upload(&mut h, || server.status()["ac_blobs"] == 1);
    let (status, stderr) = h.close();
    assert!(status.success(), "{stderr}");
    fetch_back(remote);
    let peak = peak_rss_kib(server.pid());
    eprintln!(
        "peak RSS of granary serve, 1 GiB in and out over gRPC: {} MiB",
        peak / 1024
    );
    assert!(peak < SERVE_LIMIT_KIB, "granary serve peaked at {peak} KiB");
}
