//! Failure behaviour of the Redis components. Every test here kills and restarts its own
//! throw-away redis-server (AOF, `appendfsync always`); none touches `REDIS_URL` or port 6379.
//!
//! The tests run on a multi-threaded runtime: stopping and starting redis-server blocks the test
//! thread, and the connections' driver tasks must keep running meanwhile, as they do in the
//! sidecar (that is how a dropped connection is noticed before the next call).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ctx, raw, unique, RedisServer};
use mecha_capabilities::configuration::{ConfigItem, ConfigQuery, ConfigStore};
use mecha_capabilities::lock::{LockRequest, LockStore};
use mecha_capabilities::pubsub::{Outcome, PubSub, PublishRequest, SubscribeRequest, Subscription};
use mecha_capabilities::redis::{
    RedisConfigStore, RedisLock, RedisPubSub, RedisSequencer, RedisState,
};
use mecha_capabilities::sequencer::{Increment, Sequencer};
use mecha_capabilities::state::{SetRequest, StateStore};
use mecha_capabilities::{ComponentSpec, Error, Health};

const WAIT: Duration = Duration::from_secs(15);
/// The default call timeout, plus scheduling slack.
const FAIL_WITHIN: Duration = Duration::from_millis(1500);

fn spec(name: &str, kind: &str, host: &str) -> ComponentSpec {
    ComponentSpec::new(name, kind)
        .with("redisHost", host)
        .with("keyPrefix", &unique("f"))
}

fn set(key: &str, value: &str) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
        ..SetRequest::default()
    }
}

fn no_meta() -> HashMap<String, String> {
    HashMap::new()
}

/// Runs a call that must fail fast with UNAVAILABLE naming `name` and `addr`.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    name: &str,
    addr: &str,
    call: impl std::future::Future<Output = mecha_capabilities::Result<T>>,
) {
    let started = Instant::now();
    let res = call.await;
    let took = started.elapsed();
    let err = res.expect_err(what);
    assert!(matches!(err, Error::Unavailable(_)), "{what}: {err:?}");
    let msg = err.to_string();
    eprintln!("{what} ({took:?}): {msg}");
    assert!(
        msg.contains(&format!("{name:?}")) && msg.contains(addr),
        "{what}: {msg}"
    );
    assert!(took <= FAIL_WITHIN, "{what} took {took:?}: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_with_unavailable_and_the_same_objects_recover() {
    let mut server = RedisServer::start();
    let host = server.host();
    let state = RedisState::new(&spec("statestore", "state.redis", &host), &ctx()).expect("state");
    let lock = RedisLock::new(&spec("lockstore", "lock.redis", &host), &ctx()).expect("lock");
    let seq =
        RedisSequencer::new(&spec("sequencer", "sequencer.redis", &host), &ctx()).expect("seq");
    let cfg = RedisConfigStore::new(&spec("configstore", "configuration.redis", &host), &ctx())
        .expect("cfg");
    let ps = RedisPubSub::new(&spec("pubsub", "pubsub.redis", &host), &ctx()).expect("pubsub");
    let topic = unique("topic");

    state.set(set("k", "before")).await.expect("set while up");
    let id1 = seq
        .next_id("s", Increment::Strong, &no_meta())
        .await
        .expect("id while up");
    ps.publish(PublishRequest {
        topic: topic.clone(),
        ..PublishRequest::default()
    })
    .await
    .expect("publish while up");

    server.stop();
    let lock_req = LockRequest {
        resource_id: "r".to_owned(),
        owner: "o".to_owned(),
        expire_secs: 5,
    };
    let query = ConfigQuery {
        app_id: "app".to_owned(),
        ..ConfigQuery::default()
    };
    // Twice: the first call after the drop and a later one (reconnect attempts in between).
    for _ in 0..2 {
        assert_unavailable("get", "statestore", &host, state.get("k", &no_meta())).await;
        assert_unavailable("set", "statestore", &host, state.set(set("k", "x"))).await;
        assert_unavailable("ping", "statestore", &host, state.ping()).await;
        assert_unavailable("lock", "lockstore", &host, lock.try_lock(lock_req.clone())).await;
        assert_unavailable(
            "next id",
            "sequencer",
            &host,
            seq.next_id("s", Increment::Strong, &no_meta()),
        )
        .await;
        assert_unavailable("config get", "configstore", &host, cfg.get(&query)).await;
        assert_unavailable(
            "config subscribe",
            "configstore",
            &host,
            cfg.subscribe(query.clone()),
        )
        .await;
        let publish = PublishRequest {
            topic: topic.clone(),
            ..PublishRequest::default()
        };
        assert_unavailable("publish", "pubsub", &host, ps.publish(publish)).await;
    }

    server.start_again();
    // The same objects, not rebuilt; the data survived (AOF).
    let v = state
        .get("k", &no_meta())
        .await
        .expect("get after restart")
        .expect("persisted");
    assert_eq!(v.data, Bytes::from("before"));
    state
        .set(set("k", "after"))
        .await
        .expect("set after restart");
    state.ping().await.expect("ping after restart");
    assert!(lock.try_lock(lock_req).await.expect("lock after restart"));
    let id2 = seq
        .next_id("s", Increment::Strong, &no_meta())
        .await
        .expect("id after restart");
    assert!(id2 > id1, "{id2} after {id1}");
    cfg.get(&query).await.expect("config after restart");
    ps.publish(PublishRequest {
        topic,
        ..PublishRequest::default()
    })
    .await
    .expect("publish after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_times_out_within_the_call_timeout() {
    // Accepts connections (the kernel completes the handshake) but never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = silent.local_addr().expect("addr").to_string();
    let state = RedisState::new(
        &spec("statestore", "state.redis", &host).with("timeout", "300ms"),
        &ctx(),
    )
    .expect("state");
    let started = Instant::now();
    let err = state.get("k", &no_meta()).await.expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains(&host) && err.to_string().contains("\"k\""),
        "{err}"
    );

    // And nothing listening at all.
    let nothing = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let state =
        RedisState::new(&spec("statestore", "state.redis", &nothing), &ctx()).expect("state");
    assert_unavailable("get", "statestore", &nothing, state.get("k", &no_meta())).await;
}

fn pubsub(host: &str, group: &str, extra: &[(&str, &str)]) -> RedisPubSub {
    let mut spec = ComponentSpec::new("pubsub", "pubsub.redis")
        .with("redisHost", host)
        .with("consumerID", group)
        .with("redeliverInterval", "200ms");
    for (k, v) in extra {
        spec = spec.with(k, v);
    }
    RedisPubSub::new(&spec, &ctx()).expect("pubsub")
}

fn event(topic: &str, data: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        data: Bytes::from(data.to_owned()),
        ..Default::default()
    }
}

fn sub_req(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.to_owned(),
        ..SubscribeRequest::default()
    }
}

/// Publishes, trying again while the call fails as UNAVAILABLE: a call racing with a
/// connection drop fails (it may or may not have run), and the caller decides to retry.
async fn publish_until_accepted(ps: &RedisPubSub, req: PublishRequest) {
    let deadline = Instant::now() + WAIT;
    loop {
        match ps.publish(req.clone()).await {
            Ok(()) => return,
            Err(Error::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("publish not accepted yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

/// Receives (and acknowledges) until `want` distinct payloads were seen, or fails after `WAIT`.
async fn receive_all(sub: &mut Subscription, want: &HashSet<String>) {
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !want.is_subset(&seen) {
        let d = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("missing {:?}", want.difference(&seen).collect::<Vec<_>>()))
            .expect("subscription open");
        seen.insert(String::from_utf8_lossy(&d.message.data).into_owned());
        d.ack(Outcome::Success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_of_a_dropped_consumer_go_to_its_successor_at_once() {
    let server = RedisServer::start();
    let host = server.host();
    let (topic, group) = (unique("topic"), unique("group"));
    // A long processing timeout: what comes back quickly is the pending re-read, not a reclaim.
    let extra = [("processingTimeout", "60s")];
    let first = pubsub(&host, &group, &extra);
    let mut sub = first.subscribe(sub_req(&topic)).await.expect("subscribe");
    for i in 0..5 {
        first
            .publish(event(&topic, &i.to_string()))
            .await
            .expect("publish");
    }
    let mut ids = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..5 {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("delivery")
            .expect("open");
        ids.insert(d.message.id.clone());
        held.push(d);
    }
    // The sidecar goes away mid-consumption: nothing was answered.
    drop(sub);
    drop(first);
    drop(held);

    let second = pubsub(&host, &group, &extra);
    let mut sub = second
        .subscribe(sub_req(&topic))
        .await
        .expect("subscribe again");
    let mut again = HashSet::new();
    while again.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("redelivered well before processingTimeout")
            .expect("open");
        again.insert(d.message.id.clone());
        d.ack(Outcome::Success);
    }
    assert_eq!(again, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_publish_is_lost_across_a_redis_crash() {
    let mut server = RedisServer::start();
    let host = server.host();
    let (topic, group) = (unique("topic"), unique("group"));
    let ps = pubsub(&host, &group, &[]);
    let mut want = HashSet::new();
    for i in 0..200 {
        ps.publish(event(&topic, &format!("e{i}")))
            .await
            .expect("publish");
        want.insert(format!("e{i}"));
    }
    server.restart(); // SIGKILL, then start on the same data directory
    let mut sub = ps
        .subscribe(sub_req(&topic))
        .await
        .expect("subscribe after the crash");
    receive_all(&mut sub, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_survives_a_redis_restart() {
    let mut server = RedisServer::start();
    let host = server.host();
    let (topic, group) = (unique("topic"), unique("group"));
    let ps = pubsub(&host, &group, &[]);
    let mut sub = ps.subscribe(sub_req(&topic)).await.expect("subscribe");
    let before: HashSet<String> = (0..20).map(|i| format!("before{i}")).collect();
    for e in &before {
        ps.publish(event(&topic, e)).await.expect("publish");
    }
    receive_all(&mut sub, &before).await;

    server.restart();
    let after: HashSet<String> = (0..20).map(|i| format!("after{i}")).collect();
    for e in &after {
        publish_until_accepted(&ps, event(&topic, e)).await;
    }
    receive_all(&mut sub, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_and_group_are_recreated() {
    let server = RedisServer::start();
    let host = server.host();
    let (topic, group) = (unique("topic"), unique("group"));
    let ps = pubsub(&host, &group, &[]);
    let mut sub = ps.subscribe(sub_req(&topic)).await.expect("subscribe");
    ps.publish(event(&topic, "one")).await.expect("publish");
    receive_all(&mut sub, &HashSet::from(["one".to_owned()])).await;

    // The stream (and its group) vanish, as after a restart without persistence: NOGROUP.
    let _: i64 = redis::cmd("DEL")
        .arg(&topic)
        .query(&mut raw(&host))
        .expect("del");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ps.publish(event(&topic, "two"))
        .await
        .expect("publish to a new stream");
    receive_all(&mut sub, &HashSet::from(["two".to_owned()])).await;

    // Only the group destroyed: recreated at the start of the stream (at-least-once).
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&topic)
        .arg(&group)
        .query(&mut raw(&host))
        .expect("destroy");
    ps.publish(event(&topic, "three")).await.expect("publish");
    receive_all(&mut sub, &HashSet::from(["three".to_owned()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_subscription_survives_a_redis_restart() {
    let mut server = RedisServer::start();
    let host = server.host();
    let prefix = unique("cfg");
    let build = || {
        RedisConfigStore::new(
            &ComponentSpec::new("configstore", "configuration.redis")
                .with("redisHost", &host)
                .with("keyPrefix", &prefix),
            &ctx(),
        )
        .expect("cfg")
    };
    let (here, there) = (build(), build());
    let item = |content: &str| ConfigItem {
        key: "k".to_owned(),
        content: content.to_owned(),
        ..ConfigItem::default()
    };
    here.save("app", vec![item("v1")], &no_meta())
        .await
        .expect("save");
    let query = ConfigQuery {
        app_id: "app".to_owned(),
        ..ConfigQuery::default()
    };
    let mut sub = here.subscribe(query).await.expect("subscribe");

    server.restart();
    // Saved by another sidecar, likely before the subscription reconnected: the resync after
    // reconnecting pushes it anyway.
    let deadline = Instant::now() + WAIT;
    while there
        .save("app", vec![item("v2")], &no_meta())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let change = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("pushed")
        .expect("open");
    assert_eq!(change.items.len(), 1);
    assert_eq!(change.items[0].content, "v2");

    // And live notices flow again.
    there
        .save("app", vec![item("v3")], &no_meta())
        .await
        .expect("save");
    let change = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("pushed")
        .expect("open");
    assert_eq!(change.items[0].content, "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_are_unavailable_and_recover_when_fixed() {
    let server = RedisServer::start();
    let host = server.host();
    let mut admin = raw(&host);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut admin)
        .expect("set password");

    let with = |password: Option<&str>| {
        let mut s = spec("statestore", "state.redis", &host).with("redisDB", "2");
        if let Some(p) = password {
            s = s.with("redisPassword", p);
        }
        RedisState::new(&s, &ctx()).expect("state")
    };
    let (none, wrong, right) = (with(None), with(Some("nope")), with(Some("s3cret")));
    assert_unavailable("no password", "statestore", &host, none.ping()).await;
    assert_unavailable("wrong password", "statestore", &host, wrong.ping()).await;
    right.set(set("k", "v")).await.expect("right password");
    let in_db2: i64 = redis::cmd("DBSIZE")
        .query(&mut {
            let mut c = raw(&host);
            let _: () = redis::cmd("AUTH")
                .arg("s3cret")
                .query(&mut c)
                .expect("auth");
            let _: () = redis::cmd("SELECT").arg(2).query(&mut c).expect("select");
            c
        })
        .expect("dbsize");
    assert!(in_db2 >= 1, "redisDB=2 writes into database 2");

    // The server's password is removed: the component that had none works, without a rebuild.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query(&mut admin)
        .expect("clear password");
    none.ping().await.expect("works once the server accepts it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_redis_are_replaced_transparently() {
    let server = RedisServer::start();
    let host = server.host();
    let state = RedisState::new(&spec("statestore", "state.redis", &host), &ctx()).expect("state");
    let seq =
        RedisSequencer::new(&spec("sequencer", "sequencer.redis", &host), &ctx()).expect("seq");
    let ps = RedisPubSub::new(&spec("pubsub", "pubsub.redis", &host), &ctx()).expect("pubsub");
    let topic = unique("topic");
    state.set(set("k", "v")).await.expect("set");
    seq.next_id("s", Increment::Strong, &no_meta())
        .await
        .expect("id");
    ps.publish(event(&topic, "one")).await.expect("publish");

    // As Redis' `timeout` setting, or a NAT dropping idle flows, would: every client is cut.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut raw(&host))
        .expect("client kill");
    assert!(killed >= 3, "killed {killed}");

    // Repeatable calls go through on a new connection, without the caller seeing the drop.
    let v = state
        .get("k", &no_meta())
        .await
        .expect("get after the drop");
    assert_eq!(v.map(|v| v.data), Some(Bytes::from("v")));
    seq.next_id("s", Increment::Strong, &no_meta())
        .await
        .expect("id after the drop");
    ps.publish(event(&topic, "two"))
        .await
        .expect("publish after the drop");
}
