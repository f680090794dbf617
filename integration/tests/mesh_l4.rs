//! Mesh end-to-end: TCP proxy listeners (L4 pass-through) and WebSocket (HTTP/1.1 Upgrade)
//! through a routed listener, against real upstream servers.

use futures::{SinkExt, StreamExt};
use mecha_integration::mesh_support::{
    dead_addr, send, subst, EchoServer, HttpUpstream, Mesh, Proto, Req, WsUpstream,
};
use mecha_integration::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const TCP: &str = r#"
listeners:
  - name: echo
    address: ${echo}
    tcp_proxy: { cluster: echo }
  - name: nowhere
    address: ${nowhere}
    tcp_proxy: { cluster: nowhere }
clusters:
  - name: echo
    endpoints: [{ address: "@echo@" }]
  - name: nowhere
    endpoints: [{ address: "@dead@" }, { address: "@dead2@" }]
"#;

#[tokio::test]
async fn tcp_proxy_passes_bytes_both_ways_and_closes_when_the_upstream_is_dead() {
    let echo = EchoServer::start().await;
    let mesh = Mesh::start(&subst(
        TCP,
        &[
            ("echo", echo.addr),
            ("dead", dead_addr()),
            ("dead2", dead_addr()),
        ],
    ))
    .await;

    // Several connections at once, each with its own bytes (binary, 256 KiB).
    let conns = (0..4u8).map(|c| {
        let addr = mesh.addr("echo");
        async move {
            let mut tcp = TcpStream::connect(addr)
                .await
                .expect("connect tcp listener");
            let payload: Vec<u8> = (0..256 * 1024)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(c))
                .collect();
            let (mut r, mut w) = tcp.split();
            let write = async {
                w.write_all(&payload).await.expect("write");
                w.shutdown().await.expect("half-close");
            };
            let read = async {
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.expect("read echo");
                back
            };
            let ((), back) = tokio::join!(write, read);
            assert_eq!(back.len(), payload.len(), "connection {c}");
            assert!(back == payload, "connection {c}: bytes differ");
        }
    });
    within(
        "echo through the tcp proxy",
        futures::future::join_all(conns),
    )
    .await;

    // Every endpoint refuses: the proxy closes the client connection.
    let mut tcp = TcpStream::connect(mesh.addr("nowhere"))
        .await
        .expect("connect");
    let _ = tcp.write_all(b"hello?").await;
    let mut buf = [0u8; 16];
    let n = within("the dead-upstream connection closes", tcp.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "expected EOF or reset, read {n:?}"
    );
}

const WS: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /ws/ }, cluster: ws }
              - { match: { prefix: / }, cluster: web }
clusters:
  - name: ws
    endpoints: [{ address: "@ws@" }]
  - name: web
    endpoints: [{ address: "@web@" }]
"#;

#[tokio::test]
async fn websocket_upgrade_passes_through_the_router() {
    let ws = WsUpstream::start().await;
    let web = HttpUpstream::start("web").await;
    let mesh = Mesh::start(&subst(WS, &[("ws", ws.addr), ("web", web.addr)])).await;
    let edge = mesh.addr("edge");

    let tcp = TcpStream::connect(edge).await.expect("connect");
    let (mut socket, resp) = within(
        "WebSocket handshake",
        tokio_tungstenite::client_async("ws://svc.test/ws/chat", tcp),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..5 {
        socket
            .send(Message::text(format!("hi {i}")))
            .await
            .expect("send");
        let msg = within("echo", socket.next())
            .await
            .expect("a message")
            .expect("ok");
        assert_eq!(
            msg.into_text().expect("text").as_str(),
            format!("echo: hi {i}")
        );
    }
    socket.close(None).await.expect("close");
    assert_eq!(ws.paths(), vec!["/ws/chat".to_owned()]);

    // Plain requests on the same listener are unaffected.
    let r = send(edge, Proto::H1, Req::get("/x")).await.expect("GET /x");
    assert_eq!((r.status, r.text().as_str()), (200, "web"));
}
