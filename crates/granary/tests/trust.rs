//! Signed records end to end: the poisoning of a shared cache, with the real
//! go command, on S3 (SeaweedFS), Azure (Azurite), GCS (fake-gcs-server),
//! `granary serve` and bazel-remote, and how
//! --trusted-keys and --signing-key defeat it.
//!
//! The attacker is anyone who may write the cache: it learns the action IDs
//! of a real module (a build of public code) and puts forged outputs under
//! them through an ordinary `granary prog`, which uploads them and
//! publishes a manifest naming them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::bazel_remote::BazelRemote;
use common::clouds::{Azurite, Cloud, FakeGcs};
use common::s3::S3Server;
use common::server::{Server, request, serve_token, sha256_hex};
use common::*;
use granary_id::Id;
use granary_protocol::Request;

/// Where the runners share their cache.
enum Shared<'a> {
    /// A bucket, under a prefix of its own.
    S3(&'a S3Server, &'static str),
    Serve(&'a Server),
    /// A third-party server, which must keep the signatures untouched.
    BazelRemote(&'a BazelRemote),
    /// A REAPI server's gRPC URL.
    Grpc(&'a str),
    /// Another cloud's store, under a prefix of its own.
    Cloud(&'a dyn Cloud, &'static str),
}

impl Shared<'_> {
    fn configure(&self, cmd: &mut Command, prefetch: bool) {
        cmd.env("GRANARY_SCOPE", "trust")
            .env("GRANARY_PREFETCH", prefetch.to_string());
        match self {
            Shared::S3(s3, prefix) => s3.configure(cmd, prefix),
            Shared::Serve(server) => {
                cmd.env("GRANARY_REMOTE", &server.url);
            }
            Shared::BazelRemote(server) => {
                cmd.env("GRANARY_REMOTE", &server.url);
            }
            Shared::Grpc(url) => {
                cmd.env("GRANARY_REMOTE", url);
            }
            Shared::Cloud(cloud, prefix) => {
                cmd.envs(cloud.envs(prefix));
            }
        }
    }
}

/// The forged output the attacker maps `action` to.
fn forged(action: &Id) -> Vec<u8> {
    format!("forged by the attacker for {action}\n").into_bytes()
}

/// Puts a forged output under every action ID of `actions` through an
/// ordinary `granary prog` on the shared cache.
fn poison(sb: &Sandbox, shared: &Shared, prefetch: bool, actions: &[Id]) {
    let mut cmd = Command::new(granary());
    shared.configure(&mut cmd, prefetch);
    let mut attacker = Helper::start_with(sb, cmd);
    for (i, action) in actions.iter().enumerate() {
        let body = forged(action);
        let put = Request::Put {
            id: i as i64 + 1,
            action_id: *action,
            output_id: Id::of(&body),
            body_size: body.len() as u64,
        };
        attacker.request(&put, &body);
        assert!(attacker.response()["Err"].is_null());
    }
    let (status, stderr) = attacker.close();
    assert!(status.success(), "{stderr}");
}

/// `go build` of `module` by a runner with an empty local tier `cache`,
/// with `flags` in GRANARY_* variables; the binary goes to bin/<cache>.
fn runner(
    sb: &Sandbox,
    shared: &Shared,
    prefetch: bool,
    cache: &str,
    module: &Path,
    envs: &[(&str, &Path)],
) -> (Output, PathBuf, PathBuf) {
    let stats = sb.path(&format!("{cache}.json"));
    let binary = sb.path("bin").join(cache);
    let mut cmd = sb.go_granary(
        &sb.path(cache),
        module,
        &stats,
        &["build", "-x", "-o", binary.to_str().unwrap(), "."],
    );
    shared.configure(&mut cmd, prefetch);
    cmd.envs(envs.iter().copied());
    (cmd.output().expect("go runs"), binary, stats)
}

/// The attack and the defence, on one shared cache.
fn attack_and_defend(shared: Shared, prefetch: bool) {
    let sb = Sandbox::new();
    let module = sb.module("victim", 3);
    // The attacker learns the action IDs from a build of the public code.
    let native = sb.path("bin/native");
    run_ok(&mut sb.go(
        &sb.path("native-cache"),
        &module,
        &["build", "-o", native.to_str().unwrap(), "."],
    ));
    let actions: Vec<Id> = actions(&sb.path("native-cache"))
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            Id::from_hex(name.trim_end_matches("-a")).unwrap()
        })
        .collect();
    assert!(actions.len() > 20, "{} actions", actions.len());
    poison(&sb, &shared, prefetch, &actions);
    let native = fs::read(&native).unwrap();
    let what = format!("prefetch {prefetch}");

    // Trusting anyone, a runner takes the forged outputs: the attack is real.
    let (out, binary, _) = runner(&sb, &shared, prefetch, "trusting-anyone", &module, &[]);
    assert!(
        !out.status.success() || fs::read(&binary).ok().as_ref() != Some(&native),
        "{what}: the forged records did not reach the build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With trusted keys, it refuses them and builds what Go builds.
    let (secret, public) = generate_key(&sb, "ci.key");
    let trusting = [("GRANARY_TRUSTED_KEYS", public.as_path())];
    let (out, binary, stats_file) =
        runner(&sb, &shared, prefetch, "trusting-key", &module, &trusting);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&binary).unwrap(), native, "{what}");
    let stats_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&stats_file).unwrap()).unwrap();
    assert!(
        stats_json["untrusted"].as_u64().unwrap() > 0,
        "{what}: {stats_json}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("refused the untrusted").count(),
        1,
        "{what}: one warning per run:\n{stderr}"
    );

    // A writer with the signing key replaces the forged records as it
    // builds; the next trusting runner compiles nothing.
    let writer = [
        ("GRANARY_TRUSTED_KEYS", public.as_path()),
        ("GRANARY_SIGNING_KEY", secret.as_path()),
    ];
    let (out, _, _) = runner(&sb, &shared, prefetch, "signing-writer", &module, &writer);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, binary, stats_file) =
        runner(&sb, &shared, prefetch, "fresh-trusting", &module, &trusting);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        compiled_packages(&out.stderr),
        Vec::<String>::new(),
        "{what}"
    );
    assert_eq!(fs::read(&binary).unwrap(), native, "{what}");
    let fresh = stats(&stats_file);
    assert!(fresh.hits > 20 && fresh.misses <= 1, "{what}: {fresh:?}");
}

#[test]
fn signed_records_defeat_a_poisoned_bucket() {
    let s3 = S3Server::start();
    attack_and_defend(Shared::S3(&s3, "without-prefetch"), false);
    attack_and_defend(Shared::S3(&s3, "with-prefetch"), true);
}

#[test]
fn signed_records_defeat_a_poisoned_cache_server() {
    for prefetch in [false, true] {
        let server = Server::start(&[]);
        attack_and_defend(Shared::Serve(&server), prefetch);
    }
}

/// bazel-remote keeps a record's signature (in the action result's
/// auxiliary metadata) as granary wrote it.
#[test]
fn signed_records_defeat_a_poisoned_bazel_remote() {
    for prefetch in [false, true] {
        let server = BazelRemote::start();
        attack_and_defend(Shared::BazelRemote(&server), prefetch);
    }
}

/// Over gRPC, the signature travels in the action result as over HTTP:
/// through bazel-remote's gRPC face without the prefetch, through granary
/// serve's with it.
#[test]
fn signed_records_defeat_a_poisoned_cache_over_grpc() {
    let bazel_remote = BazelRemote::start();
    attack_and_defend(Shared::Grpc(&bazel_remote.grpc_url), false);
    let server = Server::start(&["--grpc-listen", "127.0.0.1:0"]);
    attack_and_defend(Shared::Grpc(server.grpc_url.as_deref().unwrap()), true);
}

/// On Azure and GCS, records and their signatures are blobs as on S3: the
/// prefetch's packs on Azure, lookups one by one on GCS.
#[test]
fn signed_records_defeat_a_poisoned_container_or_gcs_bucket() {
    let azurite = Azurite::start();
    attack_and_defend(Shared::Cloud(&azurite, "with-prefetch"), true);
    let gcs = FakeGcs::start();
    attack_and_defend(Shared::Cloud(&gcs, "without-prefetch"), false);
}

/// A secret key that others may read is refused: the run goes on with its
/// local tier only, and says why.
#[test]
fn a_readable_secret_key_is_refused() {
    let sb = Sandbox::new();
    let server = Server::start(&[]);
    let (secret, _) = generate_key(&sb, "loose.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let module = sb.module("loose", 1);
    let (out, _, stats_file) = runner(
        &sb,
        &Shared::Serve(&server),
        false,
        "loose",
        &module,
        &[("GRANARY_SIGNING_KEY", secret.as_path())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert_eq!(
        stats(&stats_file).remote.uploads,
        0,
        "nothing unsigned left"
    );
}

/// A pull request reads main's entries and compiles nothing; what it then
/// builds on a changed tree stays in its namespace, so main's next build
/// of that tree compiles the change itself; and the server refuses the
/// pull request's token in main's action cache.
#[test]
fn a_pull_request_reads_main_and_cannot_write_it() {
    let sb = Sandbox::new();
    let (main_token, main_line) = serve_token(&["--scope", "write", "--name", "main"]);
    let (pr_token, pr_line) =
        serve_token(&["--scope", "write", "--name", "pr", "--namespaces", "pr-*"]);
    assert!(pr_line.ends_with(" namespaces=pr-*"), "{pr_line}");
    let tokens = sb.path("tokens");
    fs::write(&tokens, format!("{main_line}\n{pr_line}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = Server::start(&["--tokens", tokens.to_str().unwrap()]);
    let shared = Shared::Serve(&server);
    let module = sb.module("app", 3);
    let main = [
        ("GRANARY_NAMESPACE", "main"),
        ("GRANARY_TOKEN", main_token.as_str()),
    ];
    let pull_request = [
        ("GRANARY_NAMESPACE", "pr-7"),
        ("GRANARY_READ_NAMESPACES", "main"),
        ("GRANARY_TOKEN", pr_token.as_str()),
    ];
    let build = |cache: &str, envs: &[(&str, &str)]| {
        let stats_file = sb.path(&format!("{cache}.json"));
        let binary = sb.path("bin").join(cache);
        let mut cmd = sb.go_granary(
            &sb.path(cache),
            &module,
            &stats_file,
            &["build", "-x", "-o", binary.to_str().unwrap(), "."],
        );
        shared.configure(&mut cmd, true);
        cmd.envs(envs.iter().copied());
        let out = run_ok(&mut cmd);
        (stats(&stats_file), compiled_packages(&out.stderr))
    };

    let (first, _) = build("main-1", &main);
    assert!(first.remote.uploads > 20, "{first:?}");
    let (pr, compiled) = build("pr-1", &pull_request);
    assert_eq!(
        compiled,
        Vec::<String>::new(),
        "the pull request reads main"
    );
    assert_eq!(
        pr.remote.remote_errors + pr.remote.uploads_dropped,
        0,
        "{pr:?}"
    );

    // The pull request changes a package and builds it into pr-7.
    let changed = module.join("p1/p1.go");
    let source = fs::read_to_string(&changed).unwrap();
    fs::write(
        &changed,
        source.replace("strings.ToUpper", "strings.ToLower"),
    )
    .unwrap();
    age_tree(&module, std::time::Duration::from_secs(3600));
    let (pr, compiled) = build("pr-2", &pull_request);
    assert!(compiled.iter().any(|p| p.ends_with("/p1")), "{compiled:?}");
    assert!(
        pr.remote.uploads > 0 && pr.remote.remote_errors == 0,
        "{pr:?}"
    );
    let (_, compiled) = build("pr-3", &pull_request);
    assert_eq!(compiled, Vec::<String>::new(), "pr-7 keeps what it built");
    let (_, compiled) = build("main-2", &main);
    assert!(
        compiled.iter().any(|p| p.ends_with("/p1")),
        "main does not get the pull request's entries: {compiled:?}"
    );

    // The pull request's token may not write main's action cache (nor the
    // default one), may write its own, and may write the shared CAS.
    let result = granary_remote::reapi::encode(
        &granary_remote::ActionRecord {
            action: Id([0xab; 32]),
            output: Id::of(b"x"),
            size: 1,
            put_time: std::time::SystemTime::now(),
            placement: granary_remote::Placement::Inline,
            build_time: None,
            signature: None,
        },
        Some(b"x"),
    );
    let action = "ab".repeat(32);
    let bearer = format!("Bearer {pr_token}");
    let headers = [("Authorization", bearer.as_str())];
    let put = |path: &str, body: &[u8]| request(server.addr, "PUT", path, &headers, body).0;
    assert_eq!(put(&format!("/main/ac/{action}"), &result), 403);
    assert_eq!(put(&format!("/ac/{action}"), &result), 403);
    assert_eq!(put(&format!("/pr-7/ac/{action}"), &result), 200);
    let cas = sha256_hex(b"shared body");
    assert_eq!(put(&format!("/pr-7/cas/{cas}"), b"shared body"), 200);
    let mut server = server;
    server.monitor_token = Some(main_token.clone());
    assert!(server.metric("granary_rejected_writes_total", "reason=\"namespace\"") >= 2.0);
}

/// `--remote http://HOST:PORT/NAME` is `--namespace NAME`, on every remote
/// whose URL path can name one (granary serve's HTTP and gRPC faces): a
/// pull request's runner that names its namespace in the URL reads main's
/// beside it, not under it, and compiles nothing.
#[test]
fn a_namespace_in_the_url_reads_its_sibling_namespaces() {
    for grpc in [false, true] {
        let server = Server::start(&["--grpc-listen", "127.0.0.1:0"]);
        let base = match grpc {
            false => server.url.clone(),
            true => server.grpc_url.clone().expect("a gRPC address"),
        };
        let sb = Sandbox::new();
        let module = sb.module("app", 3);
        // Names of several segments, siblings by their full names.
        let (_, main) = sb.build_sharing(&format!("{base}/team/main"), "main", &module, &[]);
        assert!(main.remote.uploads > 20, "{base}: {main:?}");
        let (out, pr) = sb.build_sharing(
            &format!("{base}/team/pr-7"),
            "pr-7",
            &module,
            &[("GRANARY_READ_NAMESPACES", "team/main")],
        );
        assert_eq!(
            compiled_packages(&out.stderr),
            Vec::<String>::new(),
            "{base}/team/pr-7 reads team/main: {pr:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(pr.remote.remote_errors, 0, "{base}: {pr:?}");
        // No request named a path or instance the server could not place
        // (`/team/pr-7/team/main/...` was answered 400, or INVALID_ARGUMENT).
        for status in ["status=\"400\"", "status=\"3\""] {
            let refused = server.metric("granary_requests_total", status);
            assert_eq!(refused, 0.0, "{base} {status}: {}", server.log());
        }
    }
}
