//! Mesh end-to-end: HTTP/2 extended CONNECT (RFC 8441) through the router. A client speaking h2c
//! (prior knowledge, the `h2` crate) opens `CONNECT` streams with `:protocol: websocket`; Mecha
//! routes them by `:path` to an h2c cluster, keeping `:protocol`, and relays DATA both ways. The
//! upstream is an `h2` crate server with extended CONNECT enabled that echoes every DATA frame.
//! Bad input: a plain h2 CONNECT and an HTTP/1.1 CONNECT (405, the connection keeps serving),
//! and an extended CONNECT routed to an HTTP/1.1 cluster (502 naming the cluster).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::ext::Protocol;
use h2::RecvStream;
use http::{Method, Request, Response};
use mecha_integration::mesh_support::{eventually, subst, HttpUpstream, Mesh};
use mecha_integration::{http_raw, within};
use tokio::net::{TcpListener, TcpStream};

// === an h2c upstream that accepts extended CONNECT and echoes ===

/// One request the upstream received.
#[derive(Debug, Clone)]
struct H2Seen {
    method: Method,
    /// `:protocol`, when the request had one.
    protocol: Option<String>,
    path: String,
    authority: Option<String>,
}

/// How a tunnel the upstream served ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelEnd {
    /// The client side ended its stream (END_STREAM); the upstream ended its side too.
    Ended,
    /// The stream was reset or the connection broke.
    Reset,
}

/// An h2c server (`h2` crate, extended CONNECT enabled). A `CONNECT` is answered 200 with
/// `x-upstream: h2-echo` and then every DATA frame is echoed back until the client ends the
/// stream, when the upstream ends its side; anything else is answered 200 with the body
/// `h2-echo saw <METHOD> <path>`.
struct H2EchoUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<H2Seen>>>,
    ends: Arc<Mutex<Vec<TunnelEnd>>>,
    task: tokio::task::JoinHandle<()>,
}

impl H2EchoUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2 upstream");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (seen.clone(), ends.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, ends) = (s.clone(), e.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::Builder::new()
                        .enable_connect_protocol()
                        .handshake::<_, Bytes>(tcp)
                        .await
                    else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(serve_stream(req, respond, seen.clone(), ends.clone()));
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            ends,
            task,
        }
    }

    fn seen(&self) -> Vec<H2Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn ends(&self) -> Vec<TunnelEnd> {
        self.ends.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for H2EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_stream(
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: Arc<Mutex<Vec<H2Seen>>>,
    ends: Arc<Mutex<Vec<TunnelEnd>>>,
) {
    let protocol = req
        .extensions()
        .get::<Protocol>()
        .map(|p| p.as_str().to_owned());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    if let Ok(mut s) = seen.lock() {
        s.push(H2Seen {
            method: method.clone(),
            protocol,
            path: path.clone(),
            authority: req.uri().authority().map(|a| a.as_str().to_owned()),
        });
    }
    let head = |status: u16| {
        Response::builder()
            .status(status)
            .header("x-upstream", "h2-echo")
            .body(())
            .expect("response head")
    };
    if method != Method::CONNECT {
        if let Ok(mut send) = respond.send_response(head(200), false) {
            let _ = send.send_data(Bytes::from(format!("h2-echo saw {method} {path}")), true);
        }
        return;
    }
    let Ok(mut send) = respond.send_response(head(200), false) else {
        return;
    };
    let mut body = req.into_body();
    let end = loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                if send.send_data(chunk, false).is_err() {
                    break TunnelEnd::Reset;
                }
            }
            Some(Err(_)) => break TunnelEnd::Reset,
            None => {
                if send.send_data(Bytes::new(), true).is_err() {
                    break TunnelEnd::Reset;
                }
                break TunnelEnd::Ended;
            }
        }
    };
    if let Ok(mut e) = ends.lock() {
        e.push(end);
    }
}

// === the h2c client ===

/// An h2 (prior knowledge) connection to `addr` whose server SETTINGS have been received
/// (checked by completing a `GET /warmup` exchange first, which must answer 200).
async fn h2c_client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect to mecha");
    let (send, conn) = within("h2c handshake", h2::client::handshake(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send;
    let (status, body) = get(&mut send, "/warmup").await;
    assert_eq!(status, 200, "GET /warmup: {body}");
    send
}

/// Reads a whole response body.
async fn read_all(body: &mut RecvStream) -> String {
    let mut out = BytesMut::new();
    while let Some(chunk) = within("response body", body.data()).await {
        let chunk = chunk.expect("response body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path` for `svc.test` on an existing connection: status and body.
async fn get(send: &mut SendRequest<Bytes>, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://svc.test{path}"))
        .body(())
        .expect("request");
    let (status, _, body) = exchange(send, req).await;
    (status, body)
}

/// Sends `req` with no body and reads the whole response: status, headers, body.
async fn exchange(
    send: &mut SendRequest<Bytes>,
    req: Request<()>,
) -> (u16, http::HeaderMap, String) {
    let mut ready = within("h2 ready", send.clone().ready())
        .await
        .expect("connection ready");
    let (resp, _stream) = ready.send_request(req, true).expect("send request");
    let resp = within("response head", resp).await.expect("response head");
    let (parts, mut body) = resp.into_parts();
    let text = read_all(&mut body).await;
    (parts.status.as_u16(), parts.headers, text)
}

/// An extended CONNECT for `path` on `svc.test` with `:protocol`.
fn extended_connect(path: &str, protocol: &'static str) -> Request<()> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://svc.test{path}"))
        .body(())
        .expect("request");
    req.extensions_mut().insert(Protocol::from_static(protocol));
    req
}

/// An open tunnel: the request stream to write to, the response stream to read from.
struct Tunnel {
    tx: h2::SendStream<Bytes>,
    rx: RecvStream,
    /// Bytes read that belong to no full message yet.
    pending: BytesMut,
}

impl Tunnel {
    /// Opens an extended CONNECT for `path`; panics unless it is answered 200.
    async fn open(send: &mut SendRequest<Bytes>, path: &str) -> (Tunnel, http::HeaderMap) {
        let mut ready = within("h2 ready", send.clone().ready())
            .await
            .expect("connection ready");
        let (resp, tx) = ready
            .send_request(extended_connect(path, "websocket"), false)
            .expect("send extended CONNECT");
        let resp = within("extended CONNECT answer", resp)
            .await
            .expect("extended CONNECT answer");
        let (parts, mut rx) = resp.into_parts();
        if parts.status != 200 {
            let body = read_all(&mut rx).await;
            panic!("extended CONNECT {path}: {} {body}", parts.status);
        }
        (
            Tunnel {
                tx,
                rx,
                pending: BytesMut::new(),
            },
            parts.headers,
        )
    }

    /// Sends `msg` and reads back exactly as many bytes; returns them.
    async fn round_trip(&mut self, msg: &str) -> String {
        self.tx
            .send_data(Bytes::copy_from_slice(msg.as_bytes()), false)
            .expect("send DATA");
        while self.pending.len() < msg.len() {
            let chunk = within("echoed DATA", self.rx.data())
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "tunnel ended before {msg:?} came back (got {:?})",
                        self.pending
                    )
                })
                .expect("echoed DATA");
            let _ = self.rx.flow_control().release_capacity(chunk.len());
            self.pending.extend_from_slice(&chunk);
        }
        let got = self.pending.split_to(msg.len());
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Ends the client side; expects the other side to end too, with nothing more in it.
    async fn finish(mut self) {
        self.tx
            .send_data(Bytes::new(), true)
            .expect("send END_STREAM");
        let rest = read_all(&mut self.rx).await;
        assert!(
            self.pending.is_empty() && rest.is_empty(),
            "nothing beyond the echoes: {:?}{rest:?}",
            self.pending
        );
    }
}

// === tests ===

const CONNECT: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /chat }, cluster: ws-h2c, timeout: 0 }
              - { match: { prefix: /h1-only }, cluster: h1-up }
              - { match: { prefix: /warmup }, cluster: ws-h2c }
              - { match: { prefix: / }, cluster: ws-h2c }
clusters:
  - name: ws-h2c
    protocol: h2c
    endpoints: [{ address: "@h2@" }]
  - name: h1-up
    endpoints: [{ address: "@h1@" }]
"#;

async fn connect_setup() -> (Mesh, H2EchoUpstream, HttpUpstream) {
    let h2up = H2EchoUpstream::start().await;
    let h1 = HttpUpstream::start("h1-up").await;
    let mesh = Mesh::start(&subst(CONNECT, &[("h2", h2up.addr), ("h1", h1.addr)])).await;
    (mesh, h2up, h1)
}

#[tokio::test]
async fn extended_connect_is_routed_by_path_and_relays_data_both_ways() {
    let (mesh, up, _h1) = connect_setup().await;
    let mut client = h2c_client(mesh.addr("edge")).await;
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "Mecha's listener announces SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );

    let (mut tunnel, headers) = Tunnel::open(&mut client, "/chat/room1?user=a").await;
    assert_eq!(
        headers.get("x-upstream").and_then(|v| v.to_str().ok()),
        Some("h2-echo"),
        "the upstream's answer is relayed"
    );
    let seen = up
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/chat"))
        .expect("the upstream saw the CONNECT");
    assert_eq!(seen.method, Method::CONNECT, "{seen:?}");
    assert_eq!(seen.protocol.as_deref(), Some("websocket"), "{seen:?}");
    assert_eq!(seen.path, "/chat/room1?user=a", "{seen:?}");
    assert_eq!(seen.authority.as_deref(), Some("svc.test"), "{seen:?}");

    // Several round trips, each waiting for its echo: the tunnel is bidirectional and stays
    // open between messages.
    for i in 0..5 {
        let msg = format!("message {i} {}", "x".repeat(i * 100));
        assert_eq!(tunnel.round_trip(&msg).await, msg);
    }
    // A message bigger than one DATA frame (16 KiB default) and the initial window.
    let big = "0123456789abcdef".repeat(8 * 1024);
    assert_eq!(tunnel.round_trip(&big).await, big);

    // Two tunnels at once on the same connection, interleaved.
    let (mut other, _) = Tunnel::open(&mut client, "/chat/room2").await;
    for i in 0..3 {
        assert_eq!(
            tunnel.round_trip(&format!("one-{i}")).await,
            format!("one-{i}")
        );
        assert_eq!(
            other.round_trip(&format!("two-{i}")).await,
            format!("two-{i}")
        );
    }

    // The client ends its side; the upstream sees the end and ends its side too.
    tunnel.finish().await;
    other.finish().await;
    eventually(
        "the upstream sees both tunnels end cleanly",
        Duration::from_secs(10),
        || async { up.ends().iter().filter(|e| **e == TunnelEnd::Ended).count() == 2 },
    )
    .await;
    assert!(
        up.ends().iter().all(|e| *e == TunnelEnd::Ended),
        "{:?}",
        up.ends()
    );

    // The connection keeps serving ordinary requests.
    let (status, body) = get(&mut client, "/plain").await;
    assert_eq!((status, body.as_str()), (200, "h2-echo saw GET /plain"));
}

#[tokio::test]
async fn a_reset_tunnel_is_torn_down_upstream() {
    let (mesh, up, _h1) = connect_setup().await;
    let mut client = h2c_client(mesh.addr("edge")).await;
    let (mut tunnel, _) = Tunnel::open(&mut client, "/chat/reset").await;
    assert_eq!(tunnel.round_trip("before reset").await, "before reset");
    tunnel.tx.send_reset(h2::Reason::CANCEL);
    eventually(
        "the upstream's side of the tunnel ends",
        Duration::from_secs(10),
        || async { !up.ends().is_empty() },
    )
    .await;
    let (status, body) = get(&mut client, "/after-reset").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "h2-echo saw GET /after-reset"),
        "the connection survives a reset stream"
    );
}

#[tokio::test]
async fn plain_connect_is_refused_with_405_on_h2c_and_http1() {
    let (mesh, up, _h1) = connect_setup().await;
    let edge = mesh.addr("edge");

    // h2c: CONNECT without :protocol (only :authority) → 405 on that stream …
    let mut client = h2c_client(edge).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("svc.test:443")
        .body(())
        .expect("request");
    let (status, _, body) = exchange(&mut client, req).await;
    assert_eq!(status, 405, "plain h2 CONNECT: {body}");
    assert!(
        up.seen().iter().all(|s| s.method != Method::CONNECT),
        "the plain CONNECT was not forwarded: {:?}",
        up.seen()
    );
    // … and the connection keeps serving.
    let (status, body) = get(&mut client, "/after-connect").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "h2-echo saw GET /after-connect")
    );

    // HTTP/1.1 CONNECT host:port → 405.
    let r = within(
        "an answer to an HTTP/1.1 CONNECT",
        http_raw(
            edge,
            b"CONNECT svc.test:443 HTTP/1.1\r\nHost: svc.test:443\r\n\r\n",
        ),
    )
    .await
    .expect("HTTP/1.1 CONNECT");
    assert_eq!(r.status, 405, "HTTP/1.1 CONNECT: {r:?}");
    assert!(
        up.seen().iter().all(|s| s.method != Method::CONNECT),
        "no CONNECT reached the upstream: {:?}",
        up.seen()
    );
}

#[tokio::test]
async fn extended_connect_to_an_http1_cluster_is_a_502_naming_the_cluster() {
    let (mesh, up, h1) = connect_setup().await;
    let mut client = h2c_client(mesh.addr("edge")).await;
    let (status, _, body) =
        exchange(&mut client, extended_connect("/h1-only/ws", "websocket")).await;
    assert_eq!(status, 502, "extended CONNECT to an http1 cluster: {body}");
    assert!(
        body.contains("h1-up"),
        "the error names the cluster: {body}"
    );
    assert_eq!(h1.hits(), 0, "nothing was sent to the HTTP/1.1 upstream");
    assert!(
        up.seen().iter().all(|s| s.method != Method::CONNECT),
        "{:?}",
        up.seen()
    );
    // The connection keeps serving, the HTTP/1.1 route too.
    let (status, body) = get(&mut client, "/h1-only/plain").await;
    assert_eq!((status, body.as_str()), (200, "h1-up"));
}
