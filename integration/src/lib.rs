//! Test support for Mecha's end-to-end tests: spawn the real `mecha` binary on free loopback
//! ports and talk to it the way users do.
//!
//! The protocol-level machinery (starting the process, the HTTP client, ports, temp dirs,
//! polling, metric parsing, redis-server) is `mecha-test-support`'s, re-exported here under the
//! names the tests use; this crate adds what needs Mecha's gRPC types:
//!
//! - [`Sidecar`]: a runtime-API sidecar with [`TEST_COMPONENTS`] (or others) on a
//!   [`mecha_test_support::process::Mecha`]; waits for `GET /ready` 200, kills on drop (and
//!   prints its config and stderr when the test panicked).
//! - [`Sidecar::client`]: the generated tonic `RuntimeClient` connected to it.
//! - [`http_get`] / [`http_raw`]: the shared HTTP client (`mecha_test_support::http`).
//! - [`raw_grpc`]: one gRPC exchange over the `h2` crate directly, for requests a tonic client
//!   will not send (garbage bodies, truncated frames, tiny `grpc-timeout`s, unknown paths).
//! - [`mecha_bin`], [`run_mecha`]: the binary and one-shot CLI runs (`mecha validate …`).
//! - [`mesh_support`]: `Mesh` (a config template with `${name}` ports) and real upstreams;
//!   [`redis_support`]: redis-server and the sidecar's Redis components.
//!
//! Every sidecar has its own ports, config and temp dir, so tests run in parallel.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use mecha_proto::runtime::v1::runtime_client::RuntimeClient;
use mecha_test_support::process::{Launch, Mecha, Wait};
use tonic::transport::{Channel, Endpoint};

pub use mecha_proto::runtime::v1 as pb;
pub use mecha_test_support::http::{http_get, http_raw, HttpResponse};
pub use mecha_test_support::{
    free_addr, free_port, listening, mecha_bin, mecha_run_command, metric_value, run_mecha,
    run_with_timeout, within, workspace_root, TempDir, READY_TIMEOUT, STEP_TIMEOUT,
};

pub mod mesh_support;
pub mod redis_support;

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
        let mut grpc_addr = free_addr();
        let mut inner = Mecha::start(Wait::Ready, || {
            let dir = TempDir::new("sidecar");
            for (name, contents) in &self.files {
                dir.write(name, contents);
            }
            grpc_addr = free_addr();
            let admin = free_addr();
            let config = self.config_yaml(dir.path(), grpc_addr, admin);
            Launch {
                dir,
                config,
                admin,
                env: self.env.clone(),
            }
        })
        .await;
        inner.label = format!("grpc {grpc_addr}");
        Sidecar {
            grpc_addr,
            admin_addr: inner.admin,
            config: inner.config.clone(),
            inner,
        }
    }
}

/// A running `mecha run -c <temp config>`; SIGKILLed on drop unless [`terminate`](Self::terminate)
/// was called (then it gets a few seconds to exit by itself first).
pub struct Sidecar {
    inner: Mecha,
    /// The runtime listener (gRPC over h2c, HTTP/1.1 on the same port).
    pub grpc_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The config it runs with.
    pub config: String,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("pid", &self.inner.pid())
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
        self.inner.pid()
    }

    /// The sidecar's temp dir (config and [`SidecarBuilder::file`]s).
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    /// `http://<grpc_addr>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A channel to the runtime listener (h2c, prior knowledge).
    pub async fn channel(&self) -> Channel {
        connect(self.grpc_addr).await
    }

    /// The generated Layotto `Runtime` client, connected.
    pub async fn client(&self) -> RuntimeClient<Channel> {
        RuntimeClient::new(self.channel().await)
    }

    /// `GET <path>` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        self.inner.admin_get(path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.inner.metrics().await
    }

    /// Polls `/metrics` until `series` (name with labels, as printed) has a value for which
    /// `want` holds; returns that value. The API metrics are recorded after the response is
    /// sent, so a scrape right after a call may not show it yet.
    pub async fn wait_metric(&self, series: &str, want: impl Fn(f64) -> bool) -> f64 {
        self.inner.wait_metric(series, want).await
    }

    /// Sends SIGTERM (the process drains, then exits by itself).
    pub fn terminate(&mut self) {
        self.inner.terminate();
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_exit(timeout).await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// Everything the process wrote to stderr so far (all of it once it has exited).
    pub fn stderr_text(&mut self) -> String {
        self.inner.stderr_text()
    }
}

/// A tonic channel to a runtime listener (h2c, prior knowledge), connected within
/// [`STEP_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint url")
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(STEP_TIMEOUT, endpoint.connect())
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
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

/// A short description of a status for assertion messages.
pub fn describe(status: &tonic::Status) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:?}: {}", status.code(), status.message());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
