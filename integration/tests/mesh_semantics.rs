//! Mesh end-to-end: proxy semantics users port from Envoy — retry safety (the keep-alive race
//! is retried without a retry policy; a non-idempotent request is not resent unless the route
//! opts in), the route `timeout` as the whole request (connection-slot wait and retries
//! included), the stream `idle_timeout`, inbound `x-mecha-*` stripped, `x-forwarded-for` and
//! `x-request-id`, and W3C `traceparent` validation. No assertion on timing: time-based cases
//! assert outcomes (status, how many tries an upstream saw) that no delay can turn around.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mecha_integration::mesh_support::{
    eventually, send, subst, BlackHole, HttpUpstream, Mesh, Proto, RawMode, RawUpstream, Req,
};
use mecha_integration::STEP_TIMEOUT;
use tokio::net::TcpStream;

// === retry safety ===

const RACE: &str = r#"
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
                cluster: closing
clusters:
  - name: closing
    endpoints: [{ address: "@closing@" }]
"#;

/// Requests sent one after another on one keep-alive connection to `addr`; returns how many
/// did not come back `200 ok` (a broken connection counts the rest as failed).
async fn keep_alive_run(addr: SocketAddr, requests: usize) -> usize {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return requests;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return requests;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut failed = 0;
    for i in 0..requests {
        let req = Request::get(format!("/race/{i}"))
            .header(http::header::HOST, "svc.test")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                status == 200 && body.is_ok_and(|b| b.as_ref() == b"ok")
            }
            Err(_) => return failed + (requests - i),
        };
        if !ok {
            failed += 1;
        }
    }
    failed
}

// Every pooled connection is dead by the time it is reused (the upstream closes it right after
// answering): the requests that meet one are retried on a new connection, without any retry
// policy on the route, so none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_race_is_retried_without_a_retry_policy() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 1250;
    let closing = RawUpstream::start(RawMode::CloseAfterAnswer).await;
    let mesh = Mesh::start(&subst(RACE, &[("closing", closing.addr)])).await;
    let edge = mesh.addr("edge");
    let run = async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(keep_alive_run(edge, PER_CLIENT)))
            .collect();
        let mut failed = 0;
        for t in tasks {
            failed += t.await.expect("client task");
        }
        failed
    };
    let failed = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("10,000 requests within 5 minutes");
    assert_eq!(failed, 0, "of {} requests", CLIENTS * PER_CLIENT);
    assert!(closing.requests() >= CLIENTS * PER_CLIENT);
}

const RESET: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: /plain }
                cluster: resetting
                retry_policy: { retry_on: [reset, 5xx, connect-failure], num_retries: 2, base_interval: 1ms, max_interval: 5ms }
              - match: { prefix: /opt-in }
                cluster: reset-once
                retry_policy: { retry_on: [reset], num_retries: 2, base_interval: 1ms, max_interval: 5ms, retry_non_idempotent: true }
clusters:
  - name: resetting
    endpoints: [{ address: "@resetting@" }]
  - name: reset-once
    endpoints: [{ address: "@once@" }]
"#;

// An upstream that reads the request and resets the connection: a POST may have been acted
// on, so it is not sent again — one request upstream, a 502 naming the cluster — while a GET
// on the same route is retried by its policy, and a route that opts in retries a POST too.
#[tokio::test]
async fn a_post_reset_after_reading_is_not_retried_unless_the_route_opts_in() {
    let resetting = RawUpstream::start(RawMode::ResetFirst(usize::MAX)).await;
    let once = RawUpstream::start(RawMode::ResetFirst(1)).await;
    let mesh = Mesh::start(&subst(
        RESET,
        &[("resetting", resetting.addr), ("once", once.addr)],
    ))
    .await;
    let edge = mesh.addr("edge");

    for (i, proto) in [Proto::H1, Proto::H2c].into_iter().enumerate() {
        let before = resetting.requests();
        let r = send(
            edge,
            proto,
            Req::get("/plain/order").method(Method::POST).body("buy 1"),
        )
        .await
        .expect("POST /plain");
        assert_eq!(r.status, 502, "{proto:?}: {r:?}");
        assert!(
            r.text().contains("\"resetting\""),
            "{proto:?}: {}",
            r.text()
        );
        assert_eq!(
            resetting.requests() - before,
            1,
            "{proto:?}: the POST reached the upstream once (#{i})"
        );
    }

    // The policy itself is live: a GET is tried 1 + num_retries times.
    let before = resetting.requests();
    let r = send(edge, Proto::H1, Req::get("/plain/read"))
        .await
        .expect("GET /plain");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        resetting.requests() - before,
        3,
        "GET: one try and two retries"
    );

    // retry_non_idempotent: the reset POST is sent again and the second try answers.
    let r = send(
        edge,
        Proto::H1,
        Req::get("/opt-in/order").method(Method::POST).body("buy 1"),
    )
    .await
    .expect("POST /opt-in");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(once.requests(), 2, "reset once, then answered");
}

// === headers ===

const PLAIN: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: /only-internal, headers: [{ name: x-mecha-route, present: true }] }
                direct_response: { status: 418, body: "forged" }
              - match: { prefix: / }
                cluster: app
clusters:
  - name: app
    endpoints: [{ address: "@app@" }]
"#;

fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

// Inbound x-mecha-* headers never reach the upstream (nor steer routing); x-forwarded-for gets
// the client address appended; x-request-id is kept, or created as a UUIDv4.
#[tokio::test]
async fn routed_requests_lose_internal_headers_and_gain_forwarding_ones() {
    let app = HttpUpstream::start("app").await;
    let mesh = Mesh::start(&subst(PLAIN, &[("app", app.addr)])).await;
    let edge = mesh.addr("edge");
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(
            edge,
            proto,
            Req::get("/only-internal")
                .header("x-mecha-route", "forged")
                .header("x-mecha-overloaded", "forged")
                .header("x-forwarded-for", "10.1.2.3")
                .header("x-request-id", "req-42"),
        )
        .await
        .expect("GET");
        assert_eq!(
            r.status, 200,
            "{proto:?}: a forged internal header chose a route: {r:?}"
        );
        let seen = app.last_seen();
        assert_eq!(seen.header("x-mecha-route"), None, "{proto:?}");
        assert_eq!(seen.header("x-mecha-overloaded"), None, "{proto:?}");
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("10.1.2.3, 127.0.0.1"),
            "{proto:?}"
        );
        assert_eq!(seen.header("x-request-id"), Some("req-42"), "{proto:?}");

        send(edge, proto, Req::get("/fresh")).await.expect("GET");
        let seen = app.last_seen();
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{proto:?}"
        );
        let id = seen.header("x-request-id").unwrap_or_default().to_owned();
        assert!(is_uuid_v4(&id), "{proto:?}: x-request-id {id:?}");
        send(edge, proto, Req::get("/fresh")).await.expect("GET");
        assert_ne!(app.last_seen().header("x-request-id"), Some(id.as_str()));
    }
}

/// Sends `traceparent: incoming`; returns the trace id and span id the upstream saw, after
/// checking the header it got is well-formed.
async fn forwarded(edge: SocketAddr, app: &HttpUpstream, incoming: &str) -> (String, String) {
    let r = send(
        edge,
        Proto::H1,
        Req::get("/t").header("traceparent", incoming),
    )
    .await
    .expect("GET");
    assert_eq!(r.status, 200, "{r:?}");
    let out = app
        .last_seen()
        .header("traceparent")
        .unwrap_or_default()
        .to_owned();
    let parts: Vec<&str> = out.split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1] != "0".repeat(32)
            && out
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{incoming} -> {out}"
    );
    (parts[1].to_owned(), parts[2].to_owned())
}

// A traceparent invalid by W3C Trace Context starts a new trace; a valid one keeps its trace id.
#[tokio::test]
async fn invalid_traceparents_restart_the_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app = HttpUpstream::start("app").await;
    let mesh = Mesh::start(&subst(PLAIN, &[("app", app.addr)])).await;
    let edge = mesh.addr("edge");
    let (trace, span) = forwarded(edge, &app, &format!("00-{TRACE}-00f067aa0ba902b7-01")).await;
    assert_eq!(trace, TRACE);
    assert_ne!(span, "00f067aa0ba902b7", "this hop is a new span");
    for invalid in [
        format!("ff-{TRACE}-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
        format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("00-{TRACE}-00f067aa0ba902-01"),
        format!("00-{TRACE}ab-00f067aa0ba902b7-01"),
        format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
        format!("00-{TRACE}-00f067aa0ba902b7-x1"),
    ] {
        let (trace, _) = forwarded(edge, &app, &invalid).await;
        assert_ne!(trace, TRACE, "{invalid} was propagated");
        assert_ne!(
            trace.to_uppercase(),
            TRACE.to_uppercase(),
            "{invalid} was propagated"
        );
    }
    // A restarted trace drops the tracestate of the old one.
    let r = send(
        edge,
        Proto::H1,
        Req::get("/t")
            .header("traceparent", &format!("ff-{TRACE}-00f067aa0ba902b7-01"))
            .header("tracestate", "vendor=old"),
    )
    .await
    .expect("GET");
    assert_eq!(r.status, 200);
    assert_eq!(app.last_seen().header("tracestate"), None);
}

// === timeouts ===

const IDLE: &str = r#"
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
                cluster: app
                timeout: 0
                idle_timeout: 1s
clusters:
  - name: app
    endpoints: [{ address: "@app@" }]
"#;

// idle_timeout cuts a stream that goes silent, not one that keeps sending (for longer, in
// total, than the idle timeout: 20 chunks 100 ms apart against 1 s).
#[tokio::test]
async fn idle_timeout_cuts_a_silent_stream_but_not_an_active_one() {
    let app = HttpUpstream::start("app").await;
    let mesh = Mesh::start(&subst(IDLE, &[("app", app.addr)])).await;
    let edge = mesh.addr("edge");
    for proto in [Proto::H1, Proto::H2c] {
        let r = send(edge, proto, Req::get("/drip/20/100"))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: an active stream was cut: {e:#}"));
        assert_eq!((r.status, r.text()), (200, "x".repeat(20)), "{proto:?}");
        let cut = send(edge, proto, Req::get("/stall")).await;
        assert!(
            cut.is_err(),
            "{proto:?}: a silent stream ended as if complete: {cut:?}"
        );
    }
}

const TOTAL: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: /hold }
                cluster: hole
                timeout: 10s
                per_try_timeout: 700ms
              - match: { prefix: /total }
                cluster: hole
                timeout: 1s
                per_try_timeout: 600ms
                retry_policy: { retry_on: [reset], num_retries: 5, base_interval: 1ms, max_interval: 5ms }
clusters:
  - name: hole
    circuit_breakers: { max_connections: 1 }
    endpoints: [{ address: "@hole@" }]
"#;

// The route timeout (1 s) covers the wait for the cluster's only connection slot (held ~700 ms
// by another request) and every retry: what is left after the wait fits at most one 600 ms try.
// Were the wait not counted, the request would get two tries (600 ms + 400 ms).
#[tokio::test]
async fn route_timeout_covers_the_slot_wait_and_the_retries() {
    let hole = BlackHole::start().await;
    let mesh = Mesh::start(&subst(TOTAL, &[("hole", hole.addr)])).await;
    let edge = mesh.addr("edge");

    // Alone, the retries stop at the total: at most two tries in 1 s, not six.
    let r = send(edge, Proto::H1, Req::get("/total/alone"))
        .await
        .expect("GET /total");
    assert_eq!(r.status, 504, "{r:?}");
    let alone = hole.accepted();
    assert!((1..=2).contains(&alone), "tries within 1 s: {alone}");

    let holder = tokio::spawn(send(edge, Proto::H1, Req::get("/hold")));
    let hole = Arc::new(hole);
    let watched = hole.clone();
    eventually("the holder reached the upstream", STEP_TIMEOUT, move || {
        let hole = watched.clone();
        async move { hole.accepted() > alone }
    })
    .await;
    let before = hole.accepted();
    let r = send(edge, Proto::H1, Req::get("/total/queued"))
        .await
        .expect("GET /total");
    assert_eq!(r.status, 504, "{r:?}");
    let held = holder.await.expect("holder task").expect("GET /hold");
    assert_eq!(held.status, 504, "the holder's own try timed out: {held:?}");
    assert!(
        hole.accepted() - before <= 1,
        "tries after waiting for the slot: {}",
        hole.accepted() - before
    );
}
