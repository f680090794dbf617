//! The xDS client end to end: the real `mecha` binary configured by an independent, scripted
//! ADS control plane (`xds/tests/control_plane/ads_server.py`, Python grpcio + `xds-protos`,
//! driven by `mecha_test_support::control_plane`). Every step waits on what the control plane
//! sees (ACK/NACK, subscriptions), on admin endpoints or metrics, or polls with `eventually`.
//!
//! - SotW: the control plane is killed → traffic keeps flowing on the last accepted config;
//!   restarted on the same port → Mecha reconnects and resubscribes with the `version_info` it
//!   holds per type, and a new push is applied and served.
//! - Delta: the LDS → RDS, CDS → EDS cascade is served; `removed_resources` of a cluster (its
//!   route answers 503, its EDS name is unsubscribed) and of a listener (its port closes); a
//!   reconnect sends `initial_resource_versions` of what is held, and later pushes apply.
//! - Delta fallback: a control plane that answers delta UNIMPLEMENTED is spoken to in SotW.
//! - Runtime components over xDS (`mecha.config.v1.Component`) behind a static runtime-API
//!   listener of the bootstrap: state survives unrelated pushes, a changed component is rebuilt,
//!   an invalid one is NACKed while the old one serves, a removed one is unknown.
//! - Transparent interception in a network namespace (root only): iptables REDIRECT as Istio's
//!   init container sets it up; `virtualOutbound` (15001) dispatches by original destination to
//!   per-port `bind_to_port: false` listeners, `virtualInbound` (15006) picks its filter chain by
//!   destination port.
//!
//! Each test skips itself, saying why, when the control plane cannot run (python3, grpcio or
//! xds-protos missing), and the namespace tests also without root, `ip`, `iptables` or `setpriv`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use mecha_integration::mesh_support::{send, EchoServer, HttpUpstream, Proto, Req, Resp};
use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::{GetStateRequest, SaveStateRequest, StateItem};
use mecha_integration::{
    connect, describe, free_addr, listening, metric_value, run_with_timeout, within, STEP_TIMEOUT,
};
use mecha_test_support::control_plane::{
    json, unavailable, ControlPlane, Request, CLUSTER, COMPONENT, ENDPOINT, HCM, LISTENER, ROUTE,
    ROUTER,
};
use mecha_test_support::eventually;
use mecha_test_support::process::{Launch, Mecha, Wait};
use serde_json::{json as j, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

const NODE_ID: &str = "sidecar~127.0.0.1~app.default~default.svc.cluster.local";
const XDS_APPLIED: &str = r#"mecha_config_updates_total{source="xds",result="applied"}"#;
const XDS_CONNECTED: &str = "mecha_xds_connected";

// === shared helpers ===

/// Prints the skip line and returns true when the control plane cannot run here.
fn skip(test: &str) -> bool {
    match unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// The bootstrap: admin, `extra` (static listeners…), and the `xds:` section.
fn bootstrap(admin: SocketAddr, server: &str, api: &str, extra: &str) -> String {
    format!(
        "threads: 1\nadmin:\n  address: {admin}\n{extra}xds:\n  server: {server}\n  api: {api}\n  \
         node:\n    id: \"{NODE_ID}\"\n    cluster: app.default\n    metadata:\n      NAMESPACE: \
         default\n"
    )
}

/// `mecha run` on a bootstrap pointing at `server`, ready (its admin listener answers).
async fn start_mecha(server: SocketAddr, api: &str) -> Mecha {
    Mecha::start(Wait::Ready, || {
        let admin = free_addr();
        Launch::new("xds", bootstrap(admin, &server.to_string(), api, ""), admin)
    })
    .await
}

/// Waits for the ACK of `nonce`; panics naming the NACK's error.
async fn ack(cp: &mut ControlPlane, type_url: &str, nonce: &str) -> Request {
    let r = ok(
        &format!("ACK of {type_url} {nonce}"),
        cp.reply_to(type_url, nonce).await,
    );
    assert!(
        !r.is_nack(),
        "{type_url} nonce {nonce} was NACKed: {}",
        r.error_message()
    );
    r
}

/// Sends a SotW response and waits for its ACK.
async fn push_sotw(
    cp: &mut ControlPlane,
    type_url: &str,
    version: &str,
    resources: Vec<Value>,
) -> Request {
    let nonce = ok(
        "send_sotw",
        cp.send_sotw(type_url, version, resources).await,
    );
    let r = ack(cp, type_url, &nonce).await;
    assert_eq!(
        r.version_info, version,
        "the ACK of {type_url} carries the version it accepted"
    );
    r
}

/// Sends a delta response and waits for its ACK.
async fn push_delta(
    cp: &mut ControlPlane,
    type_url: &str,
    system_version: &str,
    resources: Vec<(&str, &str, Value)>,
    removed: &[&str],
) -> Request {
    let resources = resources
        .into_iter()
        .map(|(n, v, r)| (n.to_owned(), v.to_owned(), r))
        .collect();
    let removed = removed.iter().map(|s| (*s).to_owned()).collect();
    let nonce = ok(
        "send_delta",
        cp.send_delta(type_url, system_version, resources, removed)
            .await,
    );
    ack(cp, type_url, &nonce).await
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn versions(v: &[(&str, &str)]) -> BTreeMap<String, String> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn node_id(r: &Request) -> Option<&str> {
    r.node.as_ref()?.get("id")?.as_str()
}

/// One HTTP/1.1 GET through Mecha.
async fn get(addr: SocketAddr, path: &str) -> Resp {
    within(
        &format!("GET {path} on {addr}"),
        send(addr, Proto::H1, Req::get(path)),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e:#}"))
}

/// GET `path`; asserts 200 and returns the upstream that answered (`x-upstream`).
async fn served_by(addr: SocketAddr, path: &str) -> String {
    let r = get(addr, path).await;
    assert_eq!(r.status, 200, "GET {path} on {addr}: {r:?}");
    let name = r.header("x-upstream").unwrap_or_default().to_owned();
    assert_eq!(r.header("x-seen-path"), Some(path), "{r:?}");
    name
}

async fn metric(mecha: &Mecha, series: &str) -> f64 {
    metric_value(&mecha.metrics().await, series).unwrap_or(0.0)
}

fn accepted(listener: &str) -> String {
    format!(r#"mecha_listener_connections_accepted_total{{listener="{listener}"}}"#)
}

/// The `/config_dump` section of the xDS client.
async fn xds_dump(mecha: &Mecha) -> Value {
    mecha.config_dump().await["xds"].clone()
}

// === 1. SotW: control plane lost and restarted ===

#[tokio::test]
async fn sotw_keeps_serving_without_the_control_plane_and_resubscribes_with_its_versions() {
    let test = "sotw_keeps_serving_without_the_control_plane_and_resubscribes_with_its_versions";
    if skip(test) {
        return;
    }
    let a = HttpUpstream::start("a").await;
    let b = HttpUpstream::start("b").await;
    let mut cp = ok("control plane", ControlPlane::start().await);
    let port = cp.port();
    let mut mecha = start_mecha(cp.addr(), "sotw").await;
    let pid = mecha.pid();

    // The first stream: wildcard CDS, LDS and components, no versions yet; the node on the
    // stream's first request (CDS, as Envoy orders it).
    let first = ok("stream", cp.stream_opened().await);
    let cds = ok("CDS", cp.request_on(first, CLUSTER).await);
    assert!(!cds.delta);
    assert_eq!(node_id(&cds), Some(NODE_ID), "{cds:?}");
    for r in [
        &cds,
        &ok("LDS", cp.request_on(first, LISTENER).await),
        &ok("components", cp.request_on(first, COMPONENT).await),
    ] {
        assert!(r.resource_names.is_empty(), "wildcard: {r:?}");
        assert_eq!(
            (r.version_info.as_str(), r.response_nonce.as_str()),
            ("", "")
        );
    }

    // The cascade: CDS → EDS subscription → endpoints; LDS → RDS subscription → routes.
    push_sotw(&mut cp, CLUSTER, "c1", vec![json::cluster_eds("a")]).await;
    let eds = ok("EDS", cp.request(ENDPOINT).await);
    assert_eq!(eds.resource_names, names(&["a"]));
    push_sotw(&mut cp, ENDPOINT, "e1", vec![json::cla("a", &[a.addr])]).await;
    let ingress = free_addr();
    push_sotw(
        &mut cp,
        LISTENER,
        "l1",
        vec![json::listener_rds("ingress", ingress, "r")],
    )
    .await;
    let rds = ok("RDS", cp.request(ROUTE).await);
    assert_eq!(rds.resource_names, names(&["r"]));
    push_sotw(
        &mut cp,
        ROUTE,
        "r1",
        vec![json::route_config(
            "r",
            &["*"],
            vec![json::route_prefix("/", "a")],
        )],
    )
    .await;
    assert_eq!(served_by(ingress, "/first").await, "a");
    assert_eq!(metric(&mecha, XDS_CONNECTED).await, 1.0);

    // The control plane dies: the client notices, and the last config keeps serving.
    cp.kill();
    mecha.wait_metric(XDS_CONNECTED, |v| v == 0.0).await;
    for i in 0..3 {
        assert_eq!(served_by(ingress, &format!("/while-down-{i}")).await, "a");
    }
    let dump = xds_dump(&mecha).await;
    assert_ne!(dump["connection"]["state"], "connected", "{dump:#}");
    assert!(dump["last_stream_error"].is_string(), "{dump:#}");

    // Back on the same port: a new stream resubscribes with what Mecha holds — per type the
    // version it accepted last, no nonce (nonces do not outlive a stream), EDS and RDS by the
    // names the held clusters and listeners imply.
    let mut cp = ok(
        "restarted control plane",
        ControlPlane::start_with(Some(port), false).await,
    );
    let second = ok("stream after the restart", cp.stream_opened().await);
    let cds = ok("CDS", cp.request_on(second, CLUSTER).await);
    assert_eq!(node_id(&cds), Some(NODE_ID), "the node again: {cds:?}");
    let lds = ok("LDS", cp.request_on(second, LISTENER).await);
    let comp = ok("components", cp.request_on(second, COMPONENT).await);
    let eds = ok("EDS", cp.request_on(second, ENDPOINT).await);
    let rds = ok("RDS", cp.request_on(second, ROUTE).await);
    for (r, version, want_names) in [
        (&cds, "c1", vec![]),
        (&lds, "l1", vec![]),
        (&comp, "", vec![]),
        (&eds, "e1", names(&["a"])),
        (&rds, "r1", names(&["r"])),
    ] {
        assert_eq!(r.version_info, version, "{r:?}");
        assert_eq!(r.response_nonce, "", "{r:?}");
        assert_eq!(r.resource_names, want_names, "{r:?}");
        assert!(!r.is_nack(), "{r:?}");
    }
    // The stream is open (the server has its requests) though nothing was sent on it yet:
    // Mecha says it is connected (gRPC servers send a stream's response headers with its
    // first response; the state used to wait for them and stayed "connecting").
    mecha.wait_metric(XDS_CONNECTED, |v| v == 1.0).await;
    assert_eq!(xds_dump(&mecha).await["connection"]["state"], "connected");
    assert_eq!(served_by(ingress, "/reconnected").await, "a");

    // A new push on the new stream: cluster b, and a route to it.
    push_sotw(
        &mut cp,
        CLUSTER,
        "c2",
        vec![json::cluster_eds("a"), json::cluster_eds("b")],
    )
    .await;
    let eds = ok("EDS for a and b", cp.request(ENDPOINT).await);
    assert_eq!(sorted(eds.resource_names.clone()), names(&["a", "b"]));
    push_sotw(
        &mut cp,
        ENDPOINT,
        "e2",
        vec![json::cla("a", &[a.addr]), json::cla("b", &[b.addr])],
    )
    .await;
    push_sotw(
        &mut cp,
        ROUTE,
        "r2",
        vec![json::route_config(
            "r",
            &["*"],
            vec![json::route_prefix("/b", "b"), json::route_prefix("/", "a")],
        )],
    )
    .await;
    assert_eq!(served_by(ingress, "/b/new-route").await, "b");
    assert_eq!(served_by(ingress, "/still-a").await, "a");
    assert_eq!(b.hits(), 1);

    let dump = xds_dump(&mecha).await;
    assert_eq!(dump["connection"]["state"], "connected", "{dump:#}");
    assert!(dump["streams"].as_u64() >= Some(2), "{dump:#}");
    assert_eq!(dump["types"][CLUSTER]["version_info"], "c2", "{dump:#}");
    assert_eq!(dump["types"][ROUTE]["version_info"], "r2", "{dump:#}");
    assert!(mecha.is_running());
    assert_eq!(mecha.pid(), pid, "no restart");
}

// === 2. Delta: cascade, removals, reconnect ===

#[tokio::test]
async fn delta_removals_apply_and_a_reconnect_sends_initial_resource_versions() {
    let test = "delta_removals_apply_and_a_reconnect_sends_initial_resource_versions";
    if skip(test) {
        return;
    }
    let a = HttpUpstream::start("a").await;
    let b = HttpUpstream::start("b").await;
    let c = HttpUpstream::start("c").await;
    let mut cp = ok("control plane", ControlPlane::start().await);
    let mecha = start_mecha(cp.addr(), "delta").await;

    let first = ok("stream", cp.stream_opened().await);
    let cds = ok("CDS", cp.request_on(first, CLUSTER).await);
    assert!(cds.delta, "delta was asked for: {cds:?}");
    assert_eq!(node_id(&cds), Some(NODE_ID), "{cds:?}");
    for r in [
        &cds,
        &ok("LDS", cp.request_on(first, LISTENER).await),
        &ok("components", cp.request_on(first, COMPONENT).await),
    ] {
        assert!(
            r.subscribe.is_empty() && r.initial_resource_versions.is_empty(),
            "implicit wildcard, nothing held yet: {r:?}"
        );
    }

    push_delta(
        &mut cp,
        CLUSTER,
        "s1",
        vec![
            ("a", "a-1", json::cluster_eds("a")),
            ("b", "b-1", json::cluster_eds("b")),
        ],
        &[],
    )
    .await;
    let eds = ok("EDS", cp.request(ENDPOINT).await);
    assert_eq!(sorted(eds.subscribe.clone()), names(&["a", "b"]), "{eds:?}");
    push_delta(
        &mut cp,
        ENDPOINT,
        "s2",
        vec![
            ("a", "ea-1", json::cla("a", &[a.addr])),
            ("b", "eb-1", json::cla("b", &[b.addr])),
        ],
        &[],
    )
    .await;
    let (ingress, second) = (free_addr(), free_addr());
    push_delta(
        &mut cp,
        LISTENER,
        "s3",
        vec![
            (
                "ingress",
                "li-1",
                json::listener_rds("ingress", ingress, "r"),
            ),
            ("second", "ls-1", json::listener_rds("second", second, "r")),
        ],
        &[],
    )
    .await;
    let rds = ok("RDS", cp.request(ROUTE).await);
    assert_eq!(rds.subscribe, names(&["r"]), "{rds:?}");
    push_delta(
        &mut cp,
        ROUTE,
        "s4",
        vec![(
            "r",
            "r-1",
            json::route_config(
                "r",
                &["*"],
                vec![json::route_prefix("/b", "b"), json::route_prefix("/", "a")],
            ),
        )],
        &[],
    )
    .await;
    assert_eq!(served_by(ingress, "/to-a").await, "a");
    assert_eq!(served_by(ingress, "/b/to-b").await, "b");
    assert_eq!(served_by(second, "/second").await, "a");

    // Cluster b removed: its route answers 503 as Envoy's cluster_not_found does (b is not
    // asked), its endpoints are unsubscribed, the rest serves on.
    push_delta(&mut cp, CLUSTER, "s5", vec![], &["b"]).await;
    let unsub = ok("EDS unsubscribe", cp.request(ENDPOINT).await);
    assert_eq!(
        (unsub.subscribe.clone(), unsub.unsubscribe.clone()),
        (vec![], names(&["b"])),
        "{unsub:?}"
    );
    let hits_b = b.hits();
    let r = get(ingress, "/b/after-removal").await;
    assert_eq!(r.status, 503, "a route to a removed cluster: {r:?}");
    assert_eq!(b.hits(), hits_b, "b was not asked");
    assert_eq!(served_by(ingress, "/a-still").await, "a");

    // Listener "second" removed: its port closes; "ingress" (same route config) stays.
    push_delta(&mut cp, LISTENER, "s6", vec![], &["second"]).await;
    eventually(
        "the removed listener's port closes",
        STEP_TIMEOUT,
        || async { !listening(second) },
    )
    .await;
    assert_eq!(served_by(ingress, "/after-listener-removal").await, "a");

    // The stream ends: the new one starts from what Mecha holds, per resource.
    ok("close_stream", cp.close_stream("UNAVAILABLE").await);
    let next = ok("stream after the close", cp.stream_opened().await);
    assert!(next > first);
    let cds = ok("CDS", cp.request_on(next, CLUSTER).await);
    assert_eq!(node_id(&cds), Some(NODE_ID), "{cds:?}");
    assert_eq!(
        cds.initial_resource_versions,
        versions(&[("a", "a-1")]),
        "{cds:?}"
    );
    let lds = ok("LDS", cp.request_on(next, LISTENER).await);
    assert_eq!(
        lds.initial_resource_versions,
        versions(&[("ingress", "li-1")]),
        "{lds:?}"
    );
    let comp = ok("components", cp.request_on(next, COMPONENT).await);
    assert!(comp.initial_resource_versions.is_empty(), "{comp:?}");
    let eds = ok("EDS", cp.request_on(next, ENDPOINT).await);
    assert_eq!(
        (eds.subscribe.clone(), eds.initial_resource_versions.clone()),
        (names(&["a"]), versions(&[("a", "ea-1")])),
        "{eds:?}"
    );
    let rds = ok("RDS", cp.request_on(next, ROUTE).await);
    assert_eq!(
        (rds.subscribe.clone(), rds.initial_resource_versions.clone()),
        (names(&["r"]), versions(&[("r", "r-1")])),
        "{rds:?}"
    );
    for r in [&cds, &lds, &comp, &eds, &rds] {
        assert_eq!(r.response_nonce, "", "{r:?}");
    }
    assert_eq!(served_by(ingress, "/after-reconnect").await, "a");

    // A push on the new stream applies: a's endpoints move to upstream c.
    push_delta(
        &mut cp,
        ENDPOINT,
        "s7",
        vec![("a", "ea-2", json::cla("a", &[c.addr]))],
        &[],
    )
    .await;
    assert_eq!(served_by(ingress, "/moved").await, "c");
    let dump = xds_dump(&mecha).await;
    assert_eq!(dump["api"], "delta", "{dump:#}");
    assert_eq!(dump["delta_fallback"], false, "{dump:#}");
}

// === 3. Delta refused → SotW ===

#[tokio::test]
async fn delta_unimplemented_falls_back_to_sotw_and_serves() {
    let test = "delta_unimplemented_falls_back_to_sotw_and_serves";
    if skip(test) {
        return;
    }
    let a = HttpUpstream::start("a").await;
    let mut cp = ok(
        "control plane without delta",
        ControlPlane::start_with(None, true).await,
    );
    let mecha = start_mecha(cp.addr(), "delta").await;

    // The delta call is refused; the SotW stream that follows carries the node.
    let cds = loop {
        let r = ok("CDS", cp.request(CLUSTER).await);
        if !r.delta {
            break r;
        }
    };
    assert_eq!(node_id(&cds), Some(NODE_ID), "{cds:?}");
    assert!(cds.resource_names.is_empty(), "{cds:?}");

    push_sotw(&mut cp, CLUSTER, "1", vec![json::cluster_eds("a")]).await;
    let eds = ok("EDS", cp.request(ENDPOINT).await);
    assert!(!eds.delta);
    assert_eq!(eds.resource_names, names(&["a"]));
    push_sotw(&mut cp, ENDPOINT, "1", vec![json::cla("a", &[a.addr])]).await;
    let ingress = free_addr();
    push_sotw(
        &mut cp,
        LISTENER,
        "1",
        vec![json::listener_rds("ingress", ingress, "r")],
    )
    .await;
    let rds = ok("RDS", cp.request(ROUTE).await);
    assert_eq!(rds.resource_names, names(&["r"]));
    push_sotw(
        &mut cp,
        ROUTE,
        "1",
        vec![json::route_config(
            "r",
            &["*"],
            vec![json::route_prefix("/", "a")],
        )],
    )
    .await;
    assert_eq!(served_by(ingress, "/over-sotw").await, "a");
    let dump = xds_dump(&mecha).await;
    assert_eq!(dump["api"], "sotw", "{dump:#}");
    assert_eq!(dump["delta_fallback"], true, "{dump:#}");
    assert_eq!(dump["connection"]["state"], "connected", "{dump:#}");
}

// === 4. Runtime components over xDS ===

async fn save(rt: &mut RuntimeClient<Channel>, store: &str, key: &str, value: &str) {
    within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: store.into(),
            states: vec![StateItem {
                key: key.into(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            }],
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveState {store}/{key}: {}", describe(&s)));
}

async fn load(
    rt: &mut RuntimeClient<Channel>,
    store: &str,
    key: &str,
) -> Result<Vec<u8>, tonic::Status> {
    within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: store.into(),
            key: key.into(),
            ..Default::default()
        }),
    )
    .await
    .map(|r| r.into_inner().data)
}

async fn load_ok(rt: &mut RuntimeClient<Channel>, store: &str, key: &str) -> String {
    let data = load(rt, store, key)
        .await
        .unwrap_or_else(|s| panic!("GetState {store}/{key}: {}", describe(&s)));
    String::from_utf8_lossy(&data).into_owned()
}

#[tokio::test]
async fn components_from_xds_keep_state_across_unrelated_pushes_and_follow_changes() {
    let test = "components_from_xds_keep_state_across_unrelated_pushes_and_follow_changes";
    if skip(test) {
        return;
    }
    let a = HttpUpstream::start("a").await;
    let mut cp = ok("control plane", ControlPlane::start().await);
    let server = cp.addr().to_string();
    let mut runtime = free_addr();
    let mecha = Mecha::start(Wait::Ready, || {
        let admin = free_addr();
        runtime = free_addr();
        let listener = format!(
            "listeners:\n  - name: runtime\n    address: {runtime}\n    filters:\n      - {{ type: \
             capability, apis: [layotto] }}\n"
        );
        Launch::new(
            "xds-components",
            bootstrap(admin, &server, "sotw", &listener),
            admin,
        )
    })
    .await;
    ok("components request", cp.request(COMPONENT).await);

    // A memory state store from the control plane serves through the static listener.
    push_sotw(
        &mut cp,
        COMPONENT,
        "1",
        vec![json::component("xstate", "state.memory", &[])],
    )
    .await;
    let mut rt = RuntimeClient::new(connect(runtime).await);
    save(&mut rt, "xstate", "cart", "3 apples").await;
    assert_eq!(load_ok(&mut rt, "xstate", "cart").await, "3 apples");

    // A push that changes something else (a cluster and its endpoints): the store is the same
    // object afterwards.
    let applied = metric(&mecha, XDS_APPLIED).await;
    push_sotw(&mut cp, CLUSTER, "1", vec![json::cluster_eds("a")]).await;
    ok("EDS", cp.request(ENDPOINT).await);
    push_sotw(&mut cp, ENDPOINT, "1", vec![json::cla("a", &[a.addr])]).await;
    assert!(
        metric(&mecha, XDS_APPLIED).await > applied,
        "the cluster push changed the running config"
    );
    let configs = mecha.config_dump().await;
    assert!(
        configs.to_string().contains("\"a\""),
        "cluster a is in /config_dump: {configs:#}"
    );
    assert_eq!(
        load_ok(&mut rt, "xstate", "cart").await,
        "3 apples",
        "an unrelated push keeps the component's state"
    );

    // An invalid component next to it: NACKed with the error, nothing changes.
    let nonce = ok(
        "send_sotw",
        cp.send_sotw(
            COMPONENT,
            "2",
            vec![
                json::component("xstate", "state.memory", &[]),
                json::component("bad", "state.foo", &[]),
            ],
        )
        .await,
    );
    let nack = ok("NACK", cp.reply_to(COMPONENT, &nonce).await);
    assert!(
        nack.is_nack(),
        "an unknown component type must be NACKed: {nack:?}"
    );
    assert!(
        nack.error_message()
            .contains("component \"bad\": type: unknown type \"state.foo\""),
        "{:?}",
        nack.error_message()
    );
    assert_eq!(
        nack.version_info, "1",
        "the NACK names the version still applied"
    );
    assert_eq!(
        load_ok(&mut rt, "xstate", "cart").await,
        "3 apples",
        "the old component keeps serving, with its state"
    );
    let unknown = load(&mut rt, "bad", "k")
        .await
        .expect_err("bad was not added");
    assert!(
        unknown.message().contains("\"bad\""),
        "{}",
        describe(&unknown)
    );
    let dump = xds_dump(&mecha).await;
    assert!(
        dump["types"][COMPONENT]["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("state.foo")),
        "{dump:#}"
    );

    // Its metadata changes: the component is built anew (a memory store starts empty) and
    // serves under the same name.
    push_sotw(
        &mut cp,
        COMPONENT,
        "3",
        vec![json::component(
            "xstate",
            "state.memory",
            &[("maxKeys", "10")],
        )],
    )
    .await;
    assert_eq!(
        load_ok(&mut rt, "xstate", "cart").await,
        "",
        "a changed component is rebuilt: the memory store starts empty"
    );
    save(&mut rt, "xstate", "cart", "4 pears").await;
    assert_eq!(load_ok(&mut rt, "xstate", "cart").await, "4 pears");

    // Removed: calls name it as unknown.
    push_sotw(&mut cp, COMPONENT, "4", vec![]).await;
    let gone = load(&mut rt, "xstate", "cart")
        .await
        .expect_err("a removed store must not answer");
    assert_eq!(
        gone.code(),
        tonic::Code::InvalidArgument,
        "{}",
        describe(&gone)
    );
    assert!(
        gone.message().contains("\"xstate\"") && gone.message().contains("not found"),
        "{}",
        describe(&gone)
    );
}

// === 5. Transparent interception in a network namespace ===

/// The pod's admin listener (excluded from the inbound capture).
const ADMIN_PORT: u16 = 15000;
const OUTBOUND_CAPTURE: u16 = 15001;
const INBOUND_CAPTURE: u16 = 15006;
/// The uid Mecha runs as in the pod (Istio's `istio-proxy`): its own traffic is not captured.
const PROXY_UID: &str = "1337";
/// A service address the pod's app calls (a ClusterIP: nothing answers it; only the capture
/// makes it work).
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SVC_CLUSTER: &str = "outbound|8080||svc.default.svc.cluster.local";

fn missing_netns_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned);
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "not running as root (effective uid {}): a network namespace and iptables rules \
             need root",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("iptables", "--version", "iptables"),
        ("setpriv", "--version", "util-linux"),
        ("curl", "--version", "curl"),
    ] {
        let works = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !works {
            return Some(format!("`{tool}` is missing (install {package})"));
        }
    }
    None
}

fn skip_netns(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    match missing_netns_prerequisite() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

fn run(args: &[&str]) -> String {
    let out = run_with_timeout(Command::new(args[0]).args(&args[1..]), STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e:#}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_quietly(args: &[&str]) {
    let _ = run_with_timeout(Command::new(args[0]).args(&args[1..]), STEP_TIMEOUT);
}

/// Runs `args` inside the namespace `netns`; its stdout.
fn netns_exec(netns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", netns];
    all.extend_from_slice(args);
    run(&all)
}

/// A network namespace (the pod) joined to the root namespace (the node) by a veth pair, with
/// Istio's capture rules: inbound TCP (but the admin port) → 15006; outbound TCP of any uid but
/// the proxy's, not to loopback → 15001. Removed on drop.
struct Pod {
    netns: String,
    host_veth: String,
    host_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
}

impl Pod {
    /// `tag` (2 letters) and `net` (the second octet of 10.x.N.0/30) keep parallel tests apart.
    fn create(tag: &str, net: u8) -> Pod {
        let pid = std::process::id();
        let n = u8::try_from(pid % 200 + 20).expect("fits u8");
        let pod = Pod {
            netns: format!("mecha-{tag}-{pid}"),
            host_veth: format!("{tag}{pid}h"),
            host_ip: Ipv4Addr::new(10, net, n, 1),
            pod_ip: Ipv4Addr::new(10, net, n, 2),
        };
        let pod_veth = format!("{tag}{pid}p");
        pod.remove();
        run(&["ip", "netns", "add", &pod.netns]);
        run(&[
            "ip",
            "link",
            "add",
            &pod.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &pod_veth,
        ]);
        run(&["ip", "link", "set", &pod_veth, "netns", &pod.netns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", pod.host_ip),
            "dev",
            &pod.host_veth,
        ]);
        run(&["ip", "link", "set", &pod.host_veth, "up"]);
        let pod_cidr = format!("{}/30", pod.pod_ip);
        let host_ip = pod.host_ip.to_string();
        pod.exec(&["ip", "addr", "add", &pod_cidr, "dev", &pod_veth]);
        pod.exec(&["ip", "link", "set", &pod_veth, "up"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        // The node is the pod's gateway: a service IP is routable, so the app's connect()
        // gets as far as the capture.
        pod.exec(&["ip", "route", "add", "default", "via", &host_ip]);
        let admin = ADMIN_PORT.to_string();
        let inbound = INBOUND_CAPTURE.to_string();
        let outbound = OUTBOUND_CAPTURE.to_string();
        for rule in [
            vec!["PREROUTING", "-p", "tcp", "--dport", &admin, "-j", "RETURN"],
            vec![
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &inbound,
            ],
            vec![
                "OUTPUT",
                "-p",
                "tcp",
                "-m",
                "owner",
                "--uid-owner",
                PROXY_UID,
                "-j",
                "RETURN",
            ],
            vec!["OUTPUT", "-p", "tcp", "-d", "127.0.0.0/8", "-j", "RETURN"],
            vec![
                "OUTPUT",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &outbound,
            ],
        ] {
            let mut args = vec!["iptables", "-t", "nat", "-A"];
            args.extend(rule);
            pod.exec(&args);
        }
        pod
    }

    fn exec(&self, args: &[&str]) -> String {
        netns_exec(&self.netns, args)
    }

    /// Runs Mecha inside the pod as the proxy uid.
    fn wrap(&self) -> Vec<String> {
        [
            "ip",
            "netns",
            "exec",
            &self.netns,
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn host(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.host_ip), port)
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod_ip), port)
    }

    /// The pod's app calls `url` (curl inside the namespace, as root: captured); the answer's
    /// status and `x-upstream`. Off the runtime's thread: the upstreams run on it.
    async fn app_get(&self, url: &str) -> (u16, String) {
        let netns = self.netns.clone();
        let owned = url.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            netns_exec(
                &netns,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-D",
                    "-",
                    &owned,
                ],
            )
        })
        .await
        .expect("curl in the pod");
        let status = out
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line from {url}: {out:?}"));
        let upstream = out
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-upstream")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        (status, upstream)
    }

    /// The pod's app sends `payload` over raw TCP to `to` and reads as many bytes back (off the
    /// runtime's thread).
    async fn app_tcp_echo(&self, to: SocketAddr, payload: &str) -> String {
        let script = "import socket,sys\n\
            s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=10)\n\
            p=sys.argv[3].encode()\n\
            s.sendall(p)\n\
            d=b''\n\
            while len(d)<len(p):\n\
            \x20   c=s.recv(4096)\n\
            \x20   if not c: break\n\
            \x20   d+=c\n\
            sys.stdout.write(d.decode())\n";
        let netns = self.netns.clone();
        let payload = payload.to_owned();
        tokio::task::spawn_blocking(move || {
            netns_exec(
                &netns,
                &[
                    "python3",
                    "-c",
                    script,
                    &to.ip().to_string(),
                    &to.port().to_string(),
                    &payload,
                ],
            )
        })
        .await
        .expect("python3 in the pod")
    }

    fn remove(&self) {
        run_quietly(&["ip", "link", "del", &self.host_veth]);
        run_quietly(&["ip", "netns", "del", &self.netns]);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Forwards TCP from `listen` (port 0: a free one) to `to`: the control plane listens on the
/// node's loopback, the pod reaches it over the veth.
async fn forwarder(
    listen: SocketAddr,
    to: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("bind forwarder on {listen}: {e}"));
    let addr = l.local_addr().expect("forwarder addr");
    let task = tokio::spawn(async move {
        while let Ok((mut down, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (addr, task)
}

fn sock(ip: impl ToString, port: u16) -> Value {
    j!({"socket_address": {"address": ip.to_string(), "port_value": port}})
}

fn tcp_proxy_filter(cluster: &str) -> Value {
    j!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        },
    })
}

fn listener_filter(name: &str, ty: &str) -> Value {
    j!({"name": name, "typed_config": {"@type": format!("type.googleapis.com/{ty}")}})
}

/// Istio's `virtualOutbound`: 0.0.0.0:15001, `use_original_dst`, tcp_proxy to the
/// passthrough cluster for what no per-port listener takes.
fn virtual_outbound() -> Value {
    j!({
        "@type": LISTENER,
        "name": "virtualOutbound",
        "address": sock("0.0.0.0", OUTBOUND_CAPTURE),
        "use_original_dst": true,
        "traffic_direction": "OUTBOUND",
        "listener_filters": [listener_filter(
            "envoy.filters.listener.original_dst",
            "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        )],
        "filter_chains": [{"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy_filter("PassthroughCluster")]}],
    })
}

/// Istio's per-port outbound listener `0.0.0.0_8080`: not bound, HCM over RDS "8080".
fn outbound_8080() -> Value {
    let mut l = json::listener_rds(
        "0.0.0.0_8080",
        SocketAddr::from(([0, 0, 0, 0], 8080)),
        "8080",
    );
    l["bind_to_port"] = j!(false);
    l["traffic_direction"] = j!("OUTBOUND");
    l
}

/// A STATIC cluster of one endpoint.
fn static_cluster(name: &str, to: SocketAddr) -> Value {
    j!({
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(to.ip(), to.port())}}]}],
        },
    })
}

/// Istio's `PassthroughCluster`, as istiod builds it: ORIGINAL_DST (the connection goes
/// where the app sent it), CLUSTER_PROVIDED, the downstream's HTTP protocol.
fn passthrough_cluster() -> Value {
    j!({
        "@type": CLUSTER,
        "name": "PassthroughCluster",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {
                    "http_protocol_options": {},
                    "http2_protocol_options": {},
                },
            },
        },
    })
}

/// Istio's `virtualInbound`: 0.0.0.0:15006, the original_dst listener filter, one filter
/// chain per inbound port (`destination_port: 8080` → HCM with an inline route to the app's
/// cluster) and a passthrough default chain.
fn virtual_inbound() -> Value {
    j!({
        "@type": LISTENER,
        "name": "virtualInbound",
        "address": sock("0.0.0.0", INBOUND_CAPTURE),
        "traffic_direction": "INBOUND",
        "listener_filters": [
            listener_filter(
                "envoy.filters.listener.original_dst",
                "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
            ),
            listener_filter(
                "envoy.filters.listener.http_inspector",
                "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
            ),
        ],
        "filter_chains": [{
            "name": "0.0.0.0_8080",
            "filter_chain_match": {"destination_port": 8080},
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "inbound_0.0.0.0_8080",
                    "route_config": {
                        "name": "inbound|8080||",
                        "virtual_hosts": [{
                            "name": "inbound|http|8080",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||"}}],
                        }],
                    },
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
                },
            }],
        }],
        "default_filter_chain": {
            "name": "virtualInbound-passthrough",
            "filters": [tcp_proxy_filter("InboundPassthroughClusterIpv4")],
        },
    })
}

/// The pod, its upstreams on the node, the control plane behind a forwarder, and Mecha in the
/// pod configured with the outbound cascade (passthrough + the svc cluster by EDS, the two
/// outbound listeners, RDS "8080").
struct Interception {
    mecha: Mecha,
    cp: ControlPlane,
    svc: HttpUpstream,
    passthrough: EchoServer,
    _forwarder: tokio::task::JoinHandle<()>,
    // Last: removed after Mecha (inside it) is gone.
    pod: Pod,
}

async fn interception(tag: &str, net: u8) -> Interception {
    let pod = Pod::create(tag, net);
    let svc = HttpUpstream::start_on("svc", pod.host(0)).await;
    let passthrough = EchoServer::start_on(pod.host(0)).await;
    let mut cp = ok("control plane", ControlPlane::start().await);
    let (xds, forwarder) = forwarder(pod.host(0), cp.addr()).await;
    let wrap = pod.wrap();
    let mut mecha = Mecha::start_wrapped(Wait::Ready, &wrap, || {
        let admin = pod.addr(ADMIN_PORT);
        Launch::new(
            "xds-netns",
            bootstrap(admin, &xds.to_string(), "sotw", ""),
            admin,
        )
    })
    .await;
    mecha.label = format!("in netns {}, uid {PROXY_UID}", pod.netns);
    // Ready is not subscribed: wait for the stream before pushing on it.
    let stream = ok("stream", cp.stream_opened().await);
    ok("CDS", cp.request_on(stream, CLUSTER).await);
    let clusters = vec![passthrough_cluster(), json::cluster_eds(SVC_CLUSTER)];
    push_sotw(&mut cp, CLUSTER, "c1", clusters).await;
    let eds = ok("EDS", cp.request(ENDPOINT).await);
    assert_eq!(eds.resource_names, names(&[SVC_CLUSTER]));
    push_sotw(
        &mut cp,
        ENDPOINT,
        "e1",
        vec![json::cla(SVC_CLUSTER, &[svc.addr])],
    )
    .await;
    Interception {
        mecha,
        cp,
        svc,
        passthrough,
        _forwarder: forwarder,
        pod,
    }
}

async fn push_outbound_routes(cp: &mut ControlPlane) {
    let rds = ok("RDS", cp.request(ROUTE).await);
    assert_eq!(rds.resource_names, names(&["8080"]));
    push_sotw(
        cp,
        ROUTE,
        "r1",
        vec![json::route_config(
            "8080",
            &["*"],
            vec![json::route_prefix("/", SVC_CLUSTER)],
        )],
    )
    .await;
}

#[tokio::test]
async fn outbound_capture_dispatches_by_original_destination_to_xds_virtual_listeners() {
    let test = "outbound_capture_dispatches_by_original_destination_to_xds_virtual_listeners";
    if skip_netns(test) {
        return;
    }
    let mut it = interception("xo", 214).await;
    push_sotw(
        &mut it.cp,
        LISTENER,
        "l1",
        vec![virtual_outbound(), outbound_8080()],
    )
    .await;
    push_outbound_routes(&mut it.cp).await;

    // The app calls svc's ClusterIP on 8080: captured to 15001, dispatched by its original
    // destination to `0.0.0.0_8080`, routed to svc's endpoint (Mecha's own upstream
    // connection is not captured: it runs as the proxy uid).
    let (status, upstream) = it
        .pod
        .app_get(&format!("http://{SERVICE_IP}:8080/outbound"))
        .await;
    assert_eq!((status, upstream.as_str()), (200, "svc"));
    assert_eq!(it.svc.last_seen().path, "/outbound");
    it.mecha
        .wait_metric(&accepted("0.0.0.0_8080"), |v| v == 1.0)
        .await;

    // An address no listener has (a server outside the mesh): virtualOutbound's own chain
    // passes it through to where the app sent it (ORIGINAL_DST).
    let base = metric(&it.mecha, &accepted("virtualOutbound")).await;
    assert_eq!(
        it.pod
            .app_tcp_echo(it.passthrough.addr, "through-15001")
            .await,
        "through-15001"
    );
    it.mecha
        .wait_metric(&accepted("virtualOutbound"), |v| v == base + 1.0)
        .await;
    assert_eq!(
        metric(&it.mecha, &accepted("0.0.0.0_8080")).await,
        1.0,
        "the per-port listener took only its port"
    );

    // A per-port listener for 9000 (tcp_proxy to the db service) is added live: 9000 is now
    // its, not the passthrough's; 8080 is unchanged.
    let db = EchoServer::start_on(it.pod.host(0)).await;
    let db_cluster = "outbound|9000||db.default.svc.cluster.local";
    push_sotw(
        &mut it.cp,
        CLUSTER,
        "c2",
        vec![
            passthrough_cluster(),
            json::cluster_eds(SVC_CLUSTER),
            static_cluster(db_cluster, db.addr),
        ],
    )
    .await;
    let outbound_9000 = j!({
        "@type": LISTENER,
        "name": "0.0.0.0_9000",
        "address": sock("0.0.0.0", 9000),
        "bind_to_port": false,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [tcp_proxy_filter(db_cluster)]}],
    });
    push_sotw(
        &mut it.cp,
        LISTENER,
        "l2",
        vec![virtual_outbound(), outbound_8080(), outbound_9000],
    )
    .await;
    let to_9000 = SocketAddr::new(IpAddr::V4(SERVICE_IP), 9000);
    assert_eq!(it.pod.app_tcp_echo(to_9000, "to-db").await, "to-db");
    it.mecha
        .wait_metric(&accepted("0.0.0.0_9000"), |v| v == 1.0)
        .await;
    let (status, upstream) = it
        .pod
        .app_get(&format!("http://{SERVICE_IP}:8080/outbound-again"))
        .await;
    assert_eq!((status, upstream.as_str()), (200, "svc"));
    let text = it.mecha.metrics().await;
    assert_eq!(
        metric_value(&text, &accepted("virtualOutbound")),
        Some(base + 1.0),
        "the passthrough took nothing more; /metrics:\n{text}"
    );
    assert_eq!(metric_value(&text, &accepted("0.0.0.0_8080")), Some(2.0));
}

#[tokio::test]
async fn inbound_capture_picks_the_filter_chain_by_destination_port() {
    let test = "inbound_capture_picks_the_filter_chain_by_destination_port";
    if skip_netns(test) {
        return;
    }
    let mut it = interception("xi", 215).await;
    // The app behind the inbound port, served on the node for the test (its cluster points
    // there; Mecha's upstream connection is not captured).
    let app = HttpUpstream::start_on("app", it.pod.host(0)).await;
    push_sotw(
        &mut it.cp,
        CLUSTER,
        "c2",
        vec![
            passthrough_cluster(),
            json::cluster_eds(SVC_CLUSTER),
            static_cluster("inbound|8080||", app.addr),
            static_cluster("InboundPassthroughClusterIpv4", it.passthrough.addr),
        ],
    )
    .await;
    let nonce = ok(
        "send LDS",
        it.cp
            .send_sotw(
                LISTENER,
                "l1",
                vec![virtual_outbound(), outbound_8080(), virtual_inbound()],
            )
            .await,
    );
    let reply = ok("LDS reply", it.cp.reply_to(LISTENER, &nonce).await);
    assert!(
        !reply.is_nack(),
        "virtualInbound (filter chains by destination_port) was refused: {}",
        reply.error_message()
    );
    push_outbound_routes(&mut it.cp).await;

    // From the node to the pod's port 8080: captured to 15006, the destination_port 8080
    // chain, the app's cluster.
    let r = get(it.pod.addr(8080), "/inbound").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("app"), "{r:?}");
    assert_eq!(app.hits(), 1);
    assert_eq!(
        it.svc.hits(),
        0,
        "the outbound 0.0.0.0_8080 listener did not take it"
    );

    // Another inbound port: the default (passthrough) chain.
    let mut tcp = within("connect to 9100", TcpStream::connect(it.pod.addr(9100)))
        .await
        .expect("connect to the pod's port 9100");
    tcp.write_all(b"inbound-passthrough").await.expect("write");
    let mut buf = vec![0u8; "inbound-passthrough".len()];
    within("echo", tcp.read_exact(&mut buf))
        .await
        .expect("echo through the default chain");
    assert_eq!(&buf, b"inbound-passthrough");
    drop(tcp);

    // Outbound 8080 from the app still goes to svc: the inbound chain at 0.0.0.0:8080 is
    // virtualInbound's alone.
    let (status, upstream) = it
        .pod
        .app_get(&format!("http://{SERVICE_IP}:8080/outbound-too"))
        .await;
    assert_eq!((status, upstream.as_str()), (200, "svc"));
    assert_eq!(app.hits(), 1);
}
