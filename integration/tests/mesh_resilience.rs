//! Mesh end-to-end: resilience against real failing upstreams — retries (connect failure, 5xx),
//! the retry budget, outlier ejection and return, active health checks, the circuit breaker,
//! timeouts, no healthy endpoint, an upstream cutting a response short, and malformed client
//! HTTP. Nothing here asserts timing; waits poll for the state they need.

use std::time::Duration;

use mecha_integration::mesh_support::{
    dead_addr, eventually, send, subst, BlackHole, HttpUpstream, Mesh, Proto, Req,
    TruncatingUpstream,
};
use mecha_integration::{http_raw, within};

const RETRIES: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: connect
                match: { prefix: /connect }
                cluster: half-dead
                retry_policy: { retry_on: [connect-failure], num_retries: 2, base_interval: 1ms, max_interval: 5ms }
              - name: no-retry
                match: { prefix: /no-retry }
                cluster: half-dead
              - name: fivexx
                match: { prefix: /5xx }
                cluster: half-503
                retry_policy: { retry_on: [5xx], num_retries: 2, base_interval: 1ms, max_interval: 5ms }
              - name: always-503
                match: { prefix: /always }
                cluster: all-503
                retry_policy: { retry_on: [5xx], num_retries: 2, base_interval: 1ms, max_interval: 5ms }
              - name: budget
                match: { prefix: /budget }
                cluster: no-budget
                retry_policy: { retry_on: [5xx, connect-failure], num_retries: 3, base_interval: 1ms, max_interval: 5ms }
              - name: all-dead
                match: { prefix: /dead }
                cluster: all-dead
                retry_policy: { retry_on: [connect-failure], num_retries: 2, base_interval: 1ms, max_interval: 5ms }
clusters:
  - name: half-dead
    endpoints: [{ address: "@dead@" }, { address: "@good@" }]
  - name: half-503
    endpoints: [{ address: "@bad@" }, { address: "@good@" }]
  - name: all-503
    endpoints: [{ address: "@always@" }]
  - name: no-budget
    circuit_breakers: { max_retries: 0 }
    endpoints: [{ address: "@budget@" }]
  - name: all-dead
    endpoints: [{ address: "@dead@" }, { address: "@dead2@" }]
"#;

#[tokio::test]
async fn retries_recover_from_refused_connections_and_5xx_within_their_budget() {
    let good = HttpUpstream::start("good").await;
    let bad = HttpUpstream::start("bad").await;
    bad.set_status(503);
    let always = HttpUpstream::start("always").await;
    always.set_status(503);
    let budget = HttpUpstream::start("budget").await;
    budget.set_status(503);
    let mesh = Mesh::start(&subst(
        RETRIES,
        &[
            ("dead", dead_addr()),
            ("dead2", dead_addr()),
            ("good", good.addr),
            ("bad", bad.addr),
            ("always", always.addr),
            ("budget", budget.addr),
        ],
    ))
    .await;
    let edge = mesh.addr("edge");

    // One endpoint refuses connections: every request still succeeds, on the other one.
    for i in 0..12 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2c };
        let r = send(edge, proto, Req::get(&format!("/connect/{i}")))
            .await
            .expect("GET /connect");
        assert_eq!(
            (r.status, r.header("x-upstream")),
            (200, Some("good")),
            "{proto:?}: {r:?}"
        );
    }
    mesh.wait_metric(r#"mecha_cluster_retries_total{cluster="half-dead"}"#, |v| {
        v >= 1.0
    })
    .await;
    // Without a retry policy the refused attempts surface as 503.
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            send(edge, Proto::H1, Req::get(&format!("/no-retry/{i}")))
                .await
                .expect("GET")
                .status,
        );
    }
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "round robin over dead+good: {statuses:?}"
    );

    // One endpoint answers 503 (retry_on: 5xx): every request succeeds.
    for i in 0..12 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2c };
        let r = send(edge, proto, Req::get(&format!("/5xx/{i}")))
            .await
            .expect("GET /5xx");
        assert_eq!(
            (r.status, r.header("x-upstream")),
            (200, Some("good")),
            "{proto:?}: {r:?}"
        );
    }
    assert!(bad.hits() >= 1, "the 503 endpoint was tried");

    // Always 503: 1 try + num_retries (2), then the last 503 goes to the client.
    let r = send(edge, Proto::H1, Req::get("/always"))
        .await
        .expect("GET /always");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(always.hits(), 3, "1 try + 2 retries");

    // max_retries: 0 — the retry budget is spent: no retry happens, the client gets a 503.
    let r = send(edge, Proto::H1, Req::get("/budget"))
        .await
        .expect("GET /budget");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(budget.hits(), 1, "no retry beyond the budget");
    mesh.wait_metric(
        r#"mecha_cluster_breaker_trips_total{cluster="no-budget"}"#,
        |v| v >= 1.0,
    )
    .await;

    // Every endpoint refuses: 503, for both protocols, after the retries.
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/dead"))
            .await
            .expect("GET /dead");
        assert_eq!(r.status, 503, "{proto:?}: {r:?}");
        assert!(
            r.text().contains("all-dead"),
            "the message names the cluster: {}",
            r.text()
        );
    }
}

const OUTLIER: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                cluster: pool
clusters:
  - name: pool
    endpoints: [{ address: "@sick@" }, { address: "@well@" }]
    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 3s, max_ejection_percent: 50 }
"#;

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let sick = HttpUpstream::start("sick").await;
    sick.set_status(500);
    let well = HttpUpstream::start("well").await;
    let mesh = Mesh::start(&subst(OUTLIER, &[("sick", sick.addr), ("well", well.addr)])).await;
    let edge = mesh.addr("edge");
    let ejections = r#"mecha_cluster_outlier_ejections_total{cluster="pool"}"#;

    // Round robin sends every other request to `sick` until its third consecutive 500.
    let mut n = 0;
    while mesh.metric(ejections).await < 1.0 {
        n += 1;
        assert!(
            n <= 20,
            "no ejection after {n} requests; sick answered {}",
            sick.hits()
        );
        let r = send(edge, Proto::H1, Req::get(&format!("/a/{n}")))
            .await
            .expect("GET");
        assert!(r.status == 200 || r.status == 500, "{r:?}");
    }
    let ejected_at = std::time::Instant::now();
    assert_eq!(sick.hits(), 3, "ejected after 3 consecutive 5xx");
    // While ejected (3 s), traffic avoids it. Only requests sent well inside that window count.
    let mut sent = 0;
    while sent < 10 && ejected_at.elapsed() < Duration::from_millis(1500) {
        let r = send(edge, Proto::H2c, Req::get("/b")).await.expect("GET");
        assert_eq!(
            (r.status, r.header("x-upstream")),
            (200, Some("well")),
            "{r:?}"
        );
        sent += 1;
    }
    assert!(sent > 0, "no request fit in the ejection window");
    assert_eq!(sick.hits(), 3, "an ejected endpoint gets no traffic");

    // It recovers; after base_ejection_time it is picked again.
    sick.set_status(0);
    eventually(
        "the ejected endpoint gets traffic again",
        Duration::from_secs(15),
        || async {
            let r = send(edge, Proto::H1, Req::get("/c")).await.expect("GET");
            assert_eq!(r.status, 200, "{r:?}");
            r.header("x-upstream") == Some("sick")
        },
    )
    .await;
    assert_eq!(mesh.metric(ejections).await, 1.0);
}

const HEALTH: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /hc }, cluster: checked }
              - { match: { prefix: /down }, cluster: all-down }
clusters:
  - name: checked
    endpoints: [{ address: "@flaky@" }, { address: "@steady@" }]
    health_check: { type: http, path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }
  - name: all-down
    endpoints: [{ address: "@dead@" }, { address: "@dead2@" }]
    health_check: { type: tcp, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }
"#;

/// Sends `n` GETs; true when every one was answered 200 by `only`.
async fn all_from(edge: std::net::SocketAddr, path: &str, n: usize, only: &str) -> bool {
    let mut all = true;
    for _ in 0..n {
        let r = send(edge, Proto::H1, Req::get(path)).await.expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        all &= r.header("x-upstream") == Some(only);
    }
    all
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let flaky = HttpUpstream::start("flaky").await;
    let steady = HttpUpstream::start("steady").await;
    let mesh = Mesh::start(&subst(
        HEALTH,
        &[
            ("flaky", flaky.addr),
            ("steady", steady.addr),
            ("dead", dead_addr()),
            ("dead2", dead_addr()),
        ],
    ))
    .await;
    let edge = mesh.addr("edge");
    eventually(
        "health checks reach the endpoint",
        Duration::from_secs(10),
        || async { flaky.health_hits() > 0 },
    )
    .await;
    // Healthy: both take traffic.
    eventually("both endpoints serve", Duration::from_secs(10), || async {
        !all_from(edge, "/hc", 4, "steady").await
    })
    .await;

    // /healthz fails → marked down → only `steady` serves (flaky still answers 200 otherwise).
    flaky.set_health(503);
    eventually(
        "the failing endpoint is taken out",
        Duration::from_secs(10),
        || async { all_from(edge, "/hc", 6, "steady").await },
    )
    .await;
    let hits = flaky.hits();
    assert!(all_from(edge, "/hc", 10, "steady").await);
    assert_eq!(flaky.hits(), hits, "a down endpoint gets no traffic");

    // /healthz passes again → back in rotation.
    flaky.set_health(0);
    eventually(
        "the endpoint comes back",
        Duration::from_secs(10),
        || async { !all_from(edge, "/hc", 4, "steady").await },
    )
    .await;

    // Every endpoint fails its TCP check: 503 naming the cluster, for both protocols.
    eventually(
        "no healthy endpoint → 503",
        Duration::from_secs(10),
        || async {
            let r = send(edge, Proto::H1, Req::get("/down"))
                .await
                .expect("GET /down");
            assert_eq!(r.status, 503, "{r:?}");
            r.text().contains("no healthy endpoint")
        },
    )
    .await;
    let r = send(edge, Proto::H2c, Req::get("/down"))
        .await
        .expect("GET /down");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.text().contains("all-down"), "{}", r.text());
}

const BREAKER_AND_TIMEOUTS: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /wait }, cluster: narrow }
              - { match: { prefix: /hole }, cluster: black-hole, timeout: 300ms }
              - { match: { prefix: /hang }, cluster: hanging, timeout: 300ms }
              - { match: { prefix: /cut }, cluster: truncating }
              - { match: { prefix: / }, cluster: fine }
clusters:
  - name: narrow
    circuit_breakers: { max_requests: 1 }
    endpoints: [{ address: "@slow@" }]
  - name: black-hole
    endpoints: [{ address: "@hole@" }]
  - name: hanging
    endpoints: [{ address: "@hanging@" }]
  - name: truncating
    endpoints: [{ address: "@cut@" }]
  - name: fine
    endpoints: [{ address: "@fine@" }]
"#;

#[tokio::test]
async fn breaker_timeouts_truncation_and_malformed_requests() {
    let slow = HttpUpstream::start("slow").await;
    let hole = BlackHole::start().await;
    let hanging = HttpUpstream::start("hanging").await;
    let cut = TruncatingUpstream::start().await;
    let fine = HttpUpstream::start("fine").await;
    let mut mesh = Mesh::start(&subst(
        BREAKER_AND_TIMEOUTS,
        &[
            ("slow", slow.addr),
            ("hole", hole.addr),
            ("hanging", hanging.addr),
            ("cut", cut.addr),
            ("fine", fine.addr),
        ],
    ))
    .await;
    let edge = mesh.addr("edge");

    // Circuit breaker: max_requests 1; while one request is in flight (the upstream holds it
    // until released) a second gets 503.
    for proto in [Proto::H1, Proto::H2c] {
        let before = slow.hits();
        let first = tokio::spawn(send(edge, proto, Req::get("/wait/first")));
        eventually(
            "the first request reaches the upstream",
            Duration::from_secs(10),
            || async { slow.hits() > before },
        )
        .await;
        let r = send(edge, proto, Req::get("/wait/second"))
            .await
            .expect("second request");
        assert_eq!(r.status, 503, "{proto:?}: {r:?}");
        assert_eq!(
            r.header("x-mecha-overloaded"),
            Some("max_requests"),
            "{r:?}"
        );
        slow.release(1);
        let r = first.await.expect("join").expect("first request");
        assert_eq!(r.status, 200, "the first one completes: {r:?}");
    }
    mesh.wait_metric(
        r#"mecha_cluster_breaker_trips_total{cluster="narrow"}"#,
        |v| v >= 2.0,
    )
    .await;

    // Timeouts: accepted but never answered → 504.
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/hole"))
            .await
            .expect("GET /hole");
        assert_eq!(r.status, 504, "{proto:?}: black hole: {r:?}");
        let r = send(edge, proto, Req::get("/hang"))
            .await
            .expect("GET /hang");
        assert_eq!(
            r.status, 504,
            "{proto:?}: request read, never answered: {r:?}"
        );
        assert!(r.text().contains("timeout"), "{}", r.text());
    }
    assert!(hole.accepted() >= 1);

    // An upstream that cuts its response short: the client sees a broken exchange, never a
    // clean 200 with a truncated body.
    for proto in [Proto::H1, Proto::H2c] {
        match send(edge, proto, Req::get("/cut")).await {
            // h1: the connection closes short of Content-Length; h2: RST_STREAM.
            Err(_) => {}
            Ok(r) => assert_ne!(
                r.status, 200,
                "{proto:?}: clean 200 with a truncated body: {r:?}"
            ),
        }
    }

    // Malformed HTTP from the client → 400; the process keeps serving.
    for bad in [
        &b"GET / HTTP/1.1\r\nHost svc.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: svc.test\r\nContent-Length: nope\r\n\r\n",
        b"garbage garbage garbage garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: svc.test\r\n\r\n",
        // Shorter than the 24-byte h2 preface: answered, not left waiting for more bytes.
        b"\x01\x02\x03\r\n\r\n",
        b"BAD\r\n\r\n",
    ] {
        let r = within("an answer to a malformed request", http_raw(edge, bad))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#}", String::from_utf8_lossy(bad)));
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(bad));
    }
    // A complete HTTP/1.0 request shorter than the h2 preface is served.
    let r = within(
        "an answer to a short HTTP/1.0 request",
        http_raw(edge, b"GET /after HTTP/1.0\r\n\r\n"),
    )
    .await
    .expect("short HTTP/1.0 request");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(mesh.is_running(), "mecha is still running");
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/after"))
            .await
            .expect("GET /after");
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "{r:?}");
    }
}

const PER_TRY: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: /try }
                cluster: mixed
                timeout: 10s
                per_try_timeout: 300ms
                retry_policy: { retry_on: [reset], num_retries: 1, base_interval: 1ms, max_interval: 5ms }
clusters:
  - name: mixed
    endpoints: [{ address: "@hole@" }, { address: "@fine@" }]
"#;

// A try that waits longer than per_try_timeout is abandoned and retried on the other
// endpoint, within the route's overall timeout.
#[tokio::test]
async fn per_try_timeout_retries_on_another_endpoint() {
    let hole = BlackHole::start().await;
    let fine = HttpUpstream::start("fine").await;
    let mesh = Mesh::start(&subst(PER_TRY, &[("hole", hole.addr), ("fine", fine.addr)])).await;
    let edge = mesh.addr("edge");
    for proto in [Proto::H1, Proto::H2c] {
        for i in 0..4 {
            let r = send(edge, proto, Req::get(&format!("/try/{i}")))
                .await
                .expect("GET /try");
            assert_eq!(r.status, 200, "{proto:?} #{i}: {r:?}");
        }
    }
    assert!(
        hole.accepted() >= 1,
        "round robin sent some tries to the black hole"
    );
    mesh.wait_metric(r#"mecha_cluster_retries_total{cluster="mixed"}"#, |v| {
        v >= 1.0
    })
    .await;
}
