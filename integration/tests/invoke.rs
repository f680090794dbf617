//! Service invocation end-to-end: two real sidecars (the `mecha` binary) and real apps.
//!
//! App A calls app B through A's sidecar — gRPC `InvokeService` or plain HTTP
//! (`dapr-app-id`, `/v1.0/invoke/<app>/method/<path>`, `Host: <app>`) on A's runtime listener.
//! A's sidecar sends the call over the mesh (the cluster `app/app-b`) to B's sidecar's `inbound`
//! listener, which hands it to app B's HTTP server (an [`HttpUpstream`] started by the test).
//! Pub/sub events A publishes on a shared redis-server reach B's `AppCallback` gRPC server
//! (a tonic server in the test) through B's sidecar.
//!
//! Every sidecar and app has its own free ports; "in flight" and "subscribed" are states the
//! tests observe (upstream hits, app-side counters), never timings.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Method;
use mecha_integration::mesh_support::{
    dead_addr, eventually, send, HttpUpstream, Mesh, Proto, Req,
};
use mecha_integration::redis_support::{shared_host, unique, RedisComponents};
use mecha_integration::{
    connect, describe, grpc_message, grpc_payloads, pb, raw_grpc, within, STEP_TIMEOUT,
};
use mecha_proto::layotto::app_callback_server::{AppCallback, AppCallbackServer};
use mecha_proto::layotto::runtime_client::RuntimeClient;
use mecha_proto::layotto::topic_event_response::TopicEventResponseStatus;
use mecha_proto::layotto::{
    ListTopicSubscriptionsResponse, TopicEventRequest, TopicEventResponse, TopicSubscription,
};
use pb::http_extension::Verb;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const INVOKE_PATH: &str = "/spec.proto.runtime.v1.Runtime/InvokeService";

/// Memory components, for the sidecars of tests that need no Redis.
const MEMORY: &str = "  - { name: statestore, type: state.memory }\n";

/// App A's default `apps`/`invocation` sections: app B at its sidecar's inbound listener.
const A_APPS: &str = r#"apps:
  app-b:
    address: "@b@"
invocation:
  timeout: 10s
"#;

// === the two sidecars ===

/// B's sidecar: its runtime listener and an `inbound` listener delivering HTTP to
/// 127.0.0.1:`http_port` (and gRPC, and AppCallback, to `grpc_port` when given).
fn b_config(http_port: u16, grpc_port: Option<u16>, components: &str) -> String {
    let grpc = grpc_port
        .map(|p| format!("  grpc_port: {p}\n"))
        .unwrap_or_default();
    format!(
        "app:\n  id: app-b\n  http_port: {http_port}\n{grpc}\
         listeners:\n\
         \x20 - name: runtime\n\
         \x20   address: ${{runtime}}\n\
         \x20   filters:\n\
         \x20     - {{ type: capability, apis: [layotto] }}\n\
         \x20 - name: inbound\n\
         \x20   address: ${{inbound}}\n\
         \x20   filters:\n\
         \x20     - type: inbound\n\
         components:\n{components}"
    )
}

/// A's sidecar: its runtime listener (capability filter with `capability` settings) and
/// `apps` (with `@b@` replaced by B's inbound address).
fn a_config(apps: &str, b_inbound: SocketAddr, capability: &str, components: &str) -> String {
    let apps = apps.replace("@b@", &b_inbound.to_string());
    format!(
        "app:\n  id: app-a\n\
         listeners:\n\
         \x20 - name: runtime\n\
         \x20   address: ${{runtime}}\n\
         \x20   filters:\n\
         \x20     - type: capability\n\
         \x20       apis: [layotto]\n\
         {capability}\
         {apps}\
         components:\n{components}"
    )
}

/// App B (an HTTP server answering by path, recording what it saw), B's sidecar and A's.
struct Pair {
    app: HttpUpstream,
    b: Mesh,
    a: Mesh,
}

impl Pair {
    async fn start() -> Self {
        Self::with(A_APPS, "").await
    }

    /// With A's `apps` (and more top-level sections) and capability-filter settings.
    async fn with(apps: &str, capability: &str) -> Self {
        let app = HttpUpstream::start("app-b").await;
        let b = Mesh::start(&b_config(app.addr.port(), None, MEMORY)).await;
        let a = Mesh::start(&a_config(apps, b.addr("inbound"), capability, MEMORY)).await;
        Self { app, b, a }
    }

    async fn client(&self) -> RuntimeClient<Channel> {
        RuntimeClient::new(connect(self.a.addr("runtime")).await)
    }

    fn a_runtime(&self) -> SocketAddr {
        self.a.addr("runtime")
    }
}

fn request(
    method: &str,
    verb: Verb,
    query: &str,
    content_type: &str,
    data: &[u8],
) -> pb::InvokeServiceRequest {
    pb::InvokeServiceRequest {
        id: "app-b".into(),
        message: Some(pb::CommonInvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type: content_type.into(),
            http_extension: Some(pb::HttpExtension {
                verb: verb as i32,
                querystring: query.into(),
            }),
        }),
    }
}

async fn invoke(
    rt: &mut RuntimeClient<Channel>,
    req: impl tonic::IntoRequest<pb::InvokeServiceRequest>,
) -> Result<pb::InvokeResponse, Status> {
    within("InvokeService", rt.invoke_service(req))
        .await
        .map(Response::into_inner)
}

async fn invoke_ok(
    rt: &mut RuntimeClient<Channel>,
    req: pb::InvokeServiceRequest,
) -> pb::InvokeResponse {
    invoke(rt, req)
        .await
        .unwrap_or_else(|s| panic!("InvokeService: {}", describe(&s)))
}

async fn invoke_err(rt: &mut RuntimeClient<Channel>, req: pb::InvokeServiceRequest) -> Status {
    match invoke(rt, req).await {
        Ok(r) => panic!("InvokeService succeeded: {r:?}"),
        Err(s) => s,
    }
}

fn body(r: &pb::InvokeResponse) -> &[u8] {
    r.data
        .as_ref()
        .map(|d| d.value.as_slice())
        .unwrap_or_default()
}

fn invocations(outcome: &str) -> String {
    format!("mecha_invocations_total{{app=\"app-b\",outcome=\"{outcome}\"}}")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

// === InvokeService ===

#[tokio::test]
async fn post_with_query_and_body_reaches_app_b_and_its_answer_comes_back() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    let r = invoke_ok(
        &mut rt,
        request(
            "orders/create",
            Verb::Post,
            "region=eu&n=2",
            "application/json",
            b"{\"qty\":3}",
        ),
    )
    .await;
    assert_eq!(body(&r), b"app-b", "the callee's body comes back: {r:?}");
    assert_eq!(
        r.content_type, "text/plain",
        "with the callee's content type"
    );

    let seen = p.app.last_seen();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/orders/create?region=eu&n=2");
    assert_eq!(&seen.body[..], b"{\"qty\":3}");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(p.app.hits(), 1, "exactly one request reached app B");

    // A method given with its leading slash is the same path.
    invoke_ok(&mut rt, request("/orders/create", Verb::Post, "", "", b"x")).await;
    assert_eq!(p.app.last_seen().path, "/orders/create");
}

#[tokio::test]
async fn get_put_delete_and_the_default_verb_are_passed_on() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    for (verb, want, data) in [
        (Verb::Get, Method::GET, &b""[..]),
        (Verb::Put, Method::PUT, &b"new value"[..]),
        (Verb::Delete, Method::DELETE, &b""[..]),
        // NONE (no verb given) is POST.
        (Verb::None, Method::POST, &b"p"[..]),
    ] {
        let r = invoke_ok(&mut rt, request("items/7", verb, "v=1", "text/plain", data)).await;
        assert_eq!(body(&r), b"app-b", "{verb:?}");
        let seen = p.app.last_seen();
        assert_eq!(seen.method, want, "{verb:?}");
        assert_eq!(seen.path, "/items/7?v=1", "{verb:?}");
        assert_eq!(&seen.body[..], data, "{verb:?}");
    }
    // No http_extension at all: POST without a query.
    let mut req = request("items", Verb::None, "", "", b"z");
    if let Some(m) = req.message.as_mut() {
        m.http_extension = None;
    }
    invoke_ok(&mut rt, req).await;
    let seen = p.app.last_seen();
    assert_eq!((seen.method, seen.path.as_str()), (Method::POST, "/items"));
}

#[tokio::test]
async fn caller_metadata_app_ids_and_the_trace_are_propagated() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = Request::new(request("hello", Verb::Get, "", "", b""));
    let md = req.metadata_mut();
    md.insert("x-tenant", "t-42".parse().expect("value"));
    md.insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01")
            .parse()
            .expect("value"),
    );
    md.insert("tracestate", "vendor=1".parse().expect("value"));
    // A caller cannot pose as another app.
    md.insert("dapr-caller-app-id", "evil".parse().expect("value"));
    invoke(&mut rt, req)
        .await
        .unwrap_or_else(|s| panic!("InvokeService: {}", describe(&s)));

    let seen = p.app.last_seen();
    assert_eq!(
        seen.header("x-tenant"),
        Some("t-42"),
        "caller metadata passes: {seen:?}"
    );
    assert_eq!(seen.header("dapr-caller-app-id"), Some("app-a"));
    assert_eq!(seen.header("dapr-callee-app-id"), Some("app-b"));
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));
    let tp = seen.header("traceparent").expect("traceparent").to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], trace_id, "the caller's trace is kept: {tp}");
    assert!(
        is_hex(parts[2], 16) && parts[2] != caller_span,
        "a new span: {tp}"
    );
    assert!(
        seen.header("grpc-timeout").is_none() && seen.header("te").is_none(),
        "{seen:?}"
    );

    // Without a caller trace, one is started.
    invoke_ok(&mut rt, request("hello", Verb::Get, "", "", b"")).await;
    let tp = p
        .app
        .last_seen()
        .header("traceparent")
        .map(str::to_owned)
        .expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert!(
        parts.len() == 4 && is_hex(parts[1], 32) && parts[1] != trace_id,
        "{tp}"
    );
}

#[tokio::test]
async fn an_unknown_app_id_is_not_found_naming_the_known_apps() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    let mut req = request("m", Verb::Post, "", "", b"");
    req.id = "x".into();
    let s = invoke_err(&mut rt, req).await;
    assert_eq!(s.code(), Code::NotFound, "{}", describe(&s));
    assert_eq!(s.message(), "unknown app id \"x\" (known: app-b)");
    assert_eq!(p.app.hits(), 0);
    // Unknown ids are counted under one label, not their own.
    p.a.wait_metric(
        "mecha_invocations_total{app=\"<unknown>\",outcome=\"not_found\"}",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test]
async fn an_empty_method_or_id_is_invalid_argument() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    for method in ["", "/"] {
        let s = invoke_err(&mut rt, request(method, Verb::Post, "", "", b"")).await;
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "{method:?}: {}",
            describe(&s)
        );
        assert!(s.message().contains("method is empty"), "{}", describe(&s));
    }
    let mut req = request("m", Verb::Post, "", "", b"");
    req.id = String::new();
    let s = invoke_err(&mut rt, req).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{}", describe(&s));
    let mut req = request("m", Verb::Post, "", "", b"");
    req.message = None;
    let s = invoke_err(&mut rt, req).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{}", describe(&s));
    assert_eq!(p.app.hits(), 0);
}

#[tokio::test]
async fn a_callee_that_is_down_is_unavailable_naming_cluster_and_address() {
    // B's sidecar is not there at all: A cannot connect.
    let dead = dead_addr();
    let a = Mesh::start(&a_config(A_APPS, dead, "", MEMORY)).await;
    let mut rt = RuntimeClient::new(connect(a.addr("runtime")).await);
    let s = invoke_err(&mut rt, request("m", Verb::Get, "", "", b"")).await;
    assert_eq!(s.code(), Code::Unavailable, "{}", describe(&s));
    for want in [
        "app-b",
        "\"app/app-b\"",
        &dead.to_string(),
        "cannot connect",
    ] {
        assert!(s.message().contains(want), "{want:?} in {}", describe(&s));
    }
    a.wait_metric(&invocations("unavailable"), |v| v == 1.0)
        .await;

    // B's sidecar is up but app B is gone: B answers 503, A maps it to UNAVAILABLE.
    let p = Pair::start().await;
    p.app.stop();
    let mut rt = p.client().await;
    let s = invoke_err(&mut rt, request("m", Verb::Get, "", "", b"")).await;
    assert_eq!(s.code(), Code::Unavailable, "{}", describe(&s));
    assert!(
        s.message().contains("answered HTTP 503"),
        "{}",
        describe(&s)
    );
    assert_eq!(
        s.metadata()
            .get("mecha-http-status")
            .and_then(|v| v.to_str().ok()),
        Some("503")
    );
}

#[tokio::test]
async fn a_slow_callee_is_deadline_exceeded_by_the_callers_grpc_timeout() {
    // invocation.timeout is 10 s; the caller's 300 ms wins. Sent over h2 directly: tonic's
    // client would enforce the deadline itself and race the sidecar's answer.
    let p = Pair::start().await;
    let frame = grpc_message(&request("hang", Verb::Get, "", "", b""));
    let r = within(
        "InvokeService with grpc-timeout",
        raw_grpc(
            p.a_runtime(),
            INVOKE_PATH,
            &[("grpc-timeout", "300m")],
            frame,
            true,
        ),
    )
    .await
    .expect("exchange");
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded), "{r:?}");
    // Either the invoker's answer (the cluster's timeout, on what is left of the caller's
    // deadline) or the gRPC bridge's own `grpc-timeout` answer, whichever fires first: both
    // run the caller's deadline. Never a client-side timeout (the raw client has none).
    let msg = r.grpc_message();
    assert!(
        (msg.contains("\"app/app-b\"") && msg.contains("timeout of"))
            || msg == "deadline exceeded (grpc-timeout)",
        "{msg}"
    );
    assert_eq!(
        p.app.hits(),
        1,
        "the call reached the app before the deadline passed"
    );

    // The HTTP form honours it too: 504 with Dapr's error body.
    let r = send(
        p.a_runtime(),
        Proto::H1,
        Req::get("/hang")
            .header("dapr-app-id", "app-b")
            .header("grpc-timeout", "300m"),
    )
    .await
    .expect("HTTP invocation");
    assert_eq!(r.status, 504, "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE", "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("\"app/app-b\"") && m.contains("timeout of"),
        "{v}"
    );
    // Counted (the HTTP form has no bridge deadline racing the invoker's; see the gRPC case).
    p.a.wait_metric(&invocations("deadline_exceeded"), |v| v >= 1.0)
        .await;

    // The sidecar is unaffected: the next call answers.
    let mut rt = p.client().await;
    invoke_ok(&mut rt, request("fine", Verb::Get, "", "", b"")).await;
}

#[tokio::test]
async fn a_get_is_retried_on_the_second_endpoint_when_the_first_refuses() {
    let dead = dead_addr();
    let apps = format!(
        "apps:\n  app-b:\n    addresses: [\"{dead}\", \"@b@\"]\n    retry: {{ retry_on: [connect-failure], num_retries: 2 }}\n"
    );
    let p = Pair::with(&apps, "").await;
    let mut rt = p.client().await;
    let retries = "mecha_cluster_retries_total{cluster=\"app/app-b\"}";
    let mut calls = 0;
    // Every call answers; until one of them was picked onto the dead endpoint first and retried.
    while p.a.metric(retries).await < 1.0 {
        calls += 1;
        assert!(
            calls <= 50,
            "50 GETs and none retried; metrics:\n{}",
            p.a.metrics().await
        );
        let r = invoke_ok(&mut rt, request("r", Verb::Get, "", "", b"")).await;
        assert_eq!(body(&r), b"app-b");
    }
    assert_eq!(p.app.hits(), calls, "each call reached app B exactly once");
    assert!(
        p.a.metric("mecha_cluster_upstream_failures_total{cluster=\"app/app-b\"}")
            .await
            >= 1.0,
        "the refused connect is counted"
    );
    assert_eq!(p.a.metric(&invocations("2xx")).await, calls as f64);
}

#[tokio::test]
async fn a_breaker_overflow_is_resource_exhausted() {
    let apps = r#"clusters:
  - name: b-narrow
    circuit_breakers: { max_requests: 1 }
    endpoints: [{ address: "@b@" }]
apps:
  app-b:
    cluster: b-narrow
"#;
    let p = Pair::with(apps, "").await;
    let rt = p.client().await;
    let mut first_rt = rt.clone();
    let first = tokio::spawn(async move {
        first_rt
            .invoke_service(request("wait", Verb::Get, "", "", b""))
            .await
            .map(Response::into_inner)
    });
    eventually("the first call reaches app B", STEP_TIMEOUT, || async {
        p.app.hits() >= 1
    })
    .await;

    let mut rt2 = rt.clone();
    let s = invoke_err(&mut rt2, request("other", Verb::Get, "", "", b"")).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", describe(&s));
    assert!(
        s.message().contains("b-narrow") && s.message().contains("max_requests"),
        "{}",
        describe(&s)
    );
    assert_eq!(p.app.hits(), 1, "the overflowing call never left A");

    p.app.release(1);
    let r = within("the first call", first)
        .await
        .expect("join")
        .unwrap_or_else(|s| panic!("first call: {}", describe(&s)));
    assert_eq!(body(&r), b"app-b");
    p.a.wait_metric(&invocations("resource_exhausted"), |v| v == 1.0)
        .await;
    p.a.wait_metric(
        "mecha_cluster_breaker_trips_total{cluster=\"b-narrow\"}",
        |v| v >= 1.0,
    )
    .await;
    // The slot is free again.
    invoke_ok(&mut rt2, request("after", Verb::Get, "", "", b"")).await;
}

#[tokio::test]
async fn per_app_metrics_are_kept_on_both_sidecars() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    for _ in 0..3 {
        invoke_ok(&mut rt, request("ok", Verb::Get, "", "", b"")).await;
    }
    let s = invoke_err(&mut rt, request("status/404", Verb::Get, "", "", b"")).await;
    assert_eq!(s.code(), Code::NotFound);

    // A: invocations by app and outcome, their latency, and the app's cluster.
    p.a.wait_metric(&invocations("2xx"), |v| v == 3.0).await;
    p.a.wait_metric(&invocations("4xx"), |v| v == 1.0).await;
    p.a.wait_metric(
        "mecha_invocation_duration_seconds_count{app=\"app-b\"}",
        |v| v == 4.0,
    )
    .await;
    p.a.wait_metric(
        "mecha_cluster_upstream_requests_total{cluster=\"app/app-b\"}",
        |v| v == 4.0,
    )
    .await;
    // B: its inbound route to the app and the local app's cluster.
    p.b.wait_metric(
        "mecha_route_requests_total{route=\"local-app/inbound-http\",class=\"2xx\"}",
        |v| v == 3.0,
    )
    .await;
    p.b.wait_metric(
        "mecha_route_requests_total{route=\"local-app/inbound-http\",class=\"4xx\"}",
        |v| v == 1.0,
    )
    .await;
    p.b.wait_metric(
        "mecha_cluster_upstream_requests_total{cluster=\"local-app/http\"}",
        |v| v == 4.0,
    )
    .await;
    // B made no invocations of its own.
    assert!(!p.b.metrics().await.contains("mecha_invocations_total{"));
}

#[tokio::test]
async fn non_2xx_answers_map_to_grpc_codes_with_the_http_status() {
    let p = Pair::start().await;
    let mut rt = p.client().await;
    for (status, code) in [
        (400, Code::InvalidArgument),
        (401, Code::Unauthenticated),
        (403, Code::PermissionDenied),
        (404, Code::NotFound),
        (409, Code::Aborted),
        (429, Code::ResourceExhausted),
        (500, Code::Internal),
        (501, Code::Unimplemented),
        (503, Code::Unavailable),
        (418, Code::Unknown),
    ] {
        let method = format!("status/{status}");
        let s = invoke_err(&mut rt, request(&method, Verb::Get, "", "", b"")).await;
        assert_eq!(s.code(), code, "HTTP {status}: {}", describe(&s));
        assert_eq!(
            s.message(),
            format!("app \"app-b\" method \"{method}\" answered HTTP {status}: app-b")
        );
        assert_eq!(
            s.metadata()
                .get("mecha-http-status")
                .and_then(|v| v.to_str().ok()),
            Some(status.to_string().as_str())
        );
    }
    // 2xx other than 200 is an answer.
    let r = invoke_ok(&mut rt, request("status/201", Verb::Post, "", "", b"")).await;
    assert_eq!(body(&r), b"app-b");
}

// === HTTP invocation ===

#[tokio::test]
async fn http_invocation_by_header_path_and_host() {
    let p = Pair::start().await;
    let a = p.a_runtime();

    // dapr-app-id: the request path and query are the method's.
    let r = send(
        a,
        Proto::H1,
        Req::get("/orders/9?full=1")
            .method(Method::PUT)
            .header("dapr-app-id", "app-b")
            .header("content-type", "application/json")
            .header("x-tenant", "t-7")
            .body("{\"a\":1}"),
    )
    .await
    .expect("dapr-app-id");
    assert_eq!((r.status, r.text().as_str()), (200, "app-b"), "{r:?}");
    assert_eq!(
        r.header("x-upstream"),
        Some("app-b"),
        "the callee's headers come back"
    );
    let seen = p.app.last_seen();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/orders/9?full=1")
    );
    assert_eq!(&seen.body[..], b"{\"a\":1}");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("x-tenant"), Some("t-7"));
    assert_eq!(seen.header("dapr-caller-app-id"), Some("app-a"));
    assert_eq!(
        seen.header("dapr-app-id"),
        None,
        "the routing header is not passed on"
    );

    // /v1.0/invoke/<app>/method/<path>.
    let r = send(
        a,
        Proto::H1,
        Req::get("/v1.0/invoke/app-b/method/items/3?x=y")
            .method(Method::POST)
            .body("b"),
    )
    .await
    .expect("/v1.0/invoke");
    assert_eq!((r.status, r.text().as_str()), (200, "app-b"), "{r:?}");
    let seen = p.app.last_seen();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/items/3?x=y")
    );

    // Host: <listed app id> (with or without a port).
    for host in ["app-b", "app-b:3500"] {
        let r = send(a, Proto::H1, Req::get("/by-host").host(host))
            .await
            .expect("Host");
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(p.app.last_seen().path, "/by-host");
    }

    // The callee's status passes as it is.
    let r = send(
        a,
        Proto::H1,
        Req::get("/status/418").header("dapr-app-id", "app-b"),
    )
    .await
    .expect("418");
    assert_eq!(r.status, 418, "{r:?}");

    // Errors are Dapr's JSON bodies.
    let r = send(a, Proto::H1, Req::get("/x").header("dapr-app-id", "nope"))
        .await
        .expect("404");
    assert_eq!(r.status, 404, "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE_APP_NOT_FOUND", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"nope\""),
        "{v}"
    );
    let r = send(a, Proto::H1, Req::get("/v1.0/invoke/app-b/method/"))
        .await
        .expect("400");
    assert_eq!(r.status, 400, "empty method: {r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE", "{v}");

    // A Host that is no app is not an invocation (the runtime API answers it as before).
    let hits = p.app.hits();
    let r = send(a, Proto::H1, Req::get("/whatever").host("svc.test"))
        .await
        .expect("plain");
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(p.app.hits(), hits);

    // With the callee down: 503.
    p.app.stop();
    let r = send(a, Proto::H1, Req::get("/x").header("dapr-app-id", "app-b"))
        .await
        .expect("503");
    assert_eq!(r.status, 503, "{r:?}");
}

// === bad input ===

#[tokio::test]
async fn oversize_bodies_are_refused_and_the_sidecar_keeps_serving() {
    let apps = format!("{A_APPS}  max_body_bytes: 2048\n");
    let p = Pair::with(&apps, "        max_request_message_bytes: 8192\n").await;
    let mut rt = p.client().await;
    let big = vec![b'x'; 4096];
    let s = invoke_err(&mut rt, request("m", Verb::Post, "", "", &big)).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", describe(&s));
    assert!(s.message().contains("max_body_bytes"), "{}", describe(&s));
    p.a.wait_metric(&invocations("resource_exhausted"), |v| v == 1.0)
        .await;

    // Over the runtime listener's message bound: refused by the gRPC layer.
    let s = invoke_err(
        &mut rt,
        request("m", Verb::Post, "", "", &vec![b'y'; 16 * 1024]),
    )
    .await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", describe(&s));

    // HTTP: over max_request_message_bytes → 413; over max_body_bytes only → 429.
    let a = p.a_runtime();
    let r = send(
        a,
        Proto::H1,
        Req::get("/m")
            .method(Method::POST)
            .header("dapr-app-id", "app-b")
            .body(vec![b'z'; 16 * 1024]),
    )
    .await
    .expect("oversize HTTP");
    assert_eq!(r.status, 413, "{r:?}");
    let r = send(
        a,
        Proto::H1,
        Req::get("/m")
            .method(Method::POST)
            .header("dapr-app-id", "app-b")
            .body(big.clone()),
    )
    .await
    .expect("over max_body_bytes HTTP");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(p.app.hits(), 0, "nothing oversize reached app B");

    // Still serving, on a connection opened before and on new ones.
    let r = invoke_ok(&mut rt, request("m", Verb::Post, "", "", &[b'x'; 1024])).await;
    assert_eq!(body(&r), b"app-b");
    let r = send(a, Proto::H1, Req::get("/m").header("dapr-app-id", "app-b"))
        .await
        .expect("after");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(p.app.hits(), 2);
}

/// An InvokeService message that does not decode (a protobuf cut short, in a well-formed gRPC
/// frame) is refused with INTERNAL (tonic's decode error) and reaches nobody; the sidecar
/// answers the next call.
#[tokio::test]
async fn a_garbage_invoke_request_is_refused_and_the_sidecar_keeps_serving() {
    let p = Pair::start().await;
    let mut garbage = grpc_message(&request("m", Verb::Post, "", "", b"abc")).to_vec();
    garbage.truncate(garbage.len() - 2);
    let len = u32::try_from(garbage.len() - 5).expect("small");
    garbage[1..5].copy_from_slice(&len.to_be_bytes());
    let r = within(
        "garbage InvokeService",
        raw_grpc(p.a_runtime(), INVOKE_PATH, &[], garbage.into(), true),
    )
    .await
    .expect("exchange");
    assert_eq!(r.grpc_status(), Some(Code::Internal), "{r:?}");
    assert!(grpc_payloads(&r.data).is_empty(), "{r:?}");
    assert_eq!(p.app.hits(), 0);
    let mut rt = p.client().await;
    invoke_ok(&mut rt, request("m", Verb::Post, "", "", b"")).await;
    assert_eq!(p.app.hits(), 1);
}

// === pub/sub to B's AppCallback ===

#[derive(Default)]
struct CallbackState {
    /// Every OnTopicEvent call: (event id, data).
    deliveries: Mutex<Vec<(String, Vec<u8>)>>,
    /// Data answered SUCCESS.
    done: Mutex<HashSet<Vec<u8>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    listed: AtomicUsize,
}

/// App B's AppCallback: subscribed to `topic` on `pubsub` with `maxConcurrentHandlers: 3`;
/// answers RETRY to the first delivery of `e-0`; holds every other call until `open` turns
/// true, then answers SUCCESS.
struct CallbackApp {
    topic: String,
    state: Arc<CallbackState>,
    open: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl AppCallback for CallbackApp {
    async fn list_topic_subscriptions(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        self.state.listed.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions: vec![TopicSubscription {
                pubsub_name: "pubsub".into(),
                topic: self.topic.clone(),
                metadata: HashMap::from([("maxConcurrentHandlers".to_owned(), "3".to_owned())]),
            }],
        }))
    }

    async fn on_topic_event(
        &self,
        request: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        let e = request.into_inner();
        let now = self.state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let first_of_e0 = {
            let mut d = self.state.deliveries.lock().expect("lock");
            let first = e.data == b"e-0" && !d.iter().any(|(_, data)| data == b"e-0");
            d.push((e.id.clone(), e.data.clone()));
            first
        };
        let status = if first_of_e0 {
            TopicEventResponseStatus::Retry
        } else {
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
            self.state.done.lock().expect("lock").insert(e.data.clone());
            TopicEventResponseStatus::Success
        };
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Response::new(TopicEventResponse {
            status: status as i32,
        }))
    }
}

#[tokio::test]
async fn events_published_by_a_reach_b_app_callback_bounded_and_redelivered_on_retry() {
    let host = shared_host();
    let topic = unique("invoke-orders");
    // processingTimeout long (held calls are not timed out), redeliverInterval short (RETRY).
    let components = RedisComponents::new(&host)
        .pubsub_meta("processingTimeout", "30s")
        .pubsub_meta("redeliverInterval", "200ms");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app B gRPC");
    let grpc_port = listener.local_addr().expect("addr").port();
    let state = Arc::new(CallbackState::default());
    let (open_tx, open) = watch::channel(false);
    let cb = CallbackApp {
        topic: topic.clone(),
        state: state.clone(),
        open,
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(cb))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let app_http = HttpUpstream::start("app-b").await;
    let b = Mesh::start(&b_config(
        app_http.addr.port(),
        Some(grpc_port),
        &components.yaml(),
    ))
    .await;
    eventually(
        "B's sidecar lists app B's subscriptions",
        STEP_TIMEOUT,
        || async { state.listed.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    // A publishes on the same Redis (its own consumer id: it subscribes to nothing).
    let a = Mesh::start(&a_config(
        A_APPS,
        b.addr("inbound"),
        "",
        &RedisComponents::new(&host).yaml(),
    ))
    .await;
    let mut rt = RuntimeClient::new(connect(a.addr("runtime")).await);
    for i in 0..20 {
        within(
            "PublishEvent",
            rt.publish_event(pb::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.clone(),
                data: format!("e-{i}").into_bytes(),
                data_content_type: "text/plain".into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("PublishEvent e-{i}: {}", describe(&s)));
    }

    // The app holds its calls: B's sidecar fills the subscription's 3 handler slots.
    eventually("3 OnTopicEvent calls in flight", STEP_TIMEOUT, || async {
        state.in_flight.load(Ordering::SeqCst) == 3
    })
    .await;
    open_tx.send(true).expect("the app is up");
    eventually("all 20 events answered SUCCESS", STEP_TIMEOUT, || async {
        state.done.lock().expect("lock").len() == 20
    })
    .await;

    let deliveries = state.deliveries.lock().expect("lock").clone();
    let done = state.done.lock().expect("lock").clone();
    let want: HashSet<Vec<u8>> = (0..20).map(|i| format!("e-{i}").into_bytes()).collect();
    assert_eq!(done, want, "every event published by A reached app B");
    let e0: Vec<&String> = deliveries
        .iter()
        .filter(|(_, d)| d == b"e-0")
        .map(|(id, _)| id)
        .collect();
    assert!(e0.len() >= 2, "RETRY redelivers e-0: {deliveries:?}");
    assert!(
        e0.iter().all(|id| *id == e0[0]),
        "the same event again: {e0:?}"
    );
    assert_eq!(
        state.max_in_flight.load(Ordering::SeqCst),
        3,
        "maxConcurrentHandlers: 3 bounds the calls in flight"
    );
    // The deliveries went over B's mesh client to the local app's gRPC cluster.
    assert!(
        b.metric("mecha_cluster_upstream_requests_total{cluster=\"local-app/grpc\"}")
            .await
            >= 21.0,
        "{}",
        b.metrics().await
    );
    server.abort();
}
