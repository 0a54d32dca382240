//! `granary serve` for the tests: started on a free loopback port with its
//! own directory, stopped (and its files removed) when dropped; and a
//! small raw HTTP/1.1 client for requests that well-behaved clients would
//! never send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::{granary, run_ok};

/// A running `granary serve`.
pub struct Server {
    child: Option<Child>,
    /// Holds the cache directory and the log, unless the test gave its own.
    _scratch: TempDir,
    log: PathBuf,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    /// `grpc://127.0.0.1:PORT` (or grpcs), when started with --grpc-listen.
    pub grpc_url: Option<String>,
    /// The token that [`Server::status`] and [`Server::metric`] send: with
    /// a tokens file, the server shows them only to a valid token.
    pub monitor_token: Option<String>,
}

impl Server {
    /// A server with a new directory and these extra arguments.
    pub fn start(args: &[&str]) -> Server {
        let scratch = scratch();
        let dir = scratch.path().join("cache");
        Server::start_in(scratch, &dir, args, &[]).unwrap_or_else(|log| panic!("{log}"))
    }

    /// A server on `dir`; `Err` holds its log if it exited instead of
    /// listening.
    pub fn start_in(
        scratch: TempDir,
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mut cmd = Command::new(granary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(args)
            .envs(envs.iter().copied());
        Server::spawn(scratch, dir, cmd)
    }

    /// A server whose directory `cache` is on a file system of its own of
    /// `size_mib`, of which `filler_mib` another program took: a tmpfs in
    /// a mount namespace of the server's (`unshare`, from util-linux), so
    /// that the disk fills before the server's limits.
    pub fn start_on_small_disk(size_mib: u32, filler_mib: u32, args: &[&str]) -> Server {
        let scratch = scratch();
        let mount = scratch.path().join("small-disk");
        std::fs::create_dir_all(&mount).unwrap();
        let dir = mount.join("cache");
        let script = format!(
            "mount -t tmpfs -o size={size_mib}m granary-test \"$0\" && \
             head -c {filler_mib}M /dev/zero > \"$0/filler\" && exec \"$@\""
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .arg(&mount)
            .arg(granary())
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .args(args);
        Server::spawn(scratch, &dir, cmd).unwrap_or_else(|log| {
            panic!("{log}\n(a small disk needs util-linux's unshare and user namespaces)")
        })
    }

    fn spawn(scratch: TempDir, dir: &Path, mut cmd: Command) -> Result<Server, String> {
        let log = scratch.path().join(format!("serve-{}.log", rand_suffix()));
        cmd.env_remove("GRANARY_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("granary serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Whole lines only: the server may be halfway through one.
            let written = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            let listening = written
                .lines()
                .find(|line| line.contains("listening on"))
                .unwrap_or_default();
            if let Some(url) = listening
                .split_whitespace()
                .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            {
                let url = url.trim_end_matches(';').to_owned();
                let Ok(addr) = url.rsplit("//").next().unwrap().parse() else {
                    give_up(
                        &mut child,
                        format!("granary serve printed no address:\n{text}"),
                    )
                };
                let grpc_url = listening
                    .split_whitespace()
                    .find(|w| w.starts_with("grpc://") || w.starts_with("grpcs://"))
                    .map(|w| w.trim_end_matches(';').to_owned());
                return Ok(Server {
                    child: Some(child),
                    _scratch: scratch,
                    log,
                    dir: dir.to_owned(),
                    addr,
                    url,
                    grpc_url,
                    monitor_token: None,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("granary serve exited with {status}:\n{text}"));
            }
            if Instant::now() >= deadline {
                give_up(
                    &mut child,
                    format!("granary serve did not listen within 30 s:\n{text}"),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.monitor("/status");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The sum of a metric's samples whose labels contain `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = self.monitor("/metrics");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn monitor(&self, path: &str) -> (u16, Vec<u8>) {
        let bearer = self.monitor_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        request(self.addr, "GET", path, &headers, b"")
    }

    /// SIGTERM, then waits up to 30 s for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash; returns the scratch area for a restart.
    pub fn kill(mut self) -> TempDir {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        std::mem::replace(&mut self._scratch, scratch())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

pub fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("granary-serve-")
        .tempdir()
        .unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `granary serve-token` with `args`: the token and its tokens-file line.
pub fn serve_token(args: &[&str]) -> (String, String) {
    let out = run_ok(Command::new(granary()).arg("serve-token").args(args));
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` in {text}"))
            .to_owned()
    };
    (field("token: "), field("tokens file line: "))
}

/// One HTTP/1.1 request on a new connection; the status and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // One write, as HTTP clients send a small request: the body arrives
    // with the head (what the server's paths for small bodies expect). The
    // server may refuse before it reads the body, and close.
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    let _ = stream.write_all(&message);
    read_response(&mut stream)
}

/// Sends a GET on a new connection and returns the connection, for the
/// test to read the response at its own pace. `receive_buffer` shrinks the
/// socket's receive buffer, so that the server feels a slow reader at once
/// instead of after megabytes of kernel buffers.
pub fn send_get(addr: SocketAddr, path: &str, receive_buffer: Option<u32>) -> TcpStream {
    let mut stream = match receive_buffer {
        None => TcpStream::connect(addr).unwrap(),
        Some(size) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_recv_buffer_size(size)?;
                let stream = socket.connect(addr).await?.into_std()?;
                stream.set_nonblocking(false)?;
                std::io::Result::Ok(stream)
            })
            .unwrap(),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// Reads a response to the end of the connection.
pub fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    // A server that refuses a body early may reset the connection after
    // its answer; what arrived before counts.
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no response: {e}");
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, dechunk(&body));
    }
    (status, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 4 + size..];
    }
}

/// The blob files under the server's directory (`ac/` and `cas/`).
pub fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["ac", "cas"] {
        for shard in std::fs::read_dir(dir.join(kind)).into_iter().flatten() {
            for entry in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
    }
    files
}

/// A blob file of the server's directory, read: its key's hex and the
/// blob (`<hex>` is the blob, `<hex>.<size>.zst` one zstd frame of it).
pub fn read_blob_file(file: &Path) -> (String, Vec<u8>) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let stored = std::fs::read(file).unwrap();
    match name.split_once('.') {
        None => (name.to_owned(), stored),
        Some((hex, rest)) => {
            let size: usize = rest.strip_suffix(".zst").unwrap().parse().unwrap();
            let blob = zstd::decode_all(&stored[..]).unwrap();
            assert_eq!(blob.len(), size, "{name}");
            (hex.to_owned(), blob)
        }
    }
}

/// Files in the server's `tmp/`.
pub fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, Iterator::count)
}

/// A runtime for the raw HTTP/2 clients of the hostile tests.
pub fn h2_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/2 connection to `addr` from a client that reads nothing: its
/// streams' flow-control windows stay shut. The connection is to be
/// driven (spawned) by the caller.
pub async fn h2_reading_nothing(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2::client::Builder::new()
        .initial_window_size(0)
        .initial_connection_window_size(65_535)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap()
}

/// Stops a server a test gives up on, then fails the test: a panic alone
/// would leave it running.
fn give_up(child: &mut Child, why: String) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    panic!("{why}");
}
