//! A scripted xDS control plane: `xds/tests/control_plane/ads_server.py` (Python grpcio and the
//! PyPI `xds-protos` stubs, independent of Mecha's Rust code), driven over its stdin/stdout with
//! JSON lines. [`ControlPlane`] starts it, sends what a test scripts (SotW and delta responses,
//! stream closes) and hands back every request the server saw, by type.
//!
//! - Tests that need it call [`unavailable`] first and skip themselves, saying why, when python3,
//!   `grpc` or `xds-protos` is missing (`scripts/ensure-deps.sh test` installs them).
//! - Every wait is bounded by [`STEP_TIMEOUT`]; the error names what was awaited and the last
//!   events and stderr lines of the server. The server is SIGKILLed on drop, and exits by itself
//!   when its stdin closes (the test process died); on a panic, drop prints its stderr and events.
//! - Resources are proto3 JSON with `"@type"` (see [`json`] for builders); the server parses them
//!   with `json_format.ParseDict`. [`json::raw`] makes an Any of exact bytes (e.g. undecodable).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{workspace_root, STEP_TIMEOUT};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const COMPONENT: &str = "type.googleapis.com/mecha.config.v1.Component";

/// The HTTP connection manager's `typed_config` type.
pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The router HTTP filter's `typed_config` type.
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// How many event lines the error messages and the panic report show.
const RECENT_EVENTS: usize = 30;
/// How much of one event line they show.
const EVENT_CHARS: usize = 400;

/// The server script: `<workspace>/xds/tests/control_plane/ads_server.py`.
pub fn script() -> PathBuf {
    workspace_root()
        .join("xds")
        .join("tests")
        .join("control_plane")
        .join("ads_server.py")
}

/// Why the control plane cannot run here (python3, grpc or xds-protos missing), or None.
/// Checked once per test process.
pub fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        let script = script();
        if !script.exists() {
            return Some(format!("{} does not exist", script.display()));
        }
        let check = "import grpc, envoy.service.discovery.v3.ads_pb2_grpc";
        match std::process::Command::new("python3")
            .args(["-c", check])
            .stdin(Stdio::null())
            .output()
        {
            Err(e) => Some(format!("python3: {e}")),
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "python3 -c {check:?} failed ({}): {} (pip install grpcio xds-protos, or \
                 scripts/ensure-deps.sh test)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    })
    .clone()
}

/// One DiscoveryRequest / DeltaDiscoveryRequest as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub stream: u64,
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    /// SotW.
    pub resource_names: Vec<String>,
    /// Delta.
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
    /// Some = NACK: `error_detail` code and message.
    pub error_detail: Option<(i32, String)>,
    /// The node, proto3 JSON (camelCase: `id`, `cluster`, `metadata`, `userAgentName`, …).
    pub node: Option<Value>,
}

impl Request {
    /// Whether this request is a NACK (carries an `error_detail`).
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }

    /// The NACK's message ("" for an ACK or a subscription).
    pub fn error_message(&self) -> &str {
        self.error_detail.as_ref().map_or("", |(_, m)| m.as_str())
    }

    fn from_event(e: &Value) -> anyhow::Result<Request> {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let list = |k: &str| -> Vec<String> {
            e.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let initial_resource_versions = e
            .get("initial_resource_versions")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let error_detail = match e.get("error_detail") {
            None | Some(Value::Null) => None,
            Some(d) => {
                let code = d
                    .get("code")
                    .and_then(Value::as_i64)
                    .and_then(|c| i32::try_from(c).ok())
                    .context("error_detail.code is not an i32")?;
                let message = d
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                Some((code, message))
            }
        };
        Ok(Request {
            stream: e
                .get("stream")
                .and_then(Value::as_u64)
                .context("request without a stream id")?,
            delta: s("api") == "delta",
            type_url: s("type_url"),
            version_info: s("version_info"),
            response_nonce: s("response_nonce"),
            resource_names: list("resource_names"),
            subscribe: list("resource_names_subscribe"),
            unsubscribe: list("resource_names_unsubscribe"),
            initial_resource_versions,
            error_detail,
            node: e.get("node").filter(|n| !n.is_null()).cloned(),
        })
    }
}

/// A running `ads_server.py`; SIGKILLed on drop.
pub struct ControlPlane {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Event lines read from stdout by the reader task; closed at EOF.
    lines: mpsc::UnboundedReceiver<String>,
    port: u16,
    /// Requests seen and not yet taken, in arrival order.
    requests: VecDeque<Request>,
    /// Streams opened and not yet taken by [`stream_opened`](Self::stream_opened).
    opened: VecDeque<u64>,
    /// Every stream the server reported closed.
    closed: Vec<u64>,
    recent: VecDeque<String>,
    stderr: Arc<Mutex<String>>,
    /// stdout reached EOF: the server exited.
    eof: bool,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish()
    }
}

impl ControlPlane {
    /// A control plane on a free port, serving SotW and delta.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, false).await
    }

    /// A control plane on `port` (None: a free one); with `delta_unimplemented`, delta calls are
    /// answered UNIMPLEMENTED (SotW works).
    pub async fn start_with(port: Option<u16>, delta_unimplemented: bool) -> anyhow::Result<Self> {
        let script = script();
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(&script)
            .arg("--port")
            .arg(port.unwrap_or(0).to_string());
        if delta_unimplemented {
            cmd.arg("--delta-unimplemented");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn python3 {}", script.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let stderr_pipe = child.stderr.take().context("the server's stderr")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr_pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let mut cp = ControlPlane {
            stdin: child.stdin.take(),
            child,
            lines,
            port: 0,
            requests: VecDeque::new(),
            opened: VecDeque::new(),
            closed: Vec::new(),
            recent: VecDeque::new(),
            stderr,
            eof: false,
        };
        let what = format!("the control plane's ready line (port {port:?})");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let event = cp.next_event(&what, deadline).await?;
            match event_name(&event) {
                "ready" => {
                    let got = event
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0);
                    match got {
                        Some(p) => {
                            cp.port = p;
                            return Ok(cp);
                        }
                        None => bail!("{}", cp.failure(&format!("bad ready line {event}"))),
                    }
                }
                "error" => bail!(
                    "{}",
                    cp.failure(&format!("the control plane failed to start: {event}"))
                ),
                _ => {}
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The next request of this type (requests of other types stay queued for their own callers).
    pub async fn request(&mut self, type_url: &str) -> anyhow::Result<Request> {
        let what = format!("a request of {type_url}");
        self.take_request(&what, |r| r.type_url == type_url).await
    }

    /// The next request of this type on `stream`; requests of the type from earlier streams are
    /// dropped.
    pub async fn request_on(&mut self, stream: u64, type_url: &str) -> anyhow::Result<Request> {
        self.requests
            .retain(|r| !(r.type_url == type_url && r.stream < stream));
        let what = format!("a request of {type_url} on stream {stream}");
        self.take_request(&what, |r| r.type_url == type_url && r.stream == stream)
            .await
    }

    /// The next request of this type that answers `nonce` (ACK or NACK), skipping others of the
    /// type.
    pub async fn reply_to(&mut self, type_url: &str, nonce: &str) -> anyhow::Result<Request> {
        let what = format!("the ACK/NACK of {type_url} nonce {nonce:?}");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let r = self
                .take_request_until(&what, deadline, |r| r.type_url == type_url)
                .await?;
            if r.response_nonce == nonce {
                return Ok(r);
            }
        }
    }

    /// Every request received so far and not taken (without waiting).
    pub fn pending_requests(&mut self) -> Vec<Request> {
        while let Ok(line) = self.lines.try_recv() {
            self.dispatch_line(line);
        }
        self.requests.iter().cloned().collect()
    }

    /// Waits for the next stream_open; its stream id.
    pub async fn stream_opened(&mut self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(id) = self.opened.pop_front() {
                return Ok(id);
            }
            self.pump("a stream to open", deadline).await?;
        }
    }

    /// Waits until the server reports `stream` closed.
    pub async fn stream_closed(&mut self, stream: u64) -> anyhow::Result<()> {
        let what = format!("stream {stream} to close");
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !self.closed.contains(&stream) {
            self.pump(&what, deadline).await?;
        }
        Ok(())
    }

    /// Sends a SotW response on the newest open stream; its nonce.
    pub async fn send_sotw(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<Value>,
    ) -> anyhow::Result<String> {
        let cmd = json!({"op": "send_sotw", "type_url": type_url, "version": version, "resources": resources});
        self.command_nonce(cmd, &format!("send_sotw {type_url} version {version:?}"))
            .await
    }

    /// Sends a delta response on the newest open stream: `(name, version, resource)` and the
    /// names removed; its nonce.
    pub async fn send_delta(
        &mut self,
        type_url: &str,
        system_version: &str,
        resources: Vec<(String, String, Value)>,
        removed: Vec<String>,
    ) -> anyhow::Result<String> {
        let resources: Vec<Value> = resources
            .into_iter()
            .map(|(name, version, resource)| {
                json!({"name": name, "version": version, "resource": resource})
            })
            .collect();
        let cmd = json!({
            "op": "send_delta", "type_url": type_url, "system_version_info": system_version,
            "resources": resources, "removed": removed,
        });
        self.command_nonce(
            cmd,
            &format!("send_delta {type_url} version {system_version:?}"),
        )
        .await
    }

    /// Ends the newest open stream with the gRPC status `code` (e.g. "UNAVAILABLE"; "OK" ends it
    /// normally). Returns once the server has taken the command; the stream's end is reported by
    /// [`stream_closed`](Self::stream_closed).
    pub async fn close_stream(&mut self, code: &str) -> anyhow::Result<()> {
        self.command(
            json!({"op": "close_stream", "code": code}),
            &format!("close_stream {code}"),
        )
        .await
        .map(drop)
    }

    /// SIGKILLs the server and reaps it (its port is free once this returns).
    #[allow(
        clippy::disallowed_methods,
        reason = "a synchronous kill must reap the child before the port is reused; a SIGKILLed \
                  process is gone within milliseconds"
    )]
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    // === internals ===

    async fn command_nonce(&mut self, cmd: Value, what: &str) -> anyhow::Result<String> {
        let reply = self.command(cmd, what).await?;
        reply
            .get("nonce")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{what}: reply without a nonce: {reply}"))
    }

    /// Writes one command and waits for its reply (`sent`, `closing`, or an `error` with `op`).
    async fn command(&mut self, cmd: Value, what: &str) -> anyhow::Result<Value> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{what}: the control plane was killed"))?;
        let mut line = cmd.to_string();
        line.push('\n');
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        if let Err(e) = written {
            bail!(
                "{}",
                self.failure(&format!("{what}: writing to the control plane: {e}"))
            );
        }
        let deadline = Instant::now() + STEP_TIMEOUT;
        let waiting = format!("the reply to {what}");
        loop {
            let event = self.next_event(&waiting, deadline).await?;
            if event.get("op").is_none() {
                self.dispatch(event);
                continue;
            }
            return match event_name(&event) {
                "error" => Err(anyhow!(
                    "{what}: the control plane refused it: {}",
                    event.get("message").and_then(Value::as_str).unwrap_or("")
                )),
                _ => Ok(event),
            };
        }
    }

    async fn take_request(
        &mut self,
        what: &str,
        matches: impl Fn(&Request) -> bool,
    ) -> anyhow::Result<Request> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        self.take_request_until(what, deadline, matches).await
    }

    async fn take_request_until(
        &mut self,
        what: &str,
        deadline: Instant,
        matches: impl Fn(&Request) -> bool,
    ) -> anyhow::Result<Request> {
        loop {
            if let Some(i) = self.requests.iter().position(&matches) {
                if let Some(r) = self.requests.remove(i) {
                    return Ok(r);
                }
            }
            self.pump(what, deadline).await?;
        }
    }

    /// Reads and files one event.
    async fn pump(&mut self, what: &str, deadline: Instant) -> anyhow::Result<()> {
        let event = self.next_event(what, deadline).await?;
        self.dispatch(event);
        Ok(())
    }

    fn dispatch_line(&mut self, line: String) {
        match serde_json::from_str::<Value>(&line) {
            Ok(event) => {
                self.remember(line);
                self.dispatch(event);
            }
            Err(_) => self.remember(format!("(not JSON) {line}")),
        }
    }

    fn dispatch(&mut self, event: Value) {
        match event_name(&event) {
            "request" => match Request::from_event(&event) {
                Ok(r) => self.requests.push_back(r),
                Err(e) => self.remember(format!("(bad request event: {e:#})")),
            },
            "stream_open" => {
                if let Some(id) = event.get("stream").and_then(Value::as_u64) {
                    self.opened.push_back(id);
                }
            }
            "stream_closed" => {
                if let Some(id) = event.get("stream").and_then(Value::as_u64) {
                    self.closed.push(id);
                }
            }
            _ => {}
        }
    }

    /// The next JSON event line (remembered for error messages).
    async fn next_event(&mut self, what: &str, deadline: Instant) -> anyhow::Result<Value> {
        loop {
            if self.eof {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{}",
                    self.failure(&format!(
                        "waiting for {what}: the control plane exited ({status:?})"
                    ))
                );
            }
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => bail!(
                    "{}",
                    self.failure(&format!(
                        "nothing within {STEP_TIMEOUT:?} while waiting for {what}"
                    ))
                ),
                Ok(None) => {
                    self.eof = true;
                    // Let the process be reaped so its status can be shown.
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                    continue;
                }
                Ok(Some(line)) => line,
            };
            match serde_json::from_str::<Value>(&line) {
                Ok(event) => {
                    self.remember(line);
                    return Ok(event);
                }
                Err(_) => self.remember(format!("(not JSON) {line}")),
            }
        }
    }

    fn remember(&mut self, mut line: String) {
        if line.len() > EVENT_CHARS {
            let mut cut = EVENT_CHARS;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// `message` with the last events and the server's stderr.
    fn failure(&self, message: &str) -> String {
        let events: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        let pending: Vec<String> = self
            .requests
            .iter()
            .map(|r| {
                format!(
                    "stream {} {} nonce {:?}{}",
                    r.stream,
                    r.type_url,
                    r.response_nonce,
                    if r.is_nack() { " NACK" } else { "" }
                )
            })
            .collect();
        format!(
            "control plane (port {}): {message}\n--- last events ---\n{}\n--- requests not taken ---\n{}\n--- control plane stderr ---\n{}",
            self.port,
            events.join("\n"),
            pending.join("\n"),
            tail(&self.stderr_text(), 4000)
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let pid = self.child.id();
        self.kill();
        if std::thread::panicking() {
            let message = format!("state when the test panicked (pid {pid:?})");
            eprintln!("{}", self.failure(&message));
        }
    }
}

fn event_name(event: &Value) -> &str {
    event.get("event").and_then(Value::as_str).unwrap_or("")
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Builders returning proto3 JSON (with "@type") for the common resources.
pub mod json {
    use std::net::SocketAddr;

    use serde_json::{json, Map, Value};

    use super::{CLUSTER, COMPONENT, ENDPOINT, HCM, LISTENER, ROUTE, ROUTER};

    fn socket_address(addr: SocketAddr) -> Value {
        json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
    }

    fn ads_source() -> Value {
        json!({"ads": {}, "resource_api_version": "V3"})
    }

    /// A listener on `addr` whose HTTP connection manager takes its routes from RDS over ADS
    /// (`route_config`), with the router filter.
    pub fn listener_rds(name: &str, addr: SocketAddr, route_config: &str) -> Value {
        json!({
            "@type": LISTENER,
            "name": name,
            "address": socket_address(addr),
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": name,
                        "rds": {"route_config_name": route_config, "config_source": ads_source()},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": ROUTER},
                        }],
                    },
                }],
            }],
        })
    }

    /// A route configuration with one virtual host (named after it) for `vhost_domains`.
    pub fn route_config(name: &str, vhost_domains: &[&str], routes: Vec<Value>) -> Value {
        json!({
            "@type": ROUTE,
            "name": name,
            "virtual_hosts": [{"name": name, "domains": vhost_domains, "routes": routes}],
        })
    }

    /// A route: path prefix → cluster.
    pub fn route_prefix(prefix: &str, cluster: &str) -> Value {
        json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}})
    }

    /// An EDS cluster whose endpoints come over ADS under its own name; connect timeout 1 s.
    pub fn cluster_eds(name: &str) -> Value {
        json!({
            "@type": CLUSTER,
            "name": name,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": ads_source()},
            "connect_timeout": "1s",
        })
    }

    /// The endpoints of `cluster`: one locality with these addresses.
    pub fn cla(cluster: &str, endpoints: &[SocketAddr]) -> Value {
        let lb: Vec<Value> = endpoints
            .iter()
            .map(|a| json!({"endpoint": {"address": socket_address(*a)}}))
            .collect();
        json!({
            "@type": ENDPOINT,
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": lb}],
        })
    }

    /// A `mecha.config.v1.Component`.
    pub fn component(name: &str, ty: &str, metadata: &[(&str, &str)]) -> Value {
        let metadata: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        json!({"@type": COMPONENT, "name": name, "type": ty, "metadata": metadata})
    }

    /// An Any of exactly `value` as `type_url` (the server does not parse it), e.g. bytes that
    /// do not decode.
    pub fn raw(type_url: &str, value: &[u8]) -> Value {
        json!({"@raw": {"type_url": type_url, "value_b64": base64(value)}})
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn base64_pads() {
            assert_eq!(super::base64(b""), "");
            assert_eq!(super::base64(b"f"), "Zg==");
            assert_eq!(super::base64(b"fo"), "Zm8=");
            assert_eq!(super::base64(b"foo"), "Zm9v");
            assert_eq!(super::base64(&[0xff, 0xfe, 0xfd, 0xfc]), "//79/A==");
        }
    }
}
