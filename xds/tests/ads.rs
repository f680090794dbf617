//! The ADS client (`mecha_xds::ads::run`) against an independent control plane:
//! `xds/tests/control_plane/ads_server.py` (Python grpcio + the `xds-protos` stubs), driven by
//! `mecha_test_support::control_plane`. The client hands its candidate sets to a recording sink;
//! the tests wait on events (requests the server saw, sink calls), never on time.
//!
//! Each test skips itself, saying why, when python3 with grpcio and xds-protos is missing
//! (`scripts/ensure-deps.sh test` installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use mecha_test_support::control_plane::{
    self as cp, json, ControlPlane, Request, CLUSTER, COMPONENT, ENDPOINT, LISTENER, ROUTE,
};
use mecha_test_support::STEP_TIMEOUT;
use mecha_xds::ads::{self, AdsConfig, AdsStatus, Api, Node, Sink};
use mecha_xds::resources::{ResourceError, XdsResources};
use prost::Message as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// === harness ===

/// Skips the test (returning Ok) when the control plane cannot run here.
macro_rules! require_control_plane {
    ($test:literal) => {
        if let Some(why) = cp::unavailable() {
            eprintln!("SKIPPED {}: {why}", $test);
            return Ok(());
        }
    };
}

/// One call of the sink.
#[derive(Debug, Clone)]
struct Applied {
    changed: String,
    resources: XdsResources,
    accepted: bool,
}

/// Records every candidate set and refuses those holding a name in `refuse`.
struct Recorder {
    tx: mpsc::UnboundedSender<Applied>,
    refuse: Mutex<BTreeSet<String>>,
}

impl Recorder {
    fn check(&self, r: &XdsResources) -> Result<(), Vec<ResourceError>> {
        let refuse = self.refuse.lock().map(|s| s.clone()).unwrap_or_default();
        let named = |kind: &'static str, names: Vec<&String>| {
            names
                .into_iter()
                .filter(|n| refuse.contains(*n))
                .map(move |n| ResourceError {
                    kind,
                    name: n.clone(),
                    message: "refused by the test's sink".to_owned(),
                })
                .collect::<Vec<_>>()
        };
        let mut errors = named("listener", r.listeners.keys().collect());
        errors.extend(named("route_config", r.routes.keys().collect()));
        errors.extend(named("cluster", r.clusters.keys().collect()));
        errors.extend(named("endpoints", r.endpoints.keys().collect()));
        errors.extend(named("component", r.components.keys().collect()));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Sink for Recorder {
    fn apply<'a>(
        &'a self,
        resources: &'a XdsResources,
        changed: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), Vec<ResourceError>>> + Send + 'a>> {
        Box::pin(async move {
            let result = self.check(resources);
            let _ = self.tx.send(Applied {
                changed: changed.to_owned(),
                resources: resources.clone(),
                accepted: result.is_ok(),
            });
            result
        })
    }
}

/// The client task, aborted on drop.
struct Client(JoinHandle<()>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Harness {
    cp: ControlPlane,
    applied: mpsc::UnboundedReceiver<Applied>,
    sink: Arc<Recorder>,
    status: Arc<AdsStatus>,
    _client: Client,
}

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.7~app-1.ns~ns.svc.cluster.local".to_owned(),
        cluster: "app.ns".to_owned(),
        metadata: BTreeMap::from([
            ("NAMESPACE".to_owned(), "ns".to_owned()),
            ("ISTIO_VERSION".to_owned(), "1.24.0".to_owned()),
        ]),
    }
}

impl Harness {
    /// A control plane on a free port and a client of `api` connected to it.
    async fn start(api: Api) -> anyhow::Result<Harness> {
        let cp = ControlPlane::start().await?;
        Self::with(cp, api)
    }

    fn with(cp: ControlPlane, api: Api) -> anyhow::Result<Harness> {
        let (tx, applied) = mpsc::unbounded_channel();
        let sink = Arc::new(Recorder {
            tx,
            refuse: Mutex::default(),
        });
        let status = Arc::new(AdsStatus::new());
        let mut config = AdsConfig::new(cp.addr().to_string(), api, node());
        // Reconnects within tens of milliseconds (the tests wait on the new stream, not on time).
        config.backoff_base = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(200);
        config.validate().context("the test's AdsConfig")?;
        let task = {
            let sink: Arc<dyn Sink> = sink.clone();
            let status = status.clone();
            tokio::spawn(async move {
                // Returns only for an invalid config, checked above.
                let Err(e) = ads::run(config, sink, status).await;
                eprintln!("ads::run refused its config: {e}");
            })
        };
        Ok(Harness {
            cp,
            applied,
            sink,
            status,
            _client: Client(task),
        })
    }

    /// The next sink call.
    async fn applied(&mut self) -> anyhow::Result<Applied> {
        tokio::time::timeout(STEP_TIMEOUT, self.applied.recv())
            .await
            .with_context(|| format!("no sink call within {STEP_TIMEOUT:?}"))?
            .context("the client task ended")
    }

    /// The next sink call, which must be for `type_url` and accepted.
    async fn accepted(&mut self, type_url: &str) -> anyhow::Result<XdsResources> {
        let a = self.applied().await?;
        ensure!(
            a.changed.split(' ').any(|t| t == type_url) && a.accepted,
            "expected an accepted {type_url} candidate, got {:?} (accepted: {})",
            a.changed,
            a.accepted
        );
        Ok(a.resources)
    }

    /// Sends a SotW response and waits for its ACK (which must not be a NACK).
    async fn sotw_acked(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<Value>,
    ) -> anyhow::Result<(XdsResources, Request)> {
        let nonce = self.cp.send_sotw(type_url, version, resources).await?;
        let set = self.accepted(type_url).await?;
        let ack = self.cp.reply_to(type_url, &nonce).await?;
        ensure!(!ack.is_nack(), "{type_url} {version}: NACKed: {ack:?}");
        ensure!(
            ack.version_info == version,
            "{type_url}: the ACK carries version {:?}, not {version:?}",
            ack.version_info
        );
        Ok((set, ack))
    }

    /// Sends a delta response and waits for its ACK.
    async fn delta_acked(
        &mut self,
        type_url: &str,
        resources: Vec<(&str, &str, Value)>,
        removed: &[&str],
    ) -> anyhow::Result<XdsResources> {
        let resources = resources
            .into_iter()
            .map(|(n, v, r)| (n.to_owned(), v.to_owned(), r))
            .collect();
        let removed = removed.iter().map(|s| (*s).to_owned()).collect();
        let nonce = self
            .cp
            .send_delta(type_url, "sys-1", resources, removed)
            .await?;
        let set = self.accepted(type_url).await?;
        let ack = self.cp.reply_to(type_url, &nonce).await?;
        ensure!(!ack.is_nack(), "{type_url}: NACKed: {ack:?}");
        Ok(set)
    }
}

fn names<V>(m: &BTreeMap<String, V>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

fn sorted(v: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = v.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Checks the node of a stream's first request.
fn check_node(r: &Request) -> anyhow::Result<()> {
    let n = r
        .node
        .as_ref()
        .with_context(|| format!("the first request of the stream has no node: {r:?}"))?;
    let want = node();
    ensure!(n["id"] == want.id.as_str(), "node id: {n}");
    ensure!(n["cluster"] == want.cluster.as_str(), "node cluster: {n}");
    ensure!(n["metadata"]["NAMESPACE"] == "ns", "node metadata: {n}");
    ensure!(
        n["metadata"]["ISTIO_VERSION"] == "1.24.0",
        "node metadata: {n}"
    );
    ensure!(n["userAgentName"] == "mecha", "node user agent: {n}");
    Ok(())
}

/// The three wildcard requests that open a stream (CDS first, carrying the node, then LDS and
/// components without it), in the order the client sends them.
async fn wildcard_opening(cp: &mut ControlPlane, stream: u64) -> anyhow::Result<[Request; 3]> {
    let cds = cp.request_on(stream, CLUSTER).await?;
    let lds = cp.request_on(stream, LISTENER).await?;
    let comp = cp.request_on(stream, COMPONENT).await?;
    check_node(&cds)?;
    ensure!(
        lds.node.is_none(),
        "only the first request carries the node: {lds:?}"
    );
    ensure!(
        comp.node.is_none(),
        "only the first request carries the node: {comp:?}"
    );
    for r in [&cds, &lds, &comp] {
        ensure!(!r.is_nack(), "an opening request is not a NACK: {r:?}");
        if r.delta {
            ensure!(
                r.subscribe.is_empty() && r.unsubscribe.is_empty(),
                "a delta wildcard subscription names nothing: {r:?}"
            );
        } else {
            ensure!(
                r.resource_names.is_empty(),
                "a SotW wildcard subscription has empty resource_names: {r:?}"
            );
        }
    }
    Ok([cds, lds, comp])
}

// === state of the world ===

#[tokio::test]
async fn sotw_first_request_has_the_node_and_the_roots_are_wildcards() -> anyhow::Result<()> {
    require_control_plane!("sotw_first_request_has_the_node_and_the_roots_are_wildcards");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    let opening = wildcard_opening(&mut h.cp, stream).await?;
    for r in &opening {
        ensure!(!r.delta, "a SotW client speaks SotW: {r:?}");
        ensure!(
            r.version_info.is_empty() && r.response_nonce.is_empty(),
            "a fresh client has no version or nonce: {r:?}"
        );
    }
    // Connected although the server has sent nothing yet (no response headers either).
    let state = h.status.snapshot().state;
    ensure!(
        state == ads::ConnectionState::Connected,
        "an open, idle stream is connected: {state:?}"
    );
    // A component: accepted, ACKed with version and nonce, and no node any more.
    let (set, ack) = h
        .sotw_acked(
            COMPONENT,
            "c-1",
            vec![json::component(
                "statestore",
                "state.redis",
                &[("redisHost", "localhost:6379")],
            )],
        )
        .await?;
    let c = set
        .components
        .get("statestore")
        .context("the component reached the sink")?;
    ensure!(c.r#type == "state.redis", "{c:?}");
    ensure!(
        c.metadata.get("redisHost").map(String::as_str) == Some("localhost:6379"),
        "{c:?}"
    );
    ensure!(ack.node.is_none(), "an ACK carries no node: {ack:?}");
    ensure!(ack.resource_names.is_empty(), "still a wildcard: {ack:?}");
    Ok(())
}

#[tokio::test]
async fn sotw_rds_follows_listeners_and_eds_follows_clusters() -> anyhow::Result<()> {
    require_control_plane!("sotw_rds_follows_listeners_and_eds_follows_clusters");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;

    // LDS names route config r1 → the first RDS request subscribes r1 (none was sent before:
    // the first request of the type taken is this one).
    let (set, _) = h
        .sotw_acked(
            LISTENER,
            "l-1",
            vec![json::listener_rds("l1", addr(15001), "r1")],
        )
        .await?;
    ensure!(
        names(&set.listeners) == ["l1"],
        "{:?}",
        names(&set.listeners)
    );
    let rds = h.cp.request(ROUTE).await?;
    ensure!(rds.resource_names == ["r1"], "RDS subscription: {rds:?}");
    ensure!(
        rds.version_info.is_empty() && rds.response_nonce.is_empty() && rds.node.is_none(),
        "a first RDS request: {rds:?}"
    );
    let (set, ack) = h
        .sotw_acked(
            ROUTE,
            "r-1",
            vec![json::route_config(
                "r1",
                &["*"],
                vec![json::route_prefix("/", "c1")],
            )],
        )
        .await?;
    ensure!(names(&set.routes) == ["r1"], "{:?}", names(&set.routes));
    ensure!(
        names(&set.listeners) == ["l1"],
        "the listener is still held"
    );
    ensure!(
        ack.resource_names == ["r1"],
        "the RDS ACK keeps the names: {ack:?}"
    );

    // CDS names an EDS cluster → EDS subscribes its name.
    let (set, _) = h
        .sotw_acked(CLUSTER, "c-1", vec![json::cluster_eds("c1")])
        .await?;
    ensure!(names(&set.clusters) == ["c1"], "{:?}", names(&set.clusters));
    let eds = h.cp.request(ENDPOINT).await?;
    ensure!(eds.resource_names == ["c1"], "EDS subscription: {eds:?}");
    let (set, _) = h
        .sotw_acked(
            ENDPOINT,
            "e-1",
            vec![json::cla("c1", &[addr(18080), addr(18081)])],
        )
        .await?;
    let cla = set.endpoints.get("c1").context("endpoints of c1 held")?;
    let lb = cla.endpoints.first().map_or(0, |l| l.lb_endpoints.len());
    ensure!(lb == 2, "two endpoints: {cla:?}");
    // Every type is in the candidate (a consistent whole).
    ensure!(names(&set.routes) == ["r1"] && names(&set.listeners) == ["l1"]);

    let status = h.status.snapshot();
    for (t, v) in [
        (LISTENER, "l-1"),
        (ROUTE, "r-1"),
        (CLUSTER, "c-1"),
        (ENDPOINT, "e-1"),
    ] {
        let s = status
            .types
            .get(t)
            .with_context(|| format!("status of {t}"))?;
        ensure!(
            s.version == v && s.accepted == 1 && s.rejected == 0,
            "{t}: {s:?}"
        );
    }
    ensure!(
        status.state == ads::ConnectionState::Connected,
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sotw_nack_keeps_the_last_accepted_version_and_names_the_resource() -> anyhow::Result<()> {
    require_control_plane!("sotw_nack_keeps_the_last_accepted_version_and_names_the_resource");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    h.sotw_acked(CLUSTER, "1", vec![json::cluster_eds("good")])
        .await?;

    // 1. The sink refuses a resource.
    if let Ok(mut r) = h.sink.refuse.lock() {
        r.insert("bad".to_owned());
    }
    let nonce =
        h.cp.send_sotw(
            CLUSTER,
            "2",
            vec![json::cluster_eds("good"), json::cluster_eds("bad")],
        )
        .await?;
    let a = h.applied().await?;
    ensure!(
        !a.accepted && names(&a.resources.clusters) == ["bad", "good"],
        "{a:?}"
    );
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    let (code, message) = nack.error_detail.clone().context("a NACK")?;
    ensure!(code == 3, "INVALID_ARGUMENT: {nack:?}");
    ensure!(
        nack.version_info == "1",
        "the last accepted version: {nack:?}"
    );
    ensure!(
        message.contains("cluster \"bad\"") && message.contains("refused by the test's sink"),
        "{message}"
    );

    // 2. An undecodable resource: NACKed before the sink is asked (the next sink call is the
    //    valid response after it).
    let nonce =
        h.cp.send_sotw(CLUSTER, "3", vec![json::raw(CLUSTER, &[0xff, 0xff, 0xff])])
            .await?;
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    ensure!(nack.version_info == "1", "{nack:?}");
    ensure!(
        nack.error_message().contains("#0 of the response")
            && nack.error_message().contains("cannot be decoded"),
        "{nack:?}"
    );

    // 3. A name twice in one response.
    let nonce =
        h.cp.send_sotw(
            CLUSTER,
            "4",
            vec![json::cluster_eds("twice"), json::cluster_eds("twice")],
        )
        .await?;
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    ensure!(nack.version_info == "1", "{nack:?}");
    ensure!(
        nack.error_message().contains("\"twice\"")
            && nack.error_message().contains("more than once"),
        "{nack:?}"
    );

    // 4. A resource of another type in the response.
    let nonce =
        h.cp.send_sotw(
            CLUSTER,
            "5",
            vec![json::component("x", "state.memory", &[])],
        )
        .await?;
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    ensure!(
        nack.version_info == "1" && nack.error_message().contains("has type"),
        "{nack:?}"
    );

    // Still holding version 1's set: the next accepted candidate is built on it.
    let (set, ack) = h
        .sotw_acked(
            CLUSTER,
            "6",
            vec![json::cluster_eds("good"), json::cluster_eds("other")],
        )
        .await?;
    ensure!(
        names(&set.clusters) == ["good", "other"],
        "{:?}",
        names(&set.clusters)
    );
    ensure!(ack.error_detail.is_none(), "{ack:?}");
    let s = h.status.snapshot();
    let t = s.types.get(CLUSTER).context("CDS status")?;
    ensure!(
        t.accepted == 2 && t.rejected == 4 && t.version == "6",
        "{t:?}"
    );
    ensure!(t.last_error.is_some(), "{t:?}");
    Ok(())
}

#[tokio::test]
async fn sotw_absence_from_the_full_set_removes_and_drops_children() -> anyhow::Result<()> {
    require_control_plane!("sotw_absence_from_the_full_set_removes_and_drops_children");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;

    h.sotw_acked(
        LISTENER,
        "1",
        vec![
            json::listener_rds("l1", addr(15001), "r1"),
            json::listener_rds("l2", addr(15002), "r2"),
        ],
    )
    .await?;
    let rds = h.cp.request(ROUTE).await?;
    ensure!(sorted(&rds.resource_names) == ["r1", "r2"], "{rds:?}");
    let (set, _) = h
        .sotw_acked(
            ROUTE,
            "1",
            vec![
                json::route_config("r1", &["*"], vec![]),
                json::route_config("r2", &["*"], vec![]),
            ],
        )
        .await?;
    ensure!(names(&set.routes) == ["r1", "r2"]);

    // l2 is gone from the full set: removed, and its route r2 with it; RDS re-subscribes.
    let (set, _) = h
        .sotw_acked(
            LISTENER,
            "2",
            vec![json::listener_rds("l1", addr(15001), "r1")],
        )
        .await?;
    ensure!(
        names(&set.listeners) == ["l1"],
        "{:?}",
        names(&set.listeners)
    );
    ensure!(names(&set.routes) == ["r1"], "{:?}", names(&set.routes));
    // The RDS ACK was taken by sotw_acked: the next RDS request is the re-subscription.
    let rds = h.cp.request(ROUTE).await?;
    ensure!(rds.resource_names == ["r1"], "RDS re-subscription: {rds:?}");

    // Same for clusters and their endpoints.
    h.sotw_acked(
        CLUSTER,
        "1",
        vec![json::cluster_eds("c1"), json::cluster_eds("c2")],
    )
    .await?;
    let eds = h.cp.request(ENDPOINT).await?;
    ensure!(sorted(&eds.resource_names) == ["c1", "c2"], "{eds:?}");
    h.sotw_acked(
        ENDPOINT,
        "1",
        vec![
            json::cla("c1", &[addr(18080)]),
            json::cla("c2", &[addr(18081)]),
        ],
    )
    .await?;
    let (set, _) = h
        .sotw_acked(CLUSTER, "2", vec![json::cluster_eds("c2")])
        .await?;
    ensure!(names(&set.clusters) == ["c2"], "{:?}", names(&set.clusters));
    ensure!(
        names(&set.endpoints) == ["c2"],
        "{:?}",
        names(&set.endpoints)
    );

    // An empty full set removes everything of the type.
    let (set, _) = h.sotw_acked(LISTENER, "3", vec![]).await?;
    ensure!(set.listeners.is_empty() && set.routes.is_empty(), "{set:?}");
    ensure!(names(&set.clusters) == ["c2"], "other types are untouched");
    Ok(())
}

#[tokio::test]
async fn sotw_a_response_over_4_mib_is_accepted() -> anyhow::Result<()> {
    require_control_plane!("sotw_a_response_over_4_mib_is_accepted");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    // 5,000 static clusters of ~1 KiB each: one ~5 MiB DiscoveryResponse (tonic's default
    // limit is 4 MiB).
    let pad = "x".repeat(1000);
    let clusters: Vec<Value> = (0..5000)
        .map(|i| {
            serde_json::json!({
                "@type": CLUSTER,
                "name": format!("outbound|8080||svc-{i}.ns.svc.cluster.local"),
                "type": "STATIC",
                "connect_timeout": "1s",
                "alt_stat_name": pad,
            })
        })
        .collect();
    let (set, _) = h.sotw_acked(CLUSTER, "big", clusters).await?;
    ensure!(
        set.clusters.len() == 5000,
        "{} clusters",
        set.clusters.len()
    );
    let bytes: usize = set.clusters.values().map(|c| c.encoded_len()).sum();
    ensure!(
        bytes > 4 * 1024 * 1024,
        "the response was only {bytes} bytes"
    );
    Ok(())
}

// === delta ===

#[tokio::test]
async fn delta_subscriptions_acks_and_removals() -> anyhow::Result<()> {
    require_control_plane!("delta_subscriptions_acks_and_removals");
    let mut h = Harness::start(Api::Delta).await?;
    let stream = h.cp.stream_opened().await?;
    let opening = wildcard_opening(&mut h.cp, stream).await?;
    for r in &opening {
        ensure!(r.delta, "a delta client speaks delta: {r:?}");
        ensure!(
            r.initial_resource_versions.is_empty() && r.response_nonce.is_empty(),
            "a fresh client holds nothing: {r:?}"
        );
    }

    let set = h
        .delta_acked(
            CLUSTER,
            vec![
                ("c1", "v1", json::cluster_eds("c1")),
                ("c2", "v1", json::cluster_eds("c2")),
            ],
            &[],
        )
        .await?;
    ensure!(names(&set.clusters) == ["c1", "c2"]);
    let eds = h.cp.request(ENDPOINT).await?;
    ensure!(
        sorted(&eds.subscribe) == ["c1", "c2"],
        "EDS subscription: {eds:?}"
    );
    ensure!(
        eds.response_nonce.is_empty() && eds.node.is_none(),
        "{eds:?}"
    );
    let set = h
        .delta_acked(
            ENDPOINT,
            vec![
                ("c1", "e1", json::cla("c1", &[addr(18080)])),
                ("c2", "e1", json::cla("c2", &[addr(18081)])),
            ],
            &[],
        )
        .await?;
    ensure!(names(&set.endpoints) == ["c1", "c2"]);

    // removed_resources reaches the sink, the child goes with it, EDS unsubscribes.
    let set = h.delta_acked(CLUSTER, vec![], &["c1"]).await?;
    ensure!(names(&set.clusters) == ["c2"], "{:?}", names(&set.clusters));
    ensure!(
        names(&set.endpoints) == ["c2"],
        "{:?}",
        names(&set.endpoints)
    );
    let eds = h.cp.request(ENDPOINT).await?;
    ensure!(
        eds.unsubscribe == ["c1"] && eds.subscribe.is_empty(),
        "EDS unsubscription: {eds:?}"
    );

    // Listeners → RDS, and a removal of a component.
    h.delta_acked(
        LISTENER,
        vec![("l1", "1", json::listener_rds("l1", addr(15001), "r1"))],
        &[],
    )
    .await?;
    let rds = h.cp.request(ROUTE).await?;
    ensure!(rds.subscribe == ["r1"], "RDS subscription: {rds:?}");
    h.delta_acked(
        COMPONENT,
        vec![
            ("a", "1", json::component("a", "state.memory", &[])),
            ("b", "1", json::component("b", "pubsub.memory", &[])),
        ],
        &[],
    )
    .await?;
    let set = h.delta_acked(COMPONENT, vec![], &["a"]).await?;
    ensure!(
        names(&set.components) == ["b"],
        "{:?}",
        names(&set.components)
    );
    ensure!(names(&set.listeners) == ["l1"] && names(&set.clusters) == ["c2"]);
    Ok(())
}

#[tokio::test]
async fn delta_nack_carries_the_nonce_and_names_the_resource() -> anyhow::Result<()> {
    require_control_plane!("delta_nack_carries_the_nonce_and_names_the_resource");
    let mut h = Harness::start(Api::Delta).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    h.delta_acked(CLUSTER, vec![("c1", "v1", json::cluster_eds("c1"))], &[])
        .await?;

    // The wire name and the payload's name disagree.
    let nonce =
        h.cp.send_delta(
            CLUSTER,
            "sys-2",
            vec![("alias".to_owned(), "v2".to_owned(), json::cluster_eds("c9"))],
            vec![],
        )
        .await?;
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    ensure!(nack.is_nack(), "{nack:?}");
    ensure!(
        nack.error_message().contains("\"alias\"") && nack.error_message().contains("is named"),
        "{nack:?}"
    );

    // The sink refuses.
    if let Ok(mut r) = h.sink.refuse.lock() {
        r.insert("c2".to_owned());
    }
    let nonce =
        h.cp.send_delta(
            CLUSTER,
            "sys-3",
            vec![("c2".to_owned(), "v1".to_owned(), json::cluster_eds("c2"))],
            vec![],
        )
        .await?;
    let a = h.applied().await?;
    ensure!(!a.accepted, "{a:?}");
    let nack = h.cp.reply_to(CLUSTER, &nonce).await?;
    ensure!(
        nack.error_detail.as_ref().map(|(c, _)| *c) == Some(3)
            && nack.error_message().contains("cluster \"c2\""),
        "{nack:?}"
    );
    // The held set is still c1 only.
    let set = h
        .delta_acked(CLUSTER, vec![("c3", "v1", json::cluster_eds("c3"))], &[])
        .await?;
    ensure!(
        names(&set.clusters) == ["c1", "c3"],
        "{:?}",
        names(&set.clusters)
    );
    Ok(())
}

#[tokio::test]
async fn delta_unimplemented_falls_back_to_sotw() -> anyhow::Result<()> {
    require_control_plane!("delta_unimplemented_falls_back_to_sotw");
    let cp = ControlPlane::start_with(None, true).await?;
    let mut h = Harness::with(cp, Api::Delta)?;
    let stream = h.cp.stream_opened().await?;
    let opening = wildcard_opening(&mut h.cp, stream).await?;
    ensure!(
        opening.iter().all(|r| !r.delta),
        "the stream after UNIMPLEMENTED is SotW: {opening:?}"
    );
    let s = h.status.snapshot();
    ensure!(s.delta_fallback && s.api == Api::Sotw, "{s:?}");
    let (set, _) = h
        .sotw_acked(CLUSTER, "1", vec![json::cluster_eds("c1")])
        .await?;
    ensure!(names(&set.clusters) == ["c1"]);

    // The stream ends (normally this time): the client stays on SotW, with what it holds.
    h.cp.close_stream("OK").await?;
    h.cp.stream_closed(stream).await?;
    let next = h.cp.stream_opened().await?;
    let [cds, ..] = wildcard_opening(&mut h.cp, next).await?;
    ensure!(!cds.delta && cds.version_info == "1", "{cds:?}");
    Ok(())
}

// === reconnects ===

/// The opening of a SotW stream after the client held l1 → r1 (l-1, r-1) and c1 (c-1, e-1).
async fn sotw_resubscribed(cp: &mut ControlPlane, stream: u64) -> anyhow::Result<()> {
    let [cds, lds, comp] = wildcard_opening(cp, stream).await?;
    ensure!(cds.version_info == "c-1", "CDS: {cds:?}");
    ensure!(lds.version_info == "l-1", "LDS: {lds:?}");
    ensure!(comp.version_info.is_empty(), "components: {comp:?}");
    for r in [&cds, &lds, &comp] {
        ensure!(
            r.response_nonce.is_empty(),
            "nonces do not survive a stream: {r:?}"
        );
    }
    let eds = cp.request_on(stream, ENDPOINT).await?;
    ensure!(
        eds.version_info == "e-1" && eds.resource_names == ["c1"],
        "EDS: {eds:?}"
    );
    let rds = cp.request_on(stream, ROUTE).await?;
    ensure!(
        rds.version_info == "r-1" && rds.resource_names == ["r1"],
        "RDS: {rds:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sotw_reconnect_resubscribes_with_the_versions_held() -> anyhow::Result<()> {
    require_control_plane!("sotw_reconnect_resubscribes_with_the_versions_held");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    h.sotw_acked(
        LISTENER,
        "l-1",
        vec![json::listener_rds("l1", addr(15001), "r1")],
    )
    .await?;
    h.sotw_acked(ROUTE, "r-1", vec![json::route_config("r1", &["*"], vec![])])
        .await?;
    h.sotw_acked(CLUSTER, "c-1", vec![json::cluster_eds("c1")])
        .await?;
    h.sotw_acked(ENDPOINT, "e-1", vec![json::cla("c1", &[addr(18080)])])
        .await?;

    // 1. The server ends the stream: the client opens another on the same server.
    h.cp.close_stream("UNAVAILABLE").await?;
    h.cp.stream_closed(stream).await?;
    let second = h.cp.stream_opened().await?;
    sotw_resubscribed(&mut h.cp, second).await?;

    // 2. The server dies and comes back on the same port.
    let port = h.cp.port();
    h.cp.kill();
    h.cp = ControlPlane::start_with(Some(port), false)
        .await
        .with_context(|| format!("restart the control plane on port {port}"))?;
    let third = h.cp.stream_opened().await?;
    sotw_resubscribed(&mut h.cp, third).await?;

    // The held set survived both: the next candidate still has every type.
    let (set, _) = h
        .sotw_acked(CLUSTER, "c-2", vec![json::cluster_eds("c1")])
        .await?;
    ensure!(
        names(&set.listeners) == ["l1"]
            && names(&set.routes) == ["r1"]
            && names(&set.endpoints) == ["c1"],
        "{set:?}"
    );
    let s = h.status.snapshot();
    ensure!(s.streams >= 3, "{s:?}");
    Ok(())
}

#[tokio::test]
async fn delta_reconnect_sends_initial_resource_versions() -> anyhow::Result<()> {
    require_control_plane!("delta_reconnect_sends_initial_resource_versions");
    let mut h = Harness::start(Api::Delta).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    h.delta_acked(
        CLUSTER,
        vec![
            ("c1", "a", json::cluster_eds("c1")),
            ("c2", "b", json::cluster_eds("c2")),
        ],
        &[],
    )
    .await?;
    h.delta_acked(
        ENDPOINT,
        vec![("c1", "e1", json::cla("c1", &[addr(18080)]))],
        &[],
    )
    .await?;
    h.delta_acked(
        LISTENER,
        vec![("l1", "l", json::listener_rds("l1", addr(15001), "r1"))],
        &[],
    )
    .await?;
    h.delta_acked(
        ROUTE,
        vec![("r1", "r", json::route_config("r1", &["*"], vec![]))],
        &[],
    )
    .await?;
    h.delta_acked(
        COMPONENT,
        vec![("s", "k", json::component("s", "state.memory", &[]))],
        &[],
    )
    .await?;

    let port = h.cp.port();
    h.cp.kill();
    h.cp = ControlPlane::start_with(Some(port), false)
        .await
        .with_context(|| format!("restart the control plane on port {port}"))?;
    let stream = h.cp.stream_opened().await?;
    let [cds, lds, comp] = wildcard_opening(&mut h.cp, stream).await?;
    let versions = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    ensure!(
        cds.initial_resource_versions == versions(&[("c1", "a"), ("c2", "b")]),
        "CDS: {cds:?}"
    );
    ensure!(
        lds.initial_resource_versions == versions(&[("l1", "l")]),
        "LDS: {lds:?}"
    );
    ensure!(
        comp.initial_resource_versions == versions(&[("s", "k")]),
        "components: {comp:?}"
    );
    let eds = h.cp.request_on(stream, ENDPOINT).await?;
    ensure!(sorted(&eds.subscribe) == ["c1", "c2"], "EDS: {eds:?}");
    ensure!(
        eds.initial_resource_versions == versions(&[("c1", "e1")]),
        "EDS: {eds:?}"
    );
    let rds = h.cp.request_on(stream, ROUTE).await?;
    ensure!(
        rds.subscribe == ["r1"] && rds.initial_resource_versions == versions(&[("r1", "r")]),
        "RDS: {rds:?}"
    );

    // Nothing was dropped: an update of one type carries the others.
    let set = h
        .delta_acked(
            ENDPOINT,
            vec![("c2", "e1", json::cla("c2", &[addr(18081)]))],
            &[],
        )
        .await?;
    ensure!(
        names(&set.endpoints) == ["c1", "c2"]
            && names(&set.listeners) == ["l1"]
            && names(&set.routes) == ["r1"]
            && names(&set.components) == ["s"],
        "{set:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sotw_a_listener_naming_another_route_config_moves_the_rds_subscription(
) -> anyhow::Result<()> {
    require_control_plane!(
        "sotw_a_listener_naming_another_route_config_moves_the_rds_subscription"
    );
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    h.sotw_acked(
        LISTENER,
        "1",
        vec![json::listener_rds("l1", addr(15001), "r1")],
    )
    .await?;
    ensure!(h.cp.request(ROUTE).await?.resource_names == ["r1"]);
    h.sotw_acked(ROUTE, "1", vec![json::route_config("r1", &["*"], vec![])])
        .await?;

    let (set, _) = h
        .sotw_acked(
            LISTENER,
            "2",
            vec![json::listener_rds("l1", addr(15001), "r2")],
        )
        .await?;
    ensure!(
        set.routes.is_empty(),
        "r1 is no longer referred to: {:?}",
        names(&set.routes)
    );
    let rds = h.cp.request(ROUTE).await?;
    ensure!(rds.resource_names == ["r2"], "RDS re-subscription: {rds:?}");
    ensure!(
        rds.version_info == "1",
        "RDS keeps its last accepted version: {rds:?}"
    );

    // A route config not subscribed is ignored (not NACKed); the subscribed one is taken.
    let (set, _) = h
        .sotw_acked(
            ROUTE,
            "2",
            vec![
                json::route_config("r1", &["*"], vec![]),
                json::route_config("r2", &["*"], vec![]),
            ],
        )
        .await?;
    ensure!(names(&set.routes) == ["r2"], "{:?}", names(&set.routes));

    // Components are a full set too.
    h.sotw_acked(
        COMPONENT,
        "1",
        vec![
            json::component("a", "state.memory", &[]),
            json::component("b", "pubsub.memory", &[]),
        ],
    )
    .await?;
    let (set, _) = h
        .sotw_acked(
            COMPONENT,
            "2",
            vec![json::component("b", "pubsub.memory", &[])],
        )
        .await?;
    ensure!(
        names(&set.components) == ["b"],
        "{:?}",
        names(&set.components)
    );
    Ok(())
}

#[tokio::test]
async fn sotw_a_response_of_an_unknown_type_is_ignored() -> anyhow::Result<()> {
    require_control_plane!("sotw_a_response_of_an_unknown_type_is_ignored");
    let mut h = Harness::start(Api::Sotw).await?;
    let stream = h.cp.stream_opened().await?;
    wildcard_opening(&mut h.cp, stream).await?;
    let other = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    let ignored = h.cp.send_sotw(other, "1", vec![]).await?;
    // Handled in order: once the CDS response after it is ACKed, the unknown one was seen.
    h.sotw_acked(CLUSTER, "1", vec![json::cluster_eds("c1")])
        .await?;
    let answered: Vec<Request> =
        h.cp.pending_requests()
            .into_iter()
            .filter(|r| r.response_nonce == ignored || r.type_url == other)
            .collect();
    ensure!(
        answered.is_empty(),
        "the unknown type was answered: {answered:?}"
    );
    Ok(())
}
