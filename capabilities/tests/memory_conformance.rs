//! The shared conformance suite run against the embedded (memory) components.
//!
//! Each test builds its own component through the public constructor, as the registry does.

use mecha_capabilities::conformance;
use mecha_capabilities::memory::{
    MemoryConfigStore, MemoryLock, MemoryPubSub, MemorySequencer, MemoryState,
};
use mecha_capabilities::{BuildContext, ComponentSpec, Result};

fn build<T>(new: fn(&ComponentSpec, &BuildContext) -> Result<T>, spec: ComponentSpec) -> T {
    match new(&spec, &BuildContext::default()) {
        Ok(c) => c,
        Err(e) => panic!("{} builds: {e}", spec.kind),
    }
}

fn state() -> MemoryState {
    build(
        MemoryState::new,
        ComponentSpec::new("statestore", "state.memory"),
    )
}

/// The settings `conformance::pubsub_suite` assumes.
fn pubsub() -> MemoryPubSub {
    build(
        MemoryPubSub::new,
        ComponentSpec::new("pubsub", "pubsub.memory")
            .with("processingTimeout", "1s")
            .with("redeliverInterval", "100ms"),
    )
}

#[tokio::test]
async fn state_crud() {
    conformance::state_crud(&state(), "crud/").await;
}

#[tokio::test]
async fn state_etag() {
    conformance::state_etag(&state(), "etag/").await;
}

#[tokio::test]
async fn state_first_write() {
    conformance::state_first_write(&state(), "fw/").await;
}

#[tokio::test]
async fn state_bulk() {
    conformance::state_bulk(&state(), "bulk/").await;
}

#[tokio::test]
async fn state_transaction() {
    conformance::state_transaction(&state(), "tx/").await;
}

#[tokio::test]
async fn state_ttl() {
    conformance::state_ttl(&state(), "ttl/").await;
}

/// The whole suite against one shared store, as a backend shared by many tests would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_suite_on_one_shared_store() {
    let store = state();
    tokio::join!(
        conformance::state_suite(&store, "a/"),
        conformance::state_suite(&store, "b/"),
    );
}

#[tokio::test]
async fn pubsub_fan_out() {
    conformance::pubsub_fan_out(&pubsub(), "fan/").await;
}

#[tokio::test]
async fn pubsub_redeliver_on_retry() {
    conformance::pubsub_redeliver_on_retry(&pubsub(), "retry/").await;
}

#[tokio::test]
async fn pubsub_redeliver_unanswered() {
    conformance::pubsub_redeliver_unanswered(&pubsub(), "noanswer/").await;
}

#[tokio::test]
async fn pubsub_drop() {
    conformance::pubsub_drop(&pubsub(), "drop/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_suite_on_one_shared_component() {
    let ps = pubsub();
    tokio::join!(
        conformance::pubsub_suite(&ps, "a/"),
        conformance::pubsub_suite(&ps, "b/")
    );
}

#[tokio::test]
async fn lock_suite() {
    let locks = build(
        MemoryLock::new,
        ComponentSpec::new("lockstore", "lock.memory"),
    );
    tokio::join!(
        conformance::lock_suite(&locks, "a/"),
        conformance::lock_suite(&locks, "b/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencer_suite() {
    let seq = build(
        MemorySequencer::new,
        ComponentSpec::new("sequencer", "sequencer.memory"),
    );
    tokio::join!(
        conformance::sequencer_suite(&seq, "a/"),
        conformance::sequencer_suite(&seq, "b/"),
    );
}

#[tokio::test]
async fn config_suite() {
    let cfg = build(
        MemoryConfigStore::new,
        ComponentSpec::new("configstore", "configuration.memory"),
    );
    tokio::join!(
        conformance::config_suite(&cfg, "a/"),
        conformance::config_suite(&cfg, "b/")
    );
}
