//! Mesh end-to-end: gRPC through the router to a real tonic server behind an h2c cluster
//! (unary with trailers, bidirectional streaming), gRPC statuses for proxy-generated errors, and
//! one port serving both the runtime API (capability filter) and routed traffic.

use std::collections::HashMap;
use std::net::SocketAddr;

use mecha_integration::mesh_support::{
    self, dead_addr, send, subst, BlackHole, GrpcUpstream, HttpUpstream, Mesh, Proto, Req,
};
use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use mecha_integration::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use mecha_integration::pb::topic_event_response::TopicEventResponseStatus;
use mecha_integration::pb::{
    GetStateRequest, PublishEventRequest, SayHelloRequest, SayHelloResponse,
    SubscribeTopicEventsRequest, SubscribeTopicEventsRequestInitial,
    SubscribeTopicEventsRequestProcessed, SubscribeTopicEventsResponse, TopicEventResponse,
};
use mecha_integration::{grpc_message, grpc_payloads, raw_grpc, within};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const GRPC: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: dead
                match: { prefix: /spec.proto.runtime.v1.Runtime/, headers: [{ name: x-target, exact: dead }] }
                cluster: dead
              - name: slow
                match: { prefix: /spec.proto.runtime.v1.Runtime/, headers: [{ name: x-target, exact: hole }] }
                cluster: hole
                timeout: 300ms
              - name: narrow
                match: { prefix: /spec.proto.runtime.v1.Runtime/, headers: [{ name: x-target, exact: narrow }] }
                cluster: narrow
              - name: short
                match: { prefix: /spec.proto.runtime.v1.Runtime/, headers: [{ name: x-target, exact: short }] }
                cluster: runtime
                timeout: 300ms
              - name: untimed
                match: { prefix: /spec.proto.runtime.v1.Runtime/, headers: [{ name: x-target, exact: untimed }] }
                cluster: runtime
                timeout: 0
              - name: runtime
                match: { prefix: /spec.proto.runtime.v1.Runtime/ }
                cluster: runtime
clusters:
  - name: narrow
    protocol: h2c
    circuit_breakers: { max_requests: 1 }
    endpoints: [{ address: "@runtime@" }]
  - name: runtime
    protocol: h2c
    endpoints: [{ address: "@runtime@" }]
  - name: dead
    protocol: h2c
    endpoints: [{ address: "@dead@" }]
  - name: hole
    protocol: h2c
    endpoints: [{ address: "@hole@" }]
"#;

async fn client(addr: SocketAddr) -> RuntimeClient<Channel> {
    let ch = within(
        "connect",
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect(),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    RuntimeClient::new(ch)
}

fn with_target<T>(msg: T, target: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = target {
        req.metadata_mut()
            .insert("x-target", t.parse().expect("ascii"));
    }
    req
}

/// An open SubscribeTopicEvents stream (past its initial_response).
struct Subscription {
    tx: mpsc::Sender<SubscribeTopicEventsRequest>,
    rx: tonic::Streaming<SubscribeTopicEventsResponse>,
}

impl Subscription {
    async fn open(rt: &mut RuntimeClient<Channel>, topic: &str, target: Option<&str>) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(SubscribeTopicEventsRequest {
            subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
                SubscribeTopicEventsRequestInitial {
                    pubsub_name: "pubsub".into(),
                    topic: topic.into(),
                    metadata: HashMap::new(),
                    dead_letter_topic: None,
                },
            )),
        })
        .await
        .expect("queue initial");
        let mut rx = within(
            "SubscribeTopicEvents",
            rt.subscribe_topic_events(with_target(ReceiverStream::new(rx), target)),
        )
        .await
        .expect("SubscribeTopicEvents")
        .into_inner();
        let first = within("initial_response", rx.message())
            .await
            .expect("stream ok")
            .expect("first message");
        assert!(
            matches!(
                first.subscribe_topic_events_response_type,
                Some(Outbound::InitialResponse(_))
            ),
            "{first:?}"
        );
        Self { tx, rx }
    }

    /// The next message is an event carrying `data`; acknowledges it on the stream.
    async fn expect_event(&mut self, data: &str) {
        let msg = within("event", self.rx.message())
            .await
            .unwrap_or_else(|s| panic!("subscription stream failed: {s:?}"))
            .expect("an event");
        let Some(Outbound::EventMessage(ev)) = msg.subscribe_topic_events_response_type else {
            panic!("expected an event: {msg:?}");
        };
        assert_eq!(ev.data, data.as_bytes());
        self.tx
            .send(SubscribeTopicEventsRequest {
                subscribe_topic_events_request_type: Some(Inbound::EventProcessed(
                    SubscribeTopicEventsRequestProcessed {
                        id: ev.id.clone(),
                        status: Some(TopicEventResponse {
                            status: TopicEventResponseStatus::Success as i32,
                        }),
                    },
                )),
            })
            .await
            .expect("ack");
    }
}

async fn publish(rt: &mut RuntimeClient<Channel>, topic: &str, data: &str) {
    within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .expect("PublishEvent");
}

fn hello(name: &str) -> SayHelloRequest {
    SayHelloRequest {
        service_name: "helloworld".into(),
        name: name.into(),
        data: None,
    }
}

#[tokio::test]
async fn grpc_unary_and_bidi_streaming_pass_through_an_h2c_cluster() {
    let up = GrpcUpstream::start("upstream").await;
    let hole = BlackHole::start().await;
    let mesh = Mesh::start(&subst(
        GRPC,
        &[
            ("runtime", up.addr),
            ("dead", dead_addr()),
            ("hole", hole.addr),
        ],
    ))
    .await;
    let edge = mesh.addr("edge");
    let mut rt = client(edge).await;

    // Unary: the upstream answers; its status and message come through.
    let r = within("SayHello", rt.say_hello(hello("mesh")))
        .await
        .expect("SayHello");
    assert_eq!(r.get_ref().hello, "hello from upstream, mesh");
    let e = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("unknown store");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("nope"),
        "the upstream's message: {e:?}"
    );

    // The same unary call on the wire: DATA, then grpc-status 0 in real trailers.
    let raw = raw_grpc(
        edge,
        "/spec.proto.runtime.v1.Runtime/SayHello",
        &[],
        grpc_message(&hello("raw")),
        true,
    )
    .await
    .expect("raw SayHello");
    assert_eq!(raw.http_status, 200);
    let trailers = raw.trailers.as_ref().expect("trailers after the data");
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0"),
        "{raw:?}"
    );
    let payloads = grpc_payloads(&raw.data);
    assert_eq!(payloads.len(), 1, "{raw:?}");
    let msg = SayHelloResponse::decode(&payloads[0][..]).expect("decode");
    assert_eq!(msg.hello, "hello from upstream, raw");

    // Bidi streaming: SubscribeTopicEvents through the proxy; an event published (also through
    // the proxy) arrives on the stream and is acknowledged on it.
    let mut sub = Subscription::open(&mut rt, "orders", None).await;
    for i in 0..3 {
        let data = format!("order-{i}");
        publish(&mut rt, "orders", &data).await;
        sub.expect_event(&data).await;
    }
}

#[tokio::test]
async fn proxy_generated_errors_are_grpc_statuses() {
    let up = GrpcUpstream::start("upstream").await;
    let hole = BlackHole::start().await;
    let mesh = Mesh::start(&subst(
        GRPC,
        &[
            ("runtime", up.addr),
            ("dead", dead_addr()),
            ("hole", hole.addr),
        ],
    ))
    .await;
    let edge = mesh.addr("edge");
    let mut rt = client(edge).await;

    // No route → UNIMPLEMENTED (HTTP 200, grpc-status in the headers: trailers-only).
    let raw = raw_grpc(
        edge,
        "/unknown.Service/Method",
        &[],
        grpc_message(&hello("x")),
        true,
    )
    .await
    .expect("raw call");
    assert_eq!(raw.http_status, 200, "{raw:?}");
    assert_eq!(raw.grpc_status(), Some(Code::Unimplemented), "{raw:?}");
    assert!(
        raw.grpc_message().contains("no route"),
        "{}",
        raw.grpc_message()
    );

    // Dead upstream → UNAVAILABLE.
    let e = within(
        "SayHello dead",
        rt.say_hello(with_target(hello("x"), Some("dead"))),
    )
    .await
    .expect_err("dead upstream");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Never answers → DEADLINE_EXCEEDED after the route timeout.
    let e = within(
        "SayHello hole",
        rt.say_hello(with_target(hello("x"), Some("hole"))),
    )
    .await
    .expect_err("black hole");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // Circuit breaker: an open stream holds the only max_requests slot → RESOURCE_EXHAUSTED
    // with the breaker header; once the stream ends, calls pass again.
    let sub = Subscription::open(&mut rt, "held", Some("narrow")).await;
    let e = within(
        "SayHello narrow",
        rt.say_hello(with_target(hello("x"), Some("narrow"))),
    )
    .await
    .expect_err("breaker open");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.metadata()
            .get("x-mecha-overloaded")
            .and_then(|v| v.to_str().ok()),
        Some("max_requests"),
        "{e:?}"
    );
    drop(sub);
    mesh_support::eventually(
        "the breaker closes after the stream ends",
        std::time::Duration::from_secs(10),
        || {
            let mut rt = rt.clone();
            async move {
                rt.say_hello(with_target(hello("x"), Some("narrow")))
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    // The connection still works for calls that succeed.
    let r = within("SayHello", rt.say_hello(hello("after")))
        .await
        .expect("SayHello");
    assert_eq!(r.get_ref().hello, "hello from upstream, after");
}

const ONE_PORT: &str = r#"
listeners:
  - name: app
    address: ${app}
    filters:
      - type: capability
        apis: [layotto]
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                cluster: web
clusters:
  - name: web
    endpoints: [{ address: "@web@" }]
components:
  - { name: helloworld, type: hello.helloworld, metadata: { hello: "hello from the sidecar" } }
  - { name: statestore, type: state.memory }
"#;

#[tokio::test]
async fn one_port_serves_the_runtime_api_and_proxied_http() {
    let web = HttpUpstream::start("web").await;
    let mesh = Mesh::start(&subst(ONE_PORT, &[("web", web.addr)])).await;
    let port = mesh.addr("app");

    let mut rt = client(port).await;
    let r = within("SayHello", rt.say_hello(hello("app")))
        .await
        .expect("SayHello");
    assert_eq!(
        r.get_ref().hello,
        "hello from the sidecar, app",
        "answered by the capability filter"
    );
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(port, proto, Req::get("/page"))
            .await
            .expect("GET /page");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "web"),
            "{proto:?}: {r:?}"
        );
        assert_eq!(web.last_seen().path, "/page");
    }
    // The runtime API still answers after proxied traffic on the same port.
    let r = within("SayHello", rt.say_hello(hello("again")))
        .await
        .expect("SayHello");
    assert_eq!(r.get_ref().hello, "hello from the sidecar, again");
    assert_eq!(web.hits(), 2, "runtime calls never reach the upstream");
}

/// A route's timeout bounds each wait for upstream bytes, so a stream quiet for longer is cut
/// (as Envoy's route timeout cuts streams); `timeout: 0` disables it for long-lived streams.
#[tokio::test]
async fn route_timeout_cuts_idle_streams_unless_disabled() {
    let up = GrpcUpstream::start("upstream").await;
    let hole = BlackHole::start().await;
    let mesh = Mesh::start(&subst(
        GRPC,
        &[
            ("runtime", up.addr),
            ("dead", dead_addr()),
            ("hole", hole.addr),
        ],
    ))
    .await;
    let mut rt = client(mesh.addr("edge")).await;
    let mut short = Subscription::open(&mut rt, "quiet-short", Some("short")).await;
    let mut untimed = Subscription::open(&mut rt, "quiet-untimed", Some("untimed")).await;
    // The behaviour under test is idleness itself: 3× the short route's timeout (300 ms).
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    publish(&mut rt, "quiet-untimed", "late").await;
    untimed.expect_event("late").await;
    let cut = within("the short-timeout stream", short.rx.message()).await;
    assert!(
        !matches!(cut, Ok(Some(_))),
        "an idle stream past its route timeout is cut: {cut:?}"
    );
}
