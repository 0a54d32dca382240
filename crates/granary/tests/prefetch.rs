//! Manifests and prefetch end to end: the real go command, SeaweedFS and
//! `granary serve` on loopback. The bucket is edited behind granary's back
//! through the `granary-remote` crate to damage manifests and packs.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::s3::{Proxy, S3Server, keys, only_manifest, put_blob, read_blob};
use common::server::Server;
use common::*;
use granary_id::Id;
use granary_remote::{Group, Manifest};

/// `go <args>` in `module` with `cache` as the local tier; returns the
/// stats and go's output.
fn go_run(
    sb: &Sandbox,
    cache: &str,
    module: &Path,
    name: &str,
    args: &[&str],
    remote: impl FnOnce(&mut Command),
) -> (Stats, Output) {
    let stats_file = sb.path(&format!("{cache}-{name}.json"));
    let mut cmd = sb.go_granary(&sb.path(cache), module, &stats_file, args);
    cmd.env("GRANARY_SCOPE", "ci")
        .env("GRANARY_PREFETCH", "true");
    remote(&mut cmd);
    let output = run_ok(&mut cmd);
    (stats(&stats_file), output)
}

/// `go build -x -o bin/<cache> .` in `module`, as [`go_run`].
fn go_build(
    sb: &Sandbox,
    cache: &str,
    module: &Path,
    remote: impl FnOnce(&mut Command),
) -> (Stats, Output) {
    let target = sb.path("bin").join(cache);
    let args = ["build", "-x", "-o", target.to_str().unwrap(), "."];
    go_run(sb, cache, module, "build", &args, remote)
}

fn go_env_goroot() -> String {
    let out = run_ok(Command::new(go()).args(["env", "GOROOT"]));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Two go commands of one job on runner A (a build of the main package,
/// then the test of p0) publish the union of what they used; runner B,
/// empty, prefetches it and builds and tests from local hits alone.
#[test]
fn a_fresh_runner_builds_from_prefetched_packs() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("shared", 3);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");

    let (a1, _) = go_build(&sb, "a", &module, remote);
    assert!(a1.prefetch.manifest_entries > 20, "{a1:?}");
    assert_eq!(a1.prefetch.packs_uploaded, 1, "{a1:?}");
    assert!(a1.prefetch.scope.starts_with("ci linux/"), "{a1:?}");
    let (a2, _) = go_run(&sb, "a", &module, "test", &["test", "./p0"], remote);
    assert!(
        a2.prefetch.manifest_entries > a1.prefetch.manifest_entries,
        "the second command publishes the union: {a1:?} {a2:?}"
    );
    assert!(a2.prefetch.packs_uploaded >= 1, "{a2:?}");
    let blobs = s3.bucket("ci");
    let packs = keys(&*blobs, "granary-v1/packs/").len() as u64;
    assert_eq!(
        packs,
        a1.prefetch.packs_uploaded + a2.prefetch.packs_uploaded,
        "the second command packed only its new entries"
    );
    assert_eq!(keys(&*blobs, "granary-v1/manifests/").len(), 1);
    // The same command again uses nothing new: the manifest it would
    // publish is there already, and it sends nothing.
    let (a3, _) = go_run(&sb, "a", &module, "again", &["test", "./p0"], remote);
    assert_eq!(
        (a3.prefetch.manifest_unchanged, a3.remote.remote_bytes_up),
        (1, 0),
        "{a3:?}"
    );

    let (b1, out) = go_build(&sb, "b", &module, remote);
    let compiled = compiled_packages(&out.stderr);
    assert!(compiled.is_empty(), "runner B compiled {compiled:?}");
    assert_eq!(b1.remote.remote_hits, 0, "no lookup was needed: {b1:?}");
    assert!(b1.misses <= 1, "at most the link: {b1:?}");
    assert_eq!(
        b1.prefetch.prefetch_named, a2.prefetch.manifest_entries,
        "{b1:?}"
    );
    // The build may end, and close stop the prefetch, before the entries
    // only `go test` needs have all arrived.
    assert!(
        b1.prefetch.prefetch_fetched <= b1.prefetch.prefetch_named
            && b1.prefetch.prefetch_used >= b1.hits - 1,
        "{b1:?}"
    );
    assert!(
        b1.prefetch.prefetch_requests <= 1 + packs,
        "one manifest, then the packs: {b1:?}"
    );
    assert_eq!(
        b1.prefetch.prefetch_used + b1.prefetch.prefetch_unused,
        b1.prefetch.prefetch_fetched
    );
    assert!(b1.prefetch.prefetch_used >= b1.hits - b1.prefetch.prefetch_waits);
    // B's build published before B's test ran: its manifest keeps, as
    // earlier entries, what A's job used and B's has not (yet), so that a
    // runner starting now, and B's own test, need no lookups either.
    assert!(b1.prefetch.manifest_earlier > 0, "{b1:?}");
    assert_eq!(
        b1.prefetch.manifest_entries, a2.prefetch.manifest_entries,
        "{b1:?}"
    );
    let (d, out) = go_run(&sb, "d", &module, "test", &["test", "./p0"], |cmd| {
        remote(cmd);
        cmd.env("GRANARY_READ_ONLY", "true");
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("(cached)"));
    assert_eq!(
        (d.remote.remote_hits, d.remote.remote_misses, d.misses),
        (0, 0, 0),
        "a runner starting between B's commands: {d:?}"
    );
    let (b2, out) = go_run(&sb, "b", &module, "test", &["test", "./p0"], remote);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(cached)"));
    assert_eq!(
        (b2.remote.remote_hits, b2.remote.remote_misses, b2.misses),
        (0, 0, 0),
        "{b2:?}"
    );
    assert_eq!(
        b2.prefetch.manifest_entries, a2.prefetch.manifest_entries,
        "{b2:?}"
    );
    // A's cold job used entries a warm job does not (B's never asked for
    // them): still named, as earlier entries, they drop out with the next
    // job, here B's runner again with its journal and binary gone.
    assert!(
        b2.prefetch.manifest_earlier < b1.prefetch.manifest_earlier,
        "{b1:?} {b2:?}"
    );
    std::fs::remove_dir_all(sb.path("b").join("granary-journal")).unwrap();
    std::fs::remove_file(sb.path("bin").join("b")).unwrap();
    go_build(&sb, "b", &module, remote);
    let (next, _) = go_run(&sb, "b", &module, "test", &["test", "./p0"], remote);
    assert_eq!(
        (
            next.prefetch.manifest_entries,
            next.prefetch.manifest_earlier
        ),
        (
            b2.prefetch.manifest_entries - b2.prefetch.manifest_earlier,
            0
        ),
        "{b2:?} {next:?}"
    );

    // Without the prefetch, the same fresh runner looks every entry up.
    // At close it still reads its scope's manifest: its job keeps what
    // B's job used and it did not (the test's entries), and it packs
    // nothing again: all it used is in packs already.
    let (c, _) = go_build(&sb, "c", &module, |cmd| {
        remote(cmd);
        cmd.env("GRANARY_PREFETCH", "false");
    });
    assert_eq!(c.prefetch.prefetch_named, 0, "{c:?}");
    assert!(c.remote.remote_hits > 20, "{c:?}");
    assert_eq!(
        (c.prefetch.manifest_entries, c.prefetch.packs_uploaded),
        (next.prefetch.manifest_entries, 0),
        "{next:?} {c:?}"
    );
    assert!(c.prefetch.manifest_earlier > 0, "{c:?}");
}

/// A manifest naming entries and packs the bucket no longer has: the build
/// runs as without it, with the misses counted and no warning.
#[test]
fn a_manifest_of_vanished_entries_costs_only_counted_misses() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("vanish", 2);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");
    let (a, _) = go_build(&sb, "a", &module, remote);
    let blobs = s3.bucket("ci");
    let (manifest_key, mut manifest) = only_manifest(&*blobs, "granary-v1/");
    // A gone pack, and loose entries nobody ever stored.
    let mut gone = manifest.groups[0].pack.unwrap();
    gone.id = Id([0xee; 32]);
    let ghosts: Vec<Id> = (0..300u32)
        .map(|i| {
            let mut id = [0x5a; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            Id(id)
        })
        .collect();
    manifest.groups.push(Group {
        pack: Some(gone),
        pack_in: None,
        actions: ghosts[..50].to_vec(),
        earlier: ghosts[50..100].to_vec(),
    });
    manifest.groups.push(Group {
        pack: None,
        pack_in: None,
        actions: ghosts[100..].to_vec(),
        earlier: Vec::new(),
    });
    put_blob(&*blobs, &manifest_key, manifest.encode());

    let started = Instant::now();
    let (b, out) = go_build(&sb, "b", &module, |cmd| {
        remote(cmd);
        cmd.env("GRANARY_READ_ONLY", "true");
    });
    let took = started.elapsed();
    assert!(
        warnings(&out.stderr).is_empty(),
        "{:?}",
        warnings(&out.stderr)
    );
    assert_eq!(
        b.prefetch.prefetch_named,
        a.prefetch.manifest_entries + 300,
        "{b:?}"
    );
    assert_eq!(b.prefetch.prefetch_missing, 300, "{b:?}");
    assert_eq!(b.prefetch.prefetch_fetched, a.prefetch.manifest_entries);
    assert_eq!((b.errors, b.remote.remote_errors), (0, 0), "{b:?}");
    assert_eq!(b.remote.remote_hits, 0, "{b:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A garbled manifest, then a garbled pack: each is ignored with one
/// warning, and the build gets its entries one by one instead.
#[test]
fn damaged_manifests_and_packs_are_ignored_with_a_warning() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("damage", 2);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");
    let read_only = |cmd: &mut Command| {
        s3.configure(cmd, "ci");
        cmd.env("GRANARY_READ_ONLY", "true");
    };
    go_build(&sb, "a", &module, remote);
    let blobs = s3.bucket("ci");
    let manifest_key = keys(&*blobs, "granary-v1/manifests/").remove(0);
    let good_manifest = read_blob(&*blobs, &manifest_key);
    put_blob(&*blobs, &manifest_key, b"\x28\xb5\x2f\xfd garbage".to_vec());
    let (b, out) = go_build(&sb, "b", &module, read_only);
    let warned = warnings(&out.stderr);
    assert!(
        warned.len() == 1 && warned[0].contains("ignored the manifest of scope ci"),
        "{warned:?}"
    );
    assert_eq!(b.prefetch.prefetch_damaged, 1, "{b:?}");
    assert!(b.remote.remote_hits > 10 && b.misses <= 1, "{b:?}");

    put_blob(&*blobs, &manifest_key, good_manifest);
    let pack_key = keys(&*blobs, "granary-v1/packs/").remove(0);
    let mut pack = read_blob(&*blobs, &pack_key);
    let middle = pack.len() / 2;
    pack.truncate(middle);
    pack.extend_from_slice(&[0xff; 64]);
    put_blob(&*blobs, &pack_key, pack);
    let (c, out) = go_build(&sb, "c", &module, read_only);
    let warned = warnings(&out.stderr);
    assert!(
        warned.len() == 1 && warned[0].contains("damaged pack"),
        "{warned:?}"
    );
    assert_eq!(c.prefetch.prefetch_damaged, 1, "{c:?}");
    assert!(
        c.prefetch.prefetch_fetched > 0 && c.remote.remote_hits > 0,
        "the entries before the damage, then lookups: {c:?}"
    );
    assert_eq!(c.errors, 0);
    assert!(c.misses <= 1, "{c:?}");
    assert!(objects_with_wrong_hash(&sb.path("c")).is_empty());

    // A run without prefetch reads the manifest at close: a garbled one is
    // ignored with the same warning, and replaced by a sound one.
    put_blob(&*blobs, &manifest_key, b"\x28\xb5\x2f\xfd garbage".to_vec());
    let (e, out) = go_build(&sb, "e", &module, |cmd| {
        remote(cmd);
        cmd.env("GRANARY_PREFETCH", "false");
    });
    let warned = warnings(&out.stderr);
    assert!(
        warned.len() == 1 && warned[0].contains("ignored the manifest of scope ci"),
        "{warned:?}"
    );
    assert_eq!(e.prefetch.prefetch_damaged, 1, "{e:?}");
    let published = Manifest::decode(&read_blob(&*blobs, &manifest_key)).unwrap();
    assert_eq!(published.entries() as u64, e.prefetch.manifest_entries);
    assert!(e.prefetch.manifest_entries > 20, "{e:?}");
}

/// With `granary serve`, the prefetch asks the batch endpoint: a few
/// requests for all the entries.
#[test]
fn a_fresh_runner_prefetches_from_the_server_in_batches() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let module = sb.module("served", 3);
    let remote = |cmd: &mut Command| {
        cmd.env("GRANARY_REMOTE", &server.url);
    };
    let (a, _) = go_build(&sb, "a", &module, remote);
    assert!(a.prefetch.manifest_entries > 20, "{a:?}");
    assert_eq!(a.prefetch.packs_uploaded, 0, "a server needs no packs");
    let (b, out) = go_build(&sb, "b", &module, remote);
    assert!(compiled_packages(&out.stderr).is_empty());
    assert_eq!(b.remote.remote_hits, 0, "{b:?}");
    assert_eq!(b.prefetch.prefetch_fetched, a.prefetch.manifest_entries);
    assert_eq!(
        b.prefetch.prefetch_requests, 2,
        "a manifest and a batch: {b:?}"
    );
    // The server keeps blobs as the Bazel protocol sends them; the batch
    // comes zstd-compressed (Go's outputs shrink to about a quarter).
    assert!(
        b.prefetch.prefetch_bytes * 2 < a.remote.remote_bytes_up,
        "{} bytes fetched, {} uploaded",
        b.prefetch.prefetch_bytes,
        a.remote.remote_bytes_up
    );
    assert_eq!(
        server.metric(
            "granary_requests_total",
            "method=\"POST\",kind=\"batch\",status=\"200\""
        ),
        1.0
    );
}

/// A batch answer in an encoding granary did not ask for (here a proxy
/// relabels the server's zstd as br) is refused and counted as an error;
/// the gets go on to ordinary lookups, and nothing unchecked is stored.
#[test]
fn a_batch_in_an_encoding_not_asked_for_is_refused() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let module = sb.module("relabelled", 2);
    go_build(&sb, "a", &module, |cmd| {
        cmd.env("GRANARY_REMOTE", &server.url);
    });
    let proxy = Proxy::start(&server.url, &["--fault", "encoding", "--only", "/batch"]);
    let (b, out) = go_build(&sb, "b", &module, |cmd| {
        cmd.env("GRANARY_REMOTE", &proxy.endpoint);
    });
    assert!(compiled_packages(&out.stderr).is_empty());
    assert!(
        warnings(&out.stderr).is_empty(),
        "{:?}",
        warnings(&out.stderr)
    );
    assert_eq!(
        (b.prefetch.prefetch_requests, b.prefetch.prefetch_fetched),
        (2, 0),
        "a manifest and a refused batch: {b:?}"
    );
    assert_eq!(b.remote.remote_errors, 1, "{b:?}");
    assert_eq!(b.remote.remote_off, "", "{b:?}");
    assert!(b.hits > 20 && b.remote.local_hits == 0, "{b:?}");
    assert!(objects_with_wrong_hash(&sb.path("b")).is_empty());
}

/// The handshake goes out before anything touches the remote, even one
/// that accepts connections and never answers.
#[test]
fn the_prefetch_never_delays_the_handshake() {
    let sb = Sandbox::new();
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", black_hole.local_addr().unwrap());
    let handshake = |remote: Option<&str>| {
        let mut cmd = Command::new(granary());
        without_granary_env(&mut cmd);
        cmd.args(["prog"])
            .env("GRANARY_DIR", sb.cache())
            .env("GRANARY_TRIM_INTERVAL", "none")
            .env("GRANARY_REMOTE_TIMEOUT", "2s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(url) = remote {
            cmd.env("GRANARY_REMOTE", url);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let took = started.elapsed();
        assert!(line.contains("KnownCommands"), "{line}");
        child.kill().ok();
        child.wait().ok();
        took
    };
    let fastest = |remote| (0..5).map(|_| handshake(remote)).min().unwrap();
    let local = fastest(None);
    let with_remote = fastest(Some(&url));
    assert!(
        with_remote < local + Duration::from_millis(20),
        "handshake {with_remote:?} with a silent remote, {local:?} without"
    );
}

/// A disk that fills during the prefetch (here: a file size limit of
/// 1 MiB on granary, so that the larger outputs cannot be written): the
/// entries that fit are stored, the pack is read to its end, the failure
/// is said once and counted as a local error, not a remote one, and
/// nothing half-written is left. The go command builds the rest.
#[cfg(unix)]
#[test]
fn a_disk_that_fills_during_the_prefetch_loses_nothing() {
    const LIMIT: u64 = 1 << 20;
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("full", 2);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");
    let (a, _) = go_build(&sb, "a", &module, remote);
    let too_big = actions(&sb.path("a"))
        .iter()
        .filter(|entry| {
            let text = std::fs::read_to_string(entry).unwrap();
            let size: u64 = text.split_whitespace().nth(3).unwrap().parse().unwrap();
            size > LIMIT
        })
        .count() as u64;
    assert!(too_big > 0, "the build has outputs over 1 MiB");

    let stats_file = sb.path("b.json");
    let target = sb.path("bin").join("b");
    let mut cmd = sb.go(
        &sb.path("b"),
        &module,
        &["build", "-x", "-o", target.to_str().unwrap(), "."],
    );
    // bash counts `ulimit -f` in KiB; with SIGXFSZ ignored, a write past
    // the limit fails with EFBIG instead of killing the process.
    cmd.env(
        "GOCACHEPROG",
        format!(
            "bash -c 'trap \"\" XFSZ; ulimit -f {}; exec \"$0\" \"$@\"' {} prog --stats-file {}",
            LIMIT >> 10,
            granary().display(),
            stats_file.display()
        ),
    )
    .env("GRANARY_TRIM_INTERVAL", "none")
    .env("GRANARY_SCOPE", "ci")
    .env("GRANARY_PREFETCH", "true")
    .env("GRANARY_READ_ONLY", "true");
    remote(&mut cmd);
    let out = run_ok(&mut cmd);
    let b = stats(&stats_file);
    let warned = warnings(&out.stderr);
    assert!(
        warned.len() == 1
            && warned[0].contains("cannot store an output fetched from the remote")
            && warned[0].contains("File too large"),
        "{warned:?}"
    );
    assert_eq!(b.prefetch.prefetch_named, a.prefetch.manifest_entries);
    assert_eq!(
        b.prefetch.prefetch_fetched + too_big,
        b.prefetch.prefetch_named,
        "every entry that fits, from one pack read to its end: {b:?}"
    );
    assert_eq!(b.prefetch.prefetch_requests, 2, "{b:?}");
    assert_eq!(
        (
            b.remote.remote_hits,
            b.remote.remote_errors,
            &*b.remote.remote_off
        ),
        (0, 0, ""),
        "{b:?}"
    );
    assert!(b.errors >= too_big, "{b:?}");
    assert_eq!(compiled_packages(&out.stderr).len() as u64, too_big);
    assert_eq!(temporaries(&sb.path("b")), Vec::<std::path::PathBuf>::new());
    assert!(objects_with_wrong_hash(&sb.path("b")).is_empty());
}

/// A runner killed (SIGKILL) in the middle of its prefetch leaves no bad
/// object and publishes nothing; the next run on its cache directory
/// fetches only what is still missing and builds from local hits.
#[test]
fn a_runner_killed_mid_prefetch_leaves_nothing_bad() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("killed", 3);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");
    let (a, _) = go_build(&sb, "a", &module, remote);
    let blobs = s3.bucket("ci");
    let manifest_key = keys(&*blobs, "granary-v1/manifests/").remove(0);
    let manifest = read_blob(&*blobs, &manifest_key);

    let cache = sb.path("b");
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .arg("prog")
        .env("GRANARY_DIR", &cache)
        .env("GRANARY_TRIM_INTERVAL", "none")
        .env("GRANARY_SCOPE", "ci")
        .env("GRANARY_PREFETCH", "true")
        // The scope names the toolchain: found through GOROOT when the go
        // command is not the parent.
        .env("GOROOT", go_env_goroot())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    remote(&mut cmd);
    let mut helper = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while actions(&cache).len() < 5 {
        assert!(Instant::now() < deadline, "the prefetch stored nothing");
        std::thread::sleep(Duration::from_millis(2));
    }
    helper.kill().unwrap();
    helper.wait().unwrap();
    let stored = actions(&cache).len() as u64;
    assert!(
        stored < a.prefetch.manifest_entries,
        "the prefetch had ended ({stored} entries) before the kill"
    );
    assert!(objects_with_wrong_hash(&cache).is_empty());
    assert_eq!(
        read_blob(&*blobs, &manifest_key),
        manifest,
        "a killed run publishes nothing"
    );

    let (b, out) = go_build(&sb, "b", &module, remote);
    assert!(compiled_packages(&out.stderr).is_empty());
    assert_eq!(
        (b.remote.remote_hits, b.errors, b.corrupt_entries),
        (0, 0, 0),
        "{b:?}"
    );
    assert_eq!(
        b.prefetch.prefetch_fetched,
        b.prefetch.prefetch_named - stored,
        "only what the killed run had not stored: {b:?}"
    );
    assert!(objects_with_wrong_hash(&cache).is_empty());
}

/// A helper started by a tool rather than the go command (staticcheck and
/// golangci-lint start their own) scopes its manifest with the Go version
/// of the go command on PATH, which the tool's `go list` uses, not with
/// none at all.
#[test]
fn a_helper_started_by_a_tool_scopes_its_manifest_with_the_go_on_path() {
    let sb = Sandbox::new();
    let server = Server::start(&[]);
    let path = format!(
        "{}:{}",
        go().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(granary());
    without_granary_env(&mut cmd)
        .env_remove("GOROOT")
        .env("PATH", &path)
        .env("GRANARY_REMOTE", &server.url)
        .env("GRANARY_SCOPE", "lint");
    let mut helper = Helper::start_with(&sb, cmd);
    helper.request(&put(1, 7, b"a fact of the linter"), b"a fact of the linter");
    assert_eq!(helper.response()["ID"], 1);
    let stats_file = helper.stats.clone();
    let (status, _) = helper.close();
    assert!(status.success());
    let version = run_ok(Command::new(go()).args(["env", "GOVERSION"]));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let scope = stats(&stats_file).prefetch.scope;
    assert!(
        scope.starts_with("lint ") && scope.ends_with(&format!(" {version}")),
        "{scope} against {version}"
    );
}

/// A pull request's first job (namespace `pr-1`, reading `main`) names in
/// its manifest the packs of `main` it fetched rather than uploading what
/// it used again; the pull request's next runner fetches them from
/// `main`, trusted as `main`'s (every record is signed, and a signature
/// holds only in the namespace it names). A runner that does not read
/// `main` leaves those groups alone and builds as without them.
#[test]
fn a_pull_requests_manifest_names_the_packs_of_main() {
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("borrow", 3);
    let (secret, public) = generate_key(&sb, "ci.key");
    let runner = |namespace: &'static str, reads: &'static str| {
        let (s3, secret, public) = (&s3, secret.clone(), public.clone());
        move |cmd: &mut Command| {
            s3.configure(cmd, "ci");
            cmd.env("GRANARY_NAMESPACE", namespace)
                .env("GRANARY_READ_NAMESPACES", reads)
                .env("GRANARY_SIGNING_KEY", &secret)
                .env("GRANARY_TRUSTED_KEYS", &public);
        }
    };

    let (main, _) = go_build(&sb, "main", &module, runner("main", ""));
    assert!(main.prefetch.packs_uploaded >= 1, "{main:?}");
    let (first, out) = go_build(&sb, "first", &module, runner("pr-1", "main"));
    assert!(compiled_packages(&out.stderr).is_empty());
    // What main's job used and this one did not (entries go puts but does
    // not ask for when it hits) stays named, as entries of the job before.
    assert_eq!(
        (
            first.prefetch.packs_uploaded,
            first.prefetch.manifest_entries - first.prefetch.manifest_earlier
        ),
        (0, first.gets),
        "nothing packed again: {first:?}"
    );
    assert_eq!(
        first.prefetch.manifest_entries, main.prefetch.manifest_entries,
        "{first:?} {main:?}"
    );
    let blobs = s3.bucket("ci");
    let (_, manifest) = only_manifest(&*blobs, "granary-v1/ns/pr-1/");
    let main_namespace = granary_remote::Namespace::new("main").unwrap();
    // The linked binary, too large for a pack, is its only loose entry.
    let (packed, loose): (Vec<_>, Vec<_>) = manifest.groups.iter().partition(|g| g.pack.is_some());
    assert!(
        !packed.is_empty()
            && packed
                .iter()
                .all(|g| g.pack_in.as_ref() == Some(&main_namespace))
            && loose.iter().map(|g| g.actions.len()).sum::<usize>() <= 1,
        "{manifest:?}"
    );

    let (next, out) = go_build(&sb, "next", &module, runner("pr-1", "main"));
    assert!(compiled_packages(&out.stderr).is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("untrusted"), "{stderr}");
    assert_eq!(next.remote.remote_hits, 0, "all prefetched: {next:?}");
    assert!(
        next.prefetch.prefetch_used >= next.hits - next.prefetch.prefetch_waits
            && next.prefetch.prefetch_used > 20,
        "{next:?}"
    );

    let (alone, out) = go_build(&sb, "alone", &module, runner("pr-1", ""));
    assert_eq!(alone.prefetch.prefetch_named, 0, "{alone:?}");
    assert!(!compiled_packages(&out.stderr).is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
}

/// The manifest goes out beside the packs it names; a pack the store
/// refused is then left out of it, and the next runner fetches its entries
/// one by one instead of finding a pack missing (and packs them).
#[test]
fn a_pack_the_store_refused_is_not_named() {
    let s3 = S3Server::start();
    let no_packs = Proxy::start(&s3.endpoint, &["--fault", "deny", "--only", "/packs/"]);
    let sb = Sandbox::new();
    let module = sb.module("refused", 2);
    let (a, out) = go_build(&sb, "a", &module, |cmd| {
        s3.configure(cmd, "ci");
        cmd.env("GRANARY_S3_ENDPOINT", &no_packs.endpoint);
    });
    assert_eq!(a.prefetch.packs_uploaded, 0, "{a:?}");
    assert!(a.remote.remote_errors >= 1, "{a:?}");
    assert!(
        warnings(&out.stderr).is_empty(),
        "{:?}",
        warnings(&out.stderr)
    );
    let blobs = s3.bucket("ci");
    assert!(keys(&*blobs, "granary-v1/packs/").is_empty());
    let (_, manifest) = only_manifest(&*blobs, "granary-v1/");
    assert!(
        manifest.groups.iter().all(|g| g.pack.is_none()),
        "{manifest:?}"
    );
    assert_eq!(manifest.entries() as u64, a.prefetch.manifest_entries);
    assert!(a.prefetch.manifest_entries > 20, "{a:?}");

    let (b, out) = go_build(&sb, "b", &module, |cmd| s3.configure(cmd, "ci"));
    assert_eq!(b.prefetch.prefetch_missing, 0, "{b:?}");
    assert!(
        b.prefetch.prefetch_fetched > 20,
        "fetched one by one: {b:?}"
    );
    assert!(compiled_packages(&out.stderr).is_empty());
    assert_eq!(
        b.prefetch.packs_uploaded, 1,
        "packs what A could not: {b:?}"
    );
}

/// The sweep a publishing run makes deletes manifests and packs only past
/// their ages (seen from a clock moved forward), at most its limit at a
/// time; a runner after it builds as without a manifest.
#[test]
fn the_sweep_deletes_only_what_is_too_old_to_be_used() {
    use granary_remote::manifest::{MANIFEST_DELETE_AGE, PACK_DELETE_AGE};
    use granary_remote::{Format, RemoteCache};
    let s3 = S3Server::start();
    let sb = Sandbox::new();
    let module = sb.module("swept", 2);
    let remote = |cmd: &mut Command| s3.configure(cmd, "ci");
    let (a, _) = go_build(&sb, "a", &module, remote);
    assert_eq!(a.prefetch.swept, 0, "nothing is old yet: {a:?}");
    let blobs = s3.bucket("ci");
    let packs = keys(&*blobs, "granary-v1/packs/").len();
    assert!(packs >= 1);
    let cache = RemoteCache::new(blobs.clone(), Format::Granary);
    let hour = Duration::from_secs(3600);
    let sweep = |after: Duration, limit: usize| {
        block_on(cache.sweep(std::time::SystemTime::now() + after, limit)).unwrap()
    };
    assert_eq!(sweep(MANIFEST_DELETE_AGE - hour, 100), 0);
    assert_eq!(sweep(MANIFEST_DELETE_AGE + hour, 100), 1, "the manifest");
    assert_eq!(keys(&*blobs, "granary-v1/packs/").len(), packs);
    assert_eq!(sweep(PACK_DELETE_AGE + hour, 1), 1, "at most the limit");
    assert_eq!(sweep(PACK_DELETE_AGE + hour, 100), packs - 1);
    assert!(keys(&*blobs, "granary-v1/packs/").is_empty());
    let (b, out) = go_build(&sb, "b", &module, remote);
    assert_eq!(b.prefetch.prefetch_named, 0, "{b:?}");
    assert!(
        compiled_packages(&out.stderr).is_empty(),
        "looked up instead"
    );
}
