//! The xDS client end to end: the real `mecha` binary, bootstrapped with only an admin listener
//! and an `xds:` section, configured by an independent scripted ADS control plane
//! (`xds/tests/control_plane/ads_server.py`, driven through
//! `mecha_test_support::control_plane`) and serving real traffic to real upstreams.
//!
//! Every step waits on something observable — the control plane seeing the ACK or NACK of a
//! response, `/config_dump`, `/metrics`, or polling a socket — never on a sleep:
//!
//! - the state-of-the-world cascade LDS → RDS → CDS → EDS, each response ACKed, with the
//!   listener warming (unbound, listed in `/config_dump`) until its route configuration
//!   arrives and answering 503 (Envoy's `cluster_not_found_response_code`) until its cluster
//!   has endpoints;
//! - an endpoint push moving traffic to another upstream, no request failing meanwhile;
//! - a listener left out of an LDS response stopping to accept, its open connection drained,
//!   the listeners that stay untouched; a cluster left out of CDS answering 503 and its EDS
//!   name unsubscribed;
//! - NACKs (a cluster named twice, an unknown required HTTP filter, a router that is not last),
//!   each naming the resource and the filter, while traffic on the last accepted config goes on;
//! - Istio's telemetry filters (TypedStruct-wrapped, as istiod sends them) accepted, serving,
//!   and listed as ignored in `/config_dump`;
//! - `mecha_xds_*` metrics and the `xds` section of `/config_dump`, the last accepted config
//!   kept serving when the control plane goes away, and the resubscription (versions, names)
//!   when it comes back.
//!
//! Each test skips itself (`SKIPPED <test>: <why>`) when the control plane cannot run here
//! (python3, grpcio or xds-protos missing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mecha_integration::mesh_support::{send, HttpUpstream, Proto, Req, Resp};
use mecha_integration::{free_addr, metric_value, STEP_TIMEOUT};
use mecha_test_support::control_plane::{
    self, json as cp, ControlPlane, Request, CLUSTER, ENDPOINT, LISTENER, ROUTE,
};
use mecha_test_support::eventually;
use mecha_test_support::process::{Launch, Mecha, Wait};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODE_ID: &str = "sidecar~127.0.0.1~xds-mesh.default~default.svc.cluster.local";

/// `google.rpc.Code.INVALID_ARGUMENT`: the code of a NACK's `error_detail` (as Envoy sends).
const INVALID_ARGUMENT: i32 = 3;

/// Returns from the test (after saying why) when the control plane cannot run here.
macro_rules! require_control_plane {
    ($test:literal) => {
        if let Some(why) = control_plane::unavailable() {
            eprintln!("SKIPPED {}: {why}", $test);
            return;
        }
    };
}

// === the sidecar and the control plane ===

/// The bootstrap: the admin listener and the control plane, nothing else.
fn bootstrap(admin: SocketAddr, server: SocketAddr) -> String {
    format!(
        "threads: 1\n\
         admin:\n  address: {admin}\n\
         shutdown: {{ drain_seconds: 10 }}\n\
         xds:\n\
         \x20 server: {server}\n\
         \x20 api: sotw\n\
         \x20 node:\n\
         \x20   id: {NODE_ID}\n\
         \x20   cluster: xds-mesh.default\n\
         \x20   metadata: {{ NAMESPACE: default }}\n"
    )
}

/// A control-plane step that must succeed (its error names what it waited for and the last
/// events the server reported).
fn step<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// The next request of `type_url` answering `nonce`; it must be an ACK.
async fn ack(cp: &mut ControlPlane, type_url: &str, nonce: &str) -> Request {
    let r = step(
        &format!("the reply to {type_url} nonce {nonce}"),
        cp.reply_to(type_url, nonce).await,
    );
    assert!(
        !r.is_nack(),
        "{type_url} nonce {nonce} was NACKed: {:?}",
        r.error_detail
    );
    r
}

/// The next request of `type_url` answering `nonce`; it must be a NACK. Returns the request
/// and its error message.
async fn nack(cp: &mut ControlPlane, type_url: &str, nonce: &str) -> (Request, String) {
    let r = step(
        &format!("the reply to {type_url} nonce {nonce}"),
        cp.reply_to(type_url, nonce).await,
    );
    let Some((code, message)) = r.error_detail.clone() else {
        panic!("{type_url} nonce {nonce} was ACKed, expected a NACK: {r:?}");
    };
    assert!(r.is_nack());
    assert_eq!(code, INVALID_ARGUMENT, "error_detail code of {message:?}");
    (r, message)
}

async fn push(
    cp: &mut ControlPlane,
    type_url: &str,
    version: &str,
    resources: Vec<Value>,
) -> String {
    step(
        &format!("send {type_url} version {version}"),
        cp.send_sotw(type_url, version, resources).await,
    )
}

/// `GET /` through a listener.
async fn get(addr: SocketAddr) -> Resp {
    send(addr, Proto::H1, Req::get("/"))
        .await
        .unwrap_or_else(|e| panic!("GET / through {addr}: {e:#}"))
}

/// `GET /` through a listener must reach `upstream`.
async fn reaches(addr: SocketAddr, upstream: &HttpUpstream) {
    let r = get(addr).await;
    assert_eq!(
        (r.status, r.header("x-upstream")),
        (200, Some(upstream.name.as_str())),
        "GET / through {addr}: {} {}",
        r.status,
        r.text()
    );
}

/// Requests sent back to back through a listener while a test pushes updates: each must be
/// answered 200 by one of the expected upstreams.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    fn start(addr: SocketAddr, upstreams: &[&HttpUpstream]) -> Traffic {
        let names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::SeqCst) {
                match send(addr, Proto::H1, Req::get("/traffic")).await {
                    Ok(r)
                        if r.status == 200
                            && r.header("x-upstream")
                                .is_some_and(|u| names.iter().any(|n| n == u)) =>
                    {
                        ok += 1
                    }
                    Ok(r) => failures.push(format!(
                        "{} from {:?}: {}",
                        r.status,
                        r.header("x-upstream"),
                        r.text()
                    )),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            (ok, failures)
        });
        Traffic { stop, task }
    }

    /// Stops the traffic; every request must have succeeded, and some were sent.
    async fn check(self, during: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failures) = self.task.await.expect("the traffic task");
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during {during}: {failures:#?}",
            failures.len(),
            ok + failures.len()
        );
        assert!(ok > 0, "no request completed during {during}");
    }
}

/// One HTTP/1.1 keep-alive connection driven by hand, to see what an update does to it.
struct KeepAlive {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    /// `GET path`: the status, the head (lowercased) and the body.
    async fn get(&mut self, path: &str) -> (u16, String, String) {
        let req = format!("GET {path} HTTP/1.1\r\nhost: svc.test\r\n\r\n");
        self.tcp.write_all(req.as_bytes()).await.expect("write");
        tokio::time::timeout(STEP_TIMEOUT, self.read_answer())
            .await
            .expect("an answer in time")
    }

    async fn read_answer(&mut self) -> (u16, String, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a content-length (the upstream sends one)");
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        (status, head, body)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.tcp.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-answer");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Whether the peer closes the connection (EOF or reset) within the step timeout.
    async fn closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(STEP_TIMEOUT, self.tcp.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

// === Envoy resources (proto3 JSON) beyond the control plane's builders ===

fn typed(type_name: &str, fields: Value) -> Value {
    let mut v = fields;
    v["@type"] = json!(format!("type.googleapis.com/{type_name}"));
    v
}

/// A filter config as istiod wraps its own filters' configs: a `udpa.type.v1.TypedStruct`
/// (or `xds.type.v3.TypedStruct`) naming the type it stands for.
fn typed_struct(wrapper: &str, inner: &str, value: Value) -> Value {
    json!({
        "@type": format!("type.googleapis.com/{wrapper}"),
        "type_url": format!("type.googleapis.com/{inner}"),
        "value": value,
    })
}

fn http_filter(name: &str, typed_config: Value) -> Value {
    json!({ "name": name, "typed_config": typed_config })
}

fn router() -> Value {
    http_filter(
        "envoy.filters.http.router",
        typed("envoy.extensions.filters.http.router.v3.Router", json!({})),
    )
}

/// A listener on `addr` whose one filter chain is `network_filters` then an HTTP connection
/// manager with `http_filters` over ADS RDS `route_config`.
fn listener(
    name: &str,
    addr: SocketAddr,
    route_config: &str,
    network_filters: Vec<Value>,
    http_filters: Vec<Value>,
) -> Value {
    let hcm = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        json!({
            "stat_prefix": name,
            "rds": {
                "config_source": { "ads": {}, "resource_api_version": "V3" },
                "route_config_name": route_config,
            },
            "http_filters": http_filters,
        }),
    );
    let mut filters = network_filters;
    filters.push(json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": hcm,
    }));
    typed(
        "envoy.config.listener.v3.Listener",
        json!({
            "name": name,
            "address": { "socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port(),
            } },
            "filter_chains": [{ "filters": filters }],
        }),
    )
}

// === the cascade every test starts from ===

/// A sidecar configured by the control plane through the whole SotW cascade: listener `edge`
/// → route configuration `rc1` (every path to `svc`) → EDS cluster `svc` → upstream `a`.
struct Xds {
    cp: ControlPlane,
    mecha: Mecha,
    a: HttpUpstream,
    b: HttpUpstream,
    /// The address of listener `edge`.
    edge: SocketAddr,
}

impl Xds {
    async fn start() -> Xds {
        let a = HttpUpstream::start("a").await;
        let b = HttpUpstream::start("b").await;
        let mut cp = step("start the control plane", ControlPlane::start().await);
        let server = cp.addr();
        let mecha = Mecha::start(Wait::Ready, || {
            let admin = free_addr();
            Launch::new("xds-mesh", bootstrap(admin, server), admin)
        })
        .await;
        step("the ADS stream opens", cp.stream_opened().await);

        // The wildcard roots are asked for first, with the node on the stream's first request.
        let cds = step("the first CDS request", cp.request(CLUSTER).await);
        let lds = step("the first LDS request", cp.request(LISTENER).await);
        for r in [&cds, &lds] {
            assert!(!r.delta, "a SotW bootstrap speaks SotW: {r:?}");
            assert!(
                r.resource_names.is_empty(),
                "LDS and CDS are wildcard subscriptions: {r:?}"
            );
            assert_eq!(
                (r.version_info.as_str(), r.response_nonce.as_str()),
                ("", ""),
                "nothing accepted yet: {r:?}"
            );
        }
        let node = cds
            .node
            .clone()
            .or(lds.node.clone())
            .expect("the stream's first request carries the node");
        assert_eq!(node["id"], NODE_ID, "node: {node}");
        assert_eq!(node["cluster"], "xds-mesh.default", "node: {node}");

        // LDS: the listener waits for its route configuration, and RDS is subscribed.
        let edge = free_addr();
        let n = push(
            &mut cp,
            LISTENER,
            "l1",
            vec![cp::listener_rds("edge", edge, "rc1")],
        )
        .await;
        let r = ack(&mut cp, LISTENER, &n).await;
        assert_eq!(r.version_info, "l1", "the ACK carries the accepted version");
        let rds = step("the RDS subscription", cp.request(ROUTE).await);
        assert_eq!(rds.resource_names, ["rc1"], "RDS names: {rds:?}");
        assert!(
            refuses(edge).await,
            "a listener waiting for its route configuration is not bound yet"
        );
        assert_eq!(
            warming(&mecha).await,
            ["listener \"edge\": waiting for route_config \"rc1\""]
        );

        // RDS: the listener serves; its cluster is unknown, so it answers 503 as Envoy does.
        let n = push(
            &mut cp,
            ROUTE,
            "r1",
            vec![cp::route_config(
                "rc1",
                &["*"],
                vec![cp::route_prefix("/", "svc")],
            )],
        )
        .await;
        assert_eq!(ack(&mut cp, ROUTE, &n).await.version_info, "r1");
        let r = get(edge).await;
        assert_eq!(r.status, 503, "a route to an unknown cluster: {}", r.text());

        // CDS: an EDS cluster, warming until its endpoints come; EDS is subscribed.
        let n = push(&mut cp, CLUSTER, "c1", vec![cp::cluster_eds("svc")]).await;
        assert_eq!(ack(&mut cp, CLUSTER, &n).await.version_info, "c1");
        let eds = step("the EDS subscription", cp.request(ENDPOINT).await);
        assert_eq!(eds.resource_names, ["svc"], "EDS names: {eds:?}");
        let r = get(edge).await;
        assert_eq!(r.status, 503, "a route to a warming cluster: {}", r.text());
        assert_eq!(
            warming(&mecha).await,
            ["cluster \"svc\": waiting for endpoints \"svc\""]
        );

        // EDS: traffic reaches the upstream.
        let n = push(&mut cp, ENDPOINT, "e1", vec![cp::cla("svc", &[a.addr])]).await;
        assert_eq!(ack(&mut cp, ENDPOINT, &n).await.version_info, "e1");
        reaches(edge, &a).await;
        assert!(warming(&mecha).await.is_empty());
        Xds {
            cp,
            mecha,
            a,
            b,
            edge,
        }
    }

    async fn dump(&self) -> Value {
        self.mecha.config_dump().await
    }
}

/// What `/config_dump` lists as warming (waiting for what they need) in its `xds` section.
async fn warming(mecha: &Mecha) -> Vec<String> {
    let dump = mecha.config_dump().await;
    dump["xds"]["warming"]
        .as_array()
        .unwrap_or_else(|| panic!("no xds.warming list in /config_dump: {:#}", dump["xds"]))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The names of the resources of `kind` (`listeners`, `clusters`, …) in a `/config_dump`.
fn dumped(dump: &Value, kind: &str) -> Vec<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == kind)
        .flat_map(|c| c[kind].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

fn dumped_cluster(dump: &Value, name: &str) -> Value {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == "clusters")
        .flat_map(|c| c["clusters"].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name:?} in /config_dump: {dump:#}"))
}

// === tests ===

#[tokio::test]
async fn sotw_cascade_lds_rds_cds_eds_serves_traffic() {
    require_control_plane!("sotw_cascade_lds_rds_cds_eds_serves_traffic");
    let x = Xds::start().await;
    assert_eq!(x.a.hits(), 1, "one request reached the upstream");
    let seen = x.a.last_seen();
    assert_eq!(seen.path, "/");
    assert!(
        seen.header("x-request-id").is_some(),
        "routed as any listener: {:?}",
        seen.headers
    );
    // h2c works on the same listener (Envoy's codec_type AUTO).
    let r = send(x.edge, Proto::H2c, Req::get("/h2"))
        .await
        .expect("GET over h2c");
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("a")));

    let dump = x.dump().await;
    assert_eq!(dumped(&dump, "listeners"), ["edge"], "{dump:#}");
    let svc = dumped_cluster(&dump, "svc");
    assert_eq!(svc["endpoint_count"], 1, "{svc:#}");
    // Each resource shows what its xDS resource became in the config model.
    assert_eq!(
        svc["cluster"]["endpoints"][0]["address"],
        x.a.addr.to_string(),
        "{svc:#}"
    );
    assert_eq!(
        svc["version_info"].as_str().map(|v| v.starts_with("xds-")),
        Some(true),
        "{svc:#}"
    );
    assert!(
        dump["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("xds:")),
        "the running config came from xDS: {}",
        dump["source"]
    );
}

#[tokio::test]
async fn an_endpoint_push_moves_traffic_to_the_new_upstream() {
    require_control_plane!("an_endpoint_push_moves_traffic_to_the_new_upstream");
    let mut x = Xds::start().await;
    let traffic = Traffic::start(x.edge, &[&x.a, &x.b]);
    let n = push(&mut x.cp, ENDPOINT, "e2", vec![cp::cla("svc", &[x.b.addr])]).await;
    assert_eq!(ack(&mut x.cp, ENDPOINT, &n).await.version_info, "e2");
    traffic.check("the endpoint push").await;
    // Applied before the ACK: the very next request goes to the new endpoint.
    let a_hits = x.a.hits();
    for _ in 0..3 {
        reaches(x.edge, &x.b).await;
    }
    assert_eq!(x.a.hits(), a_hits, "nothing reaches the old endpoint");

    // Both endpoints: round robin reaches each.
    let n = push(
        &mut x.cp,
        ENDPOINT,
        "e3",
        vec![cp::cla("svc", &[x.a.addr, x.b.addr])],
    )
    .await;
    ack(&mut x.cp, ENDPOINT, &n).await;
    let (a0, b0) = (x.a.hits(), x.b.hits());
    for _ in 0..4 {
        assert_eq!(get(x.edge).await.status, 200);
    }
    assert!(
        x.a.hits() > a0 && x.b.hits() > b0,
        "both endpoints serve: a {a0}→{}, b {b0}→{}",
        x.a.hits(),
        x.b.hits()
    );
    assert_eq!(dumped_cluster(&x.dump().await, "svc")["endpoint_count"], 2);
}

#[tokio::test]
async fn a_listener_left_out_of_lds_stops_accepting() {
    require_control_plane!("a_listener_left_out_of_lds_stops_accepting");
    let mut x = Xds::start().await;
    let mut conn = KeepAlive::open(x.edge).await;
    let (status, head, body) = conn.get("/before").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    assert!(!head.contains("connection: close"), "{head}");

    // A listener added beside it: `edge` is the same resource, its connections stay.
    let keep = free_addr();
    let n = push(
        &mut x.cp,
        LISTENER,
        "l2",
        vec![
            cp::listener_rds("edge", x.edge, "rc1"),
            cp::listener_rds("keep", keep, "rc1"),
        ],
    )
    .await;
    ack(&mut x.cp, LISTENER, &n).await;
    // Its route configuration is held already: bound and serving at the ACK.
    reaches(keep, &x.a).await;
    let (status, head, _) = conn.get("/unchanged").await;
    assert_eq!(status, 200);
    assert!(
        !head.contains("connection: close"),
        "an unchanged listener's connection is not drained: {head}"
    );

    // State of the world: a listener absent from the response is removed; its open
    // connection drains (told to close after its next request).
    let n = push(
        &mut x.cp,
        LISTENER,
        "l3",
        vec![cp::listener_rds("keep", keep, "rc1")],
    )
    .await;
    assert_eq!(ack(&mut x.cp, LISTENER, &n).await.version_info, "l3");
    let edge = x.edge;
    eventually(
        "the removed listener refuses connections",
        STEP_TIMEOUT,
        || refuses(edge),
    )
    .await;
    reaches(keep, &x.a).await;
    assert_eq!(dumped(&x.dump().await, "listeners"), ["keep"]);
    // The route configuration is still named by `keep`: no new RDS subscription was needed.
    let pending: Vec<Request> =
        x.cp.pending_requests()
            .into_iter()
            .filter(|r| r.type_url == ROUTE)
            .collect();
    assert!(pending.is_empty(), "RDS re-sent: {pending:?}");

    // The connection open on the removed listener drains: its next request is served as
    // before (Envoy keeps a draining listener's filter chain for its connections; the README:
    // "answered `connection: close` after its next request"), then it is closed.
    let (status, head, body) = conn.get("/draining").await;
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(
        (status, body.as_str()),
        (200, "a"),
        "a draining connection is still served by its listener's routes: {head}{body}"
    );
    assert!(
        conn.closed_by_peer().await,
        "the drained connection is closed"
    );
}

#[tokio::test]
async fn a_cluster_left_out_of_cds_answers_503_and_its_endpoints_are_unsubscribed() {
    require_control_plane!(
        "a_cluster_left_out_of_cds_answers_503_and_its_endpoints_are_unsubscribed"
    );
    let mut x = Xds::start().await;
    let n = push(&mut x.cp, CLUSTER, "c2", vec![]).await;
    assert_eq!(ack(&mut x.cp, CLUSTER, &n).await.version_info, "c2");
    let r = get(x.edge).await;
    assert_eq!(r.status, 503, "a route to a removed cluster: {}", r.text());
    // No EDS name left: an explicit unsubscription (an empty list after names were sent).
    let eds = step("the EDS unsubscription", x.cp.request(ENDPOINT).await);
    assert!(eds.resource_names.is_empty(), "{eds:?}");
    assert!(dumped(&x.dump().await, "clusters").is_empty());

    // Back again: subscribed again, and warming until its endpoints are sent again (the
    // assignment was dropped with the cluster).
    let n = push(&mut x.cp, CLUSTER, "c3", vec![cp::cluster_eds("svc")]).await;
    ack(&mut x.cp, CLUSTER, &n).await;
    let eds = step("the EDS subscription", x.cp.request(ENDPOINT).await);
    assert_eq!(eds.resource_names, ["svc"], "{eds:?}");
    assert_eq!(get(x.edge).await.status, 503);
    let n = push(&mut x.cp, ENDPOINT, "e2", vec![cp::cla("svc", &[x.b.addr])]).await;
    ack(&mut x.cp, ENDPOINT, &n).await;
    reaches(x.edge, &x.b).await;
}

#[tokio::test]
async fn nacked_updates_name_what_is_wrong_and_traffic_goes_on() {
    require_control_plane!("nacked_updates_name_what_is_wrong_and_traffic_goes_on");
    let mut x = Xds::start().await;
    let traffic = Traffic::start(x.edge, &[&x.a]);

    // A cluster named twice in one CDS response.
    let n = push(
        &mut x.cp,
        CLUSTER,
        "c2",
        vec![cp::cluster_eds("svc"), cp::cluster_eds("svc")],
    )
    .await;
    let (r, message) = nack(&mut x.cp, CLUSTER, &n).await;
    assert!(
        message.contains("cluster \"svc\"") && message.contains("more than once"),
        "{message}"
    );
    assert_eq!(
        r.version_info, "c1",
        "a NACK carries the last accepted version"
    );
    reaches(x.edge, &x.a).await;

    // An HTTP filter Mecha does not implement, not marked is_optional: Envoy's buffer filter.
    let bad_addr = free_addr();
    let buffer = http_filter(
        "envoy.filters.http.buffer",
        typed(
            "envoy.extensions.filters.http.buffer.v3.Buffer",
            json!({ "max_request_bytes": 1024 }),
        ),
    );
    let n = push(
        &mut x.cp,
        LISTENER,
        "l2",
        vec![
            cp::listener_rds("edge", x.edge, "rc1"),
            listener(
                "bad-filter",
                bad_addr,
                "rc1",
                vec![],
                vec![buffer, router()],
            ),
        ],
    )
    .await;
    let (r, message) = nack(&mut x.cp, LISTENER, &n).await;
    assert!(
        message.contains("listener \"bad-filter\"")
            && message.contains("http_filters[0] (envoy.filters.http.buffer)")
            && message.contains("envoy.extensions.filters.http.buffer.v3.Buffer"),
        "{message}"
    );
    assert!(
        !message.contains("listener \"edge\""),
        "only the bad listener is named: {message}"
    );
    assert_eq!(r.version_info, "l1");
    assert!(refuses(bad_addr).await, "a NACKed listener is not bound");
    reaches(x.edge, &x.a).await;

    // The router first, another filter after it.
    let late_addr = free_addr();
    let grpc_stats = http_filter(
        "envoy.filters.http.grpc_stats",
        typed_struct(
            "udpa.type.v1.TypedStruct",
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            json!({}),
        ),
    );
    let n = push(
        &mut x.cp,
        LISTENER,
        "l3",
        vec![
            cp::listener_rds("edge", x.edge, "rc1"),
            listener(
                "router-first",
                late_addr,
                "rc1",
                vec![],
                vec![router(), grpc_stats],
            ),
        ],
    )
    .await;
    let (r, message) = nack(&mut x.cp, LISTENER, &n).await;
    assert!(
        message.contains("listener \"router-first\"")
            && message.contains("router must be last (it is http_filters[0] of 2)"),
        "{message}"
    );
    assert_eq!(r.version_info, "l1");
    assert!(refuses(late_addr).await);
    reaches(x.edge, &x.a).await;

    // A route configuration with a matcher Mecha does not have: the listener keeps its routes.
    let mut rc = cp::route_config("rc1", &["*"], vec![cp::route_prefix("/", "svc")]);
    rc["virtual_hosts"][0]["routes"][0]["match"]["runtime_fraction"] =
        json!({ "default_value": { "numerator": 50 } });
    let n = push(&mut x.cp, ROUTE, "r2", vec![rc]).await;
    let (r, message) = nack(&mut x.cp, ROUTE, &n).await;
    assert!(
        message.contains("route_config \"rc1\"")
            && message.contains("runtime_fraction: not supported yet"),
        "{message}"
    );
    assert_eq!(r.version_info, "r1");
    reaches(x.edge, &x.a).await;
    traffic.check("the NACKed updates").await;

    // Still listening to the control plane: a good update after the NACKs is applied.
    let good = free_addr();
    let n = push(
        &mut x.cp,
        LISTENER,
        "l4",
        vec![
            cp::listener_rds("edge", x.edge, "rc1"),
            cp::listener_rds("good", good, "rc1"),
        ],
    )
    .await;
    assert_eq!(ack(&mut x.cp, LISTENER, &n).await.version_info, "l4");
    reaches(good, &x.a).await;
    reaches(x.edge, &x.a).await;
}

#[tokio::test]
async fn istio_telemetry_filters_are_acked_serve_and_are_listed_as_ignored() {
    require_control_plane!("istio_telemetry_filters_are_acked_serve_and_are_listed_as_ignored");
    let mut x = Xds::start().await;
    let addr = free_addr();
    // As istiod sends them: its own filters' configs wrapped in TypedStructs.
    let network_mx = json!({
        "name": "istio.metadata_exchange",
        "typed_config": typed_struct(
            "udpa.type.v1.TypedStruct",
            "envoy.tcp.metadataexchange.config.MetadataExchange",
            json!({ "protocol": "istio-peer-exchange" }),
        ),
    });
    let http_filters = vec![
        http_filter(
            "istio.metadata_exchange",
            typed_struct(
                "udpa.type.v1.TypedStruct",
                "io.istio.http.peer_metadata.Config",
                json!({ "upstream_discovery": [{ "istio_headers": {} }] }),
            ),
        ),
        http_filter(
            "envoy.filters.http.grpc_stats",
            typed(
                "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                json!({ "emit_filter_state": true }),
            ),
        ),
        http_filter(
            "istio.stats",
            typed_struct(
                "xds.type.v3.TypedStruct",
                "stats.PluginConfig",
                json!({ "disable_host_header_fallback": true }),
            ),
        ),
        router(),
    ];
    let n = push(
        &mut x.cp,
        LISTENER,
        "l2",
        vec![
            cp::listener_rds("edge", x.edge, "rc1"),
            listener("istio", addr, "rc1", vec![network_mx], http_filters),
        ],
    )
    .await;
    assert_eq!(ack(&mut x.cp, LISTENER, &n).await.version_info, "l2");
    reaches(addr, &x.a).await;
    reaches(x.edge, &x.a).await;

    let dump = x.dump().await;
    let mut listeners = dumped(&dump, "listeners");
    listeners.sort();
    assert_eq!(listeners, ["edge", "istio"]);
    let ignored: Vec<String> = dump["xds"]["ignored"]
        .as_array()
        .unwrap_or_else(|| panic!("no xds.ignored list in /config_dump: {:#}", dump["xds"]))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for what in [
        "filters[0] (istio.metadata_exchange)",
        "http_filters[0] (istio.metadata_exchange)",
        "http_filters[1] (envoy.filters.http.grpc_stats)",
        "http_filters[2] (istio.stats)",
    ] {
        assert!(
            ignored
                .iter()
                .any(|l| l.starts_with("listener \"istio\"") && l.contains(what)),
            "{what} of listener istio not listed as ignored: {ignored:#?}"
        );
    }
}

#[tokio::test]
async fn xds_metrics_and_config_dump_report_acks_nacks_and_the_connection() {
    require_control_plane!("xds_metrics_and_config_dump_report_acks_nacks_and_the_connection");
    let mut x = Xds::start().await;
    let responses = |url: &str, result: &str| {
        format!("mecha_xds_responses_total{{type_url=\"{url}\",result=\"{result}\"}}")
    };
    for url in [LISTENER, ROUTE, CLUSTER, ENDPOINT] {
        x.mecha
            .wait_metric(&responses(url, "accepted"), |v| v == 1.0)
            .await;
        let text = x.mecha.metrics().await;
        assert_eq!(
            metric_value(&text, &responses(url, "rejected")),
            None,
            "{url}"
        );
        let at = metric_value(
            &text,
            &format!("mecha_xds_last_update_timestamp_seconds{{type_url=\"{url}\"}}"),
        );
        assert!(at.is_some_and(|t| t > 0.0), "{url}: last update {at:?}");
    }
    x.mecha
        .wait_metric("mecha_xds_connected", |v| v == 1.0)
        .await;
    assert_eq!(
        metric_value(&x.mecha.metrics().await, "mecha_xds_streams_total"),
        Some(1.0)
    );

    let dump = x.dump().await;
    let xds = &dump["xds"];
    assert_eq!(xds["connection"]["state"], "connected", "{xds:#}");
    assert_eq!(xds["api"], "sotw", "{xds:#}");
    assert_eq!(xds["streams"], 1, "{xds:#}");
    for (url, version) in [
        (LISTENER, "l1"),
        (ROUTE, "r1"),
        (CLUSTER, "c1"),
        (ENDPOINT, "e1"),
    ] {
        let t = &xds["types"][url];
        assert_eq!(t["version_info"], version, "{url}: {t:#}");
        assert_eq!(
            (t["accepted"].as_u64(), t["rejected"].as_u64()),
            (Some(1), Some(0)),
            "{url}: {t:#}"
        );
        assert!(t["last_error"].is_null(), "{url}: {t:#}");
    }

    // A NACK: counted, the version stays, the error is shown.
    let n = push(
        &mut x.cp,
        CLUSTER,
        "c2",
        vec![cp::cluster_eds("svc"), cp::cluster_eds("svc")],
    )
    .await;
    let (_, message) = nack(&mut x.cp, CLUSTER, &n).await;
    x.mecha
        .wait_metric(&responses(CLUSTER, "rejected"), |v| v == 1.0)
        .await;
    assert_eq!(
        metric_value(&x.mecha.metrics().await, &responses(CLUSTER, "accepted")),
        Some(1.0)
    );
    let dump = x.dump().await;
    let t = &dump["xds"]["types"][CLUSTER];
    assert_eq!(t["version_info"], "c1", "the accepted version stays: {t:#}");
    assert_eq!(t["last_nonce"], n.as_str(), "{t:#}");
    assert_eq!(
        (t["accepted"].as_u64(), t["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{t:#}"
    );
    assert_eq!(
        t["last_error"]["message"],
        message.as_str(),
        "the NACK's error is shown as sent: {t:#}"
    );
    assert!(message.contains("more than once"), "{message}");

    // The control plane goes away: disconnected, reconnecting, the last accepted config serves.
    x.cp.kill();
    x.mecha
        .wait_metric("mecha_xds_connected", |v| v == 0.0)
        .await;
    let mecha = &x.mecha;
    eventually(
        "/config_dump shows the connection lost",
        STEP_TIMEOUT,
        move || async move {
            let xds = mecha.config_dump().await["xds"].clone();
            xds["connection"]["state"] != "connected" && xds["last_stream_error"].is_string()
        },
    )
    .await;
    reaches(x.edge, &x.a).await;
    let dump = x.dump().await;
    assert_eq!(dump["xds"]["types"][LISTENER]["version_info"], "l1");
    assert_eq!(dumped(&dump, "listeners"), ["edge"]);

    // It comes back on the same port: a new stream, resubscribed with what is held (the
    // accepted versions, the RDS and EDS names).
    let port = x.cp.port();
    x.cp = step(
        "restart the control plane",
        ControlPlane::start_with(Some(port), false).await,
    );
    step("the second ADS stream opens", x.cp.stream_opened().await);
    for (url, version, names) in [
        (CLUSTER, "c1", vec![]),
        (LISTENER, "l1", vec![]),
        (ROUTE, "r1", vec!["rc1"]),
        (ENDPOINT, "e1", vec!["svc"]),
    ] {
        let r = step(
            &format!("{url} after the reconnect"),
            x.cp.request(url).await,
        );
        assert_eq!(
            (r.version_info.as_str(), r.resource_names.clone()),
            (version, names.iter().map(|n| n.to_string()).collect()),
            "{r:?}"
        );
        assert!(!r.is_nack(), "{r:?}");
    }
    x.mecha
        .wait_metric("mecha_xds_streams_total", |v| v == 2.0)
        .await;
    assert_eq!(x.dump().await["xds"]["streams"], 2);
    reaches(x.edge, &x.a).await;
    // The stream is open and subscribed: connected, though the control plane has not answered
    // anything yet on it (as Envoy's control_plane.connected_state, set when the stream is
    // established; a gRPC server sends its response headers with its first message).
    x.mecha
        .wait_metric("mecha_xds_connected", |v| v == 1.0)
        .await;
    let state = x.dump().await["xds"]["connection"].clone();
    assert_eq!(state["state"], "connected", "{state}");
}
