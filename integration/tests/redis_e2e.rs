//! End-to-end tests of the Redis components through the real sidecar (`target/debug/mecha`),
//! driven with the generated Layotto `Runtime` client (issue 4, "Faults" and "Tests").
//!
//! - The API on Redis: state with ETags, pub/sub delivery, RETRY and backlog, lock ownership,
//!   sequencer order, configuration save/get/subscribe.
//! - Faults on a redis-server of the test's own (AOF, `appendfsync always`): Redis down (and
//!   stalled by SIGSTOP) → UNAVAILABLE naming component and address, `/ready` non-200,
//!   recovery in the same process; a sidecar started while Redis is down; subscriptions that
//!   outlive a Redis restart (pending events included); no acknowledged publish lost across a
//!   Redis crash, before it or while publishing through it.
//! - The sidecar killed (SIGKILL) mid-consumption: its unacknowledged events go to its
//!   successor with the same `consumerID`; also to a replica; also when only the app's stream
//!   closes.
//! - Two sidecars on one Redis: configuration pushed across, lock ownership across, ETags and
//!   sequencer order across.
//!
//! Tests that never stop Redis use [`shared_host`] (`REDIS_URL`, or one throw-away server per
//! run) and isolate themselves with unique key prefixes, topics, consumer ids and app ids.
//! Every wait is bounded; nothing asserts on speed. The tests run on a multi-threaded runtime
//! because stopping and starting redis-server blocks (in `block_in_place`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::sequencer_options::AutoIncrement;
use mecha_integration::pb::state_options::StateConcurrency;
use mecha_integration::pb::topic_event_response::TopicEventResponseStatus;
use mecha_integration::pb::{
    unlock_response, ConfigurationItem, Etag, GetConfigurationRequest, GetNextIdRequest,
    GetStateRequest, PublishEventRequest, SaveConfigurationRequest, SaveStateRequest,
    SequencerOptions, StateItem, StateOptions, TryLockRequest, UnlockRequest,
};
use mecha_integration::redis_support::{
    shared_host, sigkill, unique, wait_ready_status, BareSidecar, ConfigWatch, RedisComponents,
    RedisServer, TopicSubscriber,
};
use mecha_integration::{describe, within, Sidecar, STEP_TIMEOUT};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};

const STATE: &str = "statestore";
const PUBSUB: &str = "pubsub";
const LOCKS: &str = "lockstore";
const SEQUENCER: &str = "sequencer";
const CONFIG: &str = "configstore";

/// A call made while Redis is down must have failed by then (the components' timeout is 1s):
/// a guard against hanging, not a speed assertion.
const DOWN_BOUND: Duration = Duration::from_secs(10);
/// How long `/ready` gets to change its answer after Redis goes or comes back.
const READY_BOUND: Duration = Duration::from_secs(30);

type Rt = RuntimeClient<Channel>;

async fn sidecar(components: &str) -> Sidecar {
    Sidecar::builder().components(components).start().await
}

/// The value of a call that must succeed.
fn ok<T>(what: &str, res: Result<T, Status>) -> T {
    res.unwrap_or_else(|s| panic!("{what}: {}", describe(&s)))
}

// === calls ===

async fn save_state(
    rt: &mut Rt,
    key: &str,
    value: &str,
    etag: Option<&str>,
    concurrency: StateConcurrency,
) -> Result<(), Status> {
    let item = StateItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        etag: etag.map(|e| Etag { value: e.into() }),
        metadata: HashMap::new(),
        options: Some(StateOptions {
            concurrency: concurrency as i32,
            consistency: 0,
        }),
    };
    within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: STATE.into(),
            states: vec![item],
        }),
    )
    .await
    .map(drop)
}

async fn save(rt: &mut Rt, key: &str, value: &str) -> Result<(), Status> {
    save_state(
        rt,
        key,
        value,
        None,
        StateConcurrency::ConcurrencyUnspecified,
    )
    .await
}

/// (value, etag); a missing key is ("", "").
async fn get_state(rt: &mut Rt, key: &str) -> Result<(String, String), Status> {
    let r = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: STATE.into(),
            key: key.into(),
            ..Default::default()
        }),
    )
    .await?
    .into_inner();
    Ok((String::from_utf8_lossy(&r.data).into_owned(), r.etag))
}

async fn publish(rt: &mut Rt, topic: &str, data: &str) -> Result<(), Status> {
    within(
        "PublishEvent",
        rt.publish_event(PublishEventRequest {
            pubsub_name: PUBSUB.into(),
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::from([("origin".to_owned(), "redis-e2e".to_owned())]),
        }),
    )
    .await
    .map(drop)
}

async fn try_lock(rt: &mut Rt, resource: &str, owner: &str) -> Result<bool, Status> {
    within(
        "TryLock",
        rt.try_lock(TryLockRequest {
            store_name: LOCKS.into(),
            resource_id: resource.into(),
            lock_owner: owner.into(),
            expire: 30,
        }),
    )
    .await
    .map(|r| r.into_inner().success)
}

async fn unlock(
    rt: &mut Rt,
    resource: &str,
    owner: &str,
) -> Result<unlock_response::Status, Status> {
    let r = within(
        "Unlock",
        rt.unlock(UnlockRequest {
            store_name: LOCKS.into(),
            resource_id: resource.into(),
            lock_owner: owner.into(),
        }),
    )
    .await?
    .into_inner();
    Ok(unlock_response::Status::try_from(r.status).expect("a known unlock status"))
}

async fn next_id(
    rt: &mut Rt,
    key: &str,
    increment: AutoIncrement,
    metadata: HashMap<String, String>,
) -> Result<i64, Status> {
    within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: SEQUENCER.into(),
            key: key.into(),
            options: Some(SequencerOptions {
                increment: increment as i32,
            }),
            metadata,
        }),
    )
    .await
    .map(|r| r.into_inner().next_id)
}

async fn strong_id(rt: &mut Rt, key: &str) -> Result<i64, Status> {
    next_id(rt, key, AutoIncrement::Strong, HashMap::new()).await
}

fn citem(key: &str, content: &str) -> ConfigurationItem {
    ConfigurationItem {
        key: key.into(),
        content: content.into(),
        group: "g".into(),
        label: "l".into(),
        tags: HashMap::from([("owner".to_owned(), "redis-e2e".to_owned())]),
        metadata: HashMap::new(),
    }
}

async fn save_config(rt: &mut Rt, app: &str, key: &str, content: &str) -> Result<(), Status> {
    within(
        "SaveConfiguration",
        rt.save_configuration(SaveConfigurationRequest {
            store_name: CONFIG.into(),
            app_id: app.into(),
            items: vec![citem(key, content)],
            metadata: HashMap::new(),
        }),
    )
    .await
    .map(drop)
}

/// The items of `app` (sorted by key), all of them when `keys` is empty.
async fn get_config(
    rt: &mut Rt,
    app: &str,
    keys: &[&str],
) -> Result<Vec<ConfigurationItem>, Status> {
    let mut items = within(
        "GetConfiguration",
        rt.get_configuration(GetConfigurationRequest {
            store_name: CONFIG.into(),
            app_id: app.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        }),
    )
    .await?
    .into_inner()
    .items;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(items)
}

/// The API has no "subscribed" acknowledgement, so `watch` may not be registered yet: save
/// `key` through `saver` until a push arrives (bounded), then read pushes up to the last
/// probe's, so that from here on every change is pushed and nothing stale is queued.
async fn probe_config(saver: &mut Rt, watch: &mut ConfigWatch, app: &str, key: &str) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut n = 0;
    let first = loop {
        n += 1;
        ok(
            "SaveConfiguration (probe)",
            save_config(saver, app, key, &format!("probe-{n}")).await,
        );
        if let Some(c) = watch.next_change(Duration::from_millis(500)).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no configuration change was pushed within {STEP_TIMEOUT:?}"
        );
    };
    let last = format!("probe-{n}");
    assert!(
        first
            .items
            .iter()
            .any(|i| i.key == key && i.content.starts_with("probe-")),
        "{first:?}"
    );
    if !first
        .items
        .iter()
        .any(|i| i.key == key && i.content == last)
    {
        watch.wait_for(key, &last).await;
    }
}

/// Runs a call made while Redis is down: it must end (bounded) with UNAVAILABLE, and the
/// message must name the component and the Redis address.
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    component: &str,
    addr: &str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) {
    let started = Instant::now();
    let res = tokio::time::timeout(DOWN_BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("{what} while redis is down: no answer within {DOWN_BOUND:?}"));
    let took = started.elapsed();
    let status = match res {
        Ok(v) => panic!("{what} succeeded while redis is down: {v:?}"),
        Err(s) => s,
    };
    eprintln!(
        "{what} while redis is down ({took:?}): {}",
        describe(&status)
    );
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "{what}: {}",
        describe(&status)
    );
    assert!(
        status.message().contains(&format!("{component:?}")) && status.message().contains(addr),
        "{what}: the message names neither component {component:?} nor address {addr}: {}",
        describe(&status)
    );
}

/// Reads events until every one of `want` (data) has arrived at least once (duplicates and
/// redeliveries allowed), answering each with `answer` when given; returns id → data of
/// what arrived.
async fn collect(
    sub: &mut TopicSubscriber,
    want: &HashSet<String>,
    answer: Option<TopicEventResponseStatus>,
) -> HashMap<String, String> {
    let mut got: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + STEP_TIMEOUT * 2;
    while !want.iter().all(|w| seen.contains(w)) {
        assert!(
            Instant::now() < deadline,
            "still missing {:?} (have {} of {})",
            want.difference(&seen).collect::<Vec<_>>(),
            seen.len(),
            want.len()
        );
        let ev = sub.next_event().await;
        let data = String::from_utf8_lossy(&ev.data).into_owned();
        if let Some(a) = answer {
            sub.answer(&ev.id, a).await;
        }
        seen.insert(data.clone());
        got.insert(ev.id, data);
    }
    got
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

// === the API on Redis ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_save_get_and_etag_conflicts() {
    let sc = sidecar(&RedisComponents::new(&shared_host()).yaml()).await;
    let mut rt = sc.client().await;

    assert_eq!(
        ok("GetState missing", get_state(&mut rt, "k").await),
        (String::new(), String::new()),
        "a missing key is empty data and etag"
    );
    ok("SaveState v1", save(&mut rt, "k", "v1").await);
    let (value, etag1) = ok("GetState v1", get_state(&mut rt, "k").await);
    assert_eq!(value, "v1");
    assert!(!etag1.is_empty(), "a saved item has an etag");

    // A write with the current ETag succeeds and moves the ETag on.
    ok(
        "SaveState v2 with the current etag",
        save_state(
            &mut rt,
            "k",
            "v2",
            Some(&etag1),
            StateConcurrency::ConcurrencyUnspecified,
        )
        .await,
    );
    let (value, etag2) = ok("GetState v2", get_state(&mut rt, "k").await);
    assert_eq!(value, "v2");
    assert_ne!(etag2, etag1);

    // The stale ETag: ABORTED, nothing written.
    let err = save_state(
        &mut rt,
        "k",
        "v3",
        Some(&etag1),
        StateConcurrency::ConcurrencyUnspecified,
    )
    .await
    .expect_err("a stale etag");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert!(
        err.message().contains("\"k\""),
        "names the key: {}",
        describe(&err)
    );
    // First-write on an existing key: ABORTED too.
    let err = save_state(
        &mut rt,
        "k",
        "v3",
        None,
        StateConcurrency::ConcurrencyFirstWrite,
    )
    .await
    .expect_err("first-write on an existing key");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    // An ETag this store never issued: INVALID_ARGUMENT.
    let err = save_state(
        &mut rt,
        "k",
        "v3",
        Some("not-a-version"),
        StateConcurrency::ConcurrencyUnspecified,
    )
    .await
    .expect_err("a malformed etag");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert_eq!(
        ok("GetState after conflicts", get_state(&mut rt, "k").await),
        ("v2".to_owned(), etag2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivery_retry_and_backlog() {
    let comps = RedisComponents::new(&shared_host())
        .pubsub_meta("processingTimeout", "1s")
        .pubsub_meta("redeliverInterval", "200ms");
    let sc = sidecar(&comps.yaml()).await;
    let mut rt = sc.client().await;
    let topic = unique("orders");

    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    ok(
        "PublishEvent first",
        publish(&mut rt, &topic, "first").await,
    );
    let ev = sub.next_event().await;
    assert_eq!(ev.data, b"first");
    assert_eq!(
        (ev.topic.as_str(), ev.pubsub_name.as_str()),
        (topic.as_str(), PUBSUB)
    );
    assert_eq!(ev.data_content_type, "text/plain");
    assert_eq!(
        ev.metadata.get("origin").map(String::as_str),
        Some("redis-e2e"),
        "{ev:?}"
    );
    assert!(!ev.id.is_empty());
    sub.answer(&ev.id, TopicEventResponseStatus::Success).await;

    // RETRY: the same event (same id) comes again.
    ok(
        "PublishEvent again",
        publish(&mut rt, &topic, "again").await,
    );
    let ev = sub.next_event().await;
    assert_eq!(ev.data, b"again");
    sub.answer(&ev.id, TopicEventResponseStatus::Retry).await;
    let again = sub.next_event().await;
    assert_eq!(
        (again.id.as_str(), again.data.as_slice()),
        (ev.id.as_str(), &b"again"[..])
    );
    sub.answer(&again.id, TopicEventResponseStatus::Success)
        .await;

    // Events published to a topic before anyone subscribed are not lost: the consumer group
    // starts at the beginning of the stream.
    let early = unique("early");
    for i in 0..3 {
        ok(
            "PublishEvent early",
            publish(&mut rt, &early, &format!("early-{i}")).await,
        );
    }
    let mut late = TopicSubscriber::open(&mut rt, PUBSUB, &early, HashMap::new()).await;
    let want: HashSet<String> = (0..3).map(|i| format!("early-{i}")).collect();
    collect(&mut late, &want, Some(TopicEventResponseStatus::Success)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_ownership_and_sequencer_order() {
    use unlock_response::Status as U;
    let sc = sidecar(&RedisComponents::new(&shared_host()).yaml()).await;
    let mut rt = sc.client().await;

    assert!(ok("TryLock a", try_lock(&mut rt, "res", "owner-a").await));
    assert!(
        !ok("TryLock b", try_lock(&mut rt, "res", "owner-b").await),
        "a held lock is not granted to another owner"
    );
    assert_eq!(
        ok("Unlock b", unlock(&mut rt, "res", "owner-b").await),
        U::LockBelongToOthers
    );
    assert_eq!(
        ok("Unlock a", unlock(&mut rt, "res", "owner-a").await),
        U::Success
    );
    assert_eq!(
        ok("Unlock a again", unlock(&mut rt, "res", "owner-a").await),
        U::LockUnexist
    );
    assert!(ok(
        "TryLock b after unlock",
        try_lock(&mut rt, "res", "owner-b").await
    ));
    assert_eq!(
        ok("Unlock b", unlock(&mut rt, "res", "owner-b").await),
        U::Success
    );

    // STRONG and WEAK ids of one key only grow.
    let mut last = 0;
    for i in 0..10 {
        let increment = if i % 2 == 0 {
            AutoIncrement::Strong
        } else {
            AutoIncrement::Weak
        };
        let id = ok(
            "GetNextId",
            next_id(&mut rt, "orders", increment, HashMap::new()).await,
        );
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
    // Layotto's biggerThan, on the call.
    let id = ok(
        "GetNextId biggerThan",
        next_id(
            &mut rt,
            "big",
            AutoIncrement::Strong,
            HashMap::from([("biggerThan.big".to_owned(), "1000".to_owned())]),
        )
        .await,
    );
    assert!(id > 1000, "biggerThan.big=1000 gave {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_save_get_and_subscribe() {
    let sc = sidecar(&RedisComponents::new(&shared_host()).yaml()).await;
    let mut rt = sc.client().await;
    let app = unique("shop");

    ok(
        "SaveConfiguration",
        save_config(&mut rt, &app, "db.url", "postgres://x").await,
    );
    ok(
        "SaveConfiguration",
        save_config(&mut rt, &app, "feature.x", "on").await,
    );
    let all = ok("GetConfiguration", get_config(&mut rt, &app, &[]).await);
    assert_eq!(
        all.iter()
            .map(|i| (
                i.key.as_str(),
                i.content.as_str(),
                i.group.as_str(),
                i.label.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("db.url", "postgres://x", "g", "l"),
            ("feature.x", "on", "g", "l")
        ]
    );
    assert_eq!(
        all[0].tags.get("owner").map(String::as_str),
        Some("redis-e2e")
    );
    let one = ok(
        "GetConfiguration one key",
        get_config(&mut rt, &app, &["feature.x"]).await,
    );
    assert_eq!(one.len(), 1, "{one:?}");

    let mut watch = ConfigWatch::open(&mut rt, CONFIG, &app, &["watched"]).await;
    probe_config(&mut rt, &mut watch, &app, "watched").await;
    ok(
        "SaveConfiguration unwatched",
        save_config(&mut rt, &app, "unwatched", "x").await,
    );
    ok(
        "SaveConfiguration watched",
        save_config(&mut rt, &app, "watched", "v2").await,
    );
    let c = watch.wait_for("watched", "v2").await;
    assert_eq!(
        (c.store_name.as_str(), c.app_id.as_str()),
        (CONFIG, app.as_str())
    );
    assert!(
        c.items.iter().all(|i| i.key == "watched"),
        "only the watched key is pushed: {c:?}"
    );
}

// === faults: Redis down, Redis back ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_not_ready_then_recovers_in_the_same_process() {
    let mut server = RedisServer::start();
    let host = server.host();
    // The shipped configs/redis.yaml components, on this test's own Redis.
    let sc = sidecar(&RedisComponents::shipped(&host)).await;
    let pid = sc.pid();
    let mut rt = sc.client().await;
    let app = unique("app");
    let topic = unique("topic");

    ok("SaveState before", save(&mut rt, "k", "before").await);
    let id_before = ok("GetNextId before", strong_id(&mut rt, "seq").await);
    ok(
        "SaveConfiguration before",
        save_config(&mut rt, &app, "c", "before").await,
    );

    blocking(|| server.stop());

    expect_unavailable("GetState", STATE, &host, get_state(&mut rt, "k")).await;
    expect_unavailable("SaveState", STATE, &host, save(&mut rt, "k", "during")).await;
    expect_unavailable(
        "PublishEvent",
        PUBSUB,
        &host,
        publish(&mut rt, &topic, "during"),
    )
    .await;
    expect_unavailable("TryLock", LOCKS, &host, try_lock(&mut rt, "res", "owner")).await;
    expect_unavailable("Unlock", LOCKS, &host, unlock(&mut rt, "res", "owner")).await;
    expect_unavailable("GetNextId", SEQUENCER, &host, strong_id(&mut rt, "seq")).await;
    expect_unavailable(
        "GetConfiguration",
        CONFIG,
        &host,
        get_config(&mut rt, &app, &[]),
    )
    .await;
    expect_unavailable(
        "SaveConfiguration",
        CONFIG,
        &host,
        save_config(&mut rt, &app, "c", "during"),
    )
    .await;

    expect_unavailable("SubscribeConfiguration", CONFIG, &host, async {
        Err::<(), _>(ConfigWatch::open_err(&mut rt, CONFIG, &app, &["c"]).await)
    })
    .await;

    let not_ready = wait_ready_status(sc.admin_addr, false, READY_BOUND).await;
    eprintln!(
        "/ready while redis is down: {} {}",
        not_ready.status, not_ready.body
    );
    for name in [STATE, PUBSUB, LOCKS, SEQUENCER, CONFIG] {
        assert!(
            not_ready.body.contains(name),
            "/ready does not name {name}: {}",
            not_ready.body
        );
    }
    assert!(
        not_ready.body.contains(&host),
        "/ready does not name {host}: {}",
        not_ready.body
    );

    blocking(|| server.start_again());
    wait_ready_status(sc.admin_addr, true, READY_BOUND).await;

    // Same process, every building block works again; what was acknowledged before is there
    // (AOF), what failed while down was not applied.
    assert_eq!(sc.pid(), pid);
    assert_eq!(
        ok("GetState after", get_state(&mut rt, "k").await).0,
        "before"
    );
    ok("SaveState after", save(&mut rt, "k", "after").await);
    assert_eq!(
        ok("GetState after save", get_state(&mut rt, "k").await).0,
        "after"
    );
    ok(
        "PublishEvent after",
        publish(&mut rt, &topic, "after").await,
    );
    assert!(ok("TryLock after", try_lock(&mut rt, "res", "owner").await));
    assert_eq!(
        ok("Unlock after", unlock(&mut rt, "res", "owner").await),
        unlock_response::Status::Success
    );
    let id_after = ok("GetNextId after", strong_id(&mut rt, "seq").await);
    assert!(id_after > id_before, "id {id_after} after {id_before}");
    let items = ok(
        "GetConfiguration after",
        get_config(&mut rt, &app, &[]).await,
    );
    assert_eq!(
        items.iter().map(|i| i.content.as_str()).collect::<Vec<_>>(),
        ["before"]
    );
    ok(
        "SaveConfiguration after",
        save_config(&mut rt, &app, "c", "after").await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_outlive_a_redis_restart() {
    let mut server = RedisServer::start();
    let comps = RedisComponents::new(&server.host())
        .pubsub_meta("processingTimeout", "1s")
        .pubsub_meta("redeliverInterval", "200ms");
    let sc = sidecar(&comps.yaml()).await;
    let mut rt = sc.client().await;
    let topic = unique("topic");
    let app = unique("app");

    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    ok(
        "PublishEvent before",
        publish(&mut rt, &topic, "before").await,
    );
    let ev = sub.next_event().await;
    assert_eq!(ev.data, b"before");
    sub.answer(&ev.id, TopicEventResponseStatus::Success).await;
    // Delivered and left unanswered across the restart: it must come again (its pending
    // entry is in the AOF).
    ok(
        "PublishEvent pending",
        publish(&mut rt, &topic, "pending").await,
    );
    let pending = sub.next_event().await;
    assert_eq!(pending.data, b"pending");
    let mut watch = ConfigWatch::open(&mut rt, CONFIG, &app, &["watched"]).await;
    probe_config(&mut rt, &mut watch, &app, "watched").await;

    blocking(|| server.stop());
    wait_ready_status(sc.admin_addr, false, READY_BOUND).await;
    // A subscription opened while Redis is down starts anyway, and reads once it is back.
    let topic2 = unique("topic");
    let mut sub2 = TopicSubscriber::open(&mut rt, PUBSUB, &topic2, HashMap::new()).await;
    blocking(|| server.start_again());
    wait_ready_status(sc.admin_addr, true, READY_BOUND).await;

    // The streams opened before the outage deliver what comes after it, and again what was
    // pending.
    ok(
        "PublishEvent after",
        publish(&mut rt, &topic, "after").await,
    );
    let want = HashSet::from(["after".to_owned(), "pending".to_owned()]);
    let got = collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
    assert_eq!(
        got.get(&pending.id).map(String::as_str),
        Some("pending"),
        "the pending event came back with its id: {got:?}"
    );
    let want = HashSet::from(["after".to_owned()]);
    ok(
        "PublishEvent to topic2",
        publish(&mut rt, &topic2, "after").await,
    );
    collect(&mut sub2, &want, Some(TopicEventResponseStatus::Success)).await;
    ok(
        "SaveConfiguration after",
        save_config(&mut rt, &app, "watched", "after").await,
    );
    watch.wait_for("watched", "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_unavailable_and_late_replies_are_not_mixed_up() {
    let server = RedisServer::start();
    let host = server.host();
    let sc = sidecar(&RedisComponents::new(&host).yaml()).await;
    let mut rt = sc.client().await;
    let app = unique("app");
    let topic = unique("topic");
    ok("SaveState k1", save(&mut rt, "k1", "v1").await);
    ok("SaveState k2", save(&mut rt, "k2", "v2").await);
    let id_before = ok("GetNextId before", strong_id(&mut rt, "seq").await);

    // SIGSTOP: connections open, nothing answers. Calls give up at their deadline.
    server.pause();
    expect_unavailable("GetState", STATE, &host, get_state(&mut rt, "k1")).await;
    expect_unavailable("SaveState", STATE, &host, save(&mut rt, "k-during", "x")).await;
    expect_unavailable("PublishEvent", PUBSUB, &host, publish(&mut rt, &topic, "x")).await;
    expect_unavailable(
        "TryLock",
        LOCKS,
        &host,
        try_lock(&mut rt, "res-during", "o"),
    )
    .await;
    expect_unavailable("GetNextId", SEQUENCER, &host, strong_id(&mut rt, "seq")).await;
    expect_unavailable(
        "GetConfiguration",
        CONFIG,
        &host,
        get_config(&mut rt, &app, &[]),
    )
    .await;
    wait_ready_status(sc.admin_addr, false, READY_BOUND).await;

    // SIGCONT: Redis answers the commands queued meanwhile; those late replies must not be
    // taken for the answers of later calls.
    server.resume();
    wait_ready_status(sc.admin_addr, true, READY_BOUND).await;
    for _ in 0..3 {
        let (mut r1, mut r2) = (rt.clone(), rt.clone());
        let (a, b) = tokio::join!(get_state(&mut r1, "k1"), get_state(&mut r2, "k2"));
        assert_eq!(ok("GetState k1", a).0, "v1");
        assert_eq!(ok("GetState k2", b).0, "v2");
    }
    let id_after = ok("GetNextId after", strong_id(&mut rt, "seq").await);
    assert!(id_after > id_before, "id {id_after} after {id_before}");
    assert!(ok(
        "TryLock after",
        try_lock(&mut rt, "res-after", "o").await
    ));
    ok(
        "SaveConfiguration after",
        save_config(&mut rt, &app, "c", "after").await,
    );
    let items = ok(
        "GetConfiguration after",
        get_config(&mut rt, &app, &[]).await,
    );
    assert_eq!(
        items.iter().map(|i| i.content.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_while_redis_is_down_works_once_it_is_up() {
    let mut server = RedisServer::start();
    let host = server.host();
    blocking(|| server.stop());
    let mut sc = BareSidecar::start(&RedisComponents::new(&host).yaml()).await;
    let mut rt = sc.client().await;
    let topic = unique("topic");

    let not_ready = wait_ready_status(sc.admin_addr, false, READY_BOUND).await;
    assert!(not_ready.body.contains(STATE), "{}", not_ready.body);
    expect_unavailable("GetState", STATE, &host, get_state(&mut rt, "k")).await;
    // A subscription opened while Redis is down starts anyway.
    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;

    blocking(|| server.start_again());
    wait_ready_status(sc.admin_addr, true, READY_BOUND).await;
    assert!(sc.is_running());
    ok("SaveState", save(&mut rt, "k", "v").await);
    assert_eq!(ok("GetState", get_state(&mut rt, "k").await).0, "v");
    ok("PublishEvent", publish(&mut rt, &topic, "hello").await);
    let want = HashSet::from(["hello".to_owned()]);
    collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
}

// === faults: the sidecar killed mid-consumption ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_are_redelivered_after_the_sidecar_is_killed() {
    const N: usize = 5;
    let comps = RedisComponents::new(&shared_host())
        .pubsub_meta("processingTimeout", "1s")
        .pubsub_meta("redeliverInterval", "200ms");
    let yaml = comps.yaml();
    let topic = unique("jobs");
    let want: HashSet<String> = (0..N).map(|i| format!("job-{i}")).collect();

    let mut first = sidecar(&yaml).await;
    let mut rt = first.client().await;
    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    for w in &want {
        ok("PublishEvent", publish(&mut rt, &topic, w).await);
    }
    // Received, never answered.
    let delivered = collect(&mut sub, &want, None).await;
    sigkill(&mut first).await;
    drop((sub, rt, first));

    // A new sidecar with the same consumerID gets them again, with the same ids.
    let second = sidecar(&yaml).await;
    let mut rt = second.client().await;
    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    let again = collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
    for (id, data) in &again {
        assert_eq!(
            delivered.get(id),
            Some(data),
            "redelivered {id}={data} was not among the first deliveries {delivered:?} \
             (consumer {})",
            comps.consumer_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_closed_stream_go_to_the_next_stream() {
    const N: usize = 3;
    let comps = RedisComponents::new(&shared_host())
        .pubsub_meta("processingTimeout", "1s")
        .pubsub_meta("redeliverInterval", "200ms");
    let sc = sidecar(&comps.yaml()).await;
    let mut rt = sc.client().await;
    let topic = unique("jobs");
    let want: HashSet<String> = (0..N).map(|i| format!("job-{i}")).collect();

    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    for w in &want {
        ok("PublishEvent", publish(&mut rt, &topic, w).await);
    }
    let delivered = collect(&mut sub, &want, None).await;
    // The app goes away without answering (its stream closes; the sidecar stays).
    drop(sub);
    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    let again = collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
    for (id, data) in &again {
        assert_eq!(
            delivered.get(id),
            Some(data),
            "{id}={data} vs {delivered:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_unacknowledged_events_go_to_a_surviving_replica() {
    const N: usize = 6;
    // Two replicas of one app: the same consumerID (one consumer group, and one consumer name
    // in it, as in Dapr). B runs before A dies but subscribes after, so what B gets of the
    // first events can only be A's unacknowledged deliveries.
    let comps = RedisComponents::new(&shared_host())
        .pubsub_meta("processingTimeout", "1s")
        .pubsub_meta("redeliverInterval", "200ms");
    let mut a = sidecar(&comps.yaml()).await;
    let b = sidecar(&comps.yaml()).await;
    let (mut ra, mut rb) = (a.client().await, b.client().await);
    let topic = unique("jobs");

    let mut sub_a = TopicSubscriber::open(&mut ra, PUBSUB, &topic, HashMap::new()).await;
    // A takes the first events and never answers them.
    let first: HashSet<String> = (0..N / 2).map(|i| format!("job-{i}")).collect();
    for w in &first {
        ok("PublishEvent", publish(&mut ra, &topic, w).await);
    }
    collect(&mut sub_a, &first, None).await;
    sigkill(&mut a).await;
    drop((sub_a, ra, a));

    // B subscribes after A died, more events come: B gets all of them, A's included.
    let mut sub_b = TopicSubscriber::open(&mut rb, PUBSUB, &topic, HashMap::new()).await;
    let rest: HashSet<String> = (N / 2..N).map(|i| format!("job-{i}")).collect();
    for w in &rest {
        ok("PublishEvent", publish(&mut rb, &topic, w).await);
    }
    let all: HashSet<String> = first.union(&rest).cloned().collect();
    collect(&mut sub_b, &all, Some(TopicEventResponseStatus::Success)).await;
}

// === faults: acknowledged publishes across a Redis crash ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_a_redis_restart() {
    const N: usize = 50;
    let mut server = RedisServer::start();
    let sc = sidecar(&RedisComponents::new(&server.host()).yaml()).await;
    let mut rt = sc.client().await;
    let topic = unique("ledger");
    let want: HashSet<String> = (0..N).map(|i| format!("entry-{i}")).collect();
    for i in 0..N {
        ok(
            "PublishEvent",
            publish(&mut rt, &topic, &format!("entry-{i}")).await,
        );
    }

    blocking(|| server.restart());
    wait_ready_status(sc.admin_addr, true, READY_BOUND).await;

    let mut sub = TopicSubscriber::open(&mut rt, PUBSUB, &topic, HashMap::new()).await;
    collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
}

/// What the background publisher has seen so far.
#[derive(Debug, Clone, Default)]
struct Progress {
    ok: Vec<String>,
    failed: Vec<String>,
}

async fn wait_progress(
    rx: &mut watch::Receiver<Progress>,
    what: &str,
    until: impl Fn(&Progress) -> bool,
) -> Progress {
    within(what, rx.wait_for(|p| until(p)))
        .await
        .expect("the publisher is running")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_acknowledged_while_redis_crashes_are_not_lost() {
    let mut server = RedisServer::start();
    let sc = sidecar(&RedisComponents::new(&server.host()).yaml()).await;
    let rt = sc.client().await;
    let topic = unique("ledger");

    // One publisher, one event at a time, through the crash and the restart.
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (mut rt, topic, stop) = (rt.clone(), topic.clone(), stop.clone());
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let data = format!("entry-{i}");
                i += 1;
                let res = tokio::time::timeout(DOWN_BOUND, publish(&mut rt, &topic, &data)).await;
                progress_tx.send_modify(|p| match res {
                    Ok(Ok(())) => p.ok.push(data),
                    Ok(Err(s)) => p.failed.push(format!("{data}: {}", describe(&s))),
                    Err(_) => p
                        .failed
                        .push(format!("{data}: no answer within {DOWN_BOUND:?}")),
                });
            }
        }
    });
    wait_progress(&mut progress, "20 publishes before the crash", |p| {
        p.ok.len() >= 20
    })
    .await;
    blocking(|| server.stop());
    let during = wait_progress(
        &mut progress,
        "a publish failing while redis is down",
        |p| !p.failed.is_empty(),
    )
    .await;
    let ok_at_restart = during.ok.len();
    blocking(|| server.start_again());
    wait_progress(&mut progress, "20 publishes after the restart", |p| {
        p.ok.len() >= ok_at_restart + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    within("publisher to stop", publisher)
        .await
        .expect("publisher task");
    let done = progress.borrow().clone();
    eprintln!(
        "{} publishes acknowledged, {} failed: {:?}",
        done.ok.len(),
        done.failed.len(),
        done.failed
    );
    for f in &done.failed {
        assert!(
            f.contains("Unavailable"),
            "a failed publish was not UNAVAILABLE: {f}"
        );
    }

    // Every acknowledged one is delivered (duplicates and the outcome-unknown failures allowed).
    let want: HashSet<String> = done.ok.into_iter().collect();
    let mut sub = TopicSubscriber::open(&mut rt.clone(), PUBSUB, &topic, HashMap::new()).await;
    collect(&mut sub, &want, Some(TopicEventResponseStatus::Success)).await;
}

// === two sidecars on one Redis ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_share_configuration_locks_state_and_sequences() {
    use unlock_response::Status as U;
    let host = shared_host();
    // Same key prefix: the two sidecars share state, locks, sequences and configuration.
    let prefix = unique("shared");
    let a = sidecar(&RedisComponents::new(&host).key_prefix(&prefix).yaml()).await;
    let b = sidecar(&RedisComponents::new(&host).key_prefix(&prefix).yaml()).await;
    let mut ra = a.client().await;
    let mut rb = b.client().await;

    // Configuration saved through A is pushed to a subscriber on B.
    let app = unique("app");
    let mut watch = ConfigWatch::open(&mut rb, CONFIG, &app, &["flag"]).await;
    probe_config(&mut ra, &mut watch, &app, "flag").await;
    ok(
        "SaveConfiguration via A",
        save_config(&mut ra, &app, "flag", "on").await,
    );
    let c = watch.wait_for("flag", "on").await;
    assert_eq!(
        (c.store_name.as_str(), c.app_id.as_str()),
        (CONFIG, app.as_str())
    );
    let items = ok(
        "GetConfiguration via B",
        get_config(&mut rb, &app, &["flag"]).await,
    );
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].content, "on");

    // A lock held via A belongs to A's owner, whichever sidecar asks.
    let res = unique("res");
    assert!(ok(
        "TryLock via A",
        try_lock(&mut ra, &res, "owner-a").await
    ));
    assert_eq!(
        ok(
            "Unlock via B, other owner",
            unlock(&mut rb, &res, "owner-b").await
        ),
        U::LockBelongToOthers
    );
    assert!(!ok(
        "TryLock via B",
        try_lock(&mut rb, &res, "owner-b").await
    ));
    assert_eq!(
        ok("Unlock via A", unlock(&mut ra, &res, "owner-a").await),
        U::Success
    );
    assert!(ok(
        "TryLock via B after",
        try_lock(&mut rb, &res, "owner-b").await
    ));
    assert_eq!(
        ok("Unlock via B", unlock(&mut rb, &res, "owner-b").await),
        U::Success
    );

    // ETags across sidecars: B writes with the ETag A read; A's stale one is then ABORTED.
    ok("SaveState via A", save(&mut ra, "doc", "a1").await);
    let (value, etag) = ok("GetState via B", get_state(&mut rb, "doc").await);
    assert_eq!(value, "a1");
    ok(
        "SaveState via B with the etag",
        save_state(
            &mut rb,
            "doc",
            "b1",
            Some(&etag),
            StateConcurrency::ConcurrencyUnspecified,
        )
        .await,
    );
    let err = save_state(
        &mut ra,
        "doc",
        "a2",
        Some(&etag),
        StateConcurrency::ConcurrencyUnspecified,
    )
    .await
    .expect_err("a stale etag via A");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(
        ok("GetState via A", get_state(&mut ra, "doc").await).0,
        "b1"
    );

    // STRONG ids strictly increase across the two sidecars.
    let mut last = 0;
    for i in 0..10 {
        let rt = if i % 2 == 0 { &mut ra } else { &mut rb };
        let id = ok("GetNextId", strong_id(rt, "shared-seq").await);
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
}
