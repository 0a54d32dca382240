//! The dashboard of `granary serve` in a real browser: headless Chromium,
//! driven over the DevTools protocol, loads the page under its
//! Content-Security-Policy, shows what `/status` reports, and updates by
//! itself after a build writes through the server.
//!
//! `GRANARY_DASHBOARD_SCREENSHOT=docs/dashboard.png` keeps a screenshot of
//! the page at the end (how the one in docs/ is made).
#![cfg(unix)] // it sets file modes and starts Chromium in a process group; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use common::server::{Server, request, serve_token};
use serde_json::{Value, json};
use tempfile::TempDir;
use tungstenite::{Message, WebSocket};

/// How long one DevTools answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Chromium on PATH, or a failure that says how to install it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .expect(
            "the dashboard's test needs Chromium: `apt-get install chromium` \
             (bash scripts/setup.sh installs it)",
        )
}

/// A process group of its own, killed whole when dropped: Chromium forks a
/// zygote, renderers and helpers that would outlive their parent.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        self.0.wait().ok();
    }
}

/// A headless Chromium with a profile of its own, driven over the DevTools
/// protocol on loopback; killed, with its helpers, when dropped.
struct Browser {
    page: WebSocket<TcpStream>,
    // Dropped after the connection, before the profile is removed.
    _chromium: Group,
    _profile: TempDir,
    next_id: u64,
    /// Console errors, exceptions and policy violations seen so far.
    errors: Vec<String>,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let chromium = Command::new(chromium())
            .process_group(0)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--window-size=1280,1100",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Group)
            .expect("Chromium starts");
        // Connecting may fail: the group is already held, so it is killed.
        let page = connect_to_page(profile.path());
        let mut browser = Browser {
            page,
            _chromium: chromium,
            _profile: profile,
            next_id: 0,
            errors: Vec::new(),
        };
        for domain in ["Page", "Runtime", "Log", "Network"] {
            browser.call(&format!("{domain}.enable"), json!({}));
        }
        browser
    }

    /// Sends a DevTools command and waits for its answer, keeping the
    /// errors among the events that come first.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.page.send(Message::text(command.to_string())).unwrap();
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let message = match self.page.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => panic!("the DevTools connection broke: {e}"),
            };
            let message: Value = serde_json::from_str(message.as_str()).unwrap();
            if message["id"] == id {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].clone();
            }
            self.keep_error(&message);
        }
    }

    fn keep_error(&mut self, event: &Value) {
        let params = &event["params"];
        let error = match event["method"].as_str() {
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                params["entry"]["text"].to_string()
            }
            Some("Runtime.exceptionThrown") => params["exceptionDetails"].to_string(),
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                params["args"].to_string()
            }
            _ => return,
        };
        self.errors.push(error);
    }

    /// The value of a JavaScript expression in the page, or what it threw.
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        match result["exceptionDetails"].is_null() {
            true => Ok(result["result"]["value"].clone()),
            false => Err(result),
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|thrown| panic!("{expression}: {thrown}"))
    }

    /// Waits until `expression` is true in the page, at most `within`; until
    /// then it may throw (a page still loading has no body yet).
    fn wait_for(&mut self, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.try_eval(expression) != Ok(json!(true)) {
            assert!(
                Instant::now() < deadline,
                "not true within {within:?}: {expression}; the page says {:?}",
                self.try_eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A shown figure's exact value (the `data-value` of element `id`).
    fn figure(&mut self, id: &str) -> u64 {
        let value = self.eval(&format!("document.getElementById('{id}').dataset.value"));
        value
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("#{id} shows no figure: {value}"))
    }
}

/// The DevTools connection to the browser's first page: its port is in
/// the profile's `DevToolsActivePort` once it listens.
fn connect_to_page(profile: &Path) -> WebSocket<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).unwrap_or_default();
        if let Some(port) = text.lines().next().and_then(|l| l.parse::<u16>().ok()) {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let (code, body) = request(address, "GET", "/json/list", &[], b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let targets: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let page = targets
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target");
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    tungstenite::client(page, stream).unwrap().0
}

/// The status line and headers of a GET of `path` without credentials,
/// lower-cased.
fn head_of(address: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: granary\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    head.to_lowercase().replace("http/1.1", "HTTP/1.1")
}

fn basic(token: &str) -> String {
    let credentials = base64_simd::STANDARD.encode_to_string(format!("ops:{token}"));
    format!("Basic {credentials}")
}

#[test]
fn the_dashboard_shows_the_servers_figures_and_follows_a_build() {
    let scratch = tempfile::tempdir().unwrap();
    let (writer, write_line) = serve_token(&["--scope", "write", "--name", "ci"]);
    let (reader, read_line) = serve_token(&["--scope", "read", "--name", "ops"]);
    let tokens = scratch.path().join("tokens");
    std::fs::write(&tokens, format!("{write_line}\n{read_line}\n")).unwrap();
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&tokens, private).unwrap();
    let mut server = Server::start(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    server.monitor_token = Some(reader.clone());

    // Without a read token: a challenge a browser answers with a prompt.
    for path in ["/", "/dashboard.json"] {
        let head = head_of(server.addr, path);
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
        assert!(head.contains("www-authenticate: basic"), "{path}: {head}");
    }
    let wrong = request(
        server.addr,
        "GET",
        "/",
        &[("Authorization", &basic("gry_wrong"))],
        b"",
    );
    assert_eq!(wrong.0, 401);
    let (code, page) = request(
        server.addr,
        "GET",
        "/",
        &[("Authorization", &basic(&reader))],
        b"",
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&page).contains("<title>granary serve</title>"));

    let mut browser = Browser::start();
    browser.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": basic(&reader)}}),
    );
    browser.call("Page.navigate", json!({"url": format!("{}/", server.url)}));
    browser.wait_for(
        "Number(document.body.dataset.updates || 0) >= 1",
        Duration::from_secs(20),
    );
    let shown = |browser: &mut Browser| {
        [
            "ac-blobs",
            "cas-blobs",
            "disk-bytes",
            "max-size",
            "hard-limit",
            "evictions",
            "uploads",
        ]
        .map(|id| browser.figure(id))
    };
    let reported = |status: &Value| {
        [
            "ac_blobs",
            "cas_blobs",
            "bytes",
            "max_size",
            "hard_limit",
            "evicted",
            "uploads_in_progress",
        ]
        .map(|field| status[field].as_u64().unwrap())
    };
    assert_eq!(shown(&mut browser), reported(&server.status()));
    assert_eq!(browser.figure("cas-blobs"), 0, "a new server holds nothing");

    // A build writes through the server over HTTP, a fresh runner reads it
    // over gRPC; the page follows by itself.
    let sb = Sandbox::new();
    let module = sb.module("dash", 3);
    let token = [("GRANARY_TOKEN", writer.as_str())];
    sb.build_sharing(&server.url, "writer", &module, &token);
    let grpc = server.grpc_url.clone().expect("a gRPC listener");
    let (_, fresh) = sb.build_sharing(&grpc, "fresh", &module, &token);
    assert!(fresh.hits > 10, "{fresh:?}");
    let status = server.status();
    assert!(status["cas_blobs"].as_u64().unwrap() > 10, "{status}");
    let expected = status["cas_blobs"].to_string();
    let hits = server.metric("granary_hits_total", "kind=\"ac\"")
        + server.metric("granary_hits_total", "kind=\"cas\"");
    assert!(hits > 0.0);
    // Both builds are over, but the page may last have updated between them:
    // wait for an update that shows the fresh runner's reads too.
    browser.wait_for(
        &format!(
            "document.getElementById('cas-blobs').dataset.value === '{expected}' \
             && document.getElementById('hits').dataset.value === '{hits}'"
        ),
        Duration::from_secs(20),
    );
    assert_eq!(shown(&mut browser), reported(&server.status()));
    assert!(browser.figure("requests-http") > 10);
    assert!(browser.figure("requests-grpc") > 0);
    assert!(browser.figure("bytes-in") > 1000 && browser.figure("bytes-out") > 1000);
    assert_eq!(browser.figure("hits") as f64, hits);
    let namespaces = browser.eval("document.getElementById('namespaces').innerText");
    assert!(
        namespaces.as_str().unwrap().contains("(default)"),
        "{namespaces}"
    );
    let lines = browser.eval("document.querySelectorAll('#chart-disk polyline').length");
    assert_eq!(lines, json!(1));
    assert_eq!(
        browser.eval("document.getElementById('state').classList.contains('offline')"),
        json!(false)
    );

    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_simd::STANDARD
        .decode_to_vec(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot");
    if let Some(path) = std::env::var_os("GRANARY_DASHBOARD_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    // Nothing was blocked by the policy, nothing failed in the script.
    browser.eval("1");
    assert!(browser.errors.is_empty(), "{:?}", browser.errors);
    drop(browser);
    server.terminate();
}
