//! The behaviours every implementation of a building block shares, written once and run against
//! every component (the way Dapr's components-contrib conformance tests work).
//!
//! Each function takes a trait object and a `prefix` that it puts in front of every key, topic,
//! resource and app id it uses, so suites can run in parallel against one shared backend (give
//! every test its own prefix). They panic with a message saying what was expected.
//!
//! Backend-neutral by design: an ETag is only assumed to be a string that changes on every write;
//! nothing relies on ordering that a distributed backend may not give; waits for something that
//! should happen within about a second (an expiry, a redelivery, a push) are bounded by
//! [`WAIT`], never asserted on speed. Where absence must be shown (no redelivery after
//! `Success`/`Drop`), the suite waits a quiet period of [`QUIET`].
//!
//! | suite                | assumes the component was built with                              |
//! |----------------------|--------------------------------------------------------------------|
//! | [`state_suite`]      | ETag, transaction and TTL support                                  |
//! | [`pubsub_suite`]     | `processingTimeout` ≈ 1s, `redeliverInterval` 100–200ms            |
//! | [`lock_suite`]       | nothing                                                            |
//! | [`sequencer_suite`]  | nothing                                                            |
//! | [`config_suite`]     | nothing                                                            |

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::configuration::{ConfigItem, ConfigQuery, ConfigStore, ConfigSubscription};
use crate::error::Error;
use crate::lock::{LockRequest, LockStatus, LockStore};
use crate::pubsub::{Delivery, Outcome, PubSub, PublishRequest, SubscribeRequest, Subscription};
use crate::sequencer::{Increment, Sequencer};
use crate::state::{
    Concurrency, DeleteRequest, Metadata, SetRequest, StateOptions, StateStore, TransactionOp,
    TTL_METADATA,
};

/// Upper bound on waiting for something that should happen within about a second.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long the pub/sub suite watches for a delivery that must not come: longer than a
/// `processingTimeout` of 1s plus a `redeliverInterval` of up to 200ms.
pub const QUIET: Duration = Duration::from_millis(2_000);

/// Awaits `fut` for at most [`WAIT`], panicking with `what` on timeout.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// === state ===

fn set_req(key: &str, value: &str) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
        ..Default::default()
    }
}

fn set_etag(key: &str, value: &str, etag: Option<&str>) -> SetRequest {
    SetRequest {
        etag: etag.map(str::to_owned),
        ..set_req(key, value)
    }
}

fn first_write(key: &str, value: &str, etag: Option<&str>) -> SetRequest {
    SetRequest {
        options: StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..Default::default()
        },
        ..set_etag(key, value, etag)
    }
}

fn del_req(key: &str, etag: Option<&str>) -> DeleteRequest {
    DeleteRequest {
        key: key.to_owned(),
        etag: etag.map(str::to_owned),
        ..Default::default()
    }
}

/// The current value and ETag of `key`, panicking if it is absent.
async fn current(store: &dyn StateStore, key: &str) -> (Bytes, String) {
    let v = store
        .get(key, &Metadata::new())
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
        .unwrap_or_else(|| panic!("{key:?} should exist"));
    let etag = v
        .etag
        .unwrap_or_else(|| panic!("{key:?} should have an etag"));
    (v.data, etag)
}

async fn absent(store: &dyn StateStore, key: &str) -> bool {
    store
        .get(key, &Metadata::new())
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
        .is_none()
}

fn is_mismatch(r: &crate::Result<()>) -> bool {
    matches!(r, Err(Error::EtagMismatch(_)))
}

/// Every state behaviour below, one after the other.
pub async fn state_suite(store: &dyn StateStore, prefix: &str) {
    state_crud(store, prefix).await;
    state_etag(store, prefix).await;
    state_first_write(store, prefix).await;
    state_bulk(store, prefix).await;
    state_transaction(store, prefix).await;
    state_ttl(store, prefix).await;
}

/// Get/set/delete, absent keys, empty keys.
pub async fn state_crud(store: &dyn StateStore, prefix: &str) {
    let key = format!("{prefix}crud");
    assert!(
        absent(store, &key).await,
        "a never-written key reads as None"
    );

    store.set(set_req(&key, "v1")).await.expect("set v1");
    let (data, e1) = current(store, &key).await;
    assert_eq!(data, "v1");
    store
        .set(set_req(&key, "v2"))
        .await
        .expect("last-write overwrite without etag");
    let (data, e2) = current(store, &key).await;
    assert_eq!(data, "v2");
    assert_ne!(e1, e2, "every write issues a new etag");

    store.delete(del_req(&key, None)).await.expect("delete");
    assert!(absent(store, &key).await, "deleted key reads as None");
    store
        .delete(del_req(&key, None))
        .await
        .expect("deleting an absent key without etag is Ok");

    let err = store
        .get("", &Metadata::new())
        .await
        .expect_err("empty key on get");
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "empty key on get: {err:?}"
    );
    let err = store
        .set(set_req("", "v"))
        .await
        .expect_err("empty key on set");
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "empty key on set: {err:?}"
    );
}

/// A write or delete with a stale ETag fails with `EtagMismatch` and changes nothing.
pub async fn state_etag(store: &dyn StateStore, prefix: &str) {
    let key = format!("{prefix}etag");
    store.set(set_req(&key, "v1")).await.expect("set v1");
    let (_, e1) = current(store, &key).await;

    store
        .set(set_etag(&key, "v2", Some(&e1)))
        .await
        .expect("set with the current etag");
    let (data, e2) = current(store, &key).await;
    assert_eq!(data, "v2");
    assert_ne!(e1, e2, "a write with an etag issues a new one");

    let r = store.set(set_etag(&key, "stale", Some(&e1))).await;
    assert!(
        is_mismatch(&r),
        "set with a stale etag must be EtagMismatch, got {r:?}"
    );
    let r = store.delete(del_req(&key, Some(&e1))).await;
    assert!(
        is_mismatch(&r),
        "delete with a stale etag must be EtagMismatch, got {r:?}"
    );
    assert_eq!(
        current(store, &key).await,
        (Bytes::from("v2"), e2.clone()),
        "nothing changed"
    );

    // An etag the store cannot have issued: a mismatch or an invalid etag, never a write.
    let r = store
        .set(set_etag(&key, "bogus", Some("not-an-etag-\u{3b1}")))
        .await;
    assert!(
        matches!(r, Err(Error::EtagMismatch(_) | Error::EtagInvalid(_))),
        "set with a foreign etag must fail with EtagMismatch or EtagInvalid, got {r:?}"
    );
    assert_eq!(
        current(store, &key).await.0,
        "v2",
        "a foreign etag changed nothing"
    );

    store
        .delete(del_req(&key, Some(&e2)))
        .await
        .expect("delete with the current etag");
    assert!(absent(store, &key).await);
    let r = store.set(set_etag(&key, "again", Some(&e2))).await;
    assert!(
        is_mismatch(&r),
        "set with an etag on a deleted key must be EtagMismatch, got {r:?}"
    );
    let r = store.delete(del_req(&key, Some(&e2))).await;
    assert!(
        is_mismatch(&r),
        "delete with an etag on a missing key must be EtagMismatch, got {r:?}"
    );
    assert!(absent(store, &key).await, "nothing was written");
}

/// First-write: without an ETag only an absent key can be written; with one, it must match.
pub async fn state_first_write(store: &dyn StateStore, prefix: &str) {
    let key = format!("{prefix}first");
    store
        .set(first_write(&key, "v1", None))
        .await
        .expect("first-write on an absent key");
    let r = store.set(first_write(&key, "v2", None)).await;
    assert!(
        is_mismatch(&r),
        "first-write without etag on an existing key: {r:?}"
    );
    let (data, e1) = current(store, &key).await;
    assert_eq!(data, "v1", "the failed first-write changed nothing");

    store
        .set(first_write(&key, "v3", Some(&e1)))
        .await
        .expect("first-write with current etag");
    let r = store.set(first_write(&key, "v4", Some(&e1))).await;
    assert!(is_mismatch(&r), "first-write with a stale etag: {r:?}");
    assert_eq!(current(store, &key).await.0, "v3");

    // Last-write (explicit) without an etag always wins.
    let last = SetRequest {
        options: StateOptions {
            concurrency: Concurrency::LastWrite,
            ..Default::default()
        },
        ..set_req(&key, "v5")
    };
    store.set(last).await.expect("last-write overwrite");
    assert_eq!(current(store, &key).await.0, "v5");
    store.delete(del_req(&key, None)).await.expect("cleanup");
}

/// Bulk set/get/delete; a missing key in a bulk get is an item without value or error.
pub async fn state_bulk(store: &dyn StateStore, prefix: &str) {
    let keys: Vec<String> = (0..3).map(|i| format!("{prefix}bulk{i}")).collect();
    let missing = format!("{prefix}bulk-missing");
    store
        .bulk_set(
            keys.iter()
                .map(|k| set_req(k, &format!("value of {k}")))
                .collect(),
        )
        .await
        .expect("bulk_set");

    let mut ask = keys.clone();
    ask.push(missing.clone());
    let items = store
        .bulk_get(&ask, &Metadata::new())
        .await
        .expect("bulk_get");
    assert_eq!(items.len(), ask.len(), "one item per key asked: {items:?}");
    let by_key: HashMap<&str, _> = items.iter().map(|i| (i.key.as_str(), i)).collect();
    for k in &keys {
        let item = by_key
            .get(k.as_str())
            .unwrap_or_else(|| panic!("bulk_get answers {k:?}"));
        assert!(item.error.is_none(), "{k:?}: {:?}", item.error);
        let v = item
            .value
            .as_ref()
            .unwrap_or_else(|| panic!("{k:?} has a value"));
        assert_eq!(v.data, format!("value of {k}"));
        assert!(v.etag.is_some(), "{k:?} has an etag in bulk_get");
    }
    let m = by_key
        .get(missing.as_str())
        .expect("bulk_get answers the missing key");
    assert!(m.value.is_none() && m.error.is_none(), "missing key: {m:?}");

    store
        .bulk_delete(keys[..2].iter().map(|k| del_req(k, None)).collect())
        .await
        .expect("bulk_delete");
    assert!(absent(store, &keys[0]).await && absent(store, &keys[1]).await);
    assert!(
        !absent(store, &keys[2]).await,
        "a key not in the bulk delete stays"
    );
    store
        .delete(del_req(&keys[2], None))
        .await
        .expect("cleanup");
}

/// Transactions apply every operation or none.
pub async fn state_transaction(store: &dyn StateStore, prefix: &str) {
    let (new, old, kept) = (
        format!("{prefix}tx-new"),
        format!("{prefix}tx-old"),
        format!("{prefix}tx-kept"),
    );
    let m = Metadata::new();
    store.set(set_req(&old, "old")).await.expect("setup");
    store.set(set_req(&kept, "k1")).await.expect("setup");
    let (_, old_etag) = current(store, &old).await;
    let (_, stale) = current(store, &kept).await;
    store
        .set(set_req(&kept, "k2"))
        .await
        .expect("setup: make the etag stale");
    let (_, kept_etag) = current(store, &kept).await;

    // The last operation fails: the first two must not be applied.
    let ops = vec![
        TransactionOp::Upsert(set_req(&new, "n")),
        TransactionOp::Delete(del_req(&old, Some(&old_etag))),
        TransactionOp::Upsert(set_etag(&kept, "k3", Some(&stale))),
    ];
    let r = store.transact(ops, &m).await;
    assert!(
        is_mismatch(&r),
        "a transaction with a stale etag must be EtagMismatch, got {r:?}"
    );
    assert!(
        absent(store, &new).await,
        "aborted transaction wrote {new:?}"
    );
    assert_eq!(
        current(store, &old).await,
        (Bytes::from("old"), old_etag.clone())
    );
    assert_eq!(
        current(store, &kept).await,
        (Bytes::from("k2"), kept_etag.clone())
    );

    // A first-write on an existing key aborts too.
    let ops = vec![
        TransactionOp::Upsert(set_req(&new, "n")),
        TransactionOp::Upsert(first_write(&kept, "k3", None)),
    ];
    let r = store.transact(ops, &m).await;
    assert!(
        is_mismatch(&r),
        "first-write on an existing key in a transaction: {r:?}"
    );
    assert!(
        absent(store, &new).await,
        "aborted transaction wrote {new:?}"
    );

    // All valid: all applied.
    let ops = vec![
        TransactionOp::Upsert(set_req(&new, "n")),
        TransactionOp::Delete(del_req(&old, Some(&old_etag))),
        TransactionOp::Upsert(set_etag(&kept, "k3", Some(&kept_etag))),
    ];
    store.transact(ops, &m).await.expect("valid transaction");
    assert_eq!(current(store, &new).await.0, "n");
    assert!(absent(store, &old).await);
    let (data, etag) = current(store, &kept).await;
    assert_eq!(data, "k3");
    assert_ne!(etag, kept_etag, "a transactional write issues a new etag");

    store
        .transact(Vec::new(), &m)
        .await
        .expect("an empty transaction is Ok");
    for k in [&new, &kept] {
        store.delete(del_req(k, None)).await.expect("cleanup");
    }
}

/// `ttlInSeconds`: the item disappears after its TTL; `-1` and no TTL never expire; a bad value
/// is `InvalidArgument` and writes nothing.
pub async fn state_ttl(store: &dyn StateStore, prefix: &str) {
    let (short, forever, plain, bad) = (
        format!("{prefix}ttl-short"),
        format!("{prefix}ttl-forever"),
        format!("{prefix}ttl-plain"),
        format!("{prefix}ttl-bad"),
    );
    let with_ttl = |key: &str, ttl: &str| SetRequest {
        metadata: Metadata::from([(TTL_METADATA.to_owned(), ttl.to_owned())]),
        ..set_req(key, "v")
    };
    store.set(with_ttl(&forever, "-1")).await.expect("ttl -1");
    store.set(set_req(&plain, "v")).await.expect("no ttl");
    store.set(with_ttl(&short, "2")).await.expect("ttl 2");
    assert!(
        !absent(store, &short).await,
        "an item is visible before its ttl"
    );

    let err = store
        .set(with_ttl(&bad, "soon"))
        .await
        .expect_err("a non-numeric ttl");
    assert!(matches!(err, Error::InvalidArgument(_)), "bad ttl: {err:?}");
    assert!(
        absent(store, &bad).await,
        "a write with a bad ttl wrote nothing"
    );

    within("an item with ttlInSeconds=2 to expire", async {
        while !absent(store, &short).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        !absent(store, &forever).await,
        "ttlInSeconds=-1 never expires"
    );
    assert!(
        !absent(store, &plain).await,
        "an item without ttl never expires"
    );
    store
        .set(first_write(&short, "v", None))
        .await
        .expect("an expired key is absent for first-write");
    for k in [&short, &forever, &plain] {
        store.delete(del_req(k, None)).await.expect("cleanup");
    }
}

// === pub/sub ===

fn event(topic: &str, data: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        data: Bytes::from(data.to_owned()),
        content_type: "text/plain".to_owned(),
        ..Default::default()
    }
}

fn subscribe_req(topic: &str, dead_letter: Option<&str>) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.to_owned(),
        dead_letter_topic: dead_letter.map(str::to_owned),
        ..Default::default()
    }
}

/// The next delivery whose data is `data`. Deliveries of other events (late redeliveries of
/// something already handled) are acknowledged `Success` and skipped.
async fn next_event(sub: &mut Subscription, data: &str) -> Delivery {
    within(&format!("a delivery of {data:?}"), async {
        loop {
            let d = sub
                .next()
                .await
                .unwrap_or_else(|| panic!("subscription closed awaiting {data:?}"));
            if d.message.data == data.as_bytes() {
                return d;
            }
            d.ack(Outcome::Success);
        }
    })
    .await
}

/// Asserts nothing arrives on `sub` for [`QUIET`].
async fn quiet(sub: &mut Subscription, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{what}: unexpected delivery {:?}", d.message);
    }
}

/// Every pub/sub behaviour below, one after the other.
///
/// Assumes the component was built with `processingTimeout` ≈ 1s and `redeliverInterval`
/// 100–200ms, so redeliveries show within [`WAIT`] and absence within [`QUIET`]; and that a
/// subscription is live when `subscribe` returns.
pub async fn pubsub_suite(ps: &dyn PubSub, prefix: &str) {
    pubsub_fan_out(ps, prefix).await;
    pubsub_redeliver_on_retry(ps, prefix).await;
    pubsub_redeliver_unanswered(ps, prefix).await;
    pubsub_drop(ps, prefix).await;
}

/// Every subscription of a topic receives every event, with a unique id, its data and topic.
pub async fn pubsub_fan_out(ps: &dyn PubSub, prefix: &str) {
    let topic = format!("{prefix}fanout");
    let mut subs = [
        ps.subscribe(subscribe_req(&topic, None))
            .await
            .expect("subscribe 1"),
        ps.subscribe(subscribe_req(&topic, None))
            .await
            .expect("subscribe 2"),
    ];
    let datas: Vec<String> = (0..3).map(|i| format!("fan-out {i}")).collect();
    for d in &datas {
        ps.publish(event(&topic, d)).await.expect("publish");
    }
    for (n, sub) in subs.iter_mut().enumerate() {
        let mut ids = HashSet::new();
        for d in &datas {
            let got = next_event(sub, d).await;
            assert_eq!(got.message.topic, topic, "subscription {n}: topic");
            assert!(
                !got.message.id.is_empty(),
                "subscription {n}: events carry an id"
            );
            assert!(
                ids.insert(got.message.id.clone()),
                "subscription {n}: ids are unique"
            );
            got.ack(Outcome::Success);
        }
    }
    let err = ps
        .publish(event("", "x"))
        .await
        .expect_err("publish to an empty topic");
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "empty topic: {err:?}"
    );
}

/// An event answered `Retry` is delivered again, with the same id.
pub async fn pubsub_redeliver_on_retry(ps: &dyn PubSub, prefix: &str) {
    let topic = format!("{prefix}retry");
    let mut sub = ps
        .subscribe(subscribe_req(&topic, None))
        .await
        .expect("subscribe");
    ps.publish(event(&topic, "retry me"))
        .await
        .expect("publish");
    let first = next_event(&mut sub, "retry me").await;
    let id = first.message.id.clone();
    first.ack(Outcome::Retry);
    let again = next_event(&mut sub, "retry me").await;
    assert_eq!(again.message.id, id, "a redelivery keeps the message id");
    again.ack(Outcome::Success);
}

/// An event not answered within the processing timeout, or whose `Delivery` is dropped
/// unanswered, is delivered again with the same id.
pub async fn pubsub_redeliver_unanswered(ps: &dyn PubSub, prefix: &str) {
    let topic = format!("{prefix}noanswer");
    let mut sub = ps
        .subscribe(subscribe_req(&topic, None))
        .await
        .expect("subscribe");

    ps.publish(event(&topic, "held")).await.expect("publish");
    let held = next_event(&mut sub, "held").await;
    // Keep `held` unanswered past the processing timeout.
    let again = next_event(&mut sub, "held").await;
    assert_eq!(
        again.message.id, held.message.id,
        "a redelivery keeps the message id"
    );
    again.ack(Outcome::Success);
    held.ack(Outcome::Success); // a late answer to a superseded delivery changes nothing

    ps.publish(event(&topic, "dropped")).await.expect("publish");
    let first = next_event(&mut sub, "dropped").await;
    let id = first.message.id.clone();
    drop(first);
    let again = next_event(&mut sub, "dropped").await;
    assert_eq!(again.message.id, id, "a redelivery keeps the message id");
    again.ack(Outcome::Success);
}

/// `Drop` goes to the dead-letter topic when the subscription has one, else is discarded;
/// neither a dropped nor a successful event is delivered again.
pub async fn pubsub_drop(ps: &dyn PubSub, prefix: &str) {
    let topic = format!("{prefix}drop");
    let dlt = format!("{prefix}drop-dead-letter");
    let mut dead = ps
        .subscribe(subscribe_req(&dlt, None))
        .await
        .expect("subscribe dead letter");
    let mut with_dl = ps
        .subscribe(subscribe_req(&topic, Some(&dlt)))
        .await
        .expect("subscribe");
    let mut without = ps
        .subscribe(subscribe_req(&topic, None))
        .await
        .expect("subscribe");

    ps.publish(event(&topic, "poison")).await.expect("publish");
    next_event(&mut with_dl, "poison").await.ack(Outcome::Drop);
    next_event(&mut without, "poison").await.ack(Outcome::Drop);

    let dl = next_event(&mut dead, "poison").await;
    assert_eq!(
        dl.message.topic, dlt,
        "a dead letter arrives on the dead-letter topic"
    );
    dl.ack(Outcome::Success);

    tokio::join!(
        quiet(&mut with_dl, "a dropped event is not redelivered"),
        quiet(
            &mut without,
            "a dropped event (no dead-letter topic) is not redelivered"
        ),
        quiet(
            &mut dead,
            "one drop makes one dead letter, acknowledged once"
        ),
    );
}

// === lock ===

fn lock_req(resource: &str, owner: &str, expire_secs: i32) -> LockRequest {
    LockRequest {
        resource_id: resource.to_owned(),
        owner: owner.to_owned(),
        expire_secs,
    }
}

/// Every lock behaviour below, one after the other.
pub async fn lock_suite(locks: &dyn LockStore, prefix: &str) {
    lock_ownership(locks, prefix).await;
    lock_expiry(locks, prefix).await;
    lock_keep_alive(locks, prefix).await;
    lock_invalid(locks, prefix).await;
}

/// One owner at a time (not re-entrant); only the owner unlocks.
pub async fn lock_ownership(locks: &dyn LockStore, prefix: &str) {
    let r = format!("{prefix}lock-own");
    assert!(
        locks.try_lock(lock_req(&r, "a", 30)).await.expect("lock"),
        "a free lock is taken"
    );
    assert!(
        !locks.try_lock(lock_req(&r, "b", 30)).await.expect("lock"),
        "a held lock refuses b"
    );
    assert!(
        !locks.try_lock(lock_req(&r, "a", 30)).await.expect("lock"),
        "not re-entrant"
    );
    assert_eq!(
        locks.unlock(&r, "b").await.expect("unlock"),
        LockStatus::LockBelongToOthers
    );
    assert!(
        !locks.try_lock(lock_req(&r, "b", 30)).await.expect("lock"),
        "b's unlock did nothing"
    );
    assert_eq!(
        locks.unlock(&r, "a").await.expect("unlock"),
        LockStatus::Success
    );
    assert_eq!(
        locks.unlock(&r, "a").await.expect("unlock"),
        LockStatus::LockUnexist
    );
    let never = format!("{prefix}lock-never");
    assert_eq!(
        locks.unlock(&never, "a").await.expect("unlock"),
        LockStatus::LockUnexist
    );
    assert!(
        locks.try_lock(lock_req(&r, "b", 30)).await.expect("lock"),
        "released lock is free"
    );
    assert_eq!(
        locks.unlock(&r, "b").await.expect("cleanup"),
        LockStatus::Success
    );
}

/// A lock nobody keeps alive expires: another owner can take it, and the first owner's unlock
/// finds nothing.
pub async fn lock_expiry(locks: &dyn LockStore, prefix: &str) {
    let (r, r2) = (format!("{prefix}lock-exp"), format!("{prefix}lock-exp2"));
    assert!(locks.try_lock(lock_req(&r2, "a", 1)).await.expect("lock"));
    assert!(locks.try_lock(lock_req(&r, "a", 1)).await.expect("lock"));
    within("a 1s lock to expire", async {
        while !locks.try_lock(lock_req(&r, "b", 30)).await.expect("lock") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        locks.unlock(&r, "a").await.expect("unlock"),
        LockStatus::LockBelongToOthers
    );
    // `r2` was taken before `r`, so it has expired too.
    assert_eq!(
        locks.unlock(&r2, "a").await.expect("unlock"),
        LockStatus::LockUnexist
    );
    assert_eq!(
        locks.unlock(&r, "b").await.expect("cleanup"),
        LockStatus::Success
    );
}

/// Keep-alive extends the owner's lease; other owners and absent locks are told so.
pub async fn lock_keep_alive(locks: &dyn LockStore, prefix: &str) {
    let r = format!("{prefix}lock-alive");
    assert!(locks.try_lock(lock_req(&r, "a", 1)).await.expect("lock"));
    assert_eq!(
        locks.keep_alive(lock_req(&r, "a", 30)).await.expect("keep"),
        LockStatus::Success
    );
    assert_eq!(
        locks.keep_alive(lock_req(&r, "b", 30)).await.expect("keep"),
        LockStatus::LockBelongToOthers
    );
    // Past the original 1s lease: still held thanks to the keep-alive.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !locks.try_lock(lock_req(&r, "b", 30)).await.expect("lock"),
        "kept alive"
    );
    assert_eq!(
        locks.unlock(&r, "a").await.expect("unlock"),
        LockStatus::Success
    );
    assert_eq!(
        locks.keep_alive(lock_req(&r, "a", 30)).await.expect("keep"),
        LockStatus::LockUnexist
    );
}

/// A lease of zero or fewer seconds is `InvalidArgument`.
pub async fn lock_invalid(locks: &dyn LockStore, prefix: &str) {
    let r = format!("{prefix}lock-bad");
    for secs in [0, -5] {
        let err = locks
            .try_lock(lock_req(&r, "a", secs))
            .await
            .expect_err("bad expire");
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "expire {secs}: {err:?}"
        );
    }
    assert!(
        locks.try_lock(lock_req(&r, "a", 30)).await.expect("lock"),
        "the bad calls took nothing"
    );
    assert_eq!(
        locks.unlock(&r, "a").await.expect("cleanup"),
        LockStatus::Success
    );
}

// === sequencer ===

/// Every sequencer behaviour below, one after the other.
pub async fn sequencer_suite(seq: &dyn Sequencer, prefix: &str) {
    sequencer_increasing(seq, prefix).await;
    sequencer_concurrent(seq, prefix).await;
}

/// Ids per key are positive and strictly increasing, whatever the increment mode; keys are
/// independent.
pub async fn sequencer_increasing(seq: &dyn Sequencer, prefix: &str) {
    let m = HashMap::new();
    for (key, inc) in [("weak", Increment::Weak), ("strong", Increment::Strong)] {
        let key = format!("{prefix}seq-{key}");
        let mut last = 0;
        for _ in 0..100 {
            let id = seq.next_id(&key, inc, &m).await.expect("next_id");
            assert!(
                id > last,
                "{key:?}: {id} after {last} is not strictly increasing"
            );
            last = id;
        }
    }
    let fresh = format!("{prefix}seq-fresh");
    let id = seq
        .next_id(&fresh, Increment::Strong, &m)
        .await
        .expect("next_id");
    assert!(id >= 1, "a fresh key starts at 1 or above, got {id}");
}

/// Concurrent callers never get the same id, and each sees its own ids increase.
pub async fn sequencer_concurrent(seq: &dyn Sequencer, prefix: &str) {
    let key = format!("{prefix}seq-concurrent");
    let m = HashMap::new();
    let callers = (0..8).map(|_| async {
        let mut ids = Vec::with_capacity(50);
        for _ in 0..50 {
            ids.push(
                seq.next_id(&key, Increment::Strong, &m)
                    .await
                    .expect("next_id"),
            );
        }
        ids
    });
    let all = futures::future::join_all(callers).await;
    let mut seen = HashSet::new();
    for ids in &all {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one caller's ids increase: {ids:?}"
        );
        for id in ids {
            assert!(seen.insert(*id), "id {id} was issued twice");
        }
    }
}

// === configuration ===

fn cfg_item(key: &str, content: &str, group: &str, label: &str) -> ConfigItem {
    ConfigItem {
        key: key.to_owned(),
        content: content.to_owned(),
        group: group.to_owned(),
        label: label.to_owned(),
        tags: HashMap::from([("owner".to_owned(), "conformance".to_owned())]),
        ..Default::default()
    }
}

fn cfg_query(app: &str, group: &str, label: &str, keys: &[&str]) -> ConfigQuery {
    ConfigQuery {
        app_id: app.to_owned(),
        group: group.to_owned(),
        label: label.to_owned(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..Default::default()
    }
}

fn sorted_keys(items: &[ConfigItem]) -> Vec<String> {
    let mut keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    keys.sort();
    keys
}

/// Receives changes until one holds an item for which `want` is true; every item seen must
/// belong to `app` and satisfy `allowed`.
async fn await_change(
    sub: &mut ConfigSubscription,
    app: &str,
    what: &str,
    allowed: impl Fn(&ConfigItem) -> bool,
    want: impl Fn(&ConfigItem) -> bool,
) -> ConfigItem {
    within(what, async {
        loop {
            let change = sub
                .next()
                .await
                .unwrap_or_else(|| panic!("subscription closed: {what}"));
            assert_eq!(
                change.app_id, app,
                "{what}: a change of another app was pushed"
            );
            let mut found = None;
            for item in change.items {
                assert!(
                    allowed(&item),
                    "{what}: pushed an item the query does not select: {item:?}"
                );
                if want(&item) {
                    found = Some(item);
                }
            }
            if let Some(item) = found {
                return item;
            }
        }
    })
    .await
}

/// Every configuration behaviour below, one after the other.
pub async fn config_suite(store: &dyn ConfigStore, prefix: &str) {
    config_get_save_delete(store, prefix).await;
    config_subscribe(store, prefix).await;
}

/// Save, get (all keys, some keys, by group, by label), overwrite, delete; apps are separate.
pub async fn config_get_save_delete(store: &dyn ConfigStore, prefix: &str) {
    let app = format!("{prefix}app");
    let other = format!("{prefix}other-app");
    let m = HashMap::new();
    let items = vec![
        cfg_item("k1", "v1", "g1", "l1"),
        cfg_item("k2", "v2", "g1", "l2"),
        cfg_item("k3", "v3", "g2", "l1"),
    ];
    store.save(&app, items.clone(), &m).await.expect("save");
    store
        .save(&other, vec![cfg_item("k1", "other", "g1", "l1")], &m)
        .await
        .expect("save other");

    let all = store
        .get(&cfg_query(&app, "", "", &[]))
        .await
        .expect("get all");
    assert_eq!(
        sorted_keys(&all),
        ["k1", "k2", "k3"],
        "empty keys = every item of the app"
    );
    let k1 = store
        .get(&cfg_query(&app, "", "", &["k1"]))
        .await
        .expect("get k1");
    assert_eq!(
        k1,
        vec![items[0].clone()],
        "an item reads back as saved (content, group, label, tags)"
    );
    let g1 = store
        .get(&cfg_query(&app, "g1", "", &[]))
        .await
        .expect("get g1");
    assert_eq!(sorted_keys(&g1), ["k1", "k2"], "group filters");
    let l1 = store
        .get(&cfg_query(&app, "", "l1", &[]))
        .await
        .expect("get l1");
    assert_eq!(sorted_keys(&l1), ["k1", "k3"], "label filters");
    let none = store
        .get(&cfg_query(&app, "", "", &["absent"]))
        .await
        .expect("get absent");
    assert!(
        none.is_empty(),
        "an absent key is not an error, just no item: {none:?}"
    );

    store
        .save(&app, vec![cfg_item("k1", "v1b", "g1", "l1")], &m)
        .await
        .expect("overwrite");
    let k1 = store
        .get(&cfg_query(&app, "g1", "l1", &["k1"]))
        .await
        .expect("get k1");
    assert_eq!(k1.len(), 1, "an overwrite keeps one item: {k1:?}");
    assert_eq!(k1[0].content, "v1b");
    let theirs = store
        .get(&cfg_query(&other, "", "", &["k1"]))
        .await
        .expect("get other");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].content, "other", "apps are separate");

    store
        .delete(&cfg_query(&app, "g1", "l1", &["k1"]))
        .await
        .expect("delete k1");
    let left = store
        .get(&cfg_query(&app, "", "", &[]))
        .await
        .expect("get all");
    assert_eq!(
        sorted_keys(&left),
        ["k2", "k3"],
        "delete removes only the named key"
    );
    assert_eq!(
        store
            .get(&cfg_query(&other, "", "", &[]))
            .await
            .expect("get")
            .len(),
        1
    );

    store
        .delete(&cfg_query(&app, "g1", "l2", &["k2"]))
        .await
        .expect("cleanup");
    store
        .delete(&cfg_query(&app, "g2", "l1", &["k3"]))
        .await
        .expect("cleanup");
    store
        .delete(&cfg_query(&other, "g1", "l1", &["k1"]))
        .await
        .expect("cleanup");
}

/// Subscribers receive later saves and deletes of the items their query selects, and nothing
/// of other apps or other keys.
pub async fn config_subscribe(store: &dyn ConfigStore, prefix: &str) {
    let app = format!("{prefix}sub-app");
    let other = format!("{prefix}sub-other");
    let m = HashMap::new();
    let mut all = store
        .subscribe(cfg_query(&app, "", "", &[]))
        .await
        .expect("subscribe all");
    let mut only_k2 = store
        .subscribe(cfg_query(&app, "", "", &["k2"]))
        .await
        .expect("subscribe k2");

    store
        .save(&other, vec![cfg_item("k1", "theirs", "g", "l")], &m)
        .await
        .expect("save other");
    store
        .save(&app, vec![cfg_item("k1", "v1", "g", "l")], &m)
        .await
        .expect("save k1");
    let got = await_change(&mut all, &app, "k1 saved", |_| true, |i| i.key == "k1").await;
    assert_eq!(got.content, "v1", "a pushed item carries its content");
    assert_eq!((got.group.as_str(), got.label.as_str()), ("g", "l"));

    store
        .save(
            &app,
            vec![
                cfg_item("k2", "v2", "g", "l"),
                cfg_item("k1", "v1b", "g", "l"),
            ],
            &m,
        )
        .await
        .expect("save k1, k2");
    await_change(
        &mut all,
        &app,
        "k1 changed",
        |_| true,
        |i| i.key == "k1" && i.content == "v1b",
    )
    .await;
    let got = await_change(
        &mut only_k2,
        &app,
        "k2 saved (keyed)",
        |i| i.key == "k2",
        |i| i.key == "k2",
    )
    .await;
    assert_eq!(got.content, "v2");

    store
        .delete(&cfg_query(&app, "g", "l", &["k2"]))
        .await
        .expect("delete k2");
    let is_deleted = |i: &ConfigItem| {
        i.key == "k2" && i.metadata.get("deleted").map(String::as_str) == Some("true")
    };
    for (sub, name) in [(&mut all, "all"), (&mut only_k2, "keyed")] {
        let allowed = |i: &ConfigItem| name == "all" || i.key == "k2";
        let got = await_change(
            sub,
            &app,
            &format!("k2 deleted ({name})"),
            allowed,
            is_deleted,
        )
        .await;
        assert!(
            got.content.is_empty(),
            "a deleted item arrives with empty content: {got:?}"
        );
    }

    store
        .delete(&cfg_query(&app, "g", "l", &["k1"]))
        .await
        .expect("cleanup");
    store
        .delete(&cfg_query(&other, "g", "l", &["k1"]))
        .await
        .expect("cleanup");
}
