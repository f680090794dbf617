//! Live configuration against the real binary: the watched config file is rewritten while
//! clients run, and what did not change must not notice — in-memory state, locks and sequencer
//! values, open subscriptions, AppCallback delivery, DNS-named clusters under load, health
//! state. What did change is rebuilt (its subscriptions end or resubscribe), removed resources'
//! metric series go, and `/config_dump` shows versions and the last rejected update.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mecha_integration::mesh_support::{
    eventually, send, subst, HttpUpstream, Mesh, Proto, Reload, Req,
};
use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::subscribe_topic_events_request::SubscribeTopicEventsRequestType as Inbound;
use mecha_integration::pb::subscribe_topic_events_response::SubscribeTopicEventsResponseType as Outbound;
use mecha_integration::pb::{
    GetNextIdRequest, GetStateRequest, PublishEventRequest, SaveStateRequest, StateItem,
    SubscribeTopicEventsRequest, SubscribeTopicEventsRequestInitial,
    SubscribeTopicEventsRequestProcessed, SubscribeTopicEventsResponse, TryLockRequest,
};
use mecha_integration::{describe, within, STEP_TIMEOUT};
use mecha_proto::layotto::app_callback_server::{AppCallback, AppCallbackServer};
use mecha_proto::layotto::topic_event_response::TopicEventResponseStatus;
use mecha_proto::layotto::{
    ListTopicSubscriptionsResponse, TopicEventRequest, TopicEventResponse, TopicSubscription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// A runtime-API listener on memory components; `{extra}` is replaced by more components.
const RUNTIME: &str = r#"
app:
  id: reload-app
listeners:
  - name: runtime
    address: ${runtime}
    filters:
      - { type: capability, apis: [layotto] }
components:
  - { name: statestore, type: state.memory }
  - { name: lockstore, type: lock.memory }
  - { name: sequencer, type: sequencer.memory }
  - name: pubsub
    type: pubsub.memory
    metadata: { redeliverInterval: "{interval}", processingTimeout: 2s }
{extra}"#;

fn runtime_config(interval: &str, extra: &str) -> String {
    RUNTIME
        .replace("{interval}", interval)
        .replace("{extra}", extra)
}

async fn runtime_client(addr: SocketAddr) -> RuntimeClient<Channel> {
    let channel = within(
        "connect",
        Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("connect to the runtime listener");
    RuntimeClient::new(channel)
}

async fn next_id(rt: &mut RuntimeClient<Channel>) -> i64 {
    within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: "sequencer".into(),
            key: "orders".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetNextId: {}", describe(&s)))
    .into_inner()
    .next_id
}

async fn try_lock(rt: &mut RuntimeClient<Channel>, owner: &str) -> bool {
    within(
        "TryLock",
        rt.try_lock(TryLockRequest {
            store_name: "lockstore".into(),
            resource_id: "invoice-7".into(),
            lock_owner: owner.into(),
            expire: 600,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("TryLock: {}", describe(&s)))
    .into_inner()
    .success
}

async fn publish(rt: &mut RuntimeClient<Channel>, data: &str) {
    publish_to(rt, "orders", data).await;
}

#[tokio::test]
async fn state_locks_and_sequencer_survive_an_unrelated_edit() {
    let mut mesh = Mesh::start(&runtime_config("100ms", "")).await;
    let mut rt = runtime_client(mesh.addr("runtime")).await;
    within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "cart".into(),
                value: b"3 apples".to_vec(),
                ..Default::default()
            }],
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveState: {}", describe(&s)));
    let ids: Vec<i64> = [
        next_id(&mut rt).await,
        next_id(&mut rt).await,
        next_id(&mut rt).await,
    ]
    .to_vec();
    assert!(try_lock(&mut rt, "owner-a").await, "A takes the free lock");

    // One harmless component appended: everything else is the same object afterwards.
    let more = "  - { name: cache, type: state.memory }\n";
    assert_eq!(
        mesh.rewrite(&runtime_config("100ms", more)).await,
        Reload::Applied
    );

    let got = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: "statestore".into(),
            key: "cart".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetState: {}", describe(&s)))
    .into_inner();
    assert_eq!(got.data, b"3 apples", "the saved key is still there");
    let after = next_id(&mut rt).await;
    assert!(
        after > *ids.iter().max().unwrap_or(&0),
        "ids keep increasing across the reload: {ids:?} then {after}"
    );
    assert!(
        !try_lock(&mut rt, "owner-b").await,
        "B must not get A's lock after the reload"
    );
    // The new component serves too.
    within(
        "SaveState cache",
        rt.save_state(SaveStateRequest {
            store_name: "cache".into(),
            states: vec![StateItem {
                key: "k".into(),
                value: b"v".to_vec(),
                ..Default::default()
            }],
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveState on the added component: {}", describe(&s)));
}

/// An open SubscribeTopicEvents stream.
struct Subscriber {
    tx: mpsc::Sender<SubscribeTopicEventsRequest>,
    rx: Streaming<SubscribeTopicEventsResponse>,
}

impl Subscriber {
    async fn open(rt: &mut RuntimeClient<Channel>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(SubscribeTopicEventsRequest {
            subscribe_topic_events_request_type: Some(Inbound::InitialRequest(
                SubscribeTopicEventsRequestInitial {
                    pubsub_name: "pubsub".into(),
                    topic: "orders".into(),
                    ..Default::default()
                },
            )),
        })
        .await
        .expect("queue initial_request");
        let mut rx = within(
            "SubscribeTopicEvents",
            rt.subscribe_topic_events(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|s| panic!("SubscribeTopicEvents: {}", describe(&s)))
        .into_inner();
        let first = within("initial_response", rx.message())
            .await
            .expect("stream open")
            .expect("a first message");
        assert!(matches!(
            first.subscribe_topic_events_response_type,
            Some(Outbound::InitialResponse(_))
        ));
        Self { tx, rx }
    }

    /// The next message: an event's data (answered SUCCESS, so it is not redelivered), or
    /// the status that ended the stream.
    async fn next(&mut self) -> Result<Vec<u8>, Status> {
        match within("next event", self.rx.message()).await {
            Ok(Some(m)) => match m.subscribe_topic_events_response_type {
                Some(Outbound::EventMessage(e)) => {
                    let processed = SubscribeTopicEventsRequest {
                        subscribe_topic_events_request_type: Some(Inbound::EventProcessed(
                            SubscribeTopicEventsRequestProcessed {
                                id: e.id.clone(),
                                status: Some(TopicEventResponse {
                                    status: TopicEventResponseStatus::Success as i32,
                                }),
                            },
                        )),
                    };
                    let _ = self.tx.send(processed).await;
                    Ok(e.data)
                }
                other => panic!("expected an event, got {other:?}"),
            },
            Ok(None) => Err(Status::ok("stream ended without a status")),
            Err(s) => Err(s),
        }
    }
}

#[tokio::test]
async fn a_pull_subscription_keeps_flowing_and_ends_when_its_component_changes() {
    let mut mesh = Mesh::start(&runtime_config("100ms", "")).await;
    let mut rt = runtime_client(mesh.addr("runtime")).await;
    let mut sub = Subscriber::open(&mut rt).await;
    publish(&mut rt, "one").await;
    assert_eq!(sub.next().await.expect("event"), b"one");

    // An unrelated edit: the stream neither ends nor misses events.
    let more = "  - { name: cache, type: state.memory }\n";
    assert_eq!(
        mesh.rewrite(&runtime_config("100ms", more)).await,
        Reload::Applied
    );
    publish(&mut rt, "two").await;
    assert_eq!(sub.next().await.expect("event after the reload"), b"two");

    // The pubsub's own metadata changes: the stream ends with UNAVAILABLE naming it.
    assert_eq!(
        mesh.rewrite(&runtime_config("150ms", more)).await,
        Reload::Applied
    );
    let end = sub.next().await.expect_err("the stream ends");
    assert_eq!(end.code(), Code::Unavailable, "{}", describe(&end));
    assert!(
        end.message().contains("\"pubsub\"") && end.message().contains("subscribe again"),
        "{}",
        describe(&end)
    );
    // Subscribing again reaches the new component.
    let mut again = Subscriber::open(&mut rt).await;
    publish(&mut rt, "three").await;
    assert_eq!(
        again.next().await.expect("event on the new component"),
        b"three"
    );
}

/// Publishes `data` until the app has it (memory pub/sub drops events of topics nobody is
/// subscribed to, and the sidecar subscribes for the app asynchronously).
async fn publish_until_delivered(
    rt: &mut RuntimeClient<Channel>,
    events: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    data: &str,
) {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        publish(rt, data).await;
        match tokio::time::timeout(Duration::from_millis(250), events.recv()).await {
            Ok(Some((_, e))) if e == data.as_bytes() => return,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the app server is gone"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {data:?} never reached the app"
        );
    }
}

#[tokio::test]
async fn app_callback_keeps_delivering_and_resubscribes_on_a_changed_component() {
    let listener = app_listener("127.0.0.1:0");
    let app_addr = listener.local_addr().expect("addr");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let _app = AppProcess::start(listener, &["orders"], events_tx);
    let with_callback = |interval: &str, extra: &str| {
        runtime_config(interval, extra).replace(
            "  id: reload-app\n",
            &format!("  id: reload-app\n  grpc_callback: {app_addr}\n"),
        )
    };
    let mut mesh = Mesh::start(&with_callback("100ms", "")).await;
    let mut rt = runtime_client(mesh.addr("runtime")).await;
    publish_until_delivered(&mut rt, &mut events, "first").await;

    // Unrelated edit: delivery goes on on the same subscription.
    let more = "  - { name: cache, type: state.memory }\n";
    assert_eq!(
        mesh.rewrite(&with_callback("100ms", more)).await,
        Reload::Applied
    );
    publish(&mut rt, "second").await;
    let got = within("second event", events.recv()).await;
    assert_eq!(got.map(|(_, d)| d).as_deref(), Some(&b"second"[..]));

    // The pubsub changes: the sidecar resubscribes the app on the new instance by itself.
    assert_eq!(
        mesh.rewrite(&with_callback("150ms", more)).await,
        Reload::Applied
    );
    publish_until_delivered(&mut rt, &mut events, "third").await;
}

const DNS_MESH: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { name: "@route@", match: { prefix: / }, cluster: named }
clusters:
  - name: named
    connect_timeout: "@timeout@"
    endpoints: [{ address: "localhost:@port@" }]
"#;

/// Forwards `[::1]:port` to `127.0.0.1:port` when `localhost` also resolves to ::1 here, so a
/// `localhost:port` endpoint reaches the IPv4 upstream whichever address is picked.
async fn cover_ipv6_localhost(port: u16) {
    let v6 = tokio::net::lookup_host(("localhost", port))
        .await
        .map(|mut a| a.any(|a| a.is_ipv6()))
        .unwrap_or(false);
    if !v6 {
        return;
    }
    let Ok(l) = tokio::net::TcpListener::bind(("::1", port)).await else {
        return;
    };
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn a_dns_named_cluster_serves_through_reloads_under_load() {
    let up = HttpUpstream::start("named").await;
    cover_ipv6_localhost(up.addr.port()).await;
    let port = up.addr.port().to_string();
    let template = |timeout: &str, route: &str| {
        DNS_MESH
            .replace("\"@timeout@\"", timeout)
            .replace("@port@", &port)
            .replace("\"@route@\"", route)
    };
    let mut mesh = Mesh::start(&template("1s", "r1")).await;
    let edge = mesh.addr("edge");
    let r = send(edge, Proto::H1, Req::get("/"))
        .await
        .expect("first request");
    assert_eq!(
        r.status,
        200,
        "a localhost:PORT endpoint is resolved at start: {}",
        r.text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match send(edge, Proto::H1, Req::get("/")).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => {
                            bad.fetch_add(1, Ordering::SeqCst);
                            failures.push(format!("{} {}", r.status, r.text()));
                        }
                        Err(e) => {
                            bad.fetch_add(1, Ordering::SeqCst);
                            failures.push(format!("{e:#}"));
                        }
                    }
                }
                failures
            })
        })
        .collect();
    // Each rewrite changes the cluster itself (rebuilt, DNS names re-used) and the route
    // table (rebuilt, its cluster re-resolved).
    for (i, timeout) in ["2s", "1s", "3s", "1s", "2s"].iter().enumerate() {
        let before = ok.load(Ordering::SeqCst);
        assert_eq!(
            mesh.rewrite(&template(timeout, &format!("r{}", i + 2)))
                .await,
            Reload::Applied
        );
        // Traffic flows between reloads (the load is not starved by them).
        eventually("requests between reloads", STEP_TIMEOUT, || {
            let ok = ok.clone();
            async move { ok.load(Ordering::SeqCst) > before + 20 }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for t in load {
        failures.extend(t.await.expect("load task"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads, e.g. {:?}",
        bad.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst) + bad.load(Ordering::SeqCst),
        failures.iter().take(5).collect::<Vec<_>>()
    );
}

const HEALTH_MESH: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { name: main, match: { prefix: / }, cluster: pool }
              @extra@
clusters:
  - name: pool
    endpoints: [{ address: "@up@" }, { address: "@sick@" }]
    health_check: { type: http, path: /healthz, interval: 3600s, unhealthy_threshold: 1 }
  - name: spare
    endpoints: [{ address: "@up@" }]
"#;

#[tokio::test]
async fn health_state_of_an_unchanged_cluster_survives_a_reload() {
    let up = HttpUpstream::start("up").await;
    let sick = HttpUpstream::start("sick").await;
    sick.set_health(503);
    let config = |extra: &str| {
        subst(HEALTH_MESH, &[("up", up.addr), ("sick", sick.addr)]).replace("@extra@", extra)
    };
    let mut mesh = Mesh::start(&config("")).await;
    let edge = mesh.addr("edge");
    // The first health round (at start) marks `sick` down. It recovers now, but the next
    // round is an hour away: only the kept state says it is down, and a cluster rebuilt by
    // the reload would check again at once and send it traffic.
    eventually("sick is checked", STEP_TIMEOUT, || async {
        sick.health_hits() > 0
    })
    .await;
    let sick_ref = &sick;
    eventually("sick is marked down", STEP_TIMEOUT, || async move {
        let before = sick_ref.hits();
        for _ in 0..10 {
            match send(edge, Proto::H1, Req::get("/")).await {
                Ok(r) if r.status == 200 => {}
                _ => return false,
            }
        }
        sick_ref.hits() == before
    })
    .await;
    sick.set_health(200);
    let extra = r#"- { name: spare, match: { prefix: /spare/ }, cluster: spare }"#;
    assert_eq!(mesh.rewrite(&config(extra)).await, Reload::Applied);
    let r = send(edge, Proto::H1, Req::get("/spare/x"))
        .await
        .expect("request");
    assert_eq!(r.status, 200, "the added route serves: {}", r.text());
    let before = sick.hits();
    for i in 0..20 {
        let r = send(edge, Proto::H1, Req::get("/")).await.expect("request");
        assert_eq!(r.status, 200, "request {i} after the reload: {}", r.text());
    }
    assert_eq!(
        sick.hits(),
        before,
        "the endpoint marked down before the reload got traffic after it: health state was reset"
    );
    assert_eq!(
        sick.health_hits(),
        1,
        "no new health round after the reload"
    );
}

const METRICS_MESH: &str = r#"
listeners:
  - name: edge
    address: ${edge}
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - { name: keep, match: { prefix: /keep }, cluster: a }
              @routes@
clusters:
  - name: a
    endpoints: [{ address: "@up@" }]
@clusters@
"#;

#[tokio::test]
async fn removed_routes_and_clusters_lose_their_metric_series() {
    let up = HttpUpstream::start("up").await;
    let config = |routes: &str, clusters: &str| {
        subst(METRICS_MESH, &[("up", up.addr)])
            .replace("@routes@", routes)
            .replace("@clusters@", clusters)
    };
    let gone_route = r#"- { name: gone, match: { prefix: /gone }, cluster: b }"#;
    let gone_cluster = format!(
        "  - name: b\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr
    );
    let mut mesh = Mesh::start(&config(gone_route, &gone_cluster)).await;
    let edge = mesh.addr("edge");
    for path in ["/keep", "/gone"] {
        let r = send(edge, Proto::H1, Req::get(path))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let keep = "mecha_route_requests_total{route=\"all/keep\",class=\"2xx\"}";
    let gone = "mecha_route_requests_total{route=\"all/gone\",class=\"2xx\"}";
    mesh.wait_metric(gone, |v| v >= 1.0).await;
    mesh.wait_metric(keep, |v| v >= 1.0).await;
    assert_eq!(mesh.rewrite(&config("", "")).await, Reload::Applied);
    let text = mesh.metrics().await;
    assert!(
        !text.contains("route=\"all/gone\""),
        "removed route still reported:\n{text}"
    );
    assert!(
        !text.contains("cluster=\"b\""),
        "removed cluster still reported:\n{text}"
    );
    assert!(
        mecha_integration::metric_value(&text, keep).is_some_and(|v| v >= 1.0),
        "the kept route keeps its series:\n{text}"
    );
    let r = send(edge, Proto::H1, Req::get("/gone"))
        .await
        .expect("request");
    assert_eq!(r.status, 404, "the removed route is gone: {}", r.text());
}

fn resource<'a>(dump: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|k| k["kind"] == kind))
        .and_then(|k| k[kind].as_array())
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in /config_dump: {dump:#}"))
}

#[tokio::test]
async fn config_dump_shows_versions_in_place_endpoint_updates_and_rejected_updates() {
    let up = HttpUpstream::start("up").await;
    let up2 = HttpUpstream::start("up2").await;
    let config = |endpoints: &str| {
        subst(METRICS_MESH, &[("up", up.addr)])
            .replace(
                "@routes@",
                r#"- { name: b, match: { prefix: /b }, cluster: b }"#,
            )
            .replace(
                "@clusters@",
                &format!("  - name: b\n    endpoints: [{endpoints}]\n"),
            )
    };
    let one = format!("{{ address: \"{}\" }}", up.addr);
    let two = format!("{one}, {{ address: \"{}\" }}", up2.addr);
    let mut mesh = Mesh::start(&config(&one)).await;
    let edge = mesh.addr("edge");
    let first = mesh.config_dump().await;
    let v1 = first["version_info"].as_str().expect("version").to_owned();
    assert_eq!(
        resource(&first, "clusters", "b")["version_info"],
        v1.as_str()
    );
    assert_eq!(resource(&first, "clusters", "b")["endpoint_count"], 1);
    assert!(first["last_rejected_update"].is_null());

    // Endpoints alone change: the cluster adopts them in place and gets the new version;
    // the other cluster keeps its version.
    assert_eq!(mesh.rewrite(&config(&two)).await, Reload::Applied);
    let second = mesh.config_dump().await;
    let v2 = second["version_info"].as_str().expect("version").to_owned();
    assert_ne!(v1, v2);
    assert_eq!(
        resource(&second, "clusters", "b")["version_info"],
        v2.as_str()
    );
    assert_eq!(resource(&second, "clusters", "b")["endpoint_count"], 2);
    assert_eq!(
        resource(&second, "clusters", "a")["version_info"],
        v1.as_str()
    );
    assert_eq!(
        resource(&second, "listeners", "edge")["version_info"],
        v1.as_str()
    );
    eventually("the added endpoint serves", STEP_TIMEOUT, || async {
        let _ = send(edge, Proto::H1, Req::get("/b")).await;
        up2.hits() > 0
    })
    .await;

    // An invalid update (unknown cluster) and one that needs a restart change nothing.
    let broken = config(&two).replace("cluster: b }", "cluster: nope }");
    assert_eq!(mesh.rewrite(&broken).await, Reload::Rejected);
    let third = mesh.config_dump().await;
    assert_eq!(
        third["version_info"],
        v2.as_str(),
        "the running config stays"
    );
    let errors = third["last_rejected_update"]["errors"].to_string();
    assert!(
        errors.contains("routes[1].cluster: unknown cluster \\\"nope\\\""),
        "{third:#}"
    );
    let more_threads = format!("threads: 2\n{}", config(&two));
    assert_eq!(mesh.rewrite(&more_threads).await, Reload::Rejected);
    let fourth = mesh.config_dump().await;
    assert!(
        fourth["last_rejected_update"]["errors"]
            .to_string()
            .contains("needs a restart"),
        "{fourth:#}"
    );
    let r = send(edge, Proto::H1, Req::get("/b"))
        .await
        .expect("request");
    assert_eq!(r.status, 200, "still serving: {}", r.text());
    let rejected = mesh
        .metric("mecha_config_updates_total{source=\"file\",result=\"rejected\"}")
        .await;
    assert_eq!(rejected, 2.0);
}

/// An app listing `topics` on `pubsub`, taking every event; serves until the handle drops.
struct TopicsApp {
    topics: Vec<String>,
    events: mpsc::UnboundedSender<(String, Vec<u8>)>,
}

#[tonic::async_trait]
impl AppCallback for TopicsApp {
    async fn list_topic_subscriptions(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions: self
                .topics
                .iter()
                .map(|t| TopicSubscription {
                    pubsub_name: "pubsub".into(),
                    topic: t.clone(),
                    metadata: HashMap::new(),
                })
                .collect(),
        }))
    }

    async fn on_topic_event(
        &self,
        request: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        let e = request.into_inner();
        let _ = self.events.send((e.topic, e.data));
        Ok(Response::new(TopicEventResponse {
            status: TopicEventResponseStatus::Success as i32,
        }))
    }
}

/// A running app process, as far as the sidecar can tell: its own runtime, so stopping it
/// closes every connection, as a process exit would.
struct AppProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AppProcess {
    fn start(
        listener: std::net::TcpListener,
        topics: &[&str],
        events: mpsc::UnboundedSender<(String, Vec<u8>)>,
    ) -> Self {
        let app = TopicsApp {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            events,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let serve = tonic::transport::Server::builder()
                    .add_service(AppCallbackServer::new(app))
                    .serve_with_incoming(TcpListenerStream::new(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: the sockets close.
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn app_listener(addr: &str) -> std::net::TcpListener {
    let l = std::net::TcpListener::bind(addr).expect("bind the app");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

async fn publish_to(rt: &mut RuntimeClient<Channel>, topic: &str, data: &str) {
    within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            data_content_type: "text/plain".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("PublishEvent: {}", describe(&s)));
}

#[tokio::test]
async fn an_app_that_comes_back_with_other_topics_is_served_them() {
    let listener = app_listener("127.0.0.1:0");
    let app_addr = listener.local_addr().expect("addr");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut first_app = AppProcess::start(listener, &["old"], events_tx.clone());
    // Listing again periodically is an hour away: only the app coming back triggers it.
    let config = runtime_config("100ms", "").replace(
        "  id: reload-app\n",
        &format!(
            "  id: reload-app\n  grpc_callback: {app_addr}\n  list_subscriptions_interval: 1h\n"
        ),
    );
    let mesh = Mesh::start(&config).await;
    let mut rt = runtime_client(mesh.addr("runtime")).await;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        publish_to(&mut rt, "old", "o1").await;
        if let Ok(Some((t, _))) =
            tokio::time::timeout(Duration::from_millis(250), events.recv()).await
        {
            assert_eq!(t, "old");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old never delivered"
        );
    }

    // The app goes away, and comes back on the same address subscribing to `new` instead.
    first_app.kill();
    publish_to(&mut rt, "old", "while-away").await;
    let _second_app = AppProcess::start(app_listener(&app_addr.to_string()), &["new"], events_tx);
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        publish_to(&mut rt, "new", "n1").await;
        match tokio::time::timeout(Duration::from_millis(250), events.recv()).await {
            Ok(Some((t, d))) if t == "new" && d == b"n1" => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the returning app's new topic was never served"
        );
    }
}
