//! Test support for Mecha's end-to-end tests: spawn the real `mecha` binary on free loopback
//! ports and talk to it the way users do.
//!
//! - [`Sidecar`]: writes a config into a temp dir, runs `mecha run -c`, waits for `GET /ready`
//!   to answer 200, kills the process on drop (and prints its stderr when the test panicked).
//! - [`Sidecar::client`]: the generated tonic `RuntimeClient` connected to it.
//! - [`http_get`] / [`http_raw`]: a tiny HTTP/1.1 client over a plain TCP stream.
//! - [`raw_grpc`]: one gRPC exchange over the `h2` crate directly, for requests a tonic client
//!   will not send (garbage bodies, truncated frames, tiny `grpc-timeout`s, unknown paths).
//! - [`mecha_bin`], [`run_mecha`]: the binary and one-shot CLI runs (`mecha validate …`).
//!
//! Every sidecar has its own ports, config and temp dir, so tests run in parallel.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{BufMut, Bytes, BytesMut};
use mecha_proto::runtime::v1::runtime_client::RuntimeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

pub use mecha_proto::runtime::v1 as pb;

pub mod mesh_support;
pub mod redis_support;

/// How long a sidecar gets to answer `/ready` 200 after exec.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A generous bound for any single await in a test that could otherwise hang.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The components every test sidecar has unless it is given others: the embedded default's
/// (same names and types as `configs/default.yaml`), with the memory pub/sub's processing
/// timeout and redelivery interval short so redelivery tests finish quickly.
pub const TEST_COMPONENTS: &str = r#"  - name: statestore
    type: state.memory
  - name: pubsub
    type: pubsub.memory
    metadata:
      processingTimeout: 1s
      redeliverInterval: 100ms
  - name: lockstore
    type: lock.memory
  - name: sequencer
    type: sequencer.memory
  - name: configstore
    type: configuration.memory
  - name: secretstore
    type: secretstores.local.env
  - name: helloworld
    type: hello.helloworld
"#;

/// Names of [`TEST_COMPONENTS`].
pub const TEST_COMPONENT_NAMES: &[&str] = &[
    "statestore",
    "pubsub",
    "lockstore",
    "sequencer",
    "configstore",
    "secretstore",
    "helloworld",
];

// === the binary ===

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `mecha` binary: `$MECHA_BIN`, else `<target>/debug/mecha` (`$CARGO_TARGET_DIR` or
/// `<workspace>/target`). When that does not exist, `cargo build --bin mecha` runs once.
pub fn mecha_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MECHA_BIN") {
            return PathBuf::from(p);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("mecha");
        if !bin.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!(
                "{} is missing: running cargo build --bin mecha",
                bin.display()
            );
            let status = Command::new(cargo)
                .args(["build", "--bin", "mecha"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build --bin mecha");
            assert!(status.success(), "cargo build --bin mecha failed: {status}");
        }
        bin
    })
    .clone()
}

/// Runs `mecha <args>` to completion (bounded by `timeout`: a run that does not exit is
/// killed and reported as an error).
pub fn run_mecha(args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    run_with_timeout(
        Command::new(mecha_bin())
            .args(args)
            .current_dir(workspace_root()),
        timeout,
    )
}

/// `mecha run -c CONFIG` in `dir`, as every harness here starts it: stderr piped for the
/// failure report, and stdin a pipe with `MECHA_EXIT_ON_STDIN_EOF` so the sidecar never
/// outlives the test process (even one killed before `Drop` runs; the pipe lives in the
/// `Child`).
pub fn mecha_run_command(config: &std::path::Path, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(mecha_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .env("MECHA_EXIT_ON_STDIN_EOF", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env(
            "MECHA_LOG",
            std::env::var("MECHA_LOG").unwrap_or_else(|_| "info".to_owned()),
        );
    cmd
}

/// Runs `cmd` to completion with stdout and stderr captured; a run still going after
/// `timeout` is killed and reported as an error.
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process for exit; std has no wait-with-timeout"
)]
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = drain_in_background(child.stdout.take());
    let stderr = drain_in_background(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not exit within {timeout:?}; stderr:\n{}",
                stderr.take()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.take().into_bytes(),
        stderr: stderr.take().into_bytes(),
    })
}

/// Collects a pipe's text on a thread.
struct Drained {
    text: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Drained {
    /// Waits for EOF (the process has exited) and returns everything read.
    fn take(mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let text = self.text.lock().map(|t| t.clone()).unwrap_or_default();
        text
    }
}

fn drain_in_background<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> Drained {
    let text = Arc::new(Mutex::new(String::new()));
    let thread = pipe.map(|mut pipe| {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut t) = text.lock() {
                            t.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            }
        })
    });
    Drained { text, thread }
}

// === ports and temp dirs ===

/// A loopback port nobody listens on now, never handed out twice by this process.
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Mutex::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if taken.lock().map(|mut t| t.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

/// A loopback address with a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mecha-it-{tag}-{}-{n}-{}",
            std::process::id(),
            SystemNanos::now()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the dir; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct SystemNanos;

impl SystemNanos {
    fn now() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }
}

// === the sidecar ===

/// How to start a [`Sidecar`].
#[derive(Debug, Clone)]
pub struct SidecarBuilder {
    components: String,
    env: Vec<(String, String)>,
    files: Vec<(String, String)>,
    drain_seconds: u64,
    max_message: usize,
    app_id: String,
    listener_yaml: String,
    capability_yaml: String,
}

impl Default for SidecarBuilder {
    fn default() -> Self {
        Self {
            components: TEST_COMPONENTS.to_owned(),
            env: Vec::new(),
            files: Vec::new(),
            drain_seconds: 5,
            max_message: 4 * 1024 * 1024,
            app_id: "app".to_owned(),
            listener_yaml: String::new(),
            capability_yaml: String::new(),
        }
    }
}

impl SidecarBuilder {
    /// Replaces the `components:` list (YAML list items indented by two spaces). `{dir}` is
    /// replaced by the sidecar's temp dir (where [`file`](Self::file)s are written).
    pub fn components(mut self, yaml: &str) -> Self {
        self.components = yaml.to_owned();
        self
    }

    /// Appends components to the list (same format as [`components`](Self::components)).
    pub fn extra_components(mut self, yaml: &str) -> Self {
        self.components.push_str(yaml);
        self
    }

    /// Sets an environment variable of the sidecar process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes a file into the sidecar's temp dir before it starts.
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_owned(), contents.to_owned()));
        self
    }

    /// `shutdown.drain_seconds`.
    pub fn drain_seconds(mut self, secs: u64) -> Self {
        self.drain_seconds = secs;
        self
    }

    /// The capability filter's `max_request_message_bytes`.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// `app.id`.
    pub fn app_id(mut self, id: &str) -> Self {
        self.app_id = id.to_owned();
        self
    }

    /// Adds `key: value` to the runtime listener (e.g. `max_connections: 2`).
    pub fn listener_setting(mut self, key: &str, value: &str) -> Self {
        self.listener_yaml
            .push_str(&format!("\x20   {key}: {value}\n"));
        self
    }

    /// Adds `key: value` to the runtime listener's capability filter (e.g. `api_token: t`).
    pub fn capability_setting(mut self, key: &str, value: &str) -> Self {
        self.capability_yaml
            .push_str(&format!("\x20       {key}: {value}\n"));
        self
    }

    fn config_yaml(&self, dir: &Path, grpc: SocketAddr, admin: SocketAddr) -> String {
        let components = self.components.replace("{dir}", &dir.display().to_string());
        format!(
            "threads: 1\n\
             app:\n  id: {app}\n\
             admin:\n  address: {admin}\n\
             shutdown:\n  drain_seconds: {drain}\n\
             listeners:\n\
             \x20 - name: runtime\n\
             \x20   address: {grpc}\n\
             {listener}\
             \x20   filters:\n\
             \x20     - type: capability\n\
             \x20       apis: [layotto]\n\
             \x20       max_request_message_bytes: {max}\n\
             {capability}\
             components:\n{components}",
            app = self.app_id,
            drain = self.drain_seconds,
            max = self.max_message,
            listener = self.listener_yaml,
            capability = self.capability_yaml,
        )
    }

    /// Starts the sidecar and waits until `/ready` answers 200. Panics (with the sidecar's
    /// stderr) when it does not get there. A start that loses a race for its ports (another
    /// process took one between picking and binding) is retried on new ports.
    pub async fn start(self) -> Sidecar {
        let mut last = String::new();
        for _attempt in 0..3 {
            match self.try_start().await {
                Ok(s) => return s,
                Err(StartFailure::PortTaken(msg)) => last = msg,
                Err(StartFailure::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("sidecar could not get free ports in 3 attempts; last:\n{last}");
    }

    async fn try_start(&self) -> Result<Sidecar, StartFailure> {
        let dir = TempDir::new("sidecar");
        for (name, contents) in &self.files {
            dir.write(name, contents);
        }
        let grpc_addr = free_addr();
        let admin_addr = free_addr();
        let config = self.config_yaml(dir.path(), grpc_addr, admin_addr);
        let config_path = dir.write("mecha.yaml", &config);
        let mut cmd = mecha_run_command(&config_path, dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| StartFailure::Other(format!("spawn {}: {e}", mecha_bin().display())))?;
        let stderr = drain_in_background(child.stderr.take());
        let stdin = child.stdin.take();
        let mut sidecar = Sidecar {
            child,
            _stdin: stdin,
            stderr: Some(stderr),
            grpc_addr,
            admin_addr,
            config,
            dir,
            terminated: false,
        };
        match sidecar.wait_ready().await {
            Ok(()) => Ok(sidecar),
            Err(e) => {
                let exited = sidecar.child.try_wait().ok().flatten().is_some();
                sidecar.kill();
                let stderr = sidecar.stderr_text();
                let msg = format!(
                    "sidecar did not become ready: {e:#}\n--- config ---\n{}\n--- mecha stderr ---\n{stderr}",
                    sidecar.config
                );
                sidecar.stderr = None;
                if exited && stderr.contains("cannot listen") {
                    Err(StartFailure::PortTaken(msg))
                } else {
                    Err(StartFailure::Other(msg))
                }
            }
        }
    }
}

enum StartFailure {
    PortTaken(String),
    Other(String),
}

/// A running `mecha run -c <temp config>`; SIGKILLed on drop unless [`terminate`](Self::terminate)
/// was called (then it gets a few seconds to exit by itself first).
pub struct Sidecar {
    child: Child,
    /// Held open for the sidecar's life (`MECHA_EXIT_ON_STDIN_EOF`).
    _stdin: Option<std::process::ChildStdin>,
    stderr: Option<Drained>,
    /// The runtime listener (gRPC over h2c, HTTP/1.1 on the same port).
    pub grpc_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The config it runs with.
    pub config: String,
    dir: TempDir,
    terminated: bool,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("pid", &self.child.id())
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

impl Sidecar {
    /// A sidecar with [`TEST_COMPONENTS`].
    pub async fn start() -> Sidecar {
        Self::builder().start().await
    }

    pub fn builder() -> SidecarBuilder {
        SidecarBuilder::default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The sidecar's temp dir (config and [`SidecarBuilder::file`]s).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://<grpc_addr>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("mecha exited before it was ready: {status}");
            }
            match tokio::time::timeout(Duration::from_secs(2), http_get(self.admin_addr, "/ready"))
                .await
            {
                Ok(Ok(r)) if r.status == 200 => return Ok(()),
                Ok(Ok(r)) => last = format!("/ready answered {}: {}", r.status, r.body),
                Ok(Err(e)) => last = format!("/ready: {e:#}"),
                Err(_) => last = "/ready: no answer within 2s".to_owned(),
            }
            if Instant::now() >= deadline {
                bail!("not ready within {READY_TIMEOUT:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A channel to the runtime listener (h2c, prior knowledge).
    pub async fn channel(&self) -> Channel {
        let endpoint = Endpoint::from_shared(self.grpc_url())
            .expect("endpoint url")
            .connect_timeout(Duration::from_secs(5));
        tokio::time::timeout(STEP_TIMEOUT, endpoint.connect())
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.grpc_addr))
    }

    /// The generated Layotto `Runtime` client, connected.
    pub async fn client(&self) -> RuntimeClient<Channel> {
        RuntimeClient::new(self.channel().await)
    }

    /// `GET <path>` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        tokio::time::timeout(STEP_TIMEOUT, http_get(self.admin_addr, path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} timed out"))
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }

    /// Polls `/metrics` until `series` (name with labels, as printed) has a value for which
    /// `want` holds; returns that value. The API metrics are recorded after the response is
    /// sent, so a scrape right after a call may not show it yet.
    pub async fn wait_metric(&self, series: &str, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let text = self.metrics().await;
            let value = metric_value(&text, series);
            if let Some(v) = value.filter(|v| want(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {series} never reached the expected value (last: {value:?}); /metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (the process drains, then exits by itself).
    pub fn terminate(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
        self.terminated = true;
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stderr so far (all of it once it has exited).
    pub fn stderr_text(&mut self) -> String {
        let exited = self.child.try_wait().ok().flatten().is_some();
        match &mut self.stderr {
            Some(d) if exited => {
                if let Some(t) = d.thread.take() {
                    let _ = t.join();
                }
                d.text.lock().map(|t| t.clone()).unwrap_or_default()
            }
            Some(d) => d.text.lock().map(|t| t.clone()).unwrap_or_default(),
            None => String::new(),
        }
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    #[allow(
        clippy::disallowed_methods,
        reason = "Drop is synchronous; polls the child for exit after SIGTERM"
    )]
    fn drop(&mut self) {
        if self.terminated {
            // The test asked for a graceful stop: give it a moment before forcing it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
        if std::thread::panicking() {
            let stderr = self.stderr_text();
            eprintln!(
                "--- mecha (pid {}, grpc {}, admin {}) config ---\n{}\n--- mecha stderr ---\n{stderr}--- end of mecha stderr ---",
                self.child.id(),
                self.grpc_addr,
                self.admin_addr,
                self.config
            );
        }
    }
}

// === metrics text ===

/// The value of one series in Prometheus/OpenMetrics text: `series` is the name with its
/// labels exactly as printed, e.g. `mecha_api_requests_total{api="layotto",method="SayHello"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

// === HTTP/1.1 ===

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `GET path` with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

/// Sends `request` (a complete HTTP/1.1 request) and reads one response.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<HttpResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_http_response(&buf, false)? {
            return Ok(resp);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return parse_http_response(&buf, true)?
                .ok_or_else(|| anyhow!("connection closed mid-response: {:?}", lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `Ok(None)` while more bytes are needed; `eof` means no more will come.
fn parse_http_response(buf: &[u8], eof: bool) -> anyhow::Result<Option<HttpResponse>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = &buf[head_end + 4..];
    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match dechunk(body) {
            Some(b) => b,
            None if eof => bail!("truncated chunked body: {:?}", lossy(body)),
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            if eof {
                bail!("body shorter than content-length {len}: {:?}", lossy(body));
            }
            return Ok(None);
        }
        body[..len].to_vec()
    } else if eof || status == 204 || status == 304 {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body: lossy(&body),
    }))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// === raw gRPC over h2 ===

/// One gRPC message frame: compression flag 0, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(payload.len()).expect("payload fits u32"));
    b.put_slice(payload);
    b.freeze()
}

/// A protobuf message as one gRPC frame.
pub fn grpc_message<M: prost::Message>(m: &M) -> Bytes {
    grpc_frame(&m.encode_to_vec())
}

/// What a raw h2 exchange answered.
#[derive(Debug, Clone, Default)]
pub struct RawGrpcResponse {
    pub http_status: u16,
    pub headers: http::HeaderMap,
    pub data: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl RawGrpcResponse {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only response.
    pub fn grpc_status(&self) -> Option<tonic::Code> {
        let v = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))?;
        let n: i32 = v.to_str().ok()?.parse().ok()?;
        Some(tonic::Code::from_i32(n))
    }

    /// `grpc-message`, percent-decoded.
    pub fn grpc_message(&self) -> String {
        let raw = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        percent_decode(raw)
    }
}

/// Decodes `%XX` escapes (gRPC's `grpc-message` encoding); malformed escapes stay as they are.
pub fn percent_decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens an h2 (prior knowledge) connection to `addr`.
pub async fn h2_connect(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (send, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One gRPC exchange over the `h2` crate: POST `path` with `content-type: application/grpc`,
/// `te: trailers` and `headers`, the request body `body`; the request stream ends after the
/// body when `end_stream`, else it stays open until the response is complete. Reads the
/// response head, every DATA frame and the trailers.
pub async fn raw_grpc(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    end_stream: bool,
) -> anyhow::Result<RawGrpcResponse> {
    raw_h2("POST", addr, path, headers, body, end_stream).await
}

/// Like [`raw_grpc`] with any HTTP method.
pub async fn raw_h2(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    end_stream: bool,
) -> anyhow::Result<RawGrpcResponse> {
    let send = h2_connect(addr).await?;
    let mut send = send.ready().await?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(())?;
    let (resp, mut stream) = send.send_request(req, false)?;
    if !body.is_empty() || end_stream {
        stream.send_data(body, end_stream)?;
    }
    let resp = resp.await?;
    let (parts, mut recv) = resp.into_parts();
    let mut out = RawGrpcResponse {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        ..Default::default()
    };
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.data.extend_from_slice(&chunk);
    }
    out.trailers = recv.trailers().await?;
    drop(stream);
    Ok(out)
}

/// Splits a gRPC response body into its messages' payloads.
pub fn grpc_payloads(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() < 5 + len {
            break;
        }
        out.push(data[5..5 + len].to_vec());
        data = &data[5 + len..];
    }
    out
}

// === small helpers for tests ===

/// `tokio::time::timeout(STEP_TIMEOUT, fut)` that panics naming `what` on timeout.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP_TIMEOUT:?}"))
}

/// A short description of a status for assertion messages.
pub fn describe(status: &tonic::Status) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:?}: {}", status.code(), status.message());
    s
}

/// Whether something accepts TCP connections on `addr` now.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .expect("parse")
            .expect("complete");
        assert_eq!((r.status, r.body.as_str()), (200, "abc"));
        let partial = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", false)
            .expect("parse");
        assert!(partial.is_none());
        let r = parse_http_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .expect("parse")
        .expect("complete");
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
    }

    #[test]
    fn metric_values_are_found_by_exact_series() {
        let text = "a_total{x=\"1\"} 3\na_total{x=\"12\"} 5\nb 1.5\n";
        assert_eq!(metric_value(text, "a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(metric_value(text, "a_total{x=\"12\"}"), Some(5.0));
        assert_eq!(metric_value(text, "b"), Some(1.5));
        assert_eq!(metric_value(text, "c"), None);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("%C3%BC!"), "\u{fc}!");
        assert_eq!(percent_decode("bad%zz%2"), "bad%zz%2");
    }

    #[test]
    fn frames_round_trip() {
        let mut body = grpc_frame(b"abc").to_vec();
        body.extend_from_slice(&grpc_frame(b""));
        assert_eq!(grpc_payloads(&body), vec![b"abc".to_vec(), Vec::new()]);
    }
}
