//! A real redis-server for the tests, never a mock.
//!
//! - [`RedisServer`]: a throw-away redis-server on a free port, in a temp dir, with AOF on
//!   (`appendfsync always`: an acknowledged write is on disk before Redis answers); stopped on
//!   drop. [`stop`](RedisServer::stop) (SIGKILL, data kept), [`start_again`](RedisServer::start_again)
//!   (same port and dir: the AOF is replayed), [`restart`](RedisServer::restart),
//!   [`pause`](RedisServer::pause) / [`resume`](RedisServer::resume) (SIGSTOP / SIGCONT: a
//!   stalled server), [`log_tail`](RedisServer::log_tail).
//! - [`shared_host`]: `REDIS_URL` when set, else one throw-away server per test binary; for the
//!   tests that never stop Redis (they isolate their keys with [`unique`] prefixes). Tests that
//!   stop or restart Redis always start their own [`RedisServer`], whatever `REDIS_URL` says.
//!
//! Every redis-server runs under a small `sh` watchdog holding a pipe from this process: however
//! the test process ends (even killed), the pipe closes and the watchdog kills redis-server, so
//! no server outlives its tests.
//!
//! The binary is `$REDIS_SERVER` or `redis-server` on PATH; when it is missing and we run as
//! root, it is installed with apt-get (as `scripts/ensure-deps.sh` does).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use crate::free_port;
pub use crate::unique;

/// Runs redis-server (`$0`, with the arguments that follow) and kills it (SIGKILL: as abrupt as
/// a crash) when stdin closes, then removes its data directory unless told `keep` first (a
/// restart). A background command of a non-interactive shell reads /dev/null, so only the
/// watchdog's `read` sees our pipe.
const WATCHDOG: &str = r#"
"$0" "$@" &
pid=$!
read what
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$what" = keep ] || rm -rf "$MECHA_REDIS_DIR"
exit 0
"#;

fn redis_server_bin() -> String {
    static INSTALL: Once = Once::new();
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
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
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

/// A throw-away redis-server: free port, temporary directory, AOF with `appendfsync always`
/// (an acknowledged write is on disk before Redis answers). Killed on drop, its dir removed.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.watchdog.is_some())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server and waits (bounded) until it answers PING.
    pub fn start() -> Self {
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(unique("mecha-it-redis"));
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
        reason = "test harness: waits for a child redis-server process, outside any runtime"
    )]
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(redis_server_bin())
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args([
                "--logfile",
                "redis.log",
                "--pidfile",
                &format!("{dir}/redis.pid"),
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
            if let Some((child, _)) = &mut self.watchdog {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `127.0.0.1:<port>`, as `redisHost` takes it and as error messages print the address.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills redis-server (SIGKILL, like a crash) and waits until its port refuses connections;
    /// its data directory (the AOF) stays for [`start_again`](Self::start_again).
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness: waits for a child redis-server process, outside any runtime"
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

    /// Starts the server again on the same port with the same data directory (AOF replayed) and
    /// waits until it answers PING.
    #[allow(
        clippy::disallowed_methods,
        reason = "test harness: waits for a child redis-server process, outside any runtime"
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

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Freezes redis-server (SIGSTOP): connections are still accepted by the kernel, nothing
    /// is answered — a stalled server or a partition, not a refused connection.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a [`pause`](Self::pause)d server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let path = self.dir.join("redis.pid");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let pid: i32 = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{} holds {text:?}, not a pid", path.display()));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("send {signal:?} to redis-server {pid}: {e}"));
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server on port {} log (tail) ---\n{}\n--- end of redis log ---",
                self.port,
                self.log_tail()
            );
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Redis the tests that never stop it use: `REDIS_URL` when set (e.g.
/// `redis://127.0.0.1:6379/0`), else this test binary's throw-away server (started once; its
/// watchdog kills it when the test process exits).
pub fn shared_host() -> String {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => SHARED.get_or_init(RedisServer::start).host(),
    }
}
