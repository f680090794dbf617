//! The shared conformance suites (`mecha_capabilities::conformance`) run against the Redis
//! components, on a real redis-server (see `common/mod.rs`). Each test uses its own key prefix
//! and its own topic / app id prefix, so they run in parallel on one server.

mod common;

use common::{ctx, shared_host, spec, unique};
use mecha_capabilities::conformance;
use mecha_capabilities::redis::{
    RedisConfigStore, RedisLock, RedisPubSub, RedisSequencer, RedisState,
};

/// Prefix for the names the suites make up (topics, keys, resources, app ids).
fn prefix() -> String {
    format!("{}-", unique("conf"))
}

#[tokio::test]
async fn state() {
    let store = RedisState::new(&spec("statestore", "state.redis", &shared_host()), &ctx())
        .expect("valid spec");
    conformance::state_suite(&store, &prefix()).await;
}

#[tokio::test]
async fn pubsub() {
    // The timings the suite assumes: redeliveries show within its wait, absence within its
    // quiet period.
    let spec = spec("pubsub", "pubsub.redis", &shared_host())
        .with("consumerID", &unique("conformance"))
        .with("processingTimeout", "1s")
        .with("redeliverInterval", "150ms");
    let ps = RedisPubSub::new(&spec, &ctx()).expect("valid spec");
    conformance::pubsub_suite(&ps, &prefix()).await;
}

#[tokio::test]
async fn lock() {
    let locks = RedisLock::new(&spec("lockstore", "lock.redis", &shared_host()), &ctx())
        .expect("valid spec");
    conformance::lock_suite(&locks, &prefix()).await;
}

#[tokio::test]
async fn sequencer() {
    let seq = RedisSequencer::new(
        &spec("sequencer", "sequencer.redis", &shared_host()),
        &ctx(),
    )
    .expect("valid spec");
    conformance::sequencer_suite(&seq, &prefix()).await;
}

#[tokio::test]
async fn sequencer_with_weak_segments() {
    // WEAK with reserved segments still hands out increasing, unique ids per sidecar.
    let spec = spec("sequencer", "sequencer.redis", &shared_host()).with("segmentSize", "16");
    let seq = RedisSequencer::new(&spec, &ctx()).expect("valid spec");
    conformance::sequencer_suite(&seq, &prefix()).await;
}

#[tokio::test]
async fn configuration() {
    let store = RedisConfigStore::new(
        &spec("configstore", "configuration.redis", &shared_host()),
        &ctx(),
    )
    .expect("valid spec");
    conformance::config_suite(&store, &prefix()).await;
}

/// The same suites over RESP2 (`redisProtocol: resp2`, for servers older than Redis 6): the
/// replies differ in shape (arrays instead of maps).
#[tokio::test]
async fn state_pubsub_and_configuration_over_resp2() {
    let host = shared_host();
    let store = RedisState::new(
        &spec("statestore", "state.redis", &host).with("redisProtocol", "resp2"),
        &ctx(),
    )
    .expect("valid spec");
    let ps = RedisPubSub::new(
        &spec("pubsub", "pubsub.redis", &host)
            .with("redisProtocol", "resp2")
            .with("consumerID", &unique("conformance"))
            .with("processingTimeout", "1s")
            .with("redeliverInterval", "150ms"),
        &ctx(),
    )
    .expect("valid spec");
    let config = RedisConfigStore::new(
        &spec("configstore", "configuration.redis", &host).with("redisProtocol", "resp2"),
        &ctx(),
    )
    .expect("valid spec");
    let prefix = prefix();
    tokio::join!(
        conformance::state_suite(&store, &prefix),
        conformance::pubsub_suite(&ps, &prefix),
        conformance::config_suite(&config, &prefix),
    );
}
