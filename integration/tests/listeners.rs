//! Listeners as live resources, against the real binary: a rewritten config file adds,
//! moves, re-kinds and removes listeners without a restart. Connections on a moved, changed or
//! removed listener drain (their next HTTP/1 response says `connection: close`; idle ones are
//! closed after `shutdown.drain_seconds`), and an update whose listener cannot bind is
//! rejected whole.

use std::net::SocketAddr;

use mecha_integration::mesh_support::{send, EchoServer, HttpUpstream, Mesh, Proto, Reload, Req};
use mecha_integration::STEP_TIMEOUT;
use mecha_test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `edge` routes everything to `@a@`; `@more@` is replaced by more listeners.
const BASE: &str = r#"
shutdown: { drain_seconds: 1 }
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - { name: all, domains: ["*"], routes: [{ name: all, match: { prefix: / }, cluster: a }] }
@more@
clusters:
  - name: a
    endpoints: [{ address: "@a@" }]
  - name: b
    endpoints: [{ address: "@b@" }]
  - name: echo
    endpoints: [{ address: "@echo@" }]
"#;

/// A router listener named `name` at `address` (a `${…}` name or a literal) to cluster `b`.
fn router_to_b(name: &str, address: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {address}
    filters:
      - type: router
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [{{ name: all, match: {{ prefix: / }}, cluster: b }}] }}
"#
    )
}

struct Upstreams {
    a: HttpUpstream,
    b: HttpUpstream,
    echo: EchoServer,
}

impl Upstreams {
    async fn start() -> Self {
        Self {
            a: HttpUpstream::start("a").await,
            b: HttpUpstream::start("b").await,
            echo: EchoServer::start().await,
        }
    }

    fn config(&self, more: &str) -> String {
        BASE.replace("@more@", more)
            .replace("@a@", &self.a.addr.to_string())
            .replace("@b@", &self.b.addr.to_string())
            .replace("@echo@", &self.echo.addr.to_string())
    }
}

/// One HTTP/1.1 keep-alive connection driven by hand, to see what happens to it across an
/// update.
struct KeepAlive {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// One response read off a [`KeepAlive`] connection.
struct Answer {
    status: u16,
    /// The head, lowercased.
    head: String,
    body: String,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = format!("GET {path} HTTP/1.1\r\nhost: svc.test\r\n\r\n");
        self.tcp.write_all(req.as_bytes()).await.expect("write");
        tokio::time::timeout(STEP_TIMEOUT, self.read_answer())
            .await
            .expect("an answer in time")
    }

    async fn read_answer(&mut self) -> Answer {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a content-length (the upstream sends one)");
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        Answer { status, head, body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.tcp.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-answer");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Whether the peer closes the connection (EOF or reset) within the step timeout.
    async fn closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(STEP_TIMEOUT, self.tcp.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

async fn body_from(addr: SocketAddr) -> String {
    let r = send(addr, Proto::H1, Req::get("/x"))
        .await
        .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"));
    assert_eq!(r.status, 200, "GET {addr}: {}", r.text());
    r.text()
}

#[tokio::test]
async fn listeners_are_added_moved_and_removed_without_a_restart() {
    let ups = Upstreams::start().await;
    let mut mesh = Mesh::start(&ups.config("")).await;
    let edge = mesh.addr("edge");
    let pid = mesh.pid();

    // Added: serves at once.
    let added = ups.config(&router_to_b("extra", "${extra}"));
    assert_eq!(mesh.rewrite(&added).await, Reload::Applied);
    let extra = mesh.addr("extra");
    assert_eq!(body_from(extra).await, "b");
    let mut before_move = KeepAlive::open(extra).await;
    let first = before_move.get("/x").await;
    assert_eq!((first.status, first.body.as_str()), (200, "b"));
    assert!(!first.head.contains("connection: close"), "{}", first.head);

    // Moved: the new address serves, the old one stops accepting, and a connection made to
    // the old one is told to go after its next request.
    let moved = ups.config(&router_to_b("extra", "${moved}"));
    assert_eq!(mesh.rewrite(&moved).await, Reload::Applied);
    let moved_addr = mesh.addr("moved");
    assert_eq!(body_from(moved_addr).await, "b");
    eventually("the old address refuses", STEP_TIMEOUT, || refuses(extra)).await;
    let last = before_move.get("/x").await;
    assert_eq!((last.status, last.body.as_str()), (200, "b"));
    assert!(last.head.contains("connection: close"), "{}", last.head);
    assert!(before_move.closed_by_peer().await);

    // Removed: stops accepting; an idle kept-alive connection is closed once the drain time
    // (1 s) is up.
    let mut idle = KeepAlive::open(moved_addr).await;
    assert_eq!(idle.get("/x").await.status, 200);
    assert_eq!(mesh.rewrite(&ups.config("")).await, Reload::Applied);
    eventually("the removed listener refuses", STEP_TIMEOUT, || {
        refuses(moved_addr)
    })
    .await;
    assert!(idle.closed_by_peer().await, "idle connection not closed");
    mesh.wait_metric(r#"mecha_downstream_connections{listener="extra"}"#, |v| {
        v == 0.0
    })
    .await;

    // The untouched listener served throughout, in the same process.
    assert_eq!(body_from(edge).await, "a");
    assert_eq!(mesh.pid(), pid);
    assert!(mesh.is_running());
    let accepted = mesh
        .metric(r#"mecha_listener_connections_accepted_total{listener="extra"}"#)
        .await;
    assert!(accepted >= 4.0, "accepted on extra: {accepted}");
}

#[tokio::test]
async fn a_listener_that_changes_kind_serves_new_connections_the_new_way() {
    let ups = Upstreams::start().await;
    let mut mesh = Mesh::start(&ups.config(&router_to_b("other", "${other}"))).await;
    let other = mesh.addr("other");
    let mut old = KeepAlive::open(other).await;
    assert_eq!(old.get("/x").await.body, "b");

    // HTTP router → TCP proxy to the echo server, on the same address.
    let tcp = "  - name: other\n    address: ${other}\n    tcp_proxy: { cluster: echo }\n";
    assert_eq!(mesh.rewrite(&ups.config(tcp)).await, Reload::Applied);
    let mut fresh = TcpStream::connect(other).await.expect("connect");
    fresh.write_all(b"ping through").await.expect("write");
    let mut echoed = [0u8; 12];
    tokio::time::timeout(STEP_TIMEOUT, fresh.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping through");

    // The connection made before the change is still HTTP (answered by what the listener
    // is now: no route), and drains.
    let last = old.get("/x").await;
    assert!(last.head.contains("connection: close"), "{}", last.head);
    assert!(old.closed_by_peer().await);
}

#[tokio::test]
async fn an_update_whose_listener_cannot_bind_is_rejected_whole() {
    let ups = Upstreams::start().await;
    let mut mesh = Mesh::start(&ups.config("")).await;
    let edge = mesh.addr("edge");
    let before = mesh.config_dump().await["version_info"].clone();

    // Another process holds the address (no SO_REUSEPORT): the listener cannot bind, so
    // nothing of the update applies — neither the listener nor the route change with it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let update = ups
        .config(&router_to_b("extra", &taken_addr.to_string()))
        .replace("cluster: a }", "cluster: b }");
    assert_eq!(mesh.rewrite(&update).await, Reload::Rejected);
    let dump = mesh.config_dump().await;
    assert_eq!(dump["version_info"], before, "the running config stays");
    let errors = dump["last_rejected_update"]["errors"].to_string();
    assert!(
        errors.contains(&format!("listeners.extra: {taken_addr}: cannot listen")),
        "{dump:#}"
    );
    assert_eq!(
        body_from(edge).await,
        "a",
        "the route change was not applied"
    );

    // Once the address is free, the same update applies.
    drop(taken);
    assert_eq!(mesh.rewrite(&update).await, Reload::Applied);
    assert_eq!(body_from(taken_addr).await, "b");
    assert_eq!(body_from(edge).await, "b");
}

#[tokio::test]
async fn a_tls_client_on_a_plaintext_listener_is_closed_and_the_listener_keeps_serving() {
    let ups = Upstreams::start().await;
    let mesh = Mesh::start(&ups.config("")).await;
    let edge = mesh.addr("edge");
    let mut tls = KeepAlive::open(edge).await;
    // A TLS record header (handshake, TLS 1.0 record version) and the start of a ClientHello.
    tls.tcp
        .write_all(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")
        .await
        .expect("write");
    assert!(
        tls.closed_by_peer().await,
        "no answer is readable by a TLS client"
    );
    assert_eq!(body_from(edge).await, "a");
}

/// `router_to_b` as a filter chain of `edge` (a virtual listener with `chain_of`).
fn chain_of_edge(name: &str, address: &str, body: &str) -> String {
    format!("{body}    bind_to_port: false\n    chain_of: edge\n")
        .replace("@name@", name)
        .replace("@address@", address)
}

#[tokio::test]
async fn filter_chains_of_a_listener_are_chosen_by_destination_and_change_live() {
    let ups = Upstreams::start().await;
    let mut mesh = Mesh::start(&ups.config("")).await;
    let edge = mesh.addr("edge");
    assert_eq!(
        body_from(edge).await,
        "a",
        "no chain: the listener's own filters"
    );

    // A chain for the listener's port (Envoy's `destination_port` match): it serves the
    // connections made to edge — not redirected, so matched on the address they reached.
    let by_port = chain_of_edge(
        "edge-port",
        &format!("0.0.0.0:{}", edge.port()),
        &router_to_b("@name@", "@address@"),
    );
    assert_eq!(mesh.rewrite(&ups.config(&by_port)).await, Reload::Applied);
    assert_eq!(body_from(edge).await, "b");

    // An exact address beats the port: a TCP chain to the echo server.
    let exact = format!(
        "{by_port}  - name: edge-exact\n    address: {edge}\n    tcp_proxy: {{ cluster: echo }}\n    bind_to_port: false\n    chain_of: edge\n"
    );
    assert_eq!(mesh.rewrite(&ups.config(&exact)).await, Reload::Applied);
    let mut tcp = TcpStream::connect(edge).await.expect("connect");
    tcp.write_all(b"raw bytes").await.expect("write");
    let mut echoed = [0u8; 9];
    tokio::time::timeout(STEP_TIMEOUT, tcp.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"raw bytes");
    let accepted = mesh
        .metric(r#"mecha_listener_connections_accepted_total{listener="edge-exact"}"#)
        .await;
    assert!(accepted >= 1.0, "accepted on the exact chain: {accepted}");

    // A chain of a listener that does not exist, or one that binds, is refused by name.
    let orphan = "  - name: stray\n    address: 0.0.0.0:9\n    bind_to_port: false\n    chain_of: nobody\n    tcp_proxy: { cluster: echo }\n";
    assert_eq!(mesh.rewrite(&ups.config(orphan)).await, Reload::Rejected);
    let dump = mesh.config_dump().await;
    let errors = dump["last_rejected_update"]["errors"].to_string();
    assert!(
        errors.contains("chain_of: no listener is named \\\"nobody\\\""),
        "{errors}"
    );

    // Chains removed: the listener's own filters again, in the same process.
    assert_eq!(mesh.rewrite(&ups.config("")).await, Reload::Applied);
    assert_eq!(body_from(edge).await, "a");
    assert!(mesh.is_running());
}
