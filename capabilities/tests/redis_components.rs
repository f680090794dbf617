//! Redis-specific behaviour of the Redis components, against a real redis-server (see
//! `common/mod.rs` for how it is found or started). The behaviours every implementation shares
//! are in `redis_conformance.rs`; failures and restarts in `redis_faults.rs`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{ctx, raw, shared_host, spec, unique};
use mecha_capabilities::configuration::{ConfigItem, ConfigQuery, ConfigStore};
use mecha_capabilities::lock::{LockRequest, LockStatus, LockStore};
use mecha_capabilities::pubsub::{Outcome, PubSub, PublishRequest, SubscribeRequest, Subscription};
use mecha_capabilities::redis::{
    RedisConfigStore, RedisLock, RedisPubSub, RedisSequencer, RedisState,
};
use mecha_capabilities::sequencer::{Increment, Sequencer};
use mecha_capabilities::state::{
    Concurrency, DeleteRequest, SetRequest, StateOptions, StateStore, TransactionOp, TTL_METADATA,
};
use mecha_capabilities::{BuildContext, ComponentSpec, Error, Health};
use redis::Commands;

const WAIT: Duration = Duration::from_secs(10);

fn no_meta() -> HashMap<String, String> {
    HashMap::new()
}

fn set(key: &str, value: &str, etag: Option<&str>) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
        etag: etag.map(str::to_owned),
        ..SetRequest::default()
    }
}

fn del(key: &str, etag: Option<&str>) -> DeleteRequest {
    DeleteRequest {
        key: key.to_owned(),
        etag: etag.map(str::to_owned),
        ..DeleteRequest::default()
    }
}

fn state() -> RedisState {
    RedisState::new(&spec("statestore", "state.redis", &shared_host()), &ctx()).expect("valid spec")
}

async fn etag_of(s: &RedisState, key: &str) -> String {
    s.get(key, &no_meta())
        .await
        .expect("get")
        .expect("exists")
        .etag
        .expect("etag")
}

// === construction ===

#[test]
fn components_build_without_redis_and_without_a_runtime() {
    // Nothing listens on port 1; building must not connect (mecha validate, start while down).
    let spec = |kind: &str| ComponentSpec::new("c", kind).with("redisHost", "127.0.0.1:1");
    let ctx = BuildContext::default();
    RedisState::new(&spec("state.redis"), &ctx).expect("state");
    RedisPubSub::new(&spec("pubsub.redis"), &ctx).expect("pubsub");
    RedisLock::new(&spec("lock.redis"), &ctx).expect("lock");
    RedisSequencer::new(&spec("sequencer.redis"), &ctx).expect("sequencer");
    RedisConfigStore::new(&spec("configuration.redis"), &ctx).expect("configuration");
}

#[test]
fn bad_metadata_is_rejected_with_its_key() {
    let ctx = BuildContext::default();
    let bad = [
        ("state.redis", "redisHost", "h:port"),
        ("state.redis", "redisDB", "x"),
        ("state.redis", "timeout", "soon"),
        ("pubsub.redis", "concurrency", "0"),
        ("pubsub.redis", "processingTimeout", "0"),
        ("pubsub.redis", "maxLenApprox", "-5"),
        ("sequencer.redis", "segmentSize", "0"),
    ];
    for (kind, key, value) in bad {
        let spec = ComponentSpec::new("c", kind).with(key, value);
        let err = match kind {
            "state.redis" => RedisState::new(&spec, &ctx).err(),
            "pubsub.redis" => RedisPubSub::new(&spec, &ctx).err(),
            _ => RedisSequencer::new(&spec, &ctx).err(),
        };
        let err = err.unwrap_or_else(|| panic!("{kind} {key}={value} accepted"));
        assert!(
            err.to_string().starts_with(&format!("metadata.{key}:")),
            "{err}"
        );
    }
}

// === state ===

#[tokio::test]
async fn state_etags_first_write_and_errors_name_store_and_key() {
    let s = state();
    s.set(set("k", "v1", None)).await.expect("first set");
    let e1 = etag_of(&s, "k").await;
    s.set(set("k", "v2", Some(&e1)))
        .await
        .expect("set with current etag");
    let e2 = etag_of(&s, "k").await;
    assert_ne!(e1, e2);

    let err = s
        .set(set("k", "v3", Some(&e1)))
        .await
        .expect_err("stale etag");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
    assert!(
        err.to_string().contains("\"statestore\"") && err.to_string().contains("\"k\""),
        "{err}"
    );
    let err = s
        .set(set("k", "v3", Some("not-a-number")))
        .await
        .expect_err("bad etag");
    assert!(matches!(err, Error::EtagInvalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("\"statestore\"") && err.to_string().contains("\"k\""),
        "{err}"
    );
    // An empty ETag means none (Dapr): last-write.
    s.set(set("k", "v4", Some("")))
        .await
        .expect("empty etag = none");

    let first = |key: &str| SetRequest {
        options: StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..StateOptions::default()
        },
        ..set(key, "f", None)
    };
    s.set(first("fw"))
        .await
        .expect("first-write on an absent key");
    let err = s
        .set(first("fw"))
        .await
        .expect_err("first-write on an existing key");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");

    let e = etag_of(&s, "k").await;
    let err = s
        .delete(del("k", Some(&e1)))
        .await
        .expect_err("stale delete");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
    s.delete(del("k", Some(&e)))
        .await
        .expect("delete with etag");
    assert!(s.get("k", &no_meta()).await.expect("get").is_none());
    // Deleted and written again: the old ETag never matches the new item.
    s.set(set("k", "again", None)).await.expect("recreate");
    let err = s.set(set("k", "x", Some(&e))).await.expect_err("ABA");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
    let err = s
        .delete(del("missing", Some("1")))
        .await
        .expect_err("etag on a missing key");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
}

#[tokio::test]
async fn state_keys_carry_the_prefix_and_use_daprs_hash_layout() {
    let host = shared_host();
    let prefix = unique("app");
    let s = RedisState::new(
        &ComponentSpec::new("statestore", "state.redis").with("redisHost", &host),
        &BuildContext {
            app_id: prefix.clone(),
        },
    )
    .expect("valid");
    s.set(set("order", "data-1", None)).await.expect("set");
    let mut conn = raw(&host);
    let data: String = conn.hget(format!("{prefix}||order"), "data").expect("hget");
    assert_eq!(data, "data-1");
    let version: String = conn
        .hget(format!("{prefix}||order"), "version")
        .expect("hget");
    assert_eq!(
        Some(version),
        s.get("order", &no_meta())
            .await
            .expect("get")
            .and_then(|v| v.etag)
    );
}

#[tokio::test]
async fn state_bulk_get_reports_per_key_errors() {
    let host = shared_host();
    let prefix = unique("bulk");
    let s = RedisState::new(
        &ComponentSpec::new("statestore", "state.redis")
            .with("redisHost", &host)
            .with("keyPrefix", &prefix),
        &ctx(),
    )
    .expect("valid");
    s.set(set("a", "1", None)).await.expect("set a");
    s.set(set("b", "2", None)).await.expect("set b");
    // A key holding another type fails on its own.
    let _: () = raw(&host)
        .set(format!("{prefix}||wrong"), "plain string")
        .expect("raw set");
    let keys: Vec<String> = ["a", "missing", "wrong", "b"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let items = s.bulk_get(&keys, &no_meta()).await.expect("bulk get");
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[0].value.as_ref().map(|v| v.data.clone()),
        Some(Bytes::from("1"))
    );
    assert!(items[1].value.is_none() && items[1].error.is_none());
    let err = items[2].error.as_deref().expect("per-key error");
    assert!(
        err.contains("\"wrong\"") && err.contains("\"statestore\""),
        "{err}"
    );
    assert_eq!(
        items[3].value.as_ref().map(|v| v.data.clone()),
        Some(Bytes::from("2"))
    );
}

#[tokio::test]
async fn state_transaction_is_all_or_nothing() {
    let host = shared_host();
    let prefix = unique("tx");
    let s = RedisState::new(
        &ComponentSpec::new("statestore", "state.redis")
            .with("redisHost", &host)
            .with("keyPrefix", &prefix),
        &ctx(),
    )
    .expect("valid");
    s.set(set("a", "a0", None)).await.expect("set a");
    s.set(set("b", "b0", None)).await.expect("set b");
    let stale = etag_of(&s, "b").await;
    s.set(set("b", "b1", None)).await.expect("bump b");

    // The second operation fails its check: the first must not be applied.
    let ops = vec![
        TransactionOp::Upsert(set("a", "a1", None)),
        TransactionOp::Upsert(set("b", "b2", Some(&stale))),
        TransactionOp::Delete(del("c", None)),
    ];
    let err = s
        .transact(ops, &no_meta())
        .await
        .expect_err("stale etag aborts");
    assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
    assert!(err.to_string().contains("\"b\""), "{err}");
    let a = s.get("a", &no_meta()).await.expect("get").expect("a");
    assert_eq!(a.data, Bytes::from("a0"));

    // A key of another type aborts before anything is written (a script error half-way would not).
    let _: () = raw(&host)
        .set(format!("{prefix}||plain"), "x")
        .expect("raw set");
    let ops = vec![
        TransactionOp::Upsert(set("a", "a2", None)),
        TransactionOp::Upsert(set("plain", "p", None)),
    ];
    let err = s
        .transact(ops, &no_meta())
        .await
        .expect_err("wrong type aborts");
    assert!(err.to_string().contains("\"plain\""), "{err}");
    assert_eq!(
        s.get("a", &no_meta()).await.expect("get").expect("a").data,
        Bytes::from("a0")
    );

    // Operations on one key apply in order; a valid transaction applies everything.
    let current = etag_of(&s, "b").await;
    let ops = vec![
        TransactionOp::Upsert(set("a", "a3", None)),
        TransactionOp::Upsert(set("b", "b3", Some(&current))),
        TransactionOp::Upsert(set("c", "c3", None)),
        TransactionOp::Delete(del("c", None)),
    ];
    s.transact(ops, &no_meta())
        .await
        .expect("valid transaction");
    assert_eq!(
        s.get("a", &no_meta()).await.expect("get").expect("a").data,
        Bytes::from("a3")
    );
    assert_eq!(
        s.get("b", &no_meta()).await.expect("get").expect("b").data,
        Bytes::from("b3")
    );
    assert!(s.get("c", &no_meta()).await.expect("get").is_none());
}

#[tokio::test]
async fn state_ttl_expires_reports_and_is_reset_by_writes() {
    let s = state();
    let with_ttl = |key: &str, ttl: &str| {
        let mut r = set(key, "v", None);
        r.metadata.insert(TTL_METADATA.to_owned(), ttl.to_owned());
        r
    };
    s.set(with_ttl("short", "1")).await.expect("set with ttl");
    let v = s
        .get("short", &no_meta())
        .await
        .expect("get")
        .expect("not expired yet");
    assert!(v.metadata.contains_key("ttlExpireTime"), "{:?}", v.metadata);

    s.set(with_ttl("kept", "1")).await.expect("set with ttl");
    s.set(with_ttl("kept", "-1"))
        .await
        .expect("-1 removes the ttl");
    s.set(with_ttl("rewritten", "1"))
        .await
        .expect("set with ttl");
    s.set(set("rewritten", "v2", None))
        .await
        .expect("a write without ttl does not expire");
    assert!(s
        .get("kept", &no_meta())
        .await
        .expect("get")
        .expect("kept")
        .metadata
        .is_empty());

    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        s.get("short", &no_meta()).await.expect("get").is_none(),
        "expired"
    );
    assert!(s.get("kept", &no_meta()).await.expect("get").is_some());
    assert!(s.get("rewritten", &no_meta()).await.expect("get").is_some());

    let err = s.set(with_ttl("bad", "soon")).await.expect_err("bad ttl");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    s.ping().await.expect("ping");
}

// === lock ===

fn lock_req(resource: &str, owner: &str, secs: i32) -> LockRequest {
    LockRequest {
        resource_id: resource.to_owned(),
        owner: owner.to_owned(),
        expire_secs: secs,
    }
}

#[tokio::test]
async fn lock_ownership_and_expiry() {
    let l =
        RedisLock::new(&spec("lockstore", "lock.redis", &shared_host()), &ctx()).expect("valid");
    assert!(l.try_lock(lock_req("r", "alice", 10)).await.expect("lock"));
    assert!(!l.try_lock(lock_req("r", "bob", 10)).await.expect("held"));
    assert!(!l
        .try_lock(lock_req("r", "alice", 10))
        .await
        .expect("not re-entrant"));
    assert_eq!(
        l.unlock("r", "bob").await.expect("unlock"),
        LockStatus::LockBelongToOthers
    );
    assert_eq!(
        l.keep_alive(lock_req("r", "bob", 10)).await.expect("ka"),
        LockStatus::LockBelongToOthers
    );
    assert_eq!(
        l.keep_alive(lock_req("r", "alice", 10)).await.expect("ka"),
        LockStatus::Success
    );
    assert_eq!(
        l.unlock("r", "alice").await.expect("unlock"),
        LockStatus::Success
    );
    assert_eq!(
        l.unlock("r", "alice").await.expect("unlock"),
        LockStatus::LockUnexist
    );
    assert_eq!(
        l.keep_alive(lock_req("r", "alice", 10)).await.expect("ka"),
        LockStatus::LockUnexist
    );

    assert!(l
        .try_lock(lock_req("short", "alice", 1))
        .await
        .expect("lock"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(l
        .try_lock(lock_req("short", "bob", 1))
        .await
        .expect("expired, free again"));

    let err = l
        .try_lock(lock_req("r", "alice", 0))
        .await
        .expect_err("zero expiry");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = l.unlock("", "alice").await.expect_err("empty resource");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

// === sequencer ===

#[tokio::test]
async fn sequencer_strong_is_increasing_across_sidecars_and_honours_bigger_than() {
    let host = shared_host();
    let prefix = unique("seq");
    let build = |extra: &[(&str, &str)]| {
        let mut spec = ComponentSpec::new("sequencer", "sequencer.redis")
            .with("redisHost", &host)
            .with("keyPrefix", &prefix);
        for (k, v) in extra {
            spec = spec.with(k, v);
        }
        RedisSequencer::new(&spec, &ctx()).expect("valid")
    };
    let a = build(&[("biggerThan.order", "1000")]);
    let b = build(&[]);
    let mut last = 0;
    for i in 0..20 {
        let s = if i % 2 == 0 { &a } else { &b };
        let id = s
            .next_id("order", Increment::Strong, &no_meta())
            .await
            .expect("id");
        assert!(id > last, "{id} after {last}");
        last = id;
    }
    let first_order_id = last - 19;
    assert_eq!(
        first_order_id, 1001,
        "biggerThan.order=1000 → ids start at 1001"
    );

    // Call metadata can raise the floor too.
    let mut meta = no_meta();
    meta.insert("biggerThan.other".to_owned(), "50".to_owned());
    assert_eq!(
        b.next_id("other", Increment::Strong, &meta)
            .await
            .expect("id"),
        51
    );
    assert_eq!(
        b.next_id("other", Increment::Strong, &no_meta())
            .await
            .expect("id"),
        52
    );
}

#[tokio::test]
async fn sequencer_weak_segments_are_increasing_and_disjoint() {
    let host = shared_host();
    let prefix = unique("seg");
    let build = || {
        RedisSequencer::new(
            &ComponentSpec::new("sequencer", "sequencer.redis")
                .with("redisHost", &host)
                .with("keyPrefix", &prefix)
                .with("segmentSize", "10"),
            &ctx(),
        )
        .expect("valid")
    };
    let (a, b) = (build(), build());
    let mut seen = std::collections::HashSet::new();
    let (mut last_a, mut last_b) = (0, 0);
    for _ in 0..25 {
        let ia = a
            .next_id("k", Increment::Weak, &no_meta())
            .await
            .expect("id");
        let ib = b
            .next_id("k", Increment::Weak, &no_meta())
            .await
            .expect("id");
        assert!(ia > last_a && ib > last_b);
        (last_a, last_b) = (ia, ib);
        assert!(
            seen.insert(ia) && seen.insert(ib),
            "ids are unique across sidecars"
        );
    }
    // 50 ids in segments of 10: a single sidecar reserved 3 segments, never more.
    let counter: i64 = raw(&host)
        .get(format!("{prefix}||sequencer||k"))
        .expect("counter");
    assert!(counter <= 60, "{counter}");
}

// === configuration ===

fn item(key: &str, content: &str, group: &str) -> ConfigItem {
    ConfigItem {
        key: key.to_owned(),
        content: content.to_owned(),
        group: group.to_owned(),
        tags: HashMap::from([("t".to_owned(), "1".to_owned())]),
        ..ConfigItem::default()
    }
}

fn query(app: &str, group: &str, keys: &[&str]) -> ConfigQuery {
    ConfigQuery {
        app_id: app.to_owned(),
        group: group.to_owned(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..ConfigQuery::default()
    }
}

#[tokio::test]
async fn configuration_changes_by_another_sidecar_are_pushed() {
    let host = shared_host();
    let prefix = unique("cfg");
    let build = || {
        RedisConfigStore::new(
            &ComponentSpec::new("configstore", "configuration.redis")
                .with("redisHost", &host)
                .with("keyPrefix", &prefix),
            &ctx(),
        )
        .expect("valid")
    };
    let (here, there) = (build(), build());
    here.save(
        "app",
        vec![item("a", "1", "g1"), item("b", "2", "g2")],
        &no_meta(),
    )
    .await
    .expect("save");
    let all = here.get(&query("app", "", &[])).await.expect("get");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].tags.get("t").map(String::as_str), Some("1"));
    let g1 = here.get(&query("app", "g1", &[])).await.expect("get");
    assert_eq!(g1.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["a"]);

    let mut sub = here
        .subscribe(query("app", "", &["a"]))
        .await
        .expect("subscribe");
    // Another sidecar changes b (not selected) then a (selected).
    there
        .save("app", vec![item("b", "22", "g2")], &no_meta())
        .await
        .expect("save b");
    there
        .save("app", vec![item("a", "11", "g1")], &no_meta())
        .await
        .expect("save a");
    let change = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("pushed")
        .expect("open");
    assert_eq!(change.app_id, "app");
    assert_eq!(change.items.len(), 1);
    assert_eq!(
        (
            change.items[0].key.as_str(),
            change.items[0].content.as_str()
        ),
        ("a", "11")
    );
    assert_eq!(change.items[0].group, "g1");

    there
        .delete(&query("app", "", &["a"]))
        .await
        .expect("delete");
    let change = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("pushed")
        .expect("open");
    assert_eq!(change.items[0].key, "a");
    assert!(change.items[0].content.is_empty());
    assert_eq!(
        change.items[0].metadata.get("deleted").map(String::as_str),
        Some("true")
    );
    assert!(here
        .get(&query("app", "", &["a"]))
        .await
        .expect("get")
        .is_empty());

    let err = here
        .delete(&query("app", "", &[]))
        .await
        .expect_err("delete needs keys");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = here
        .get(&query("", "", &[]))
        .await
        .expect_err("app id required");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

// === pub/sub ===

fn pubsub(host: &str, extra: &[(&str, &str)]) -> RedisPubSub {
    pubsub_in(host, &unique("group"), extra)
}

fn pubsub_in(host: &str, group: &str, extra: &[(&str, &str)]) -> RedisPubSub {
    let mut spec = ComponentSpec::new("pubsub", "pubsub.redis")
        .with("redisHost", host)
        .with("consumerID", group)
        .with("processingTimeout", "2s")
        .with("redeliverInterval", "200ms");
    for (k, v) in extra {
        spec = spec.with(k, v);
    }
    RedisPubSub::new(&spec, &ctx()).expect("valid")
}

fn publish(topic: &str, data: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        data: Bytes::from(data.to_owned()),
        content_type: "text/plain".to_owned(),
        metadata: HashMap::from([("k".to_owned(), "v".to_owned())]),
    }
}

fn sub_req(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.to_owned(),
        ..SubscribeRequest::default()
    }
}

async fn next(sub: &mut Subscription) -> mecha_capabilities::pubsub::Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
}

#[tokio::test]
async fn pubsub_round_trip_keeps_fields_and_events_published_before_subscribing() {
    let host = shared_host();
    let ps = pubsub(&host, &[]);
    let topic = unique("topic");
    // Published before any subscription: the group starts at 0, so it is not lost.
    ps.publish(publish(&topic, "early")).await.expect("publish");
    let mut sub = ps.subscribe(sub_req(&topic)).await.expect("subscribe");
    ps.publish(publish(&topic, "late")).await.expect("publish");
    for want in ["early", "late"] {
        let d = next(&mut sub).await;
        assert_eq!(d.message.data, Bytes::from(want));
        assert_eq!(d.message.topic, topic);
        assert_eq!(d.message.content_type, "text/plain");
        assert_eq!(d.message.metadata.get("k").map(String::as_str), Some("v"));
        d.ack(Outcome::Success);
    }
    // Acknowledged: nothing left pending in the group.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&topic)
        .arg(ps_group(&host, &topic))
        .query(&mut raw(&host))
        .expect("xpending");
    let count = match pending {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    };
    assert_eq!(count, 0);
}

/// The only consumer group of a topic.
fn ps_group(host: &str, topic: &str) -> String {
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(topic)
        .query(&mut raw(host))
        .expect("xinfo");
    let redis::Value::Array(groups) = groups else {
        panic!("groups: {groups:?}")
    };
    let Some(redis::Value::Array(fields)) = groups.first() else {
        panic!("no group")
    };
    let name = fields
        .chunks(2)
        .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == b"name"))
        .and_then(|kv| match &kv[1] {
            redis::Value::BulkString(v) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        });
    name.expect("group name")
}

#[tokio::test]
async fn pubsub_retry_and_unanswered_are_redelivered_with_the_same_id() {
    let host = shared_host();
    let ps = pubsub(&host, &[]);
    let topic = unique("topic");
    let mut sub = ps.subscribe(sub_req(&topic)).await.expect("subscribe");
    ps.publish(publish(&topic, "e")).await.expect("publish");
    let first = next(&mut sub).await;
    let id = first.message.id.clone();
    first.ack(Outcome::Retry);
    let second = next(&mut sub).await;
    assert_eq!(second.message.id, id);
    drop(second); // no answer counts as RETRY
    let third = next(&mut sub).await;
    assert_eq!(third.message.id, id);
    third.ack(Outcome::Success);
    let none = tokio::time::timeout(Duration::from_millis(800), sub.next()).await;
    assert!(none.is_err(), "acknowledged: not delivered again");
}

#[tokio::test]
async fn pubsub_drop_goes_to_the_dead_letter_topic() {
    let host = shared_host();
    let ps = pubsub(&host, &[]);
    let (topic, dead) = (unique("topic"), unique("dead"));
    let mut dl = ps
        .subscribe(sub_req(&dead))
        .await
        .expect("subscribe dead letter");
    let mut sub = ps
        .subscribe(SubscribeRequest {
            dead_letter_topic: Some(dead.clone()),
            ..sub_req(&topic)
        })
        .await
        .expect("subscribe");
    ps.publish(publish(&topic, "poison"))
        .await
        .expect("publish");
    next(&mut sub).await.ack(Outcome::Drop);
    let d = next(&mut dl).await;
    assert_eq!(d.message.data, Bytes::from("poison"));
    assert_eq!(d.message.metadata.get("k").map(String::as_str), Some("v"));
    d.ack(Outcome::Success);
    let none = tokio::time::timeout(Duration::from_millis(800), sub.next()).await;
    assert!(none.is_err(), "dropped: not delivered again");
}

#[tokio::test]
async fn pubsub_bounds_outstanding_deliveries() {
    let host = shared_host();
    let ps = pubsub(&host, &[("concurrency", "2"), ("processingTimeout", "30s")]);
    let topic = unique("topic");
    let mut sub = ps.subscribe(sub_req(&topic)).await.expect("subscribe");
    for i in 0..5 {
        ps.publish(publish(&topic, &i.to_string()))
            .await
            .expect("publish");
    }
    let a = next(&mut sub).await;
    let b = next(&mut sub).await;
    let third = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(third.is_err(), "a third delivery while two are unanswered");
    a.ack(Outcome::Success);
    let c = next(&mut sub).await;
    assert_ne!(c.message.id, b.message.id);
    for d in [b, c] {
        d.ack(Outcome::Success);
    }
    for _ in 0..2 {
        next(&mut sub).await.ack(Outcome::Success);
    }
}

#[tokio::test]
async fn pubsub_consumer_ids_fan_out_and_share_within_a_group() {
    let host = shared_host();
    let topic = unique("topic");
    let group1 = unique("app1");
    let (app1, app2) = (pubsub_in(&host, &group1, &[]), pubsub(&host, &[]));
    let mut s1 = app1.subscribe(sub_req(&topic)).await.expect("subscribe");
    let mut s2 = app2.subscribe(sub_req(&topic)).await.expect("subscribe");
    // A second subscription naming app1's consumer id competes with s1 for the same events.
    let mut s1b = app2
        .subscribe(SubscribeRequest {
            metadata: HashMap::from([("consumerID".to_owned(), group1.clone())]),
            ..sub_req(&topic)
        })
        .await
        .expect("subscribe");
    for i in 0..4 {
        app1.publish(publish(&topic, &i.to_string()))
            .await
            .expect("publish");
    }
    let mut got2 = Vec::new();
    for _ in 0..4 {
        let d = next(&mut s2).await;
        got2.push(d.message.data.clone());
        d.ack(Outcome::Success);
    }
    assert_eq!(got2.len(), 4, "another consumer id gets every event");
    let mut shared = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while shared < 4 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(d) = s1.next() => { shared += 1; d.ack(Outcome::Success); }
            Some(d) = s1b.next() => { shared += 1; d.ack(Outcome::Success); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(shared, 4, "one consumer id receives each event once");
}

#[tokio::test]
async fn pubsub_max_len_trims_the_stream() {
    let host = shared_host();
    let ps = pubsub(&host, &[("maxLenApprox", "10")]);
    let topic = unique("topic");
    for i in 0..500 {
        ps.publish(publish(&topic, &i.to_string()))
            .await
            .expect("publish");
    }
    let len: i64 = raw(&host).xlen(&topic).expect("xlen");
    assert!(len < 500, "trimmed, got {len}");
}

/// `maxLenApprox: 0` turns trimming off (the default trims at 100 000 entries; see the unit
/// test of the XADD arguments in `redis::pubsub`).
#[tokio::test]
async fn pubsub_max_len_zero_never_trims() {
    let host = shared_host();
    let ps = pubsub(&host, &[("maxLenApprox", "0")]);
    let topic = unique("topic");
    for i in 0..500 {
        ps.publish(publish(&topic, &i.to_string()))
            .await
            .expect("publish");
    }
    let len: i64 = raw(&host).xlen(&topic).expect("xlen");
    assert_eq!(len, 500, "nothing trimmed");
}
