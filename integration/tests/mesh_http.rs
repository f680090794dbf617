//! Mesh end-to-end: HTTP/1.1 and h2c proxying through the router filter, routing decisions,
//! route and cluster metrics, and `mecha validate` on bad mesh configs. Each test runs the real
//! binary (`mecha_integration::mesh_support::Mesh`) in front of real upstream servers.

use http::{Method, Version};
use mecha_integration::mesh_support::{send, subst, HttpUpstream, Mesh, Proto, Req};
use mecha_integration::{run_mecha, TempDir};
use std::time::Duration;

const PROXY: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: h2
                match: { prefix: /h2/ }
                cluster: h2c-up
              - name: h2-rewrite
                match: { prefix: /h2rw/ }
                prefix_rewrite: /inner/
                cluster: h2c-up
              - name: api
                match: { prefix: /api/ }
                prefix_rewrite: /v2/
                host_rewrite: backend.internal
                cluster: up
                request_headers_to_add: [{ name: x-added, value: req-yes }]
                request_headers_to_remove: [x-secret]
                response_headers_to_add: [{ name: x-resp-added, value: resp-yes }]
                response_headers_to_remove: [x-remove-me]
              - name: plain
                match: { prefix: / }
                cluster: up
clusters:
  - name: up
    endpoints: [{ address: "@up@" }]
  - name: h2c-up
    protocol: h2c
    endpoints: [{ address: "@h2up@" }]
"#;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn http1_and_h2c_are_proxied_with_rewrites_header_mutations_and_trace_context() {
    let up = HttpUpstream::start("up").await;
    let h2up = HttpUpstream::start("h2up").await;
    let mesh = Mesh::start(&subst(PROXY, &[("up", up.addr), ("h2up", h2up.addr)])).await;
    let edge = mesh.addr("edge");

    for proto in [Proto::H1, Proto::H2c] {
        // Status, body and headers pass through; the upstream is spoken to over HTTP/1.1.
        let r = send(edge, proto, Req::get("/hello?x=1"))
            .await
            .expect("GET /hello");
        assert_eq!(r.status, 200, "{proto:?}: {r:?}");
        assert_eq!(r.text(), "up");
        assert_eq!(r.header("x-upstream"), Some("up"));
        assert_eq!(
            r.header("x-remove-me"),
            Some("yes"),
            "untouched on the plain route"
        );
        let want_version = if proto == Proto::H1 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        assert_eq!(r.version, want_version, "the client keeps its protocol");
        let seen = up.last_seen();
        assert_eq!(seen.path, "/hello?x=1");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(
            seen.host, "svc.test",
            "{proto:?}: the upstream sees the client's host"
        );

        // Request bodies and methods pass; a non-2xx upstream status passes unchanged.
        let r = send(
            edge,
            proto,
            Req::get("/status/418").method(Method::POST).body("payload"),
        )
        .await
        .expect("POST /status/418");
        assert_eq!(r.status, 418, "{r:?}");
        let seen = up.last_seen();
        assert_eq!(
            (seen.method.as_str(), &seen.body[..]),
            ("POST", &b"payload"[..])
        );

        // prefix_rewrite, host_rewrite and header add/remove both ways.
        let r = send(
            edge,
            proto,
            Req::get("/api/items?q=1")
                .header("x-secret", "s3cr3t")
                .header("x-keep", "k"),
        )
        .await
        .expect("GET /api/items");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-resp-added"), Some("resp-yes"));
        assert_eq!(r.header("x-remove-me"), None, "response_headers_to_remove");
        assert_eq!(r.header("x-seen-path"), Some("/v2/items?q=1"));
        let seen = up.last_seen();
        assert_eq!(seen.path, "/v2/items?q=1", "prefix_rewrite");
        assert_eq!(seen.host, "backend.internal", "host_rewrite");
        assert_eq!(seen.header("x-added"), Some("req-yes"));
        assert_eq!(seen.header("x-secret"), None, "request_headers_to_remove");
        assert_eq!(seen.header("x-keep"), Some("k"));

        // traceparent: created when absent …
        send(edge, proto, Req::get("/t")).await.expect("GET /t");
        let tp = up
            .last_seen()
            .header("traceparent")
            .map(str::to_owned)
            .expect("traceparent added");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert!(
            parts[0] == "00" && is_hex(parts[1], 32) && is_hex(parts[2], 16),
            "{tp}"
        );
        // … and the trace id kept (with a new span) when present.
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        send(edge, proto, Req::get("/t").header("traceparent", incoming))
            .await
            .expect("GET /t");
        let tp = up
            .last_seen()
            .header("traceparent")
            .map(str::to_owned)
            .expect("traceparent kept");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "trace id kept: {tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "this hop is a new span: {tp}"
        );

        // An h2c upstream cluster: the upstream sees HTTP/2.
        let r = send(edge, proto, Req::get("/h2/x"))
            .await
            .expect("GET /h2/x");
        assert_eq!((r.status, r.text().as_str()), (200, "h2up"), "{r:?}");
        let seen = h2up.last_seen();
        assert_eq!(seen.version, Version::HTTP_2);
        assert_eq!(seen.path, "/h2/x");
        assert_eq!(r.header("x-seen-version"), Some("HTTP/2.0"));

        // A rewritten path keeps the authority an HTTP/2 upstream request needs.
        let r = send(edge, proto, Req::get("/h2rw/y?z=1"))
            .await
            .expect("GET /h2rw/y");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "h2up"),
            "{proto:?}: {r:?}"
        );
        let seen = h2up.last_seen();
        assert_eq!(seen.path, "/inner/y?z=1");
        assert_eq!(seen.host, "svc.test", "{proto:?}: authority kept");
    }
}

const ROUTES: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: exact-host
            domains: ["api.example.com"]
            routes: [{ match: { prefix: / }, direct_response: { status: 200, body: "vh:exact" } }]
          - name: suffix-host
            domains: ["*.example.com"]
            routes: [{ match: { prefix: / }, direct_response: { status: 200, body: "vh:suffix" } }]
          - name: narrow-host
            domains: ["narrow.test"]
            routes: [{ match: { path: /only }, direct_response: { status: 200, body: "narrow" } }]
          - name: default
            domains: ["*"]
            routes:
              - name: exact
                match: { path: /exact }
                direct_response: { status: 200, body: "route:exact" }
              - name: regex
                match: { regex: "/items/[0-9]+" }
                direct_response: { status: 200, body: "route:regex" }
              - name: post-only
                match: { prefix: /m/, methods: [POST, PUT] }
                direct_response: { status: 201, body: "route:post" }
              - name: canary
                match: { prefix: /h/, headers: [{ name: x-canary, exact: "1" }] }
                cluster: canary
              - name: not-debug
                match: { prefix: /h/, headers: [{ name: x-debug, present: true, invert: true }] }
                cluster: stable
              - name: moved
                match: { prefix: /old/ }
                redirect: { path: /new/, code: 301 }
              - name: moved-away
                match: { path: /elsewhere }
                redirect: { scheme: https, host: other.example, code: 308 }
              - name: prefix
                match: { prefix: /p/ }
                cluster: stable
clusters:
  - name: stable
    endpoints: [{ address: "@stable@" }]
  - name: canary
    endpoints: [{ address: "@canary@" }]
"#;

#[tokio::test]
async fn routes_match_on_host_path_method_and_headers() {
    let stable = HttpUpstream::start("stable").await;
    let canary = HttpUpstream::start("canary").await;
    let mesh = Mesh::start(&subst(
        ROUTES,
        &[("stable", stable.addr), ("canary", canary.addr)],
    ))
    .await;
    let edge = mesh.addr("edge");

    for proto in [Proto::H1, Proto::H2c] {
        let go = |req: Req| async move { send(edge, proto, req).await.expect("request") };
        let body = |req: Req| async move {
            let r = send(edge, proto, req).await.expect("request");
            (r.status, r.text())
        };
        // Virtual hosts: exact (port ignored) beats `*.suffix` beats `*`.
        assert_eq!(
            body(Req::get("/").host("api.example.com")).await,
            (200, "vh:exact".into())
        );
        assert_eq!(
            body(Req::get("/").host("api.example.com:8080")).await,
            (200, "vh:exact".into())
        );
        assert_eq!(
            body(Req::get("/").host("web.example.com")).await,
            (200, "vh:suffix".into())
        );
        assert_eq!(
            body(Req::get("/exact").host("example.com")).await,
            (200, "route:exact".into())
        );
        // Paths: exact, regex (anchored), prefix.
        assert_eq!(body(Req::get("/exact")).await, (200, "route:exact".into()));
        assert_eq!(
            body(Req::get("/items/42")).await,
            (200, "route:regex".into())
        );
        assert_eq!(go(Req::get("/items/42x")).await.status, 404);
        assert_eq!(go(Req::get("/exact/more")).await.status, 404);
        assert_eq!(body(Req::get("/p/anything")).await, (200, "stable".into()));
        // Methods.
        assert_eq!(
            body(Req::get("/m/x").method(Method::POST)).await,
            (201, "route:post".into())
        );
        assert_eq!(
            body(Req::get("/m/x").method(Method::PUT)).await,
            (201, "route:post".into())
        );
        assert_eq!(go(Req::get("/m/x")).await.status, 404);
        // Headers: exact match, and an inverted presence match.
        assert_eq!(
            body(Req::get("/h/1").header("x-canary", "1")).await,
            (200, "canary".into())
        );
        assert_eq!(
            body(Req::get("/h/1").header("x-canary", "2")).await,
            (200, "stable".into())
        );
        assert_eq!(body(Req::get("/h/1")).await, (200, "stable".into()));
        assert_eq!(
            go(Req::get("/h/1").header("x-debug", "on")).await.status,
            404
        );
        // Redirects.
        let r = go(Req::get("/old/page")).await;
        assert_eq!(r.status, 301, "{r:?}");
        assert_eq!(r.header("location"), Some("http://svc.test/new/"));
        let r = go(Req::get("/elsewhere")).await;
        assert_eq!(r.status, 308, "{r:?}");
        assert_eq!(
            r.header("location"),
            Some("https://other.example/elsewhere")
        );
        // No route: 404 with a message naming the request.
        let r = go(Req::get("/nothing/here")).await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.text().contains("no route"), "{}", r.text());
        assert!(r.text().contains("/nothing/here"), "{}", r.text());
        let r = go(Req::get("/other").host("narrow.test")).await;
        assert_eq!(
            r.status, 404,
            "a matched vhost without a matching route: {r:?}"
        );
        assert_eq!(
            body(Req::get("/only").host("narrow.test")).await,
            (200, "narrow".into())
        );
    }
    // Upstream-bound routes really reached the upstreams.
    assert!(
        canary.hits() >= 2 && stable.hits() >= 4,
        "canary {} stable {}",
        canary.hits(),
        stable.hits()
    );
}

#[tokio::test]
async fn route_and_cluster_metrics_count_traffic() {
    let up = HttpUpstream::start("up").await;
    let h2up = HttpUpstream::start("h2up").await;
    let mesh = Mesh::start(&subst(PROXY, &[("up", up.addr), ("h2up", h2up.addr)])).await;
    let edge = mesh.addr("edge");
    for _ in 0..3 {
        assert_eq!(
            send(edge, Proto::H1, Req::get("/ok"))
                .await
                .expect("GET")
                .status,
            200
        );
    }
    assert_eq!(
        send(edge, Proto::H2c, Req::get("/status/404"))
            .await
            .expect("GET")
            .status,
        404
    );
    assert_eq!(
        send(edge, Proto::H1, Req::get("/status/503"))
            .await
            .expect("GET")
            .status,
        503
    );
    mesh.wait_metric(
        r#"mecha_route_requests_total{route="all/plain",class="2xx"}"#,
        |v| v == 3.0,
    )
    .await;
    mesh.wait_metric(
        r#"mecha_route_requests_total{route="all/plain",class="4xx"}"#,
        |v| v == 1.0,
    )
    .await;
    mesh.wait_metric(
        r#"mecha_route_requests_total{route="all/plain",class="5xx"}"#,
        |v| v == 1.0,
    )
    .await;
    mesh.wait_metric(
        r#"mecha_cluster_upstream_requests_total{cluster="up"}"#,
        |v| v == 5.0,
    )
    .await;
    let text = mesh.metrics().await;
    assert!(
        text.contains("mecha_route_request_duration_seconds_bucket{"),
        "latency histogram:\n{text}"
    );
    for family in [
        "mecha_cluster_upstream_failures_total{cluster=\"up\"}",
        "mecha_cluster_retries_total{cluster=\"up\"}",
        "mecha_cluster_outlier_ejections_total{cluster=\"up\"}",
        "mecha_cluster_breaker_trips_total{cluster=\"up\"}",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
}

#[test]
fn validate_reports_each_mesh_error_with_its_path() {
    let dir = TempDir::new("mesh-validate");
    let bad = dir.write(
        "bad.yaml",
        r#"
admin: { address: 127.0.0.1:1 }
listeners:
  - name: edge
    address: 127.0.0.1:2
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: { prefix: / }
                cluster: nowhere
              - match: { regex: "(unclosed" }
                cluster: up
              - match: { prefix: /two }
                cluster: up
                direct_response: { status: 200 }
  - name: tcp
    address: 127.0.0.1:3
    tcp_proxy: { cluster: missing }
clusters:
  - name: up
    endpoints: [{ address: not-an-address }]
  - name: bad-knobs
    max_h2_streams: 0
    outlier_detection: { max_ejection_percent: 150 }
    endpoints: [{ address: "127.0.0.1:9", weight: 0 }]
"#,
    );
    let out = run_mecha(
        &["validate", bad.to_str().expect("utf-8 path")],
        Duration::from_secs(30),
    )
    .expect("run mecha validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1; stderr:\n{stderr}");
    for want in [
        "listeners[0].filters[0].virtual_hosts[0].routes[0].cluster: unknown cluster \"nowhere\"",
        "listeners[0].filters[0].virtual_hosts[0].routes[1].match.regex: invalid regex",
        "listeners[0].filters[0].virtual_hosts[0].routes[2]: set exactly one of",
        "listeners[1].tcp_proxy.cluster: unknown cluster \"missing\"",
        "clusters[0].endpoints[0].address: expected ip:port",
        "clusters[1].endpoints[0].weight: must be between 1 and 1000, got 0",
        "clusters[1].max_h2_streams: must be between 1 and",
        "clusters[1].outlier_detection.max_ejection_percent: at most 100",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }

    let good = dir.write(
        "good.yaml",
        &std::fs::read_to_string(
            mecha_integration::workspace_root().join("configs/mesh-demo.yaml"),
        )
        .expect("read configs/mesh-demo.yaml"),
    );
    let out = run_mecha(
        &["validate", good.to_str().expect("utf-8 path")],
        Duration::from_secs(30),
    )
    .expect("run mecha validate");
    assert!(
        out.status.success(),
        "mesh-demo.yaml is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
