//! The `mecha` binary and one running `mecha run -c`: [`Mecha`].
//!
//! Every harness that runs the sidecar (`mecha-integration`'s `Sidecar`, `Mesh`, `BareSidecar`)
//! goes through [`Mecha::start`] / [`Mecha::spawn`], so they share one way to start it: the
//! config written into a temp dir, stdin a pipe with `MECHA_EXIT_ON_STDIN_EOF` (the sidecar never
//! outlives the test process, even one killed before `Drop` runs), stderr captured and printed
//! with the config when the test panics, a bounded wait on `/ready` (or `/healthz`), and a retry
//! on new ports when a start lost a race for its ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::http::{http_get, HttpResponse};
use crate::{metric_value, TempDir, STEP_TIMEOUT};

/// How long a sidecar gets to answer `/ready` 200 after exec.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start that lost a race for its ports is retried on new ones.
const PORT_ATTEMPTS: usize = 3;

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

/// `mecha run -c CONFIG` in `dir`, as [`Mecha`] starts it: stderr piped for the failure
/// report, and stdin a pipe with `MECHA_EXIT_ON_STDIN_EOF` so the sidecar never outlives the
/// test process (even one killed before `Drop` runs; the pipe lives in the `Child`).
pub fn mecha_run_command(config: &Path, dir: &Path) -> Command {
    mecha_run_command_wrapped(&[], config, dir)
}

/// [`mecha_run_command`] run through the command prefix `wrap` (nothing when empty), e.g.
/// `["ip", "netns", "exec", "<ns>"]` to run the sidecar inside a network namespace. The prefix
/// must exec the binary in its place (as `ip netns exec` does), so the child's pid is mecha's.
pub fn mecha_run_command_wrapped(wrap: &[String], config: &Path, dir: &Path) -> Command {
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(mecha_bin());
            cmd
        }
        None => Command::new(mecha_bin()),
    };
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
    let mut stdout = Drained::start(child.stdout.take());
    let mut stderr = Drained::start(child.stderr.take());
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
                stderr.finish()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.finish().into_bytes(),
        stderr: stderr.finish().into_bytes(),
    })
}

/// Collects a pipe's text on a thread.
struct Drained {
    text: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Drained {
    fn start<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let thread = pipe.map(|mut pipe| {
            let text = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    if let Ok(mut t) = text.lock() {
                        t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            })
        });
        Self { text, thread }
    }

    /// What was read so far.
    fn now(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits for EOF (call only once the process has exited) and returns everything read.
    fn finish(&mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.now()
    }
}

// === one running mecha ===

/// What [`Mecha::spawn`] runs: a config (written to `mecha.yaml` in `dir`), the admin listener
/// that config names, and extra environment variables.
#[derive(Debug)]
pub struct Launch {
    pub dir: TempDir,
    pub config: String,
    pub admin: SocketAddr,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// `config` in a new temp dir tagged `tag`, no extra environment.
    pub fn new(tag: &str, config: String, admin: SocketAddr) -> Self {
        Self {
            dir: TempDir::new(tag),
            config,
            admin,
            env: Vec::new(),
        }
    }
}

/// What [`Mecha::spawn`] waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `GET /ready` answers 200 (every component and listener is up).
    Ready,
    /// `GET /healthz` answers 200 (the process is up; readiness is not asked for, e.g. a
    /// sidecar started while its backend is down).
    Alive,
}

/// Why [`Mecha::spawn`] gave up; the message carries the config and mecha's stderr.
#[derive(Debug)]
pub struct StartError {
    /// mecha exited saying it could not listen: another process took a port between
    /// picking and binding it, so a start on new ports may work.
    pub port_taken: bool,
    pub message: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A running `mecha run -c <temp dir>/mecha.yaml`; SIGKILLed on drop unless
/// [`terminate`](Self::terminate) was called (then it gets a few seconds to exit by itself
/// first). When the test panicked, drop prints the config and mecha's stderr.
pub struct Mecha {
    child: Child,
    /// Held open for the process' life (`MECHA_EXIT_ON_STDIN_EOF`).
    _stdin: Option<ChildStdin>,
    stderr: Drained,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The config it runs with (the last one written).
    pub config: String,
    /// Named in the panic report, e.g. the runtime listener's address.
    pub label: String,
    dir: TempDir,
    terminated: bool,
    /// No panic report on drop (the failure was reported already).
    quiet: bool,
}

impl std::fmt::Debug for Mecha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mecha")
            .field("pid", &self.child.id())
            .field("admin", &self.admin)
            .finish()
    }
}

impl Mecha {
    /// Runs what `prepare` gives and waits for `wait`; a start that lost a race for its ports
    /// is retried with a new `prepare()` (pick the ports inside it). Panics with the config and
    /// mecha's stderr when it does not get there.
    pub async fn start(wait: Wait, prepare: impl FnMut() -> Launch) -> Mecha {
        Self::start_wrapped(wait, &[], prepare).await
    }

    /// [`Mecha::start`] with the command run through the prefix `wrap` (see
    /// [`mecha_run_command_wrapped`]), e.g. inside a network namespace.
    pub async fn start_wrapped(
        wait: Wait,
        wrap: &[String],
        mut prepare: impl FnMut() -> Launch,
    ) -> Mecha {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::spawn_wrapped(prepare(), wait, wrap).await {
                Ok(m) => return m,
                Err(e) if e.port_taken => last = e.message,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("mecha could not get free ports in {PORT_ATTEMPTS} attempts; last:\n{last}");
    }

    /// Runs `launch` once and waits (bounded by [`READY_TIMEOUT`]) for `wait`.
    pub async fn spawn(launch: Launch, wait: Wait) -> Result<Mecha, StartError> {
        Self::spawn_wrapped(launch, wait, &[]).await
    }

    /// [`Mecha::spawn`] with the command run through the prefix `wrap` (nothing when empty;
    /// see [`mecha_run_command_wrapped`]).
    pub async fn spawn_wrapped(
        launch: Launch,
        wait: Wait,
        wrap: &[String],
    ) -> Result<Mecha, StartError> {
        let Launch {
            dir,
            config,
            admin,
            env,
        } = launch;
        let path = dir.write("mecha.yaml", &config);
        let mut cmd = mecha_run_command_wrapped(wrap, &path, dir.path());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| StartError {
            port_taken: false,
            message: format!("spawn {cmd:?}: {e}"),
        })?;
        let stderr = Drained::start(child.stderr.take());
        let stdin = child.stdin.take();
        let mut mecha = Mecha {
            child,
            _stdin: stdin,
            stderr,
            admin,
            config,
            label: String::new(),
            dir,
            terminated: false,
            quiet: false,
        };
        match mecha.wait_for(wait).await {
            Ok(()) => Ok(mecha),
            Err(e) => {
                let exited = mecha.child.try_wait().ok().flatten().is_some();
                mecha.kill();
                let stderr = mecha.stderr_text();
                mecha.quiet = true;
                Err(StartError {
                    port_taken: exited && stderr.contains("cannot listen"),
                    message: format!(
                        "mecha did not become ready: {e:#}\n--- config ---\n{}\n--- mecha stderr ---\n{stderr}",
                        mecha.config
                    ),
                })
            }
        }
    }

    async fn wait_for(&mut self, wait: Wait) -> anyhow::Result<()> {
        let path = match wait {
            Wait::Ready => "/ready",
            Wait::Alive => "/healthz",
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("mecha exited before {path} answered 200: {status}");
            }
            let last = match tokio::time::timeout(
                Duration::from_secs(2),
                http_get(self.admin, path),
            )
            .await
            {
                Ok(Ok(r)) if r.status == 200 => return Ok(()),
                Ok(Ok(r)) => format!("{path} answered {}: {}", r.status, r.body),
                Ok(Err(e)) => format!("{path}: {e:#}"),
                Err(_) => format!("{path}: no answer within 2s"),
            };
            if Instant::now() >= deadline {
                bail!("{path} not 200 within {READY_TIMEOUT:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir holding `mecha.yaml` (and any files written beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `config` over `mecha.yaml` (the file mecha watches).
    pub fn write_config(&mut self, config: String) {
        self.dir.write("mecha.yaml", &config);
        self.config = config;
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stderr so far (all of it once it has exited).
    pub fn stderr_text(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_some() {
            self.stderr.finish()
        } else {
            self.stderr.now()
        }
    }

    /// Everything read from stderr so far, without waiting for the rest.
    pub fn stderr_now(&self) -> String {
        self.stderr.now()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("send {signal:?} to mecha {pid}: {e}"));
    }

    /// Sends SIGTERM (the process drains, then exits by itself); drop then waits a few
    /// seconds before it kills.
    pub fn terminate(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
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

    /// SIGKILLs the process (when still running) and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// `GET <path>` on the admin listener (bounded by [`STEP_TIMEOUT`]).
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        tokio::time::timeout(STEP_TIMEOUT, http_get(self.admin, path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} on {} timed out", self.admin))
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }

    /// Polls `/metrics` until `series` (name with labels, as printed) has a value for which
    /// `want` holds; returns that value. Metrics are recorded after the response is sent, so a
    /// scrape right after a call may not show it yet.
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

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = self.admin_get("/config_dump").await;
        assert_eq!(r.status, 200, "/config_dump: {}", r.body);
        r.json()
    }
}

impl Drop for Mecha {
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
        if std::thread::panicking() && !self.quiet {
            let stderr = self.stderr_text();
            eprintln!(
                "--- mecha (pid {}, admin {}{}) config ---\n{}\n--- mecha stderr ---\n{stderr}--- end of mecha stderr ---",
                self.child.id(),
                self.admin,
                if self.label.is_empty() { String::new() } else { format!(", {}", self.label) },
                self.config
            );
        }
    }
}
