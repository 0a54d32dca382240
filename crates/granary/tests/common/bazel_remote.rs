//! A real third-party cache server for the tests: bazel-remote, on free
//! loopback ports for HTTP and gRPC, with its data in a temporary directory.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::s3::free_ports;
use super::tool;

/// bazel-remote: from PATH, else from the repository's virtualenv. Fails the
/// test, saying how to install it, when there is none.
pub fn bazel_remote() -> &'static Path {
    static BAZEL_REMOTE: OnceLock<PathBuf> = OnceLock::new();
    BAZEL_REMOTE.get_or_init(|| {
        tool(
            "bazel-remote",
            "bazel-remote",
            "it builds github.com/buchgr/bazel-remote/v2 from the Go module proxy into .venv/bin",
        )
    })
}

/// A running bazel-remote.
pub struct BazelRemote {
    child: Option<Child>,
    dir: TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `grpc://127.0.0.1:PORT`.
    pub grpc_url: String,
}

impl BazelRemote {
    pub fn start() -> BazelRemote {
        BazelRemote::start_with(&[], false)
    }

    /// With extra arguments; `tls`: they make it serve TLS (its URLs are
    /// then https:// and grpcs://).
    pub fn start_with(args: &[&str], tls: bool) -> BazelRemote {
        let dir = tempfile::Builder::new()
            .prefix("granary-bazel-remote-")
            .tempdir()
            .expect("a temporary directory");
        let [port, grpc_port] = free_ports(2)[..] else {
            unreachable!("two ports asked for")
        };
        let log = std::fs::File::create(dir.path().join("bazel-remote.log")).unwrap();
        let child = Command::new(bazel_remote())
            .arg(format!("--dir={}", dir.path().join("data").display()))
            .arg("--max_size=1")
            .arg(format!("--http_address=127.0.0.1:{port}"))
            .arg(format!("--grpc_address=127.0.0.1:{grpc_port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bazel-remote starts");
        let mut server = BazelRemote {
            child: Some(child),
            dir,
            url: format!("http{}://127.0.0.1:{port}", if tls { "s" } else { "" }),
            grpc_url: format!("grpc{}://127.0.0.1:{grpc_port}", if tls { "s" } else { "" }),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpStream::connect(("127.0.0.1", grpc_port)).is_err()
        {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bazel-remote exited with {status}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "bazel-remote did not listen within 30 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bazel-remote.log")).unwrap_or_default()
    }
}

impl Drop for BazelRemote {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
