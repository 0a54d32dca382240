//! granary against a cache server it did not write: bazel-remote, over
//! HTTP, with the real go command. (The signatures' round trip through it
//! is in tests/trust.rs.)

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::bazel_remote::BazelRemote;
use common::*;

/// `go build` of `module` by a runner with the empty local tier `cache`,
/// sharing `server`.
fn build(
    sb: &Sandbox,
    server: &BazelRemote,
    cache: &str,
    module: &Path,
    prefetch: bool,
) -> (Output, Stats) {
    let prefetch = prefetch.to_string();
    let envs = [
        ("GRANARY_SCOPE", "interop"),
        ("GRANARY_PREFETCH", &prefetch),
    ];
    sb.build_sharing(&server.url, cache, module, &envs)
}

#[test]
fn a_fresh_runner_compiles_nothing_after_another_filled_bazel_remote() {
    for prefetch in [false, true] {
        let server = BazelRemote::start();
        let sb = Sandbox::new();
        let module = sb.module("interop", 3);
        let what = format!("prefetch {prefetch}");

        let (_, a) = build(&sb, &server, "runner-a", &module, prefetch);
        assert!(a.puts > 20, "{what}: {a:?}");
        assert_eq!(a.remote.uploads, a.puts, "{what}: {a:?}");
        assert_eq!(
            (a.remote.uploads_dropped, a.remote.remote_errors),
            (0, 0),
            "{what}: {a:?}\n{}",
            server.log()
        );

        let (out, b) = build(&sb, &server, "runner-b", &module, prefetch);
        assert_eq!(
            compiled_packages(&out.stderr),
            Vec::<String>::new(),
            "{what}"
        );
        assert!(b.hits > 20 && b.misses <= 1, "{what}: {b:?}");
        if prefetch {
            // bazel-remote keeps the manifest; with no batch endpoint, the
            // prefetch looks its entries up one by one, ahead of the build,
            // and publishes packs in the CAS for the next runner.
            assert!(b.prefetch.prefetch_fetched >= b.hits, "{b:?}");
            assert!(b.prefetch.packs_uploaded >= 1, "{b:?}");
            let (out, c) = build(&sb, &server, "runner-c", &module, prefetch);
            assert_eq!(compiled_packages(&out.stderr), Vec::<String>::new());
            assert!(
                c.prefetch.prefetch_fetched >= c.hits && c.prefetch.prefetch_requests < 10,
                "the packs bring the entries in a few requests: {c:?}"
            );
        } else {
            assert_eq!(b.remote.remote_hits, b.hits, "{what}: {b:?}");
        }
        assert_eq!(
            b.errors + b.corrupt_entries + b.remote.remote_errors + b.remote.remote_damaged,
            0,
            "{what}: {b:?}\n{}",
            server.log()
        );
        assert_eq!(
            fs::read(sb.path("bin/runner-a")).unwrap(),
            fs::read(sb.path("bin/runner-b")).unwrap(),
            "{what}"
        );
    }
}
