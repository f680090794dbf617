//! Runtime-API authentication and the bounds on untrusted input, against the real binary:
//! the API token (field and `MECHA_API_TOKEN`), the non-loopback config rule, unary requests
//! holding one bounded message, the body-read and header-read timeouts (slowloris), the
//! listener connection cap and the SubscribeConfiguration subscription cap.

use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mecha_integration::pb::{SayHelloRequest, SubscribeConfigurationRequest};
use mecha_integration::{
    grpc_frame, grpc_message, h2_connect, mecha_bin, metric_value, raw_grpc, run_with_timeout,
    within, workspace_root, RawGrpcResponse, Sidecar, TempDir, STEP_TIMEOUT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SAY_HELLO: &str = "/spec.proto.runtime.v1.Runtime/SayHello";
const TOKEN: &str = "s3cret-token";

fn hello() -> Bytes {
    grpc_message(&SayHelloRequest {
        service_name: "helloworld".into(),
        name: "mecha".into(),
        data: None,
    })
}

async fn say_hello(sc: &Sidecar, headers: &[(&str, &str)]) -> RawGrpcResponse {
    within(
        "SayHello",
        raw_grpc(sc.grpc_addr, SAY_HELLO, headers, hello(), true),
    )
    .await
    .expect("SayHello exchange")
}

fn assert_unauthenticated(r: &RawGrpcResponse, token: &str) {
    assert_eq!(r.grpc_status(), Some(Code::Unauthenticated), "{r:?}");
    let msg = r.grpc_message();
    assert!(msg.contains("dapr-api-token"), "names the header: {msg}");
    assert!(!msg.contains(token), "never echoes the token: {msg}");
}

#[tokio::test]
async fn the_api_token_is_required_accepted_and_a_wrong_one_refused() {
    let sc = Sidecar::builder()
        .capability_setting("api_token", TOKEN)
        .start()
        .await;
    assert_unauthenticated(&say_hello(&sc, &[]).await, TOKEN);
    assert_unauthenticated(&say_hello(&sc, &[("dapr-api-token", "wrong")]).await, TOKEN);
    assert_unauthenticated(
        &say_hello(&sc, &[("authorization", "Bearer s3cret-toke")]).await,
        TOKEN,
    );
    let ok = say_hello(&sc, &[("dapr-api-token", TOKEN)]).await;
    assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
    let bearer = format!("Bearer {TOKEN}");
    let ok = say_hello(&sc, &[("authorization", &bearer)]).await;
    assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
    // Refusals are counted as UNAUTHENTICATED in the API metrics.
    sc.wait_metric(
        r#"mecha_api_errors_total{api="layotto",method="SayHello",code="UNAUTHENTICATED"}"#,
        |v| v >= 3.0,
    )
    .await;
}

#[tokio::test]
async fn the_token_can_come_from_mecha_api_token() {
    let sc = Sidecar::builder()
        .env("MECHA_API_TOKEN", "from-env")
        .start()
        .await;
    assert_unauthenticated(&say_hello(&sc, &[]).await, "from-env");
    let ok = say_hello(&sc, &[("dapr-api-token", "from-env")]).await;
    assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
}

fn validate(filter_extra: &str) -> std::process::Output {
    let dir = TempDir::new("validate-auth");
    let path = dir.write(
        "mecha.yaml",
        &format!(
            "admin: {{ address: null }}\n\
             listeners:\n\
             \x20 - name: runtime\n\
             \x20   address: 0.0.0.0:34904\n\
             \x20   filters:\n\
             \x20     - {{ type: capability{filter_extra} }}\n\
             components:\n\
             \x20 - {{ name: statestore, type: state.memory }}\n"
        ),
    );
    let mut cmd = Command::new(mecha_bin());
    cmd.arg("validate")
        .arg(&path)
        .current_dir(workspace_root())
        .env_remove("MECHA_API_TOKEN");
    run_with_timeout(&mut cmd, STEP_TIMEOUT).expect("run mecha validate")
}

#[test]
fn a_capability_filter_on_a_public_address_needs_a_token_or_an_explicit_opt_out() {
    let out = validate("");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no token on 0.0.0.0 is refused");
    assert!(
        stderr.contains("listeners[0].filters[0].api_token") && stderr.contains("0.0.0.0:34904"),
        "{stderr}"
    );
    for accepted in [", allow_unauthenticated: true", ", api_token: t0ken"] {
        let out = validate(accepted);
        assert!(
            out.status.success(),
            "{accepted}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = validate(", api_token: \"\"");
    assert!(!out.status.success(), "an empty token is refused");
}

/// Two 3 MiB messages on a unary call (limit 4 MiB): refused before the second is buffered.
#[tokio::test]
async fn a_unary_call_holds_one_bounded_message_and_memory_stays_bounded() {
    let sc = Sidecar::start().await;
    let payload = vec![b'x'; 3 * 1024 * 1024];
    let mut body = BytesMut::new();
    body.extend_from_slice(&grpc_frame(&payload));
    body.extend_from_slice(&grpc_frame(&payload));
    let body = body.freeze();
    // Several at once, so an unbounded buffer would show in the RSS.
    let calls = (0..8).map(|_| raw_grpc(sc.grpc_addr, SAY_HELLO, &[], body.clone(), true));
    for r in within("oversize unary calls", futures::future::join_all(calls)).await {
        let r = r.expect("exchange");
        assert_eq!(r.grpc_status(), Some(Code::ResourceExhausted), "{r:?}");
        assert!(r.grpc_message().contains("limit of 4194304"), "{r:?}");
    }
    let rss = metric_value(&sc.metrics().await, "process_resident_memory_bytes")
        .expect("process_resident_memory_bytes");
    assert!(
        rss < 100.0 * 1024.0 * 1024.0,
        "RSS after the abuse: {rss} bytes"
    );
    // A second (small) message on a unary call is a clear error, and the sidecar still serves.
    let mut two = BytesMut::new();
    two.extend_from_slice(&hello());
    two.extend_from_slice(&hello());
    let r = within(
        "two messages",
        raw_grpc(sc.grpc_addr, SAY_HELLO, &[], two.freeze(), true),
    )
    .await
    .expect("exchange");
    assert_eq!(r.grpc_status(), Some(Code::InvalidArgument), "{r:?}");
    assert!(r.grpc_message().contains("second request message"), "{r:?}");
    let ok = say_hello(&sc, &[]).await;
    assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
}

#[tokio::test]
async fn a_stalled_request_body_ends_the_call_after_request_body_timeout() {
    let sc = Sidecar::builder()
        .listener_setting("request_body_timeout", "1s")
        .start()
        .await;
    // Headers and half a message prefix, then nothing (the stream stays open).
    let r = within(
        "stalled body",
        raw_grpc(
            sc.grpc_addr,
            SAY_HELLO,
            &[],
            Bytes::from_static(&[0, 0, 0]),
            false,
        ),
    )
    .await
    .expect("exchange");
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded), "{r:?}");
    assert!(r.grpc_message().contains("request_body_timeout"), "{r:?}");
}

/// Reads until EOF or an error; what was read.
async fn read_to_close(mut s: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let sc = Sidecar::builder()
        .listener_setting("request_header_timeout", "1s")
        .start()
        .await;

    // HTTP/1: a request head trickled one header every 100 ms would take 20 s.
    let (rd, mut wr) = TcpStream::connect(sc.grpc_addr)
        .await
        .expect("connect")
        .into_split();
    let closed = tokio::spawn(read_to_close(rd));
    wr.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write request line");
    let mut sent_all = true;
    for i in 0..200 {
        if closed.is_finished() {
            sent_all = false;
            break;
        }
        // Other clients are served meanwhile.
        if i == 3 {
            let ok = say_hello(&sc, &[]).await;
            assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
        }
        if wr.write_all(b"x-slow: 1\r\n").await.is_err() {
            sent_all = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!sent_all, "the trickled request head was never cut off");
    let answer = within("connection closed", closed)
        .await
        .expect("reader task");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // h2c: the 24-byte preface trickled one byte every 200 ms.
    let (rd, mut wr) = TcpStream::connect(sc.grpc_addr)
        .await
        .expect("connect")
        .into_split();
    let closed = tokio::spawn(read_to_close(rd));
    let mut sent_all = true;
    for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        if closed.is_finished() || wr.write_all(&[*b]).await.is_err() {
            sent_all = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!sent_all, "the trickled h2c preface was never cut off");
    let ok = say_hello(&sc, &[]).await;
    assert_eq!(ok.grpc_status(), Some(Code::Ok), "{ok:?}");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_counted() {
    let sc = Sidecar::builder()
        .listener_setting("max_connections", "2")
        .start()
        .await;
    // Two connections held open, each proven served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let send = within("h2 connect", h2_connect(sc.grpc_addr))
            .await
            .expect("h2 connect");
        held.push(send);
    }
    for send in &mut held {
        assert_eq!(call_on(send).await, Some(Code::Ok));
    }
    // A third is closed as soon as it is accepted.
    let mut third = TcpStream::connect(sc.grpc_addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = within("third connection closed", third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "third connection got {read:?}"
    );
    // The held ones are still served.
    for send in &mut held {
        assert_eq!(call_on(send).await, Some(Code::Ok));
    }
    sc.wait_metric(
        r#"mecha_listener_connections_refused_total{listener="runtime"}"#,
        |v| v >= 1.0,
    )
    .await;
}

/// SayHello on an open h2 connection; the gRPC status.
async fn call_on(send: &mut h2::client::SendRequest<Bytes>) -> Option<Code> {
    within("call on held connection", async {
        let mut ready = send.clone().ready().await.expect("connection ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://mecha{SAY_HELLO}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut stream) = ready.send_request(req, false).expect("send request");
        stream.send_data(hello(), true).expect("send body");
        let resp = resp.await.expect("response");
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.expect("trailers");
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| headers.get("grpc-status"))?;
        Some(Code::from_i32(status.to_str().ok()?.parse().ok()?))
    })
    .await
}

#[tokio::test]
async fn a_subscribe_configuration_stream_has_a_subscription_cap() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let (tx, rx) = mpsc::channel(128);
    // mecha_api's MAX_CONFIG_SUBSCRIPTIONS_PER_STREAM is 64: one more is refused.
    for i in 0..65 {
        tx.send(SubscribeConfigurationRequest {
            store_name: "configstore".into(),
            app_id: "app".into(),
            keys: vec![format!("k{i}")],
            ..Default::default()
        })
        .await
        .expect("queue subscribe request");
    }
    let mut stream = within(
        "SubscribeConfiguration",
        rt.subscribe_configuration(ReceiverStream::new(rx)),
    )
    .await
    .expect("call accepted")
    .into_inner();
    let status = loop {
        match within("stream status", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without the cap's status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("64"), "{status:?}");
    drop(tx);
}
