//! The admin listener (health, readiness, actuator JSON, metrics) and SIGTERM draining.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mecha_integration::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use mecha_integration::pb::{
    Etag, SaveStateRequest, SayHelloRequest, StateItem, SubscribeTopicEventsRequest,
    SubscribeTopicEventsRequestInitial,
};
use mecha_integration::{
    describe, listening, metric_value, within, Sidecar, STEP_TIMEOUT, TEST_COMPONENT_NAMES,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test]
async fn health_ready_and_actuator() {
    let sc = Sidecar::start().await;

    let r = sc.admin_get("/healthz").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = sc.admin_get("/ready").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("ready"), "{r:?}");

    let r = sc.admin_get("/actuator/health/liveness").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "UP", "{r:?}");

    let r = sc.admin_get("/actuator/health/readiness").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type").is_some_and(|c| c.contains("json")),
        "{r:?}"
    );
    let json = r.json();
    assert_eq!(json["status"], "UP", "{json}");
    let components = json["components"].as_object().expect("components object");
    for name in TEST_COMPONENT_NAMES
        .iter()
        .chain(std::iter::once(&"runtime"))
    {
        let c = components
            .get(*name)
            .unwrap_or_else(|| panic!("actuator lists {name}: {json}"));
        assert_eq!(c["status"], "UP", "{name}: {json}");
    }
    assert_eq!(
        components["statestore"]["details"]["type"], "state.memory",
        "{json}"
    );

    let r = sc.admin_get("/no/such/admin/path").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        r.body.contains("/healthz"),
        "the 404 lists the endpoints: {r:?}"
    );
}

#[tokio::test]
async fn metrics_count_calls_and_errors() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    for _ in 0..3 {
        within(
            "SayHello",
            rt.say_hello(SayHelloRequest {
                name: "metrics".into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("SayHello: {}", describe(&s)));
    }
    // An ETag mismatch: one ABORTED SaveState.
    within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "k".into(),
                value: b"v".to_vec(),
                ..Default::default()
            }],
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveState: {}", describe(&s)));
    let err = within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "k".into(),
                value: b"v2".to_vec(),
                etag: Some(Etag {
                    value: "999999".into(),
                }),
                ..Default::default()
            }],
        }),
    )
    .await
    .expect_err("stale etag");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));

    sc.wait_metric(
        "mecha_api_requests_total{api=\"layotto\",method=\"SayHello\"}",
        |v| v == 3.0,
    )
    .await;
    sc.wait_metric(
        "mecha_api_requests_total{api=\"layotto\",method=\"SaveState\"}",
        |v| v == 2.0,
    )
    .await;
    sc.wait_metric(
        "mecha_api_errors_total{api=\"layotto\",method=\"SaveState\",code=\"ABORTED\"}",
        |v| v == 1.0,
    )
    .await;

    let text = sc.metrics().await;
    let hist = "mecha_api_request_duration_seconds_count{api=\"layotto\",method=\"SayHello\"}";
    assert_eq!(metric_value(&text, hist), Some(3.0), "{text}");
    assert!(
        text.contains("mecha_api_request_duration_seconds_bucket{"),
        "latency histogram buckets: {text}"
    );
    // Methods never called are present at zero (label sets fixed at start).
    assert_eq!(
        metric_value(
            &text,
            "mecha_api_requests_total{api=\"layotto\",method=\"GetNextId\"}"
        ),
        Some(0.0),
        "{text}"
    );
    // No error series for successful calls.
    assert!(
        !text.contains("mecha_api_errors_total{api=\"layotto\",method=\"SayHello\""),
        "{text}"
    );
    let rss = metric_value(&text, "process_resident_memory_bytes").expect("RSS gauge");
    assert!(rss > 0.0, "{text}");
    // Our client's connection is open while we scrape.
    let conns = metric_value(&text, "mecha_downstream_connections{listener=\"runtime\"}")
        .expect("connections gauge");
    assert!(conns >= 1.0, "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    drop(rt);
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_zero() {
    let mut sc = Sidecar::start().await;
    let (grpc, admin) = (sc.grpc_addr, sc.admin_addr);
    sc.terminate();
    let status = sc
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("mecha exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        sc.stderr_text()
    );
    assert!(
        !listening(grpc) && !listening(admin),
        "ports closed after exit"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_readiness_turns_503() {
    let mut sc = Sidecar::builder().drain_seconds(60).start().await;
    let mut rt = sc.client().await;

    // Hold a streaming call open: draining waits for it (up to drain_seconds).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(SubscribeTopicEventsRequest {
        subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
            SubscribeTopicEventsRequestInitial {
                pubsub_name: "pubsub".into(),
                topic: "drain".into(),
                metadata: HashMap::new(),
                dead_letter_topic: None,
            },
        )),
    })
    .await
    .expect("queue initial_request");
    let mut stream = within(
        "SubscribeTopicEvents",
        rt.subscribe_topic_events(ReceiverStream::new(rx)),
    )
    .await
    .unwrap_or_else(|s| panic!("SubscribeTopicEvents: {}", describe(&s)))
    .into_inner();
    within("initial_response", stream.message())
        .await
        .expect("stream ok")
        .expect("initial_response");

    sc.terminate();

    // Readiness turns 503 while the call is in flight (bounded wait for the signal to land).
    let deadline = Instant::now() + STEP_TIMEOUT;
    let ready = loop {
        let r = sc.admin_get("/ready").await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "/ready never turned 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(ready.body.contains("draining"), "{ready:?}");
    let r = sc.admin_get("/actuator/health/readiness").await;
    assert_eq!(r.status, 500, "{r:?}");
    let json = r.json();
    assert_eq!(json["status"], "DOWN", "{json}");
    assert_eq!(json["components"]["shutdown"]["status"], "DOWN", "{json}");
    // Liveness stays UP while draining.
    assert_eq!(sc.admin_get("/healthz").await.status, 200);
    assert!(sc.is_running(), "still draining: the call is in flight");

    // End the call: the drain completes and the process exits 0.
    drop(tx);
    drop(stream);
    drop(rt);
    let status = sc
        .wait_exit(Duration::from_secs(90))
        .await
        .expect("mecha exits once the in-flight call ends");
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        sc.stderr_text()
    );
}
