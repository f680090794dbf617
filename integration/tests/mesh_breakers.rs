//! Mesh end-to-end: connection-level circuit breakers — `max_connections` (an HTTP/1.1 request
//! holds one upstream connection while in flight; on h2c one connection carries
//! `max_h2_streams` requests) and `max_pending_requests` (requests waiting for a connection;
//! beyond → 503 `x-mecha-overloaded: max_pending_requests`; waiting is bounded by the route
//! timeout → 504), with their gauges and counters in `/metrics`. `max_requests` is covered in
//! `mesh_resilience.rs` and `mesh_grpc.rs`.
//!
//! The upstream ([`HttpUpstream`]) holds every `/wait/…` request until the test releases it, so
//! "in flight" and "pending" are states the test sets up and observes, never timings.

use std::time::Duration;

use mecha_integration::mesh_support::{eventually, send, subst, HttpUpstream, Mesh, Proto, Req};
use mecha_integration::{run_mecha, TempDir};

const BREAKERS: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { match: { prefix: /wait/one/ }, cluster: one-conn }
              - { match: { prefix: /wait/long/ }, cluster: short-wait, timeout: 0 }
              - { match: { prefix: /wait/short/ }, cluster: short-wait, timeout: 300ms }
              - { match: { prefix: /wait/mux/ }, cluster: mux }
              - { match: { prefix: / }, cluster: roomy }
clusters:
  - name: one-conn
    circuit_breakers: { max_connections: 1, max_pending_requests: 1 }
    endpoints: [{ address: "@held@" }]
  - name: short-wait
    circuit_breakers: { max_connections: 1, max_pending_requests: 4 }
    endpoints: [{ address: "@held2@" }]
  - name: mux
    protocol: h2c
    max_h2_streams: 2
    circuit_breakers: { max_connections: 1, max_pending_requests: 1 }
    endpoints: [{ address: "@held3@" }]
  - name: roomy
    endpoints: [{ address: "@roomy@" }]
"#;

fn active(cluster: &str) -> String {
    format!("mecha_cluster_upstream_requests_active{{cluster=\"{cluster}\"}}")
}

fn pending(cluster: &str) -> String {
    format!("mecha_cluster_pending_requests{{cluster=\"{cluster}\"}}")
}

fn trips(cluster: &str) -> String {
    format!("mecha_cluster_breaker_trips_total{{cluster=\"{cluster}\"}}")
}

fn opened(cluster: &str) -> String {
    format!("mecha_cluster_upstream_connections_opened_total{{cluster=\"{cluster}\"}}")
}

struct Setup {
    mesh: Mesh,
    held: HttpUpstream,
    held2: HttpUpstream,
    held3: HttpUpstream,
    _roomy: HttpUpstream,
}

async fn setup() -> Setup {
    let held = HttpUpstream::start("held").await;
    let held2 = HttpUpstream::start("held2").await;
    let held3 = HttpUpstream::start("held3").await;
    let roomy = HttpUpstream::start("roomy").await;
    let mesh = Mesh::start(&subst(
        BREAKERS,
        &[
            ("held", held.addr),
            ("held2", held2.addr),
            ("held3", held3.addr),
            ("roomy", roomy.addr),
        ],
    ))
    .await;
    Setup {
        mesh,
        held,
        held2,
        held3,
        _roomy: roomy,
    }
}

/// Waits until `up` has received `n` ordinary requests.
async fn hits_reach(up: &HttpUpstream, n: usize, what: &str) {
    eventually(what, Duration::from_secs(10), || async { up.hits() >= n }).await;
}

#[tokio::test]
async fn one_connection_one_pending_then_503_and_the_pending_one_is_served_after() {
    let s = setup().await;
    let (mesh, held) = (&s.mesh, &s.held);
    let edge = mesh.addr("edge");

    // A takes the only connection slot and is held upstream.
    let a = tokio::spawn(send(edge, Proto::H1, Req::get("/wait/one/a")));
    hits_reach(held, 1, "request A reaches the upstream").await;
    mesh.wait_metric(&active("one-conn"), |v| v == 1.0).await;

    // B finds no free connection and waits as pending (it does not reach the upstream).
    let b = tokio::spawn(send(edge, Proto::H1, Req::get("/wait/one/b")));
    mesh.wait_metric(&pending("one-conn"), |v| v == 1.0).await;
    assert_eq!(held.hits(), 1, "the pending request is not sent upstream");
    let trips_before = mesh.metric(&trips("one-conn")).await;

    // C finds the pending queue full: 503 at once, on either client protocol, naming the
    // breaker in x-mecha-overloaded and the cluster in the body.
    for (proto, path) in [(Proto::H1, "/wait/one/c"), (Proto::H2c, "/wait/one/d")] {
        let r = send(edge, proto, Req::get(path))
            .await
            .unwrap_or_else(|e| panic!("{proto:?} {path}: {e:#}"));
        assert_eq!(r.status, 503, "{proto:?}: {r:?} {}", r.text());
        assert_eq!(
            r.header("x-mecha-overloaded"),
            Some("max_pending_requests"),
            "{proto:?}: {r:?}"
        );
        assert!(
            r.text().contains("one-conn"),
            "names the cluster: {}",
            r.text()
        );
    }
    assert_eq!(
        held.hits(),
        1,
        "the refused requests never reached the upstream"
    );
    mesh.wait_metric(&trips("one-conn"), |v| v >= trips_before + 2.0)
        .await;
    // Still exactly one in flight and one waiting.
    assert_eq!(mesh.metric(&active("one-conn")).await, 1.0);
    assert_eq!(mesh.metric(&pending("one-conn")).await, 1.0);

    // Releasing A frees the slot: B goes upstream only now.
    held.release(1);
    let ra = a.await.expect("join A").expect("request A");
    assert_eq!((ra.status, ra.text().as_str()), (200, "held"), "{ra:?}");
    hits_reach(held, 2, "the pending request B is sent upstream after A").await;
    mesh.wait_metric(&pending("one-conn"), |v| v == 0.0).await;
    held.release(1);
    let rb = b.await.expect("join B").expect("request B");
    assert_eq!((rb.status, rb.text().as_str()), (200, "held"), "{rb:?}");
    let paths: Vec<String> = held.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        ["/wait/one/a", "/wait/one/b"],
        "A, then B; C and D never"
    );

    // Everything settles back to zero, and connections were opened and counted.
    mesh.wait_metric(&active("one-conn"), |v| v == 0.0).await;
    assert_eq!(mesh.metric(&pending("one-conn")).await, 0.0);
    assert!(
        mesh.metric(&opened("one-conn")).await >= 1.0,
        "{} counts new upstream connections:\n{}",
        opened("one-conn"),
        mesh.metrics().await
    );

    // With the slot free again, a new request goes straight through.
    held.release(1);
    let r = send(edge, Proto::H1, Req::get("/wait/one/e"))
        .await
        .expect("GET /wait/one/e");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn a_pending_request_whose_route_timeout_elapses_gets_504_naming_the_cluster() {
    let s = setup().await;
    let (mesh, held2) = (&s.mesh, &s.held2);
    let edge = mesh.addr("edge");

    // The long request (no route timeout) holds the only connection.
    let long = tokio::spawn(send(edge, Proto::H1, Req::get("/wait/long/hold")));
    hits_reach(held2, 1, "the long request reaches the upstream").await;

    // A request with a 300 ms route timeout waits for a connection that never frees up.
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/wait/short/waits"))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: {e:#}"));
        assert_eq!(r.status, 504, "{proto:?}: {r:?} {}", r.text());
        assert!(
            r.text().contains("short-wait"),
            "{proto:?}: the error names the cluster: {}",
            r.text()
        );
        assert_eq!(
            r.header("x-mecha-overloaded"),
            None,
            "a timeout is not a breaker overflow: {r:?}"
        );
    }
    assert_eq!(
        held2.hits(),
        1,
        "the timed-out requests never reached the upstream"
    );
    mesh.wait_metric(&pending("short-wait"), |v| v == 0.0).await;

    // The holder is unaffected and completes once released.
    held2.release(1);
    let r = long.await.expect("join").expect("long request");
    assert_eq!(r.status, 200, "{r:?}");
    mesh.wait_metric(&active("short-wait"), |v| v == 0.0).await;
}

#[tokio::test]
async fn an_h2c_connection_slot_carries_max_h2_streams_requests() {
    let s = setup().await;
    let (mesh, held3) = (&s.mesh, &s.held3);
    let edge = mesh.addr("edge");

    // max_connections 1 × max_h2_streams 2: two requests in flight upstream at once …
    let a = tokio::spawn(send(edge, Proto::H1, Req::get("/wait/mux/a")));
    hits_reach(held3, 1, "A reaches the upstream").await;
    let b = tokio::spawn(send(edge, Proto::H2c, Req::get("/wait/mux/b")));
    // (The gauge first: its failure message carries /metrics.)
    mesh.wait_metric(&active("mux"), |v| v == 2.0).await;
    hits_reach(held3, 2, "B reaches the upstream alongside A").await;

    // … the third waits …
    let c = tokio::spawn(send(edge, Proto::H1, Req::get("/wait/mux/c")));
    mesh.wait_metric(&pending("mux"), |v| v == 1.0).await;
    assert_eq!(held3.hits(), 2, "the third is not sent upstream yet");

    // … and the fourth overflows the pending queue.
    let r = send(edge, Proto::H1, Req::get("/wait/mux/d"))
        .await
        .expect("GET /wait/mux/d");
    assert_eq!(r.status, 503, "{r:?} {}", r.text());
    assert_eq!(r.header("x-mecha-overloaded"), Some("max_pending_requests"));

    held3.release(3);
    for (name, h) in [("A", a), ("B", b), ("C", c)] {
        let r = h.await.expect("join").expect(name);
        assert_eq!(r.status, 200, "{name}: {r:?}");
    }
    assert!(
        held3
            .seen()
            .iter()
            .all(|s| s.version == http::Version::HTTP_2),
        "the upstream was spoken to over h2c"
    );
    assert_eq!(held3.hits(), 3, "D never reached the upstream");
    mesh.wait_metric(&active("mux"), |v| v == 0.0).await;
    assert_eq!(mesh.metric(&pending("mux")).await, 0.0);
    assert!(mesh.metric(&opened("mux")).await >= 1.0);
}

#[tokio::test]
async fn clusters_without_pressure_report_their_gauges_and_counters() {
    let s = setup().await;
    let mesh = &s.mesh;
    let edge = mesh.addr("edge");
    for proto in [Proto::H1, Proto::H2c, Proto::H1] {
        let r = send(edge, proto, Req::get("/free"))
            .await
            .expect("GET /free");
        assert_eq!((r.status, r.text().as_str()), (200, "roomy"), "{r:?}");
    }
    mesh.wait_metric(&opened("roomy"), |v| v >= 1.0).await;
    mesh.wait_metric(&active("roomy"), |v| v == 0.0).await;
    let text = mesh.metrics().await;
    for series in [
        pending("roomy"),
        trips("roomy"),
        active("one-conn"),
        pending("one-conn"),
        opened("one-conn"),
    ] {
        assert!(
            mecha_integration::metric_value(&text, &series).is_some(),
            "{series} is exported:\n{text}"
        );
    }
    assert_eq!(
        mecha_integration::metric_value(&text, &trips("roomy")),
        Some(0.0),
        "no trips without overflow"
    );
}

/// `mecha validate` on a config whose only cluster has `circuit_breakers: {breakers}`: the exit
/// code and stderr.
fn validate_breakers(dir: &TempDir, name: &str, breakers: &str) -> (Option<i32>, String) {
    let config = dir.write(
        name,
        &format!(
            r#"
admin: {{ address: 127.0.0.1:1 }}
listeners:
  - name: edge
    address: 127.0.0.1:2
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: / }}, cluster: up }}
clusters:
  - name: up
    circuit_breakers: {breakers}
    endpoints: [{{ address: "127.0.0.1:9" }}]
"#
        ),
    );
    let out = run_mecha(
        &["validate", config.to_str().expect("utf-8 path")],
        Duration::from_secs(30),
    )
    .expect("run mecha validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_rejects_malformed_breaker_settings_with_their_paths() {
    let dir = TempDir::new("mesh-breakers-validate");
    // Not a count at all (schema error).
    let (code, stderr) = validate_breakers(&dir, "negative.yaml", "{ max_connections: -1 }");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("clusters[0].circuit_breakers.max_connections"),
        "names the field by path:\n{stderr}"
    );
    // Zero connections would refuse every request.
    let (code, stderr) = validate_breakers(&dir, "zero.yaml", "{ max_connections: 0 }");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("clusters[0].circuit_breakers.max_connections: must be at least 1"),
        "{stderr}"
    );
    // A misspelt breaker is an unknown field, not silently ignored.
    let (code, stderr) = validate_breakers(&dir, "typo.yaml", "{ max_conections: 1 }");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("max_conections"),
        "an unknown breaker field is named:\n{stderr}"
    );
    // The same shape with sane values is valid.
    let (code, stderr) = validate_breakers(
        &dir,
        "good.yaml",
        "{ max_connections: 2, max_pending_requests: 1, max_requests: 10, max_retries: 1 }",
    );
    assert_eq!(code, Some(0), "{stderr}");
}
