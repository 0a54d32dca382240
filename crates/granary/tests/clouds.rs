//! The remote tier on Azure Blob Storage and Google Cloud Storage, as their
//! emulators serve them on loopback (Azurite, fake-gcs-server), with the
//! real go command: shared by two runners, refusing our credentials, and
//! dying mid-build. The S3 side of the same is tests/remote_s3.rs.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use granary_remote::{BlobStore, RemoteError};

use common::clouds::{Azurite, Cloud, FakeGcs, a_store_dying_mid_build_leaves_the_build_working};
use common::s3::Proxy;
use common::server::{Server, scratch};
use common::*;

/// `go build` of `module` by a runner with the empty local tier `cache`,
/// with the remote that `envs` set.
fn build(sb: &Sandbox, cache: &str, module: &Path, envs: &[(String, String)]) -> (Output, Stats) {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_, remote) = envs
        .iter()
        .find(|(k, _)| *k == "GRANARY_REMOTE")
        .expect("a remote");
    sb.build_sharing(remote, cache, module, &envs)
}

/// Runner A fills the store; runner B, with an empty local tier, compiles
/// nothing: every action comes from the store. Runner C, read-only, builds
/// a change and writes nothing.
fn two_runners_share(cloud: &impl Cloud) {
    let sb = Sandbox::new();
    let module = sb.module("shared", 4);
    let envs = cloud.envs("ci");
    let (a_out, a) = build(&sb, "runner-a", &module, &envs);
    assert!(!compiled_packages(&a_out.stderr).is_empty());
    assert!(a.remote.uploads > 10, "{a:?}");
    assert_eq!(a.remote.remote_off, "", "{a:?}");
    assert!(cloud.objects("ci/granary-v1/ac/") > 10);

    let (b_out, b) = build(&sb, "runner-b", &module, &envs);
    assert_eq!(
        compiled_packages(&b_out.stderr),
        Vec::<String>::new(),
        "{}",
        String::from_utf8_lossy(&b_out.stderr)
    );
    assert!(
        b.prefetch.prefetch_used + b.remote.remote_hits >= 10,
        "{b:?}"
    );
    assert_eq!(b.remote.remote_off, "", "{b:?}");
    let run = run_ok(&mut Command::new(sb.path("bin").join("runner-b")));
    assert!(String::from_utf8_lossy(&run.stdout).contains("SHARED-P3"));

    let stored = cloud.objects("ci/");
    let p1 = module.join("p1/p1.go");
    let source = std::fs::read_to_string(&p1).unwrap();
    std::fs::write(&p1, source.replace("shared-p1", "changed-p1")).unwrap();
    age_tree(&module, Duration::from_secs(2 * 3600));
    let mut read_only = envs.clone();
    read_only.push(("GRANARY_READ_ONLY".into(), "true".into()));
    let (c_out, c) = build(&sb, "runner-c", &module, &read_only);
    assert!(
        compiled_packages(&c_out.stderr).contains(&"example.com/shared/p1".to_owned()),
        "{}",
        String::from_utf8_lossy(&c_out.stderr)
    );
    assert_eq!(c.remote.uploads, 0, "{c:?}");
    assert_eq!(
        cloud.objects("ci/"),
        stored,
        "a read-only runner writes nothing"
    );
}

/// A store that refuses our credentials: one warning that names the
/// setting to change, nothing written, a build that works.
fn refused_credentials_give_advice(cloud: &impl Cloud, envs: &[(String, String)], setting: &str) {
    let sb = Sandbox::new();
    let module = sb.module("refused", 2);
    let (out, stats) = build(&sb, "cache", &module, envs);
    let warnings = warnings(&out.stderr);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("refused our credentials") && warnings[0].contains(setting),
        "{warnings:?}"
    );
    assert!(stats.remote.remote_off.contains("credentials"), "{stats:?}");
    assert!(stats.puts > 10 && stats.remote.uploads == 0, "{stats:?}");
    assert_eq!(cloud.objects("refused/"), 0);
    run_ok(&mut Command::new(sb.path("bin").join("cache")));
}

/// Two servers backed by one store: what a runner wrote through the first,
/// a runner with an empty local tier gets through the second, whose disk
/// was empty.
fn servers_share_a_backing_store(cloud: &impl Cloud) {
    let envs = cloud.envs("servers");
    let (_, backing) = envs.iter().find(|(k, _)| k == "GRANARY_REMOTE").unwrap();
    let serve_envs: Vec<(&str, &str)> = envs
        .iter()
        .filter(|(k, _)| k != "GRANARY_REMOTE")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let start = || {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        Server::start_in(scratch, &dir, &["--backing", backing], &serve_envs)
            .unwrap_or_else(|log| panic!("{log}"))
    };
    let (first, second) = (start(), start());
    let sb = Sandbox::new();
    let module = sb.module("backed", 3);
    let (_, a) = sb.build_sharing(&first.url, "runner-a", &module, &[]);
    assert!(a.remote.uploads > 10, "{a:?}");
    // Written behind: wait until the count stops moving.
    let mut written = -1.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = first.metric("granary_backing_uploads_total", "");
        if now == written && now > 10.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", first.log());
        written = now;
    }
    assert_eq!(first.metric("granary_backing_errors_total", ""), 0.0);
    assert_eq!(cloud.objects("servers/") as f64, written);

    let (b_out, _) = sb.build_sharing(&second.url, "runner-b", &module, &[]);
    assert_eq!(
        compiled_packages(&b_out.stderr),
        Vec::<String>::new(),
        "{}",
        String::from_utf8_lossy(&b_out.stderr)
    );
    assert!(second.metric("granary_backing_fetches_total", "") > 10.0);
}

fn read(blobs: &dyn BlobStore, key: &str) -> Option<Vec<u8>> {
    block_on(async {
        let body = blobs.get(key).await.unwrap()?;
        let chunks: Vec<Bytes> = body.try_collect().await.unwrap();
        Some(chunks.concat())
    })
}

/// What the engine asks of a store beyond small puts and gets, through
/// granary's own client: a streamed upload of several parts (Azure's
/// blocks, GCS's resumable pieces), one that fails halfway and leaves
/// nothing, listing with times, and deletion.
fn streams_lists_and_deletes(cloud: &impl Cloud) {
    let blobs = cloud.client("raw");
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, RemoteError>> = big
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let length = Some(big.len() as u64);
    block_on(blobs.put_stream("big/one", stream::iter(chunks).boxed(), length)).unwrap();
    assert!(
        read(&*blobs, "big/one") == Some(big),
        "the 20 MiB blob reads back whole"
    );

    let failing = vec![
        Ok(Bytes::from(vec![1u8; 9 << 20])),
        Err(RemoteError::LocalFile("the file changed".into())),
    ];
    let sent = block_on(blobs.put_stream("big/two", stream::iter(failing).boxed(), None));
    assert!(sent.is_err());
    assert!(
        !block_on(blobs.exists("big/two")).unwrap(),
        "nothing of a failed upload"
    );

    block_on(blobs.put("big/small", Bytes::from_static(b"small"))).unwrap();
    let mut listed = block_on(blobs.list("big/")).unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["big/one", "big/small"]);
    let age = SystemTime::now().duration_since(listed[0].modified);
    assert!(
        age.is_ok_and(|a| a < Duration::from_secs(300)),
        "{listed:?}"
    );

    block_on(blobs.delete("big/one")).unwrap();
    block_on(blobs.delete("big/one")).unwrap();
    assert!(!block_on(blobs.exists("big/one")).unwrap());
    assert_eq!(read(&*blobs, "big/one"), None);
    assert_eq!(read(&*blobs, "big/small").as_deref(), Some(&b"small"[..]));
    assert_eq!(cloud.objects("raw/"), 1);
}

#[test]
fn an_azure_container_streams_lists_and_deletes() {
    streams_lists_and_deletes(&Azurite::start());
}

#[test]
fn a_gcs_bucket_streams_lists_and_deletes() {
    streams_lists_and_deletes(&FakeGcs::start());
}

/// A GCS endpoint that takes connections and never answers: a miss of a
/// server backed by it waits the backing store's request timeout (10 s),
/// then fails, instead of hanging with every reader of that key.
#[test]
fn a_silent_gcs_backing_store_costs_a_miss_its_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let scratch = scratch();
    let dir = scratch.path().join("cache");
    let backing = format!("gs://{}/servers", clouds::CONTAINER);
    let server = Server::start_in(
        scratch,
        &dir,
        &["--backing", &backing],
        &[("GRANARY_GCS_ENDPOINT", &endpoint)],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    let absent = format!("/cas/{}", "ef".repeat(32));
    let started = std::time::Instant::now();
    let (status, _) = server::request(server.addr, "GET", &absent, &[], b"");
    let took = started.elapsed();
    assert_eq!(status, 502, "{}", server.log());
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[test]
fn servers_share_an_azure_container() {
    servers_share_a_backing_store(&Azurite::start());
}

#[test]
fn servers_share_a_gcs_bucket() {
    servers_share_a_backing_store(&FakeGcs::start());
}

#[test]
fn two_runners_share_an_azure_container() {
    two_runners_share(&Azurite::start());
}

#[test]
fn two_runners_share_a_gcs_bucket() {
    two_runners_share(&FakeGcs::start());
}

#[test]
fn a_wrong_azure_key_is_refused_with_advice() {
    let azurite = Azurite::start();
    let mut envs = azurite.envs("refused");
    let wrong_key = base64_simd::STANDARD.encode_to_string([7u8; 64]);
    for (key, value) in &mut envs {
        if key == "GRANARY_AZURE_ACCESS_KEY" {
            *value = wrong_key.clone();
        }
    }
    refused_credentials_give_advice(&azurite, &envs, "GRANARY_AZURE_ACCESS_KEY");
}

/// fake-gcs-server takes any credentials, so a proxy answers for it as
/// GCS answers a service account without access to the bucket.
#[test]
fn gcs_refusing_our_credentials_is_met_with_advice() {
    let gcs = FakeGcs::start();
    let proxy = Proxy::start(&gcs.endpoint, &["--fault", "deny"]);
    let mut envs = gcs.envs("refused");
    for (key, value) in &mut envs {
        if key == "GRANARY_GCS_ENDPOINT" {
            *value = proxy.endpoint.clone();
        }
    }
    refused_credentials_give_advice(&gcs, &envs, "GRANARY_GCS_CREDENTIALS");
}

#[test]
fn azurite_dying_mid_build_leaves_the_build_working() {
    a_store_dying_mid_build_leaves_the_build_working(Azurite::start());
}

#[test]
fn fake_gcs_dying_mid_build_leaves_the_build_working() {
    a_store_dying_mid_build_leaves_the_build_working(FakeGcs::start());
}

/// A key file that is no service-account key: one warning naming the
/// setting, and a build on the local tier alone.
#[test]
fn a_bad_gcs_key_file_is_named_and_the_build_stays_local() {
    let gcs = FakeGcs::start();
    let sb = Sandbox::new();
    let module = sb.module("keyfile", 1);
    let key_file = sb.path("key.json");
    std::fs::write(&key_file, "{\"type\": \"service_account\"}").unwrap();
    let out = sb
        .go_granary(
            &sb.path("cache"),
            &module,
            &sb.path("s.json"),
            &["build", "."],
        )
        .envs(gcs.envs("keyfile"))
        .env("GRANARY_GCS_CREDENTIALS", &key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings = warnings(&out.stderr);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("GRANARY_GCS_CREDENTIALS")
            && warnings[0].contains("service-account key")
            && warnings[0].contains("local cache only"),
        "{warnings:?}"
    );
    assert_eq!(gcs.objects("keyfile/"), 0);
}
