//! Test support for the Redis component tests: a real redis-server, never a mock.
//!
//! - `REDIS_URL` set (e.g. `redis://127.0.0.1:6379/0`): tests that do not stop Redis use that
//!   server; they isolate their keys with unique prefixes and topics and never flush anything.
//! - `REDIS_URL` unset: each test binary starts one throw-away redis-server on a free port, in a
//!   temporary directory, with AOF on (`appendfsync always`).
//! - Tests that stop or restart Redis always start their own throw-away server, whatever
//!   `REDIS_URL` says: they must never touch a server someone else uses.
//! - The binary is `$REDIS_SERVER` or `redis-server` on PATH; when it is missing and we run as
//!   root, it is installed with apt-get (as `scripts/test-redis.sh` does).
//!
//! Every server runs under a small `sh` watchdog holding our stdin pipe: however the test process
//! ends (even killed), the pipe closes and the watchdog kills redis-server, so no server outlives
//! its tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mecha_capabilities::{BuildContext, ComponentSpec};

/// Runs redis-server (`$0`, with the arguments that follow) and kills it (SIGKILL: as abrupt as
/// a crash) when stdin closes, then removes its data directory unless told `keep` first (a
/// restart).
const WATCHDOG: &str = r#"
"$0" "$@" &
pid=$!
read what
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$what" = keep ] || rm -rf "$MECHA_REDIS_DIR"
exit 0
"#;

static INSTALL: Once = Once::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name no other test (in this or a parallel run) uses: `<what>-<pid>-<n>-<nanos>`.
pub fn unique(what: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{what}-{}-{n}-{nanos}", std::process::id())
}

fn redis_server_bin() -> String {
    if let Ok(bin) = std::env::var("REDIS_SERVER") {
        return bin;
    }
    let found = || {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    INSTALL.call_once(|| {
        if found() {
            return;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        assert!(
            root,
            "redis-server is not installed and we are not root to install it: install it, set \
             REDIS_SERVER to its path, or set REDIS_URL to a running server"
        );
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !apt(&["install", "-y", "-q", "redis-server"]) {
            assert!(apt(&["update", "-q"]), "apt-get update failed");
            assert!(
                apt(&["install", "-y", "-q", "redis-server"]),
                "apt-get install redis-server failed"
            );
        }
    });
    "redis-server".to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `true` once the server answers PING with PONG (not LOADING: AOF replay is done).
fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A throw-away redis-server: free port, temporary directory, AOF with `appendfsync always`.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    pub fn start() -> Self {
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(unique("mecha-redis-test"));
            std::fs::create_dir_all(&dir).expect("create redis test dir");
            let mut server = Self {
                port: free_port(),
                dir,
                watchdog: None,
            };
            if server.spawn() {
                return server;
            }
            // Most likely another process took the port between our probe and redis' bind:
            // try another (dropping `server` stops it and removes its directory).
        }
        panic!("redis-server did not start 5 times; is redis-server runnable?");
    }

    /// Starts redis-server on this port and directory; `true` once it answers.
    #[allow(
        clippy::disallowed_methods,
        reason = "synchronous test harness polling redis-server, which has no readiness signal"
    )]
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(redis_server_bin())
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args([
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "redis.log",
            ])
            .env("MECHA_REDIS_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server under sh");
        let stdin = child.stdin.take().expect("watchdog stdin");
        self.watchdog = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if answers_ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `host:port`, as `redisHost` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills redis-server (SIGKILL) and waits until it is gone; its data stays for a restart.
    #[allow(
        clippy::disallowed_methods,
        reason = "synchronous test harness waiting for redis-server to exit"
    )]
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"keep\n");
            drop(stdin);
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port with the same data directory (AOF replayed).
    #[allow(
        clippy::disallowed_methods,
        reason = "synchronous test harness polling redis-server, which has no readiness signal"
    )]
    pub fn start_again(&mut self) {
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            self.stop();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Redis the non-destructive tests use: `REDIS_URL`, or this binary's throw-away server.
pub fn shared_host() -> String {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => SHARED.get_or_init(RedisServer::start).host(),
    }
}

/// A plain redis-rs connection for looking behind a component's back.
pub fn raw(host: &str) -> redis::Connection {
    let url = if host.contains("://") {
        host.to_owned()
    } else {
        format!("redis://{host}")
    };
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("raw redis connection")
}

/// A component spec on `host` with a unique key prefix (isolates parallel tests).
pub fn spec(name: &str, kind: &str, host: &str) -> ComponentSpec {
    ComponentSpec::new(name, kind)
        .with("redisHost", host)
        .with("keyPrefix", &unique("t"))
}

pub fn ctx() -> BuildContext {
    BuildContext {
        app_id: "test-app".to_owned(),
    }
}
