//! Test support for the mesh end-to-end tests (`tests/mesh_*.rs`): the real `mecha` binary on a
//! config written per test, and real upstream servers started inside the test.
//!
//! - [`Mesh`]: runs `mecha run -c` on a YAML template whose `${name}` placeholders become free
//!   loopback addresses ([`Mesh::addr`]); the admin listener is added; waits for `/ready`.
//! - [`HttpUpstream`]: a hyper server speaking HTTP/1.1 and h2c (prior knowledge) on one port
//!   that records what it saw and answers by path (`/status/503`, `/slow/300`, `/hang`, …).
//! - [`GrpcUpstream`]: the Layotto `Runtime` service (tonic) on memory components.
//! - [`BlackHole`], [`TruncatingUpstream`], [`EchoServer`], [`WsUpstream`], [`dead_addr`]:
//!   upstreams that never answer, cut a response short, echo bytes, speak WebSocket, or refuse.
//! - [`RawUpstream`]: an HTTP/1.1 upstream on a bare socket that closes every keep-alive
//!   connection right after answering, or resets the connection after reading the request.
//! - [`send`] with [`Req`]: one HTTP/1.1 or h2c request (the shared client of
//!   `mecha_test_support::http`, re-exported).
//!
//! [`Mesh`] is a thin layer over `mecha_test_support::process::Mecha`, the one process
//! harness every test suite shares.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mecha_test_support::process::{Launch, Mecha, Wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{free_addr, metric_value, STEP_TIMEOUT};

pub use mecha_test_support::eventually;
pub use mecha_test_support::http::{send, Proto, Req, Resp};

// === the sidecar ===

/// A running `mecha run -c <config>`; killed on drop (its config and stderr are printed when
/// the test panicked).
pub struct Mesh {
    inner: Mecha,
    /// The admin listener.
    pub admin: SocketAddr,
    addrs: HashMap<String, SocketAddr>,
    /// The config it runs with.
    pub config: String,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("pid", &self.inner.pid())
            .field("admin", &self.admin)
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Replaces every `${name}` with a free loopback address (one per distinct name).
fn fill_template(template: &str) -> (String, HashMap<String, SocketAddr>) {
    let mut addrs = HashMap::new();
    let out = fill_template_with(template, &mut addrs);
    (out, addrs)
}

/// Like [`fill_template`], reusing the addresses `addrs` has (new names get free ones).
fn fill_template_with(template: &str, addrs: &mut HashMap<String, SocketAddr>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let addr = *addrs.entry(name.to_owned()).or_insert_with(free_addr);
        out.push_str(&addr.to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Replaces each `@name@` in `template` with its address (upstreams started by the test).
pub fn subst(template: &str, addrs: &[(&str, SocketAddr)]) -> String {
    let mut out = template.to_owned();
    for (name, addr) in addrs {
        out = out.replace(&format!("@{name}@"), &addr.to_string());
    }
    assert!(
        !out.contains("@\""),
        "an @name@ placeholder is left in:\n{out}"
    );
    out
}

/// The whole config for a template body: `threads: 1` unless the body sets it, and the admin
/// listener.
fn full_config(body: &str, admin: SocketAddr) -> String {
    let threads = if body.lines().any(|l| l.starts_with("threads:")) {
        ""
    } else {
        "threads: 1\n"
    };
    format!("{threads}admin:\n  address: {admin}\n{body}")
}

impl Mesh {
    /// Starts `mecha run` on `template` (listeners, clusters, components; no `admin:`), with
    /// every `${name}` replaced by a free loopback address, and waits for `/ready`. A start that
    /// lost a race for its ports is retried on new ones.
    pub async fn start(template: &str) -> Mesh {
        let mut addrs = HashMap::new();
        let inner = Mecha::start(Wait::Ready, || {
            let (body, a) = fill_template(template);
            addrs = a;
            let admin = free_addr();
            Launch::new("mesh", full_config(&body, admin), admin)
        })
        .await;
        Mesh {
            admin: inner.admin,
            addrs,
            config: inner.config.clone(),
            inner,
        }
    }

    /// The address that replaced `${name}` in the template.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no ${{{name}}} in the config template"))
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.inner.stderr_now()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.inner.metrics().await
    }

    /// The value of one series now (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `series` has a value for which `want` holds (metrics are
    /// recorded after the response is sent, so a scrape right after a call may lag).
    pub async fn wait_metric(&self, series: &str, want: impl Fn(f64) -> bool) -> f64 {
        self.inner.wait_metric(series, want).await
    }
}

// === HTTP upstream ===

/// One request an [`HttpUpstream`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query as received.
    pub path: String,
    pub version: Version,
    /// `Host`, else the URI authority (h2).
    pub host: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug)]
struct UpState {
    name: String,
    /// Status for ordinary requests; 0 = 200.
    status: AtomicU16,
    /// Status of `/healthz`; 0 = 200.
    health: AtomicU16,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// `/wait` takes one permit before answering; [`HttpUpstream::release`] adds them.
    gate: tokio::sync::Semaphore,
}

type UpBody = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An HTTP/1.1 + h2c server. Every answer carries `x-upstream: <name>`, `x-seen-path`,
/// `x-seen-host`, `x-seen-version` and `x-remove-me`; the body is the name. Paths:
/// `/healthz` (health status, not counted as a hit), `/status/<code>`, `/slow/<ms>` (answers
/// after a delay), `/hang` (never answers), `/wait` (answers once [`HttpUpstream::release`]
/// lets it), `/drip/<n>/<ms>` (a streamed body of `n` chunks `"x"`, one every `ms`), `/stall`
/// (the headers and one chunk, then silence); anything else answers the current status (200).
#[derive(Debug)]
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<UpState>,
    stop: watch::Sender<bool>,
}

impl HttpUpstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Like [`HttpUpstream::start`], bound on `addr` (port 0: a free one) instead of
    /// loopback, e.g. the host side of a veth pair.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind upstream {name} on {addr}: {e}"));
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(UpState {
            name: name.to_owned(),
            status: AtomicU16::new(0),
            health: AtomicU16::new(0),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            let mut stop_accept = stopped.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stop_accept.changed() => return,
                };
                let st = st.clone();
                let mut stop_conn = stopped.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            state,
            stop,
        }
    }

    /// Status of ordinary requests from now on (200 by default).
    pub fn set_status(&self, code: u16) {
        self.state.status.store(code, Ordering::SeqCst);
    }

    /// Status of `/healthz` from now on (200 by default).
    pub fn set_health(&self, code: u16) {
        self.state.health.store(code, Ordering::SeqCst);
    }

    /// Ordinary requests received (not `/healthz`).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn last_seen(&self) -> Seen {
        self.seen()
            .pop()
            .unwrap_or_else(|| panic!("upstream {} saw no request", self.name))
    }

    /// Lets `n` requests waiting on `/wait` (or the next ones to come) answer.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(st: Arc<UpState>, req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let code = |a: &AtomicU16| match a.load(Ordering::SeqCst) {
        0 => 200,
        c => c,
    };
    if parts.uri.path() == "/healthz" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full("health"));
        *r.status_mut() = http::StatusCode::from_u16(code(&st.health)).unwrap_or_default();
        return Ok(r);
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut seen) = st.seen.lock() {
        seen.push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            version: parts.version,
            host: host.clone(),
            headers: parts.headers.clone(),
            body,
        });
    }
    let mut status = code(&st.status);
    let segs: Vec<&str> = parts.uri.path().split('/').collect();
    match segs.as_slice() {
        ["", "status", c, ..] => status = c.parse().unwrap_or(500),
        ["", "slow", ms, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        }
        ["", "hang", ..] => std::future::pending::<()>().await,
        ["", "wait", ..] => {
            if let Ok(permit) = st.gate.acquire().await {
                permit.forget();
            }
        }
        ["", "drip", n, ms, ..] => {
            let n: usize = n.parse().unwrap_or(1);
            let every = Duration::from_millis(ms.parse().unwrap_or(100));
            return Ok(streamed(move |tx| async move {
                for _ in 0..n {
                    tokio::time::sleep(every).await;
                    if tx.send(Bytes::from_static(b"x")).await.is_err() {
                        return;
                    }
                }
            }));
        }
        ["", "stall", ..] => {
            return Ok(streamed(|tx| async move {
                let _ = tx.send(Bytes::from_static(b"x")).await;
                // Keeps the stream open and silent until the client goes.
                tx.closed().await;
            }));
        }
        _ => {}
    }
    let mut r = Response::new(full(st.name.clone()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    let h = r.headers_mut();
    let v = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("?"));
    h.insert("x-upstream", v(&st.name));
    h.insert("x-seen-path", v(&path));
    h.insert("x-seen-host", v(&host));
    h.insert("x-seen-version", v(&format!("{:?}", parts.version)));
    h.insert("x-remove-me", HeaderValue::from_static("yes"));
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// A 200 response whose body chunks `produce` sends; the body ends when it returns.
fn streamed<F, Fut>(produce: F) -> Response<UpBody>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(produce(tx));
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

// === other upstreams ===

/// How a [`RawUpstream`] treats each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// Answers `200 ok` as a keep-alive response (no `Connection: close`), then closes the
    /// connection at once: the proxy's pooled connection is dead by the time it is reused.
    CloseAfterAnswer,
    /// Reads the whole request, then resets the connection (RST) for the first `n` requests;
    /// later ones are answered `200 ok` with `Connection: close`.
    ResetFirst(usize),
}

/// An HTTP/1.1 upstream on a bare socket, one request per connection (see [`RawMode`]); it
/// counts the requests it read completely.
#[derive(Debug)]
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(mode: RawMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    if read_http1_request(&mut tcp).await.is_none() {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    match mode {
                        RawMode::ResetFirst(first) if n <= first => {
                            // Dropping with a zero linger sends RST instead of FIN.
                            let _ = tcp.set_zero_linger();
                        }
                        RawMode::ResetFirst(_) => {
                            let _ = tcp
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                                .await;
                        }
                        RawMode::CloseAfterAnswer => {
                            let _ = tcp
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            // A moment later, so the proxy has pooled the connection and
                            // may already be sending the next request on it: the race.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            let _ = tcp.shutdown().await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// Requests read completely (head and `Content-Length` body).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bound on a test request's head, so a confused peer cannot grow the buffer without end.
const MAX_TEST_HEAD: usize = 64 * 1024;

/// Reads one HTTP/1.1 request (head and a `Content-Length` body); `None` when the peer closed
/// first or sent more head than [`MAX_TEST_HEAD`].
async fn read_http1_request(tcp: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_TEST_HEAD {
            return None;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

/// A loopback address nothing listens on: connecting is refused.
pub fn dead_addr() -> SocketAddr {
    free_addr()
}

/// Accepts connections, reads whatever comes, never answers.
#[derive(Debug)]
pub struct BlackHole {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind black hole");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream that announces `Content-Length: 1000`, sends `partial` and closes the
/// connection — a response cut short.
#[derive(Debug)]
pub struct TruncatingUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TruncatingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind truncating upstream");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nx-upstream: truncating\r\n\r\npartial")
                        .await;
                    let _ = tcp.flush().await;
                    // Dropping closes the connection 993 bytes short.
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TruncatingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every byte back.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        Self::serve(listener)
    }

    /// Like [`EchoServer::start`], bound on `addr` (port 0: a free one) instead of loopback.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind echo on {addr}: {e}"));
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket server: answers each text message `m` with `echo: m`; records the request path
/// of each handshake.
#[derive(Debug)]
pub struct WsUpstream {
    pub addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsUpstream {
    pub async fn start() -> Self {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as WsReq, Response as WsResp,
        };
        use tokio_tungstenite::tungstenite::Message;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("local addr");
        let paths = Arc::new(Mutex::new(Vec::new()));
        let p = paths.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let p = p.clone();
                tokio::spawn(async move {
                    // The callback's error type is tungstenite's (large) HTTP response.
                    #[allow(clippy::result_large_err)]
                    let cb = |req: &WsReq, resp: WsResp| {
                        if let Ok(mut p) = p.lock() {
                            p.push(req.uri().path().to_owned());
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("echo: {t}")),
                            Message::Close(_) => return,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, paths, task }
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Layotto's `Runtime` gRPC service (tonic, h2c) on memory components: `helloworld` greets with
/// `hello from <name>`; `pubsub` is `pubsub.memory`; `statestore` is `state.memory`.
#[derive(Debug)]
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start(name: &str) -> Self {
        use mecha_capabilities::{BuildContext, ComponentSpec, Registry};
        let spec = |n: &str, kind: &str, meta: &[(&str, &str)]| ComponentSpec {
            name: n.to_owned(),
            kind: kind.to_owned(),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let greeting = format!("hello from {name}");
        let specs = vec![
            spec(
                "helloworld",
                "hello.helloworld",
                &[("hello", greeting.as_str())],
            ),
            spec("pubsub", "pubsub.memory", &[]),
            spec("statestore", "state.memory", &[]),
        ];
        let ctx = BuildContext {
            app_id: name.to_owned(),
        };
        let registry = Arc::new(Registry::build(&specs, &ctx).expect("upstream registry"));
        let svc = mecha_api::layotto::server(registry, name, 4 * 1024 * 1024, None);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc upstream");
        let addr = listener.local_addr().expect("local addr");
        let incoming = futures::stream::unfold(listener, |l| async move {
            let next = l.accept().await.map(|(s, _)| s);
            Some((next, l))
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr, task }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_get_one_address_per_name() {
        let (out, addrs) = fill_template("a: ${x}\nb: ${y}\nc: ${x}\n");
        assert_eq!(addrs.len(), 2);
        let x = addrs["x"].to_string();
        assert_eq!(out, format!("a: {x}\nb: {}\nc: {x}\n", addrs["y"]));
    }
}

/// How mecha took a rewritten config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Applied,
    Rejected,
}

impl Mesh {
    /// Rewrites the watched config file from `template` (the body, as for [`Mesh::start`]:
    /// `${name}` keeps the address it had; new names get free ones) and waits until mecha has
    /// taken the update, as `mecha_config_updates_total` tells.
    pub async fn rewrite(&mut self, template: &str) -> Reload {
        let body = fill_template_with(template, &mut self.addrs);
        // As `start` writes it: the same admin listener and thread count.
        let config = full_config(&body, self.admin);
        let applied = "mecha_config_updates_total{source=\"file\",result=\"applied\"}";
        let rejected = "mecha_config_updates_total{source=\"file\",result=\"rejected\"}";
        let text = self.metrics().await;
        let before = (
            metric_value(&text, applied).unwrap_or(0.0),
            metric_value(&text, rejected).unwrap_or(0.0),
        );
        self.inner.write_config(config.clone());
        self.config = config;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let text = self.metrics().await;
            if metric_value(&text, applied).unwrap_or(0.0) > before.0 {
                return Reload::Applied;
            }
            if metric_value(&text, rejected).unwrap_or(0.0) > before.1 {
                return Reload::Rejected;
            }
            assert!(
                Instant::now() < deadline,
                "mecha took no update within {STEP_TIMEOUT:?} after the config was rewritten"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        self.inner.config_dump().await
    }
}
