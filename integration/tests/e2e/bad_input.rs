//! Bad input: unknown methods, oversize and malformed messages, garbage on the wire, the
//! wrong HTTP version or method, unknown paths, and tiny deadlines. After every abuse the
//! process must still serve (a SayHello succeeds and /healthz answers 200).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use mecha_integration::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use mecha_integration::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use mecha_integration::pb::{
    GetStateRequest, SaveStateRequest, SayHelloRequest, SayHelloResponse, StateItem,
    SubscribeTopicEventsRequest, SubscribeTopicEventsRequestInitial, SubscribeTopicEventsResponse,
};
use mecha_integration::{
    describe, grpc_frame, grpc_message, grpc_payloads, http_raw, raw_grpc, raw_h2, within, Sidecar,
};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_prost::ProstCodec;

const SAY_HELLO: &str = "/spec.proto.runtime.v1.Runtime/SayHello";

/// The process is alive and serving: a SayHello over a fresh connection and /healthz.
async fn assert_still_serves(sc: &Sidecar, after: &str) {
    let mut rt = sc.client().await;
    let r = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            name: "survivor".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("after {after}: SayHello failed: {}", describe(&s)))
    .into_inner();
    assert_eq!(r.hello, "greetings, survivor", "after {after}");
    let h = sc.admin_get("/healthz").await;
    assert_eq!(h.status, 200, "after {after}: /healthz {}", h.body);
}

/// Writes `bytes` on a fresh TCP connection, then reads until the server closes it (bounded):
/// the server must neither crash nor hang on to the connection forever.
async fn send_garbage(sc: &Sidecar, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(sc.grpc_addr)
        .await
        .expect("connect");
    tcp.write_all(bytes).await.expect("write garbage");
    let _ = tcp.shutdown().await;
    let mut answer = Vec::new();
    // Either the server answers and closes, or resets: both end the read.
    let _ = within(
        "server closes a garbage connection",
        tcp.read_to_end(&mut answer),
    )
    .await;
    answer
}

/// Asserts an unknown-component error: INVALID_ARGUMENT naming the component and listing the
/// configured one of that building block.
fn assert_unknown_component<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    configured: &str,
) {
    let err = result.expect_err(what);
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{what}: {}",
        describe(&err)
    );
    assert!(
        err.message().contains("\"ghost\"") && err.message().contains(configured),
        "{what}: names \"ghost\" and lists {configured:?}: {}",
        describe(&err)
    );
}

#[tokio::test]
async fn unknown_component_in_every_block_is_invalid_argument() {
    use mecha_integration::pb::{
        GetBulkSecretRequest, GetConfigurationRequest, GetNextIdRequest, GetSecretRequest,
        PublishEventRequest, TryLockRequest, UnlockRequest,
    };
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let ghost = || "ghost".to_owned();

    let r = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: ghost(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("GetState", r, "statestore");
    let r = within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: ghost(),
            topic: "t".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("PublishEvent", r, "pubsub");
    let r = within(
        "TryLock",
        rt.try_lock(TryLockRequest {
            store_name: ghost(),
            resource_id: "r".into(),
            lock_owner: "o".into(),
            expire: 5,
        }),
    )
    .await;
    assert_unknown_component("TryLock", r, "lockstore");
    let r = within(
        "Unlock",
        rt.unlock(UnlockRequest {
            store_name: ghost(),
            resource_id: "r".into(),
            lock_owner: "o".into(),
        }),
    )
    .await;
    assert_unknown_component("Unlock", r, "lockstore");
    let r = within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: ghost(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("GetNextId", r, "sequencer");
    let r = within(
        "GetConfiguration",
        rt.get_configuration(GetConfigurationRequest {
            store_name: ghost(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("GetConfiguration", r, "configstore");
    let r = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: ghost(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("GetSecret", r, "secretstore");
    let r = within(
        "GetBulkSecret",
        rt.get_bulk_secret(GetBulkSecretRequest {
            store_name: ghost(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("GetBulkSecret", r, "secretstore");
    let r = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            service_name: ghost(),
            ..Default::default()
        }),
    )
    .await;
    assert_unknown_component("SayHello", r, "helloworld");

    sc.wait_metric(
        "mecha_api_errors_total{api=\"layotto\",method=\"GetState\",code=\"INVALID_ARGUMENT\"}",
        |v| v == 1.0,
    )
    .await;
    assert_still_serves(&sc, "unknown components").await;
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let sc = Sidecar::start().await;

    // tonic's generic client with a custom path.
    let mut grpc = tonic::client::Grpc::new(sc.channel().await);
    within("ready", grpc.ready()).await.expect("channel ready");
    let codec: ProstCodec<SayHelloRequest, SayHelloResponse> = ProstCodec::default();
    let err = within(
        "NoSuch",
        grpc.unary(
            tonic::Request::new(SayHelloRequest::default()),
            PathAndQuery::from_static("/spec.proto.runtime.v1.Runtime/NoSuch"),
            codec,
        ),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(err.code(), Code::Unimplemented, "{}", describe(&err));
    assert!(
        err.message().contains("unknown method") && err.message().contains("NoSuch"),
        "the message names the method: {}",
        describe(&err)
    );

    // The same over raw h2.
    let r = within(
        "raw NoSuch",
        raw_grpc(
            sc.grpc_addr,
            "/spec.proto.runtime.v1.Runtime/NoSuch",
            &[],
            grpc_message(&SayHelloRequest::default()),
            true,
        ),
    )
    .await
    .expect("raw h2 exchange");
    assert_eq!(r.http_status, 200);
    assert_eq!(r.grpc_status(), Some(Code::Unimplemented), "{r:?}");

    // Counted under method="unknown" in the metrics.
    sc.wait_metric(
        "mecha_api_errors_total{api=\"layotto\",method=\"unknown\",code=\"UNIMPLEMENTED\"}",
        |v| v >= 2.0,
    )
    .await;
    assert_still_serves(&sc, "unknown methods").await;
}

#[tokio::test]
async fn oversize_message_is_resource_exhausted() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;

    // Just under the 4 MiB limit is fine.
    let under = vec![b'u'; 3 * 1024 * 1024];
    within(
        "SaveState 3 MiB",
        rt.save_state(SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "big".into(),
                value: under.clone(),
                ..Default::default()
            }],
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("3 MiB SaveState: {}", describe(&s)));
    let got = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: "statestore".into(),
            key: "big".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetState big: {}", describe(&s)))
    .into_inner();
    assert_eq!(got.data.len(), under.len());

    // Over it: RESOURCE_EXHAUSTED, and the stored value is untouched.
    let err = within(
        "SaveState 5 MiB",
        rt.save_state(SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "big".into(),
                value: vec![b'o'; 5 * 1024 * 1024],
                ..Default::default()
            }],
        }),
    )
    .await
    .expect_err("5 MiB message");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", describe(&err));

    // A prefix announcing 5 MiB is refused before the payload arrives, on a streaming method
    // too (the request stream stays open: the answer cannot wait for the body).
    let mut prefix = BytesMut::new();
    prefix.put_u8(0);
    prefix.put_u32(5 * 1024 * 1024);
    prefix.put_slice(b"only the start");
    let r = within(
        "oversize prefix",
        raw_grpc(
            sc.grpc_addr,
            "/spec.proto.runtime.v1.Runtime/SubscribeTopicEvents",
            &[],
            prefix.freeze(),
            false,
        ),
    )
    .await
    .expect("raw h2 exchange");
    assert_eq!(r.grpc_status(), Some(Code::ResourceExhausted), "{r:?}");
    assert!(r.grpc_message().contains("exceeds"), "{r:?}");

    assert_still_serves(&sc, "oversize messages").await;
}

#[tokio::test]
async fn malformed_protobuf_is_an_error_status() {
    let sc = Sidecar::start().await;
    for (what, payload) in [
        ("0xff bytes", vec![0xff_u8; 64]),
        ("a field with a truncated length", vec![0x0a, 0x7f, b'a']),
        ("wire type 7", vec![0x0f, 0x01]),
    ] {
        let r = within(
            what,
            raw_grpc(sc.grpc_addr, SAY_HELLO, &[], grpc_frame(&payload), true),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: raw h2 exchange: {e:#}"));
        let code = r.grpc_status();
        assert!(
            matches!(code, Some(Code::InvalidArgument | Code::Internal)),
            "{what}: expected INVALID_ARGUMENT or INTERNAL, got {code:?} ({r:?})"
        );
        assert!(
            !r.grpc_message().is_empty(),
            "{what}: the status says why: {r:?}"
        );
    }
    assert_still_serves(&sc, "malformed protobuf").await;
}

#[tokio::test]
async fn truncated_and_bad_grpc_frames_are_errors() {
    let sc = Sidecar::start().await;

    // A frame announcing 100 bytes that carries 10, then the stream ends.
    let mut truncated = BytesMut::new();
    truncated.put_u8(0);
    truncated.put_u32(100);
    truncated.put_slice(&[0u8; 10]);
    let r = within(
        "truncated frame",
        raw_grpc(sc.grpc_addr, SAY_HELLO, &[], truncated.freeze(), true),
    )
    .await
    .expect("raw h2 exchange");
    let code = r.grpc_status();
    assert!(
        matches!(code, Some(Code::InvalidArgument | Code::Internal)),
        "a truncated frame must fail with INVALID_ARGUMENT or INTERNAL: {r:?}"
    );

    // Only 3 bytes of a 5-byte prefix.
    let r = within(
        "partial prefix",
        raw_grpc(
            sc.grpc_addr,
            SAY_HELLO,
            &[],
            Bytes::from_static(&[0, 0, 0]),
            true,
        ),
    )
    .await
    .expect("raw h2 exchange");
    assert!(
        matches!(
            r.grpc_status(),
            Some(Code::InvalidArgument | Code::Internal)
        ),
        "a partial prefix must fail with INVALID_ARGUMENT or INTERNAL: {r:?}"
    );

    // Compressed flag without a grpc-encoding.
    let mut compressed = BytesMut::new();
    compressed.put_u8(1);
    compressed.put_u32(4);
    compressed.put_slice(b"junk");
    let r = within(
        "compressed flag",
        raw_grpc(sc.grpc_addr, SAY_HELLO, &[], compressed.freeze(), true),
    )
    .await
    .expect("raw h2 exchange");
    assert!(
        matches!(
            r.grpc_status(),
            Some(Code::InvalidArgument | Code::Internal)
        ),
        "a compressed frame without grpc-encoding must fail: {r:?}"
    );
    assert!(r.grpc_message().contains("grpc-encoding"), "{r:?}");

    // An empty body decodes as an all-default message: SayHello answers the plain greeting.
    let r = within(
        "empty message",
        raw_grpc(sc.grpc_addr, SAY_HELLO, &[], grpc_frame(&[]), true),
    )
    .await
    .expect("raw h2 exchange");
    assert_eq!(r.grpc_status(), Some(Code::Ok), "{r:?}");
    let payloads = grpc_payloads(&r.data);
    assert_eq!(payloads.len(), 1, "{r:?}");
    let hello = SayHelloResponse::decode(payloads[0].as_slice()).expect("decode response");
    assert_eq!(hello.hello, "greetings");

    assert_still_serves(&sc, "bad frames").await;
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_take_the_process_down() {
    let sc = Sidecar::start().await;

    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_garbage(&sc, &junk).await;
    assert_still_serves(&sc, "raw TCP garbage").await;

    // The h2 connection preface, then junk instead of a SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&junk[..512]);
    send_garbage(&sc, &preface).await;
    assert_still_serves(&sc, "h2 preface + junk").await;

    // The preface, an empty SETTINGS frame, then a frame with an absurd length.
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
    frames.extend_from_slice(&junk[..64]);
    send_garbage(&sc, &frames).await;
    assert_still_serves(&sc, "h2 frame with an absurd length").await;

    // A broken HTTP/1.1 request line.
    send_garbage(&sc, b"BREW /pot HTTP/9.9\r\n\x00\x01\x02\r\n\r\n").await;
    assert_still_serves(&sc, "broken HTTP/1.1").await;

    // A connection closed mid-request (headers, then nothing).
    send_garbage(&sc, b"POST /spec.proto.runtime.v1.Runtime/SayHello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").await;
    assert_still_serves(&sc, "a half-sent HTTP/1.1 request").await;

    // An h2 stream reset by the client mid-request.
    {
        let send = mecha_integration::h2_connect(sc.grpc_addr)
            .await
            .expect("h2 connect");
        let mut send = within("h2 ready", send.ready()).await.expect("ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{SAY_HELLO}", sc.grpc_addr))
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let (_resp, mut stream) = send.send_request(req, false).expect("send");
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 50, 1, 2]), false)
            .expect("send data");
        stream.send_reset(h2::Reason::CANCEL);
    }
    assert_still_serves(&sc, "an h2 stream reset mid-request").await;
}

#[tokio::test]
async fn grpc_over_http1_is_505_with_a_message() {
    let sc = Sidecar::start().await;
    let body = grpc_message(&SayHelloRequest::default());
    let mut req = format!(
        "POST {SAY_HELLO} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sc.grpc_addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = within("HTTP/1.1 gRPC", http_raw(sc.grpc_addr, &req))
        .await
        .expect("HTTP/1.1 exchange");
    assert_eq!(r.status, 505, "{r:?}");
    assert!(r.body.contains("HTTP/2"), "the body says what to do: {r:?}");
    assert_still_serves(&sc, "gRPC over HTTP/1.1").await;
}

#[tokio::test]
async fn non_post_is_405_and_unknown_paths_are_404() {
    let sc = Sidecar::start().await;

    // HTTP/1.1 GET on a Runtime method.
    let r = within(
        "GET over HTTP/1.1",
        mecha_integration::http_get(sc.grpc_addr, SAY_HELLO),
    )
    .await
    .expect("exchange");
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.body.contains("POST"), "{r:?}");

    // h2 GET on a Runtime method.
    let r = within(
        "GET over h2",
        raw_h2("GET", sc.grpc_addr, SAY_HELLO, &[], Bytes::new(), true),
    )
    .await
    .expect("h2 exchange");
    assert_eq!(r.http_status, 405, "{r:?}");

    // A path outside the Runtime service: 404 naming it, over both protocols.
    let r = within(
        "GET /nope",
        mecha_integration::http_get(sc.grpc_addr, "/nope"),
    )
    .await
    .expect("exchange");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("/nope"), "{r:?}");
    let r = within(
        "POST other service",
        raw_grpc(
            sc.grpc_addr,
            "/other.pkg.Service/Method",
            &[],
            grpc_message(&SayHelloRequest::default()),
            true,
        ),
    )
    .await
    .expect("h2 exchange");
    assert_eq!(r.http_status, 404, "{r:?}");
    // Prefix match is on the whole service name.
    let r = within(
        "POST lookalike service",
        raw_grpc(
            sc.grpc_addr,
            "/spec.proto.runtime.v1.RuntimeX/SayHello",
            &[],
            grpc_message(&SayHelloRequest::default()),
            true,
        ),
    )
    .await
    .expect("h2 exchange");
    assert_eq!(r.http_status, 404, "{r:?}");

    assert_still_serves(&sc, "405/404 requests").await;
}

fn initial_request(topic: &str) -> Bytes {
    grpc_message(&SubscribeTopicEventsRequest {
        subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
            SubscribeTopicEventsRequestInitial {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                ..Default::default()
            },
        )),
    })
}

#[tokio::test]
async fn tiny_grpc_timeout_is_deadline_exceeded() {
    let sc = Sidecar::start().await;
    let path = "/spec.proto.runtime.v1.Runtime/SubscribeTopicEvents";

    // A subscription with no events blocks: the deadline ends it. The request stream stays
    // open, so only the server's deadline can end the exchange.
    let r = within(
        "SubscribeTopicEvents with grpc-timeout 300m",
        raw_grpc(
            sc.grpc_addr,
            path,
            &[("grpc-timeout", "300m")],
            initial_request("quiet"),
            false,
        ),
    )
    .await
    .expect("raw h2 exchange");
    assert_eq!(r.http_status, 200);
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded), "{r:?}");
    // initial_response came first, before the deadline.
    let payloads = grpc_payloads(&r.data);
    assert_eq!(payloads.len(), 1, "{r:?}");
    let first = SubscribeTopicEventsResponse::decode(payloads[0].as_slice()).expect("decode");
    assert!(matches!(
        first.subscribe_topic_events_response_type,
        Some(Outbound::InitialResponse(_))
    ));

    // A 1 ns deadline has passed before anything could be answered.
    let r = within(
        "SubscribeTopicEvents with grpc-timeout 1n",
        raw_grpc(
            sc.grpc_addr,
            path,
            &[("grpc-timeout", "1n")],
            initial_request("quiet"),
            false,
        ),
    )
    .await
    .expect("raw h2 exchange");
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded), "{r:?}");

    // tonic's client sends grpc-timeout from the request's timeout: same code.
    let mut rt = sc.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(SubscribeTopicEventsRequest {
        subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
            SubscribeTopicEventsRequestInitial {
                pubsub_name: "pubsub".into(),
                topic: "quiet".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .expect("queue");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_millis(300));
    let status = match within("tonic subscribe", rt.subscribe_topic_events(req)).await {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match within("tonic stream", stream.message()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("stream ended without a status"),
                    Err(s) => break s,
                }
            }
        }
    };
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        describe(&status)
    );
    drop(tx);

    sc.wait_metric(
        "mecha_api_errors_total{api=\"layotto\",method=\"SubscribeTopicEvents\",code=\"DEADLINE_EXCEEDED\"}",
        |v| v >= 2.0,
    )
    .await;
    assert_still_serves(&sc, "deadlines").await;
}
