//! Test support for the Redis end-to-end tests (`tests/redis_e2e.rs`): a real redis-server,
//! never a mock, and the sidecar's Redis components pointed at it.
//!
//! - [`RedisServer`]: a throw-away redis-server on a free port, in a temp dir, with AOF on
//!   (`appendfsync always`); [`stop`](RedisServer::stop) (SIGKILL, data kept),
//!   [`start_again`](RedisServer::start_again) (same port and dir: the AOF is replayed).
//! - [`shared_host`]: `REDIS_URL` when set, else one throw-away server per test binary; for the
//!   tests that never stop Redis (they isolate their keys with [`unique`] prefixes and topics).
//!   Tests that stop or restart Redis always start their own [`RedisServer`].
//! - [`RedisComponents`]: the `components:` list of `configs/redis.yaml` (same names and types)
//!   on a given Redis, with a unique `keyPrefix` and `consumerID`; or
//!   [`shipped`](RedisComponents::shipped), the shipped file's list itself with only the host
//!   replaced.
//! - [`TopicSubscriber`], [`ConfigWatch`]: one open `SubscribeTopicEvents` /
//!   `SubscribeConfiguration` stream.
//! - [`wait_ready_status`], [`sigkill`]: poll `/ready` for a status; SIGKILL a sidecar.
//! - [`BareSidecar`]: a sidecar not waited on for readiness (started while Redis is down).
//!
//! Every redis-server runs under a small `sh` watchdog holding a pipe from this process: however
//! the test process ends (even killed), the pipe closes and the watchdog kills redis-server, so
//! no server outlives its tests. Sidecars are killed when their [`Sidecar`] is dropped.
//!
//! The binary is `$REDIS_SERVER` or `redis-server` on PATH; when it is missing and we run as
//! root, it is installed with apt-get (as the component tests do).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mecha_proto::runtime::v1::runtime_client::RuntimeClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use crate::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use crate::pb::topic_event_response::TopicEventResponseStatus;
use crate::pb::{
    SubscribeConfigurationRequest, SubscribeConfigurationResponse, SubscribeTopicEventsRequest,
    SubscribeTopicEventsRequestInitial, SubscribeTopicEventsRequestProcessed,
    SubscribeTopicEventsResponse, TopicEventRequest, TopicEventResponse,
};
use crate::{
    describe, free_addr, free_port, http_get, mecha_bin, workspace_root, HttpResponse, Sidecar,
    TempDir, READY_TIMEOUT, STEP_TIMEOUT,
};

// === names ===

/// A name no other test (in this or a parallel run) uses: `<what>-<pid>-<n>-<nanos>`.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{what}-{}-{n}-{nanos}", std::process::id())
}

// === redis-server ===

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

    /// Starts the server again on the same port with the same data directory (AOF replayed) and
    /// waits until it answers PING.
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

// === the sidecar's components ===

/// YAML double-quoted scalar (a JSON string is one).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes as JSON")
}

/// The components of `configs/redis.yaml` — `statestore` (state.redis), `pubsub`
/// (pubsub.redis), `lockstore`, `sequencer`, `configstore`, plus the env `secretstore` and
/// `helloworld` — on one Redis, as a `components:` list for [`crate::SidecarBuilder`].
#[derive(Debug, Clone)]
pub struct RedisComponents {
    host: String,
    key_prefix: String,
    pubsub: Vec<(String, String)>,
}

impl RedisComponents {
    /// On `host` with a unique `keyPrefix` (for every component that takes one) and a unique
    /// `consumerID`; `processingTimeout: 2s`, `redeliverInterval: 1s` as in the shipped file.
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            key_prefix: unique("e2e"),
            pubsub: vec![
                ("consumerID".to_owned(), unique("consumer")),
                ("processingTimeout".to_owned(), "2s".to_owned()),
                ("redeliverInterval".to_owned(), "1s".to_owned()),
            ],
        }
    }

    /// Sets the `keyPrefix` (sidecars sharing state, locks or configuration need the same).
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.key_prefix);
        self
    }

    /// Sets (or adds) one metadata entry of the `pubsub` component.
    pub fn pubsub_meta(mut self, key: &str, value: &str) -> Self {
        match self.pubsub.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => value.clone_into(v),
            None => self.pubsub.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// The `pubsub` component's `consumerID`.
    pub fn consumer_id(&self) -> &str {
        self.pubsub
            .iter()
            .find(|(k, _)| k == "consumerID")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// The `components:` list (items indented by two spaces).
    pub fn yaml(&self) -> String {
        let host = quoted(&self.host);
        let prefix = quoted(&self.key_prefix);
        let mut y = String::new();
        for (name, kind) in [
            ("statestore", "state.redis"),
            ("lockstore", "lock.redis"),
            ("sequencer", "sequencer.redis"),
            ("configstore", "configuration.redis"),
        ] {
            y.push_str(&format!(
                "  - name: {name}\n    type: {kind}\n    metadata:\n      redisHost: {host}\n      keyPrefix: {prefix}\n"
            ));
        }
        y.push_str(&format!(
            "  - name: pubsub\n    type: pubsub.redis\n    metadata:\n      redisHost: {host}\n"
        ));
        for (k, v) in &self.pubsub {
            y.push_str(&format!("      {k}: {}\n", quoted(v)));
        }
        y.push_str("  - name: secretstore\n    type: secretstores.local.env\n");
        y.push_str("  - name: helloworld\n    type: hello.helloworld\n");
        y
    }

    /// The `components:` list of the shipped `configs/redis.yaml` itself, with its Redis
    /// address (`127.0.0.1:6379`) replaced by `host`; nothing else changed (so no key prefix:
    /// only for a Redis of the test's own).
    pub fn shipped(host: &str) -> String {
        let path = workspace_root().join("configs").join("redis.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (_, list) = text
            .split_once("\ncomponents:\n")
            .unwrap_or_else(|| panic!("{} has no top-level components:", path.display()));
        assert!(
            list.contains("127.0.0.1:6379"),
            "{} no longer points at 127.0.0.1:6379; update this helper",
            path.display()
        );
        list.replace("127.0.0.1:6379", host)
    }
}

// === the sidecar's state ===

/// Polls `GET /ready` until its status is 200 (`ready`) or anything else (`!ready`), within
/// `bound`; returns that response. Panics with the last answer when it never gets there.
/// `admin` is the sidecar's admin listener ([`Sidecar::admin_addr`], [`BareSidecar::admin_addr`]).
pub async fn wait_ready_status(admin: SocketAddr, ready: bool, bound: Duration) -> HttpResponse {
    let deadline = Instant::now() + bound;
    let mut last;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), http_get(admin, "/ready")).await {
            Ok(Ok(r)) if (r.status == 200) == ready => return r,
            Ok(Ok(r)) => last = format!("{}: {}", r.status, r.body.trim()),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "no answer within 5s".to_owned(),
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not turn {} within {bound:?}; last answer: {last}",
            if ready { "200" } else { "non-200" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `mecha run -c` that is not waited on for readiness (unlike [`Sidecar`], whose start needs
/// `/ready` 200): for a sidecar started while its backend is down. Killed on drop (its config and
/// stderr are printed when the test panicked).
pub struct BareSidecar {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The runtime listener.
    pub grpc_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The config it runs with.
    pub config: String,
    _dir: TempDir,
}

impl BareSidecar {
    /// Starts `mecha run -c` with `components` (a `components:` list, as for
    /// [`crate::SidecarBuilder::components`]) and waits until its admin listener answers
    /// `/healthz` (the process is up; readiness is not asked for).
    pub async fn start(components: &str) -> Self {
        let dir = TempDir::new("bare-sidecar");
        let (grpc_addr, admin_addr) = (free_addr(), free_addr());
        let config = format!(
            "threads: 1\napp:\n  id: app\nadmin:\n  address: {admin_addr}\nlisteners:\n  - name: runtime\n    address: {grpc_addr}\n    filters:\n      - type: capability\n        apis: [layotto]\ncomponents:\n{components}"
        );
        let path = dir.write("mecha.yaml", &config);
        let mut child = crate::mecha_run_command(&path, dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", mecha_bin().display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let text = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    if let Ok(mut t) = text.lock() {
                        t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut sc = Self {
            child,
            stderr,
            grpc_addr,
            admin_addr,
            config,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = sc.child.try_wait() {
                panic!("mecha exited at start: {status}");
            }
            let r = tokio::time::timeout(Duration::from_secs(2), http_get(admin_addr, "/healthz"));
            if matches!(r.await, Ok(Ok(r)) if r.status == 200) {
                return sc;
            }
            assert!(
                Instant::now() < deadline,
                "mecha's admin listener did not answer /healthz within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The generated Layotto `Runtime` client, connected.
    pub async fn client(&self) -> RuntimeClient<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .expect("endpoint url")
            .connect_timeout(Duration::from_secs(5));
        let channel = crate::within("connect", endpoint.connect())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.grpc_addr));
        RuntimeClient::new(channel)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for BareSidecar {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            let stderr = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
            eprintln!(
                "--- mecha (pid {}) config ---\n{}\n--- mecha stderr ---\n{stderr}--- end of mecha stderr ---",
                self.child.id(),
                self.config
            );
        }
    }
}

/// SIGKILLs the sidecar (no draining, no goodbye to Redis) and waits until it has exited.
pub async fn sigkill(sc: &mut Sidecar) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = i32::try_from(sc.pid()).expect("pid fits i32");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("send SIGKILL");
    let status = sc.wait_exit(STEP_TIMEOUT).await;
    assert!(
        status.is_some(),
        "mecha (pid {pid}) still runs after SIGKILL"
    );
}

// === streams ===

/// One open `SubscribeTopicEvents` stream (after its `initial_response`).
pub struct TopicSubscriber {
    tx: mpsc::Sender<SubscribeTopicEventsRequest>,
    rx: Streaming<SubscribeTopicEventsResponse>,
}

impl TopicSubscriber {
    /// Opens the stream on `pubsub`/`topic` with `metadata` and waits for `initial_response`
    /// (from then on the consumer group exists: nothing published later is missed).
    pub async fn open(
        rt: &mut RuntimeClient<Channel>,
        pubsub: &str,
        topic: &str,
        metadata: HashMap<String, String>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tx.send(SubscribeTopicEventsRequest {
            subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
                SubscribeTopicEventsRequestInitial {
                    pubsub_name: pubsub.into(),
                    topic: topic.into(),
                    metadata,
                    dead_letter_topic: None,
                },
            )),
        })
        .await
        .expect("queue initial_request");
        let mut rx = crate::within(
            "SubscribeTopicEvents",
            rt.subscribe_topic_events(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeTopicEvents {topic}: {}", describe(&s)))
        .into_inner();
        let first = crate::within("initial_response", rx.message())
            .await
            .unwrap_or_else(|s| panic!("SubscribeTopicEvents {topic}: {}", describe(&s)))
            .expect("a first message");
        assert!(
            matches!(
                first.subscribe_topic_events_response_type,
                Some(Outbound::InitialResponse(_))
            ),
            "the first message is initial_response: {first:?}"
        );
        Self { tx, rx }
    }

    /// The next event, within [`STEP_TIMEOUT`].
    pub async fn next_event(&mut self) -> TopicEventRequest {
        let msg = crate::within("event_message", self.rx.message())
            .await
            .unwrap_or_else(|s| panic!("subscription stream failed: {}", describe(&s)))
            .expect("subscription stream ended");
        match msg.subscribe_topic_events_response_type {
            Some(Outbound::EventMessage(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Answers one event.
    pub async fn answer(&self, id: &str, status: TopicEventResponseStatus) {
        self.tx
            .send(SubscribeTopicEventsRequest {
                subscribe_topic_events_request_type: Some(Inbound::EventProcessed(
                    SubscribeTopicEventsRequestProcessed {
                        id: id.into(),
                        status: Some(TopicEventResponse {
                            status: status as i32,
                        }),
                    },
                )),
            })
            .await
            .expect("send event_processed");
    }
}

/// One open `SubscribeConfiguration` stream.
pub struct ConfigWatch {
    _tx: mpsc::Sender<SubscribeConfigurationRequest>,
    rx: Streaming<SubscribeConfigurationResponse>,
}

impl ConfigWatch {
    /// Subscribes to `keys` of `app_id` in `store`. The API has no "subscribed"
    /// acknowledgement: the subscription may be registered only a moment after this returns
    /// (see [`next_change`](Self::next_change) and the tests' probe loops).
    pub async fn open(
        rt: &mut RuntimeClient<Channel>,
        store: &str,
        app_id: &str,
        keys: &[&str],
    ) -> Self {
        let (tx, rx) = mpsc::channel(4);
        tx.send(SubscribeConfigurationRequest {
            store_name: store.into(),
            app_id: app_id.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("queue subscribe request");
        let rx = crate::within(
            "SubscribeConfiguration",
            rt.subscribe_configuration(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeConfiguration: {}", describe(&s)))
        .into_inner();
        Self { _tx: tx, rx }
    }

    /// [`open`](Self::open), for a subscription that must fail: the status it ends with (as
    /// the call's status or on the stream), within [`STEP_TIMEOUT`].
    pub async fn open_err(
        rt: &mut RuntimeClient<Channel>,
        store: &str,
        app_id: &str,
        keys: &[&str],
    ) -> tonic::Status {
        let (tx, rx) = mpsc::channel(4);
        tx.send(SubscribeConfigurationRequest {
            store_name: store.into(),
            app_id: app_id.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("queue subscribe request");
        let rx = match crate::within(
            "SubscribeConfiguration",
            rt.subscribe_configuration(ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return s,
        };
        let mut watch = Self { _tx: tx, rx };
        match watch.next(STEP_TIMEOUT).await {
            Some(Err(s)) => s,
            Some(Ok(c)) => panic!("SubscribeConfiguration pushed {c:?} instead of failing"),
            None => panic!("SubscribeConfiguration did not fail within {STEP_TIMEOUT:?}"),
        }
    }

    /// The next message of the stream (a change, or the status that ended it), or `None` when
    /// nothing comes within `wait`. Panics when the stream ends without a status.
    pub async fn next(
        &mut self,
        wait: Duration,
    ) -> Option<Result<SubscribeConfigurationResponse, tonic::Status>> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(m))) => Some(Ok(m)),
            Ok(Ok(None)) => panic!("SubscribeConfiguration stream ended without a status"),
            Ok(Err(s)) => Some(Err(s)),
            Err(_) => None,
        }
    }

    /// The next pushed change, or `None` when none comes within `wait`.
    pub async fn next_change(&mut self, wait: Duration) -> Option<SubscribeConfigurationResponse> {
        self.next(wait).await.map(|r| {
            r.unwrap_or_else(|s| panic!("SubscribeConfiguration failed: {}", describe(&s)))
        })
    }

    /// Reads pushed changes until one carries `key` with `content` (within [`STEP_TIMEOUT`]).
    pub async fn wait_for(&mut self, key: &str, content: &str) -> SubscribeConfigurationResponse {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(c) = self.next_change(left).await else {
                panic!(
                    "no push of {key}={content} within {STEP_TIMEOUT:?}; pushes seen: {seen:#?}"
                );
            };
            if c.items.iter().any(|i| i.key == key && i.content == content) {
                return c;
            }
            seen.push(c);
        }
    }
}
