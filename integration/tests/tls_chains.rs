//! Filter chains chosen by the TLS ClientHello, against the real binary: one bound listener,
//! three `tcp_proxy` chains on its own address — `a.example.com` → A, `*.example.org` → B,
//! `raw_buffer` → C — and its own filters (→ D) for what none matches. TLS passes through
//! unterminated: each upstream is a plain TCP server that answers its tag at once and records
//! every byte it receives, so the tests see the ClientHello arrive unchanged. A connection
//! that sends nothing is closed after `listener_filters_timeout`, or served as plain text
//! where `continue_on_listener_filters_timeout` is set.

use std::net::SocketAddr;
use std::sync::Arc;

use mecha_integration::mesh_support::{subst, Mesh};
use mecha_integration::STEP_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;

const CONFIG: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    listener_filters_timeout: 300ms
    tcp_proxy: { cluster: d }
  - name: edge/a
    address: ${edge}
    bind_to_port: false
    chain_of: edge
    chain_match: { server_names: [a.example.com] }
    tcp_proxy: { cluster: a }
  - name: edge/org
    address: ${edge}
    bind_to_port: false
    chain_of: edge
    chain_match: { server_names: ["*.example.org"], transport_protocol: tls }
    tcp_proxy: { cluster: b }
  - name: edge/raw
    address: ${edge}
    bind_to_port: false
    chain_of: edge
    chain_match: { transport_protocol: raw_buffer }
    tcp_proxy: { cluster: c }
  - name: lenient
    address: ${lenient}
    listener_filters_timeout: 300ms
    continue_on_listener_filters_timeout: true
    tcp_proxy: { cluster: d }
  - name: lenient/raw
    address: ${lenient}
    bind_to_port: false
    chain_of: lenient
    chain_match: { transport_protocol: raw_buffer }
    tcp_proxy: { cluster: c }
clusters:
  - { name: a, endpoints: [{ address: "@a@" }] }
  - { name: b, endpoints: [{ address: "@b@" }] }
  - { name: c, endpoints: [{ address: "@c@" }] }
  - { name: d, endpoints: [{ address: "@d@" }] }
"#;

/// A plain TCP upstream: writes its tag on accept, then records what arrives until the
/// connection ends.
struct Upstream {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Upstream {
    async fn start(tag: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tcp.write_all(tag.as_bytes()).await;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Until EOF (or a reset: a TLS client giving up on the tag).
                    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = tx.send(got);
                });
            }
        });
        Self { addr, seen }
    }

    /// The bytes of the next connection that ended.
    async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(STEP_TIMEOUT, self.seen.recv())
            .await
            .expect("a connection reached this upstream in time")
            .expect("upstream running")
    }

    fn nothing_yet(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS handshake to `addr` for `sni`; it fails (the upstreams are not TLS), which is fine:
/// what matters is where its ClientHello went.
async fn tls_attempt(addr: SocketAddr, sni: &str) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let connector = tokio_rustls::TlsConnector::from(client_config());
    let outcome = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("the handshake ends in time");
    assert!(outcome.is_err(), "no upstream speaks TLS");
}

/// The exact ClientHello a rustls client sends for `sni` (captured on a local socket).
async fn captured_client_hello(sni: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let _ = tokio_rustls::TlsConnector::from(client_config())
            .connect(name, tcp)
            .await;
    });
    let (mut tcp, _) = listener.accept().await.expect("accept");
    let mut hello = vec![0u8; 5];
    tcp.read_exact(&mut hello).await.expect("record header");
    let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    hello.resize(5 + len, 0);
    tcp.read_exact(&mut hello[5..]).await.expect("record");
    client.abort();
    hello
}

/// Sends `bytes`, closes the sending side, and returns what came back.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    tcp.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, tcp.read_to_end(&mut back))
        .await
        .expect("closed in time")
        .expect("read");
    back
}

/// The four upstreams A–D (each answers its letter) and the sidecar on CONFIG routing to them.
async fn start() -> (Mesh, [Upstream; 4]) {
    let (a, b, c, d) = (
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
        Upstream::start("D").await,
    );
    let config = subst(
        CONFIG,
        &[("a", a.addr), ("b", b.addr), ("c", c.addr), ("d", d.addr)],
    );
    (Mesh::start(&config).await, [a, b, c, d])
}

#[tokio::test]
async fn tcp_chains_are_chosen_by_the_client_hello_and_get_it_unchanged() {
    let (mesh, [mut a, mut b, mut c, mut d]) = start().await;
    let edge = mesh.addr("edge");

    // An exact server name: A gets the ClientHello byte for byte.
    let hello = captured_client_hello("a.example.com").await;
    assert_eq!(exchange(edge, &hello).await, b"A");
    assert_eq!(
        a.next().await,
        hello,
        "the ClientHello passes through unchanged"
    );

    // A wildcard, with a real TLS client (its handshake fails against a plain upstream).
    tls_attempt(edge, "x.y.example.org").await;
    let got = b.next().await;
    assert!(
        got.starts_with(b"\x16\x03"),
        "a TLS record reached B: {got:?}"
    );
    assert!(
        got.windows(15).any(|w| w == b"x.y.example.org"),
        "the ClientHello with its SNI reached B"
    );

    // Plain text: the raw_buffer chain.
    assert_eq!(exchange(edge, b"hello, plain text").await, b"C");
    assert_eq!(c.next().await, b"hello, plain text");

    // TLS that no chain names (not a.example.com, not *.example.org; not raw_buffer): the
    // listener's own filters.
    tls_attempt(edge, "other.example.com").await;
    assert!(d.next().await.starts_with(b"\x16\x03"));
    assert!(a.nothing_yet() && b.nothing_yet() && c.nothing_yet());

    let accepted =
        |l: &str| format!(r#"mecha_listener_connections_accepted_total{{listener="{l}"}}"#);
    assert_eq!(mesh.metric(&accepted("edge/a")).await, 1.0);
    assert_eq!(mesh.metric(&accepted("edge/org")).await, 1.0);
    assert_eq!(mesh.metric(&accepted("edge/raw")).await, 1.0);
    assert_eq!(mesh.metric(&accepted("edge")).await, 1.0);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_timeout_or_served_as_plain_text() {
    let (mesh, [_a, _b, mut c, _d]) = start().await;

    // `edge` closes it (no upstream tag comes back), and counts why.
    let mut silent = TcpStream::connect(mesh.addr("edge"))
        .await
        .expect("connect");
    let mut back = Vec::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, silent.read_to_end(&mut back))
        .await
        .expect("closed in time");
    assert!(read.is_err() || back.is_empty(), "closed, got {back:?}");
    mesh.wait_metric(
        r#"mecha_listener_connections_refused_total{listener="edge",reason="listener_filters_timeout"}"#,
        |v| v == 1.0,
    )
    .await;

    // `lenient` continues: as plain text, to its raw_buffer chain (C answers at once).
    let mut silent = TcpStream::connect(mesh.addr("lenient"))
        .await
        .expect("connect");
    let mut tag = [0u8; 1];
    tokio::time::timeout(STEP_TIMEOUT, silent.read_exact(&mut tag))
        .await
        .expect("served in time")
        .expect("read");
    assert_eq!(&tag, b"C");
    drop(silent);
    assert_eq!(c.next().await, b"", "it sent nothing");

    // A peer that closes before sending anything: closed quietly, the listener keeps serving.
    drop(
        TcpStream::connect(mesh.addr("edge"))
            .await
            .expect("connect"),
    );
    assert_eq!(exchange(mesh.addr("edge"), b"after").await, b"C");
    assert_eq!(c.next().await, b"after");
}
