//! The REAPI gRPC face, end to end: a real Bazel against `granary serve`
//! (gRPC and HTTP), Go runners sharing a cache across the two protocols
//! and through bazel-remote's gRPC port, and the bad input a gRPC server
//! must refuse, sent with a raw tonic client.
#![cfg(unix)] // it sets the tokens file's mode; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, OutputFile, UpdateActionResultRequest,
    action_cache_client::ActionCacheClient, batch_update_blobs_request,
    capabilities_client::CapabilitiesClient, compressor,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use common::bazel_remote::BazelRemote;
use common::s3::{BUCKET, S3Server};
use common::server::{
    Server, h2_reading_nothing, h2_runtime, request, scratch, serve_token, sha256_hex, tmp_files,
};
use common::*;
use futures_util::StreamExt as _;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Bazel: from PATH, else from the repository's virtualenv.
fn bazel() -> &'static Path {
    static BAZEL: OnceLock<PathBuf> = OnceLock::new();
    BAZEL.get_or_init(|| {
        tool(
            "bazel",
            "Bazel 2.1.0",
            "it installs @bazel/bazel-linux_x64@2.1.0 from the npm registry into .venv",
        )
    })
}

/// `bazel --batch build //:out` in `workspace` with `--remote_cache=cache`.
fn bazel_build(sb: &Sandbox, workspace: &Path, cache: &str) -> Output {
    let out = Command::new(bazel())
        .arg("--batch")
        .arg(format!(
            "--output_user_root={}",
            sb.path("bazel-root").display()
        ))
        .args(["build", "//:out", "--remote_cache", cache])
        .arg("--remote_timeout=30")
        .current_dir(workspace)
        .env("HOME", sb.path("home"))
        .output()
        .expect("bazel runs");
    assert!(
        out.status.success(),
        "bazel build against {cache} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn bazel_clean(sb: &Sandbox, workspace: &Path) {
    run_ok(
        Command::new(bazel())
            .arg("--batch")
            .arg(format!(
                "--output_user_root={}",
                sb.path("bazel-root").display()
            ))
            .arg("clean")
            .current_dir(workspace)
            .env("HOME", sb.path("home")),
    );
}

#[test]
fn bazel_builds_against_granary_serve_over_grpc_and_http_and_hits_after_a_clean() {
    let server = Server::start(&["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc_url.clone().expect("a gRPC address in the log");
    for (protocol, cache) in [("grpc", grpc.as_str()), ("http", server.url.as_str())] {
        let sb = Sandbox::new();
        let workspace = sb.path("workspace");
        fs::create_dir_all(&workspace).unwrap();
        fs::create_dir_all(sb.path("home")).unwrap();
        fs::write(workspace.join("WORKSPACE"), "").unwrap();
        // A small output and one above the 4 MiB batch limit: batch calls
        // and ByteStream both ways.
        fs::write(
            workspace.join("BUILD"),
            format!(
                "genrule(\n  name = \"out\",\n  outs = [\"small.txt\", \"large.bin\"],\n  \
                 cmd = \"echo {protocol} > $(location small.txt); \
                 head -c 6000000 /dev/urandom > $(location large.bin)\",\n)\n"
            ),
        )
        .unwrap();
        let first = bazel_build(&sb, &workspace, cache);
        let bytes = |name: &str| fs::read(workspace.join("bazel-bin").join(name)).unwrap();
        let (small, large) = (bytes("small.txt"), bytes("large.bin"));
        assert_eq!(large.len(), 6_000_000);
        assert!(
            !String::from_utf8_lossy(&first.stderr).contains("remote cache hit"),
            "{protocol}: the first build cannot hit"
        );
        bazel_clean(&sb, &workspace);
        let second = bazel_build(&sb, &workspace, cache);
        let log = String::from_utf8_lossy(&second.stderr);
        assert!(
            log.contains("1 remote cache hit"),
            "{protocol}: no remote cache hit after a clean:\n{log}\n{}",
            server.log()
        );
        assert_eq!(bytes("small.txt"), small, "{protocol}");
        assert!(bytes("large.bin") == large, "{protocol}: large.bin differs");
    }
    // Both went through the gRPC face once each way.
    for method in ["UpdateActionResult", "GetActionResult", "Write", "Read"] {
        assert!(
            server.metric("granary_requests_total", &format!("method=\"{method}\"")) >= 1.0,
            "no {method} call counted"
        );
    }
}

/// `go build` of `module` by a runner with the empty local tier `cache`,
/// sharing the cache at `remote`.
fn go_build(sb: &Sandbox, remote: &str, cache: &str, module: &Path) -> (Output, Stats) {
    sb.build_sharing(remote, cache, module, &[("GRANARY_SCOPE", "grpc")])
}

/// Runner a fills the cache through `writer`; runner b, with an empty
/// local tier, reads it through `reader` and compiles nothing. Their
/// statistics.
fn second_runner_compiles_nothing(
    writer: &str,
    reader: &str,
    log: impl Fn() -> String,
) -> (Stats, Stats) {
    let sb = Sandbox::new();
    let module = sb.module("shared", 3);
    let (_, a) = go_build(&sb, writer, "runner-a", &module);
    assert!(a.puts > 20, "{a:?}");
    assert_eq!(a.remote.uploads, a.puts, "{a:?}");
    assert_eq!(
        (a.remote.uploads_dropped, a.remote.remote_errors),
        (0, 0),
        "{a:?}\n{}",
        log()
    );
    let (out, b) = go_build(&sb, reader, "runner-b", &module);
    assert_eq!(
        compiled_packages(&out.stderr),
        Vec::<String>::new(),
        "{writer} then {reader}"
    );
    assert!(b.hits > 20 && b.misses <= 1, "{b:?}");
    assert_eq!(
        b.errors + b.corrupt_entries + b.remote.remote_errors + b.remote.remote_damaged,
        0,
        "{b:?}\n{}",
        log()
    );
    assert_eq!(
        fs::read(sb.path("bin/runner-a")).unwrap(),
        fs::read(sb.path("bin/runner-b")).unwrap()
    );
    (a, b)
}

#[test]
fn a_runner_reads_over_grpc_what_another_wrote_over_http_in_the_same_instance() {
    let server = Server::start(&["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc_url.clone().unwrap();
    // An instance name of several segments, as Buildbarn's and BuildBuddy's
    // users write them.
    let (a, b) = second_runner_compiles_nothing(
        &format!("{}/team/main", server.url),
        &format!("{grpc}/team/main"),
        || server.log(),
    );
    // The HTTP runner published no packs; the gRPC runner asked for its
    // entries in the server's batch requests, not one by one.
    assert_eq!(a.prefetch.packs_uploaded, 0, "{a:?}");
    assert!(
        b.prefetch.prefetch_fetched > 20 && b.prefetch.prefetch_requests <= 3,
        "{b:?}"
    );
    // gRPC is answered on the HTTP port too.
    let on_http_port = server.url.replace("http://", "grpc://");
    second_runner_compiles_nothing(&on_http_port, &on_http_port, || server.log());
}

#[test]
fn go_runners_share_bazel_remote_over_grpc_and_read_it_over_http() {
    let remote = BazelRemote::start();
    let (a, _) =
        second_runner_compiles_nothing(&remote.grpc_url, &remote.grpc_url, || remote.log());
    // bazel-remote refuses granary serve's batch request: the writer keeps
    // packs in its CAS for fresh runners.
    assert!(a.prefetch.packs_uploaded > 0, "{a:?}");
    // What went in over gRPC comes out over HTTP.
    let sb = Sandbox::new();
    let module = sb.module("shared", 3);
    go_build(&sb, &remote.grpc_url, "runner-a", &module);
    let (out, b) = go_build(&sb, &remote.url, "runner-b", &module);
    assert_eq!(compiled_packages(&out.stderr), Vec::<String>::new());
    assert!(
        b.hits > 20 && b.remote.remote_errors == 0,
        "{b:?}\n{}",
        remote.log()
    );
}

#[test]
fn a_grpc_server_that_is_not_there_costs_the_build_a_warning_only() {
    let port = s3::free_ports(1)[0];
    let sb = Sandbox::new();
    let module = sb.module("alone", 2);
    let started = Instant::now();
    let (out, s) = go_build(&sb, &format!("grpc://127.0.0.1:{port}"), "runner", &module);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(!s.remote.remote_off.is_empty(), "{s:?}");
    assert_eq!((s.remote.remote_hits, s.errors), (0, 0), "{s:?}");
    assert!(!compiled_packages(&out.stderr).is_empty());
}

/// A private authority's certificate, and the certificate and key it
/// signed for the server (127.0.0.1) and for a client, as PEM files in
/// `dir`: (ca, server cert, server key, client cert, client key).
fn private_authority(dir: &Path) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    fs::create_dir_all(dir).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    };
    let leaf = |usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        (
            params.signed_by(&key, &ca).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (server, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth);
    [
        write("ca.pem", ca.pem()),
        write("server.pem", server),
        write("server-key.pem", server_key),
        write("client.pem", client),
        write("client-key.pem", client_key),
    ]
}

#[test]
fn grpcs_with_a_private_authority_a_token_in_a_header_and_client_certificates() {
    let sb = Sandbox::new();
    let [ca, server_cert, server_key, client_cert, client_key] = private_authority(&sb.path("pki"));
    let (writer, write_line) = serve_token(&["--scope", "write", "--name", "ci"]);
    let (reader, read_line) = serve_token(&["--scope", "read", "--name", "dev"]);
    let tokens = sb.path("tokens");
    fs::write(&tokens, format!("{write_line}\n{read_line}\n")).unwrap();
    let mut permissions = fs::metadata(&tokens).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    fs::set_permissions(&tokens, permissions).unwrap();
    let server = Server::start(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--tls-cert",
        server_cert.to_str().unwrap(),
        "--tls-key",
        server_key.to_str().unwrap(),
    ]);
    let module = sb.module("tls", 2);
    let build = |cache: &str, remote: &str, envs: &[(&str, &str)]| {
        let stats_file = sb.path(&format!("{cache}.json"));
        let out = run_ok(
            sb.go_granary(
                &sb.path(cache),
                &module,
                &stats_file,
                &["build", "-x", "-o", "/dev/null", "."],
            )
            .env("GRANARY_REMOTE", remote)
            .env("GRANARY_REMOTE_CA", &ca)
            .envs(envs.iter().copied()),
        );
        (out, stats(&stats_file))
    };
    // The write token as a header of the runner's choosing, as servers
    // with credentials of their own want them.
    let grpcs = server.url.replace("https://", "grpcs://");
    let header = format!("authorization=Bearer {writer}");
    let (_, a) = build("runner-a", &grpcs, &[("GRANARY_REMOTE_HEADERS", &header)]);
    assert!(
        a.puts > 10 && a.remote.uploads == a.puts,
        "{a:?}\n{}",
        server.log()
    );
    assert_eq!(a.remote.remote_errors, 0, "{a:?}");
    let (out, b) = build(
        "runner-b",
        &grpcs,
        &[("GRANARY_TOKEN", &reader), ("GRANARY_READ_ONLY", "true")],
    );
    assert_eq!(compiled_packages(&out.stderr), Vec::<String>::new());
    assert_eq!(b.remote.remote_errors, 0, "{b:?}");

    // bazel-remote that admits only clients with a certificate of its
    // authority.
    let remote = BazelRemote::start_with(
        &[
            &format!("--tls_cert_file={}", server_cert.display()),
            &format!("--tls_key_file={}", server_key.display()),
            &format!("--tls_ca_file={}", ca.display()),
        ],
        true,
    );
    let certified = [
        ("GRANARY_REMOTE_CERT", client_cert.to_str().unwrap()),
        ("GRANARY_REMOTE_KEY", client_key.to_str().unwrap()),
    ];
    let (_, c) = build("runner-c", &remote.grpc_url, &certified);
    assert!(
        c.puts > 10 && c.remote.uploads == c.puts,
        "{c:?}\n{}",
        remote.log()
    );
    assert_eq!(c.remote.remote_errors, 0, "{c:?}");
    // Without a certificate, the build goes on without the remote, and
    // says what to set.
    let (out, d) = build("runner-d", &remote.grpc_url, &[]);
    assert_eq!(d.remote.remote_hits, 0, "{d:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--remote-cert"), "{stderr}");
}

// Bad input, through a raw client.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn digest(bytes: &[u8]) -> Digest {
    Digest {
        hash: sha256_hex(bytes),
        size_bytes: bytes.len() as i64,
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn upload(name: &str, offset: usize, data: &[u8], finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_owned(),
        write_offset: offset as i64,
        finish_write: finish,
        data: data.to_vec(),
    }
}

/// With `--write-through`, each blob of a BatchUpdateBlobs is in the
/// bucket before the answer (sent a few at once, answered in order): the
/// other server on the bucket reads every one at once.
#[test]
fn a_batch_written_through_is_read_at_once_through_another_server() {
    let s3 = S3Server::start();
    let envs = s3.backing_envs();
    let backing = format!("s3://{BUCKET}/batch-through");
    let start = || {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        let args = ["--backing", &backing, "--write-through"];
        Server::start_in(scratch, &dir, &args, &envs).unwrap()
    };
    let (writer, reader) = (start(), start());
    let blobs: Vec<Vec<u8>> = (0..40u8)
        .map(|i| pattern(100 + 50 * usize::from(i), i))
        .collect();
    let answer = runtime().block_on(async {
        let mut cas = ContentAddressableStorageClient::new(channel(&writer).await);
        cas.batch_update_blobs(BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|blob| batch_update_blobs_request::Request {
                    digest: Some(digest(blob)),
                    data: blob.clone(),
                    compressor: compressor::Value::Identity as i32,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert_eq!(answer.responses.len(), blobs.len());
    for (blob, response) in blobs.iter().zip(&answer.responses) {
        assert_eq!(response.digest.as_ref(), Some(&digest(blob)), "in order");
        assert_eq!(response.status.as_ref().unwrap().code, Code::Ok as i32);
        let path = format!("/cas/{}", sha256_hex(blob));
        assert!(request(reader.addr, "GET", &path, &[], b"") == (200, blob.clone()));
    }
    assert_eq!(writer.metric("granary_backing_uploads_total", ""), 40.0);
}

#[test]
fn blobs_that_do_not_match_their_digest_are_refused_and_not_stored() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let mut cas = ContentAddressableStorageClient::new(channel(&server).await);
        let good = b"a blob".to_vec();
        let mut lying_size = digest(&good);
        lying_size.size_bytes += 1;
        let wrong_hash = digest(b"another blob");
        let blob = |digest: Digest, data: Vec<u8>, compressor: compressor::Value| {
            batch_update_blobs_request::Request {
                digest: Some(digest),
                data,
                compressor: compressor as i32,
            }
        };
        let answer = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![
                    blob(digest(&good), good.clone(), compressor::Value::Identity),
                    blob(
                        lying_size.clone(),
                        good.clone(),
                        compressor::Value::Identity,
                    ),
                    blob(
                        wrong_hash.clone(),
                        good.clone(),
                        compressor::Value::Identity,
                    ),
                    // zstd that decompresses to more than the digest says.
                    blob(
                        digest(b"tiny"),
                        zstd::bulk::compress(&vec![0; 1 << 20], 3).unwrap(),
                        compressor::Value::Zstd,
                    ),
                ],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let codes: Vec<i32> = answer
            .responses
            .iter()
            .map(|r| r.status.as_ref().unwrap().code)
            .collect();
        let invalid = Code::InvalidArgument as i32;
        assert_eq!(codes, [0, invalid, invalid, invalid], "{answer:?}");
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![digest(&good), lying_size, wrong_hash, digest(b"tiny")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(
            missing.len(),
            3,
            "only the good blob is stored: {missing:?}"
        );

        // A digest that is no SHA-256, and instance names that are no
        // namespaces.
        for (instance, hash) in [
            ("", "ABC".to_owned()),
            ("", "0A".repeat(32)),
            ("../etc", sha256_hex(&good)),
            ("a b", sha256_hex(&good)),
            ("team/blobs", sha256_hex(&good)),
            ("team//main", sha256_hex(&good)),
            ("compressed-blobs", sha256_hex(&good)),
        ] {
            let status = cas
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: instance.to_owned(),
                    blob_digests: vec![Digest {
                        hash,
                        size_bytes: 1,
                    }],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{instance}: {status:?}"
            );
        }

        // More than a batch may carry, asked for or sent.
        let big = digest(&vec![7; 3 << 20]);
        let status = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![big.clone(), big.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let status = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![
                    blob(big.clone(), vec![7; 3 << 20], compressor::Value::Identity),
                    blob(big.clone(), vec![7; 3 << 20], compressor::Value::Identity),
                ],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
            ),
            "{status:?}"
        );

        // An action result must decode; what is stored is found over HTTP
        // under the instance's path, the same bytes.
        let mut ac = ActionCacheClient::new(channel(&server).await);
        let action = digest(b"an action");
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(digest(&good)),
                ..Default::default()
            }],
            ..Default::default()
        };
        ac.update_action_result(UpdateActionResultRequest {
            instance_name: "team/main".into(),
            action_digest: Some(action.clone()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let (status, body) = request(
            server.addr,
            "GET",
            &format!("/team/main/ac/{}", action.hash),
            &[],
            b"",
        );
        assert_eq!((status, body), (200, result.encode_to_vec()));
        let (status, _) = request(
            server.addr,
            "GET",
            &format!("/ac/{}", action.hash),
            &[],
            b"",
        );
        assert_eq!(status, 404, "instances have action caches of their own");
        let (status, _) = request(
            server.addr,
            "GET",
            &format!("/main/ac/{}", action.hash),
            &[],
            b"",
        );
        assert_eq!(
            status, 404,
            "`team/main` is one name, not `main` under `team`"
        );
        let status = ac
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    });
    assert!(server.metric("granary_rejected_writes_total", "") >= 3.0);
}

#[test]
fn a_bytestream_write_that_breaks_off_resumes_and_one_that_stalls_ends_within_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "2s"]);
    runtime().block_on(async {
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let d = digest(&blob);
        let name = format!("uploads/resume-1/blobs/{}/{}", d.hash, d.size_bytes);
        let mut bytestream = ByteStreamClient::new(channel(&server).await);
        let half = blob.len() / 2;

        // The first half, then the stream ends without finish_write.
        let status = bytestream
            .write(futures_util::stream::iter(vec![
                upload(&name, 0, &blob[..half / 2], false),
                upload("", half / 2, &blob[half / 2..half], false),
            ]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        let committed = bytestream
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (committed.committed_size, committed.complete),
            (half as i64, false)
        );
        // A reader meanwhile follows the upload, and gets the whole blob
        // once it completes.
        let follower = tokio::spawn(read_all(
            bytestream.clone(),
            ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                ..Default::default()
            },
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Resuming elsewhere than where it stopped is refused...
        let status = bytestream
            .write(futures_util::stream::iter(vec![upload(
                &name,
                half + 1,
                &blob[half + 1..],
                true,
            )]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        // ... from there, it completes.
        let written = bytestream
            .write(futures_util::stream::iter(vec![upload(
                &name,
                half,
                &blob[half..],
                true,
            )]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(written.committed_size, blob.len() as i64);
        assert!(
            follower.await.unwrap() == blob,
            "the follower got the whole blob"
        );
        let read = read_all(
            bytestream.clone(),
            ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: 1000,
                read_limit: 5000,
            },
        )
        .await;
        assert!(read == blob[1000..6000], "offset and limit honoured");
        let compressed = read_compressed(bytestream.clone(), &d).await;
        assert!(zstd::decode_all(&compressed[..]).unwrap() == blob);

        // A compressed upload whose bytes are not the digest's.
        let other = vec![9u8; 100_000];
        let lie = format!(
            "uploads/u-2/compressed-blobs/zstd/{}/{}",
            d.hash,
            other.len()
        );
        let status = bytestream
            .write(futures_util::stream::iter(vec![upload(
                &lie,
                0,
                &zstd::bulk::compress(&other, 3).unwrap(),
                true,
            )]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // A write that sends half and then nothing: refused once the idle
        // timeout passes, not held for ever.
        let d2 = digest(&blob[..half]);
        let stalled = format!("uploads/stall/blobs/{}/{}", d2.hash, d2.size_bytes);
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        sender
            .send(upload(&stalled, 0, &blob[..1000], false))
            .await
            .unwrap();
        let started = Instant::now();
        let status = bytestream
            .write(tokio_stream_of(receiver))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        drop(sender);
    });
}

/// A blob the server stores compressed: BatchReadBlobs and a
/// `compressed-blobs` Read send it as stored, a plain Read decodes it,
/// from any offset; a small one also once it is kept in memory.
#[test]
fn blobs_stored_compressed_are_read_as_stored_or_decoded() {
    let server = Server::start(&[]);
    for blob in [compressible(600_000, 4), compressible(12_000, 5)] {
        blobs_stored_compressed_are_read_back(&server, &blob);
    }
    // A small blob that does not shrink: kept in memory as it is, and
    // read from there at any offset.
    let plain = pattern(5_000, 6);
    let d = digest(&plain);
    assert_eq!(
        request(server.addr, "PUT", &format!("/cas/{}", d.hash), &[], &plain).0,
        200
    );
    let kept_before = server.metric("granary_memory_cache_reads_total", "");
    runtime().block_on(async {
        let bytestream = ByteStreamClient::new(channel(&server).await);
        let reads = [(0, 0), (0, 0), (100, 50), (4_999, 0), (5_000, 0)];
        read_at_offsets(&bytestream, &d, &plain, &reads).await;
    });
    assert!(server.metric("granary_memory_cache_reads_total", "") >= kept_before + 4.0);
}

fn blobs_stored_compressed_are_read_back(server: &Server, blob: &[u8]) {
    let d = digest(blob);
    assert_eq!(
        request(server.addr, "PUT", &format!("/cas/{}", d.hash), &[], blob).0,
        200
    );
    runtime().block_on(async {
        let channel = channel(server).await;
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let bytestream = ByteStreamClient::new(channel);
        for accepted in [vec![], vec![compressor::Value::Zstd as i32]] {
            let zstd = !accepted.is_empty();
            let answer = cas
                .batch_read_blobs(BatchReadBlobsRequest {
                    digests: vec![d.clone()],
                    acceptable_compressors: accepted,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let [read] = &answer.responses[..] else {
                panic!("{answer:?}")
            };
            assert_eq!(read.status.as_ref().unwrap().code, 0);
            let data = match zstd {
                true => {
                    assert_eq!(read.compressor, compressor::Value::Zstd as i32);
                    assert!(read.data.len() < blob.len() / 3);
                    zstd::decode_all(&read.data[..]).unwrap()
                }
                false => read.data.clone(),
            };
            assert!(data == *blob, "zstd: {zstd}");
        }
        let compressed = read_compressed(bytestream.clone(), &d).await;
        assert!(compressed.len() < blob.len() / 3);
        assert!(zstd::decode_all(&compressed[..]).unwrap() == blob);
        let len = blob.len() as i64;
        let reads = [(0, 0), (1, 10), (len / 2, 0), (len - 1, 5)];
        read_at_offsets(&bytestream, &d, blob, &reads).await;
    });
}

/// Plain ByteStream Reads of `blob`, whose digest is `d`, from each
/// (offset, limit), checked against the blob.
async fn read_at_offsets(
    bytestream: &ByteStreamClient<Channel>,
    d: &Digest,
    blob: &[u8],
    reads: &[(i64, i64)],
) {
    for &(offset, limit) in reads {
        let read = read_all(
            bytestream.clone(),
            ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: offset,
                read_limit: limit,
            },
        )
        .await;
        let end = match limit {
            0 => blob.len(),
            limit => (offset + limit).min(blob.len() as i64) as usize,
        };
        assert!(read == blob[offset as usize..end], "from {offset}");
    }
}

/// A `compressed-blobs/zstd/` Read of the blob of `d`, whole.
async fn read_compressed(bytestream: ByteStreamClient<Channel>, d: &Digest) -> Vec<u8> {
    let resource_name = format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes);
    read_all(
        bytestream,
        ReadRequest {
            resource_name,
            ..Default::default()
        },
    )
    .await
}

/// Everything a ByteStream Read answers.
async fn read_all(mut bytestream: ByteStreamClient<Channel>, request: ReadRequest) -> Vec<u8> {
    let answer = bytestream.read(request).await.unwrap().into_inner();
    answer
        .map(|r| r.unwrap().data)
        .collect::<Vec<_>>()
        .await
        .concat()
}

/// The messages `receiver` gets, as a stream.
fn tokio_stream_of<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[test]
fn tokens_decide_who_may_read_and_write_over_grpc() {
    let (write_token, write_line) = serve_token(&["--scope", "write", "--name", "ci"]);
    let (read_token, read_line) = serve_token(&["--scope", "read", "--name", "dev"]);
    let scratch = scratch();
    let tokens = scratch.path().join("tokens");
    fs::write(&tokens, format!("{write_line}\n{read_line}\n")).unwrap();
    let mut permissions = fs::metadata(&tokens).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    fs::set_permissions(&tokens, permissions).unwrap();
    let mut server = Server::start(&["--tokens", tokens.to_str().unwrap()]);
    server.monitor_token = Some(read_token.clone());
    runtime().block_on(async {
        let channel = channel(&server).await;
        let mut capabilities = CapabilitiesClient::new(channel.clone());
        let mut ac = ActionCacheClient::new(channel);
        let update = |token: Option<&str>| {
            with_token(
                UpdateActionResultRequest {
                    action_digest: Some(digest(b"action")),
                    action_result: Some(ActionResult::default()),
                    ..Default::default()
                },
                token,
            )
        };
        for token in [None, Some("gry_not-a-token")] {
            let status = ac.update_action_result(update(token)).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{token:?}: {status:?}"
            );
            let status = capabilities
                .get_capabilities(with_token(GetCapabilitiesRequest::default(), token))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        let status = ac
            .update_action_result(update(Some(&read_token)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        ac.update_action_result(update(Some(&write_token)))
            .await
            .unwrap();
        let may_update = |token: &str| {
            let mut capabilities = capabilities.clone();
            let request = with_token(GetCapabilitiesRequest::default(), Some(token));
            async move {
                let answer = capabilities.get_capabilities(request).await.unwrap();
                let cache = answer.into_inner().cache_capabilities.unwrap();
                assert!(
                    cache
                        .supported_compressors
                        .contains(&(compressor::Value::Zstd as i32))
                );
                cache
                    .action_cache_update_capabilities
                    .unwrap()
                    .update_enabled
            }
        };
        assert!(!may_update(&read_token).await);
        assert!(may_update(&write_token).await);
    });
    assert_eq!(
        server.metric("granary_rejected_writes_total", "reason=\"unauthorized\""),
        2.0
    );
}

// Hostile clients, second round: each of these once crashed the server,
// pinned its memory or held its disk.

/// Digest sizes come from the client: four of 2^62 once added up to 0,
/// passed the batch limit, and the zstd decode asked for 2^62 bytes of
/// memory, which aborted the server; a read of a large blob beside two
/// sizes that wrap the sum read the whole blob into memory.
#[test]
fn batch_sizes_that_wrap_are_refused_before_anything_is_read_or_decoded() {
    let server = Server::start(&["--max-blob", "256MiB"]);
    let big = pattern(64 << 20, 1);
    let big_digest = digest(&big);
    assert_eq!(
        request(
            server.addr,
            "PUT",
            &format!("/cas/{}", big_digest.hash),
            &[],
            &big
        )
        .0,
        200
    );
    drop(big);
    runtime().block_on(async {
        let mut cas = ContentAddressableStorageClient::new(channel(&server).await);
        // A frame that does not say its size, as a stream's does.
        let mut frame = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut frame, 3).unwrap();
        std::io::Write::write_all(&mut encoder, b"x").unwrap();
        encoder.finish().unwrap();
        let huge = Digest {
            hash: sha256_hex(b"x"),
            size_bytes: 1 << 62,
        };
        let status = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: (0..4)
                    .map(|_| batch_update_blobs_request::Request {
                        digest: Some(huge.clone()),
                        data: frame.clone(),
                        compressor: compressor::Value::Zstd as i32,
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        let before = peak_rss_kib(server.pid());
        // 64 MiB + (2^63 - 1) + (2^63 - 64 MiB + 101) is 100 modulo 2^64.
        let wrapping = [
            big_digest.clone(),
            Digest {
                hash: sha256_hex(b"a"),
                size_bytes: i64::MAX,
            },
            Digest {
                hash: sha256_hex(b"b"),
                size_bytes: i64::MIN.wrapping_sub(64 << 20).wrapping_add(101),
            },
        ];
        assert!(wrapping[2].size_bytes > 0);
        let status = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: wrapping.to_vec(),
                acceptable_compressors: vec![compressor::Value::Zstd as i32],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let grew = peak_rss_kib(server.pid()).saturating_sub(before);
        assert!(grew < 32 << 10, "the server's peak grew by {grew} KiB");
    });
    assert_eq!(request(server.addr, "GET", "/healthz", &[], b"").0, 200);
}

/// A BatchReadBlobs answer holds up to 4 MiB until the client reads it.
/// A client that opens a hundred such calls on one connection and reads
/// nothing (a zero flow-control window) gets two answers under way, as an
/// HTTP `/batch` does; the others wait for a turn, for the idle timeout at
/// most, and are refused. It once took the server to gigabytes.
#[test]
fn grpc_batch_answers_take_turns_like_http_batches() {
    use prost::Message as _;
    let server = Server::start(&["--idle-timeout", "3s"]);
    let blob = pattern(4_000_000, 2);
    let blob_digest = digest(&blob);
    assert_eq!(
        request(
            server.addr,
            "PUT",
            &format!("/cas/{}", blob_digest.hash),
            &[],
            &blob
        )
        .0,
        200
    );
    let call = BatchReadBlobsRequest {
        digests: vec![blob_digest],
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(call.len() as u32).to_be_bytes());
    framed.extend_from_slice(&call);
    let before = peak_rss_kib(server.pid());
    let runtime = h2_runtime();
    let addr = server.addr;
    let (opened, refused, hostile) = runtime.block_on(async move {
        let (client, connection) = h2_reading_nothing(addr).await;
        let driver = tokio::spawn(connection);
        let mut answers = Vec::new();
        for _ in 0..100 {
            let ready = tokio::time::timeout(Duration::from_millis(500), client.clone().ready());
            let Ok(Ok(mut ready)) = ready.await else {
                break;
            };
            let request = http::Request::post(format!(
                "http://{addr}/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
            let (response, mut send) = ready.send_request(request, false).unwrap();
            send.send_data(bytes::Bytes::from(framed.clone()), true)
                .unwrap();
            answers.push(response);
        }
        let opened = answers.len();
        // Those without a turn are refused once the idle timeout passes:
        // headers only, which need no window.
        let statuses = futures_util::future::join_all(answers.into_iter().map(|answer| {
            tokio::time::timeout(Duration::from_secs(6), async move {
                // Kept, read or not: a response dropped resets its stream.
                let response = answer.await.ok()?;
                let status = response.headers().get("grpc-status").cloned();
                Some((status, response))
            })
        }))
        .await;
        let refused = statuses
            .iter()
            .filter(|status| matches!(status, Ok(Some((Some(code), _))) if code == "8"))
            .count();
        (opened, refused, (statuses, driver))
    });
    let grew = peak_rss_kib(server.pid()).saturating_sub(before);
    assert!(opened >= 100, "the server took only {opened} calls");
    assert!(
        grew < 48 << 10,
        "the server holds {grew} KiB more for one connection that reads nothing"
    );
    assert!(
        refused >= 90,
        "{refused} of {opened} calls refused for want of a turn"
    );
    let counted = server.metric(
        "granary_requests_total",
        "method=\"BatchReadBlobs\",kind=\"cas\",status=\"8\"",
    );
    assert_eq!(counted, refused as f64, "the refusals are counted");
    // Meanwhile another client's batch is answered.
    runtime.block_on(async {
        let mut cas = ContentAddressableStorageClient::new(channel(&server).await);
        let answer = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![digest(&blob)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.responses[0].data == blob);
    });
    drop(hostile);
    drop(runtime);
}

/// A Write is held to the pace an HTTP PUT keeps: one that announces a
/// large blob and then sends empty messages ends after the idle timeout,
/// and neither its announcement nor its stall holds room that others need.
/// A Write that breaks off is kept for twice the idle timeout, then a
/// timer gives back its file and room, with no further gRPC traffic.
#[test]
fn a_write_that_sends_no_bytes_holds_no_room_and_ends_by_its_pace() {
    let server = Server::start(&[
        "--idle-timeout",
        "2s",
        "--max-size",
        "64MiB",
        "--max-blob",
        "60MiB",
    ]);
    let announced = 60 << 20;
    let fake = Digest {
        hash: sha256_hex(b"never sent"),
        size_bytes: announced,
    };
    runtime().block_on(async {
        let mut bytestream = ByteStreamClient::new(channel(&server).await);
        let name = format!("uploads/stall/blobs/{}/{}", fake.hash, announced);
        // The first message names the blob; then one empty message every
        // half second, for ever.
        let first = upload(&name, 0, b"", false);
        let empties = futures_util::stream::iter(std::iter::once(first)).chain(
            futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some((upload("", 0, b"", false), ()))
            }),
        );
        let started = Instant::now();
        let stalled = tokio::spawn(async move { bytestream.write(empties).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Meanwhile a 40 MiB PUT finds room: the announcement holds none.
        let addr = server.addr;
        let body = pattern(40 << 20, 3);
        let put = tokio::task::spawn_blocking(move || {
            request(
                addr,
                "PUT",
                &format!("/cas/{}", sha256_hex(&body)),
                &[],
                &body,
            )
            .0
        });
        assert_eq!(put.await.unwrap(), 200);
        let status = tokio::time::timeout(Duration::from_secs(10), stalled)
            .await
            .expect("the Write still runs after 10 s of empty messages")
            .unwrap()
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "empty messages kept the Write for {took:?}"
        );

        // Writes that break off after some bytes are kept, then reaped by
        // the timer alone.
        let mut bytestream = ByteStreamClient::new(channel(&server).await);
        let part = pattern(64 << 10, 4);
        for n in 0..8 {
            let name = format!("uploads/broken-{n}/blobs/{}/{}", fake.hash, 1 << 20);
            let status = bytestream
                .write(futures_util::stream::iter(vec![upload(
                    &name, 0, &part, false,
                )]))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
        }
    });
    let kept = server.status();
    assert!(
        kept["reserved_bytes"].as_u64().unwrap() >= 8 * (64 << 10),
        "{kept}"
    );
    // Twice the idle timeout, and a tick of the timer.
    wait_until(
        "the broken-off uploads are reaped",
        Duration::from_secs(8),
        || server.status()["reserved_bytes"] == 0,
    );
    assert_eq!(server.status()["uploads_in_progress"], 0);
    assert_eq!(tmp_files(&server.dir), 0);
}
