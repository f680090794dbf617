//! State API: SaveState, GetState, GetBulkState, DeleteState, DeleteBulkState,
//! ExecuteStateTransaction — ETags, first-write, all-or-nothing transactions, TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::state_options::StateConcurrency;
use mecha_integration::pb::{
    DeleteBulkStateRequest, DeleteStateRequest, Etag, ExecuteStateTransactionRequest,
    GetBulkStateRequest, GetStateRequest, SaveStateRequest, StateItem, StateOptions,
    TransactionalStateOperation,
};
use mecha_integration::{describe, within, Sidecar, STEP_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

const STORE: &str = "statestore";

fn item(key: &str, value: &str) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn with_etag(mut i: StateItem, etag: &str) -> StateItem {
    i.etag = Some(Etag { value: etag.into() });
    i
}

fn first_write(mut i: StateItem) -> StateItem {
    i.options = Some(StateOptions {
        concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
        consistency: 0,
    });
    i
}

async fn save(rt: &mut RuntimeClient<Channel>, items: Vec<StateItem>) -> Result<(), tonic::Status> {
    within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: STORE.into(),
            states: items,
        }),
    )
    .await
    .map(|_| ())
}

/// (data, etag) of `key`.
async fn get(rt: &mut RuntimeClient<Channel>, key: &str) -> (String, String) {
    let r = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: STORE.into(),
            key: key.into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetState {key}: {}", describe(&s)))
    .into_inner();
    (String::from_utf8(r.data).expect("utf-8 value"), r.etag)
}

async fn delete(
    rt: &mut RuntimeClient<Channel>,
    key: &str,
    etag: Option<&str>,
) -> Result<(), tonic::Status> {
    within(
        "DeleteState",
        rt.delete_state(DeleteStateRequest {
            store_name: STORE.into(),
            key: key.into(),
            etag: etag.map(|e| Etag { value: e.into() }),
            ..Default::default()
        }),
    )
    .await
    .map(|_| ())
}

async fn transact(
    rt: &mut RuntimeClient<Channel>,
    ops: Vec<(&str, StateItem)>,
) -> Result<(), tonic::Status> {
    within(
        "ExecuteStateTransaction",
        rt.execute_state_transaction(ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: ops
                .into_iter()
                .map(|(t, i)| TransactionalStateOperation {
                    operation_type: t.into(),
                    request: Some(i),
                })
                .collect(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn save_get_delete_round_trip_with_etags() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;

    // A missing key answers empty data and etag, not an error.
    assert_eq!(get(&mut rt, "k").await, (String::new(), String::new()));

    save(&mut rt, vec![item("k", "v1")]).await.expect("save v1");
    let (data, etag1) = get(&mut rt, "k").await;
    assert_eq!(data, "v1");
    assert!(!etag1.is_empty(), "a saved item has an etag");

    // Writing with the current ETag succeeds and issues a new one.
    save(&mut rt, vec![with_etag(item("k", "v2"), &etag1)])
        .await
        .expect("save with the current etag");
    let (data, etag2) = get(&mut rt, "k").await;
    assert_eq!(data, "v2");
    assert_ne!(etag2, etag1, "each write issues a new etag");

    // A last-write save without an ETag overwrites.
    save(&mut rt, vec![item("k", "v3")]).await.expect("save v3");
    assert_eq!(get(&mut rt, "k").await.0, "v3");

    delete(&mut rt, "k", None).await.expect("delete");
    assert_eq!(get(&mut rt, "k").await, (String::new(), String::new()));
    // Deleting a missing key without an ETag is not an error (Dapr).
    delete(&mut rt, "k", None)
        .await
        .expect("delete missing key");
}

#[tokio::test]
async fn etag_mismatch_is_aborted_and_changes_nothing() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    save(&mut rt, vec![item("k", "v1")]).await.expect("save v1");
    let (_, stale) = get(&mut rt, "k").await;
    save(&mut rt, vec![item("k", "v2")]).await.expect("save v2");
    let (_, current) = get(&mut rt, "k").await;

    let err = save(&mut rt, vec![with_etag(item("k", "v3"), &stale)])
        .await
        .expect_err("stale etag must fail");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert!(
        err.message().contains("\"k\""),
        "names the key: {}",
        describe(&err)
    );
    assert_eq!(get(&mut rt, "k").await, ("v2".into(), current.clone()));

    let err = delete(&mut rt, "k", Some(&stale))
        .await
        .expect_err("stale etag delete must fail");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(
        get(&mut rt, "k").await.0,
        "v2",
        "the failed delete kept the item"
    );

    // An ETag on a key that does not exist never matches.
    let err = save(&mut rt, vec![with_etag(item("nokey", "x"), &current)])
        .await
        .expect_err("etag on a missing key");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(get(&mut rt, "nokey").await.0, "");

    // The current ETag deletes.
    delete(&mut rt, "k", Some(&current))
        .await
        .expect("delete with the current etag");
    assert_eq!(get(&mut rt, "k").await.0, "");
}

#[tokio::test]
async fn malformed_etag_is_invalid_argument() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    save(&mut rt, vec![item("k", "v1")]).await.expect("save");
    for bad in ["not-a-version", "-1", "1.5"] {
        let err = save(&mut rt, vec![with_etag(item("k", "v2"), bad)])
            .await
            .expect_err("malformed etag");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{bad}: {}",
            describe(&err)
        );
        let err = delete(&mut rt, "k", Some(bad))
            .await
            .expect_err("malformed etag on delete");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{bad}: {}",
            describe(&err)
        );
    }
    assert_eq!(get(&mut rt, "k").await.0, "v1");
}

#[tokio::test]
async fn first_write_concurrency() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    // First write of a new key succeeds.
    save(&mut rt, vec![first_write(item("fw", "one"))])
        .await
        .expect("first write of a new key");
    let (_, etag) = get(&mut rt, "fw").await;
    // A second first-write without an ETag conflicts.
    let err = save(&mut rt, vec![first_write(item("fw", "two"))])
        .await
        .expect_err("first-write on an existing key");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(get(&mut rt, "fw").await.0, "one");
    // With the current ETag it is allowed.
    save(
        &mut rt,
        vec![first_write(with_etag(item("fw", "three"), &etag))],
    )
    .await
    .expect("first-write with the current etag");
    assert_eq!(get(&mut rt, "fw").await.0, "three");

    // Concurrent first-writers of one fresh key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            save(&mut rt, vec![first_write(item("race", &format!("w{i}")))]).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{}", describe(&e)),
        }
    }
    assert_eq!(won, 1, "exactly one first-writer wins");
}

#[tokio::test]
async fn bulk_get_and_bulk_delete() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    save(
        &mut rt,
        vec![item("a", "1"), item("b", "2"), item("c", "3")],
    )
    .await
    .expect("bulk save");

    let resp = within(
        "GetBulkState",
        rt.get_bulk_state(GetBulkStateRequest {
            store_name: STORE.into(),
            keys: vec!["a".into(), "b".into(), "missing".into()],
            parallelism: 2,
            metadata: HashMap::new(),
        }),
    )
    .await
    .expect("GetBulkState")
    .into_inner();
    let by_key: HashMap<String, _> = resp.items.into_iter().map(|i| (i.key.clone(), i)).collect();
    assert_eq!(by_key.len(), 3, "one item per requested key: {by_key:?}");
    assert_eq!(by_key["a"].data, b"1");
    assert_eq!(by_key["b"].data, b"2");
    assert!(!by_key["a"].etag.is_empty());
    assert!(by_key["missing"].data.is_empty() && by_key["missing"].etag.is_empty());
    assert!(by_key.values().all(|i| i.error.is_empty()), "{by_key:?}");

    // Bulk delete with one current ETag and one plain key.
    let a_etag = by_key["a"].etag.clone();
    within(
        "DeleteBulkState",
        rt.delete_bulk_state(DeleteBulkStateRequest {
            store_name: STORE.into(),
            states: vec![with_etag(item("a", ""), &a_etag), item("b", "")],
        }),
    )
    .await
    .expect("DeleteBulkState");
    assert_eq!(get(&mut rt, "a").await.0, "");
    assert_eq!(get(&mut rt, "b").await.0, "");
    assert_eq!(get(&mut rt, "c").await.0, "3");

    // A stale ETag in a bulk delete fails it with ABORTED.
    let (_, c_etag) = get(&mut rt, "c").await;
    save(&mut rt, vec![item("c", "4")]).await.expect("save c");
    let err = within(
        "DeleteBulkState",
        rt.delete_bulk_state(DeleteBulkStateRequest {
            store_name: STORE.into(),
            states: vec![with_etag(item("c", ""), &c_etag)],
        }),
    )
    .await
    .expect_err("stale etag");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(get(&mut rt, "c").await.0, "4");

    // Empty key lists are fine.
    let empty = within(
        "GetBulkState",
        rt.get_bulk_state(GetBulkStateRequest {
            store_name: STORE.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("empty GetBulkState")
    .into_inner();
    assert!(empty.items.is_empty());
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    save(&mut rt, vec![item("x", "x0"), item("y", "y0")])
        .await
        .expect("seed");
    let (_, x_etag) = get(&mut rt, "x").await;
    save(&mut rt, vec![item("x", "x1")])
        .await
        .expect("make x_etag stale");

    // One stale ETag among the operations: nothing is applied.
    let err = transact(
        &mut rt,
        vec![
            ("upsert", item("new", "n")),
            ("delete", item("y", "")),
            ("upsert", with_etag(item("x", "x2"), &x_etag)),
        ],
    )
    .await
    .expect_err("stale etag aborts the transaction");
    assert_eq!(err.code(), Code::Aborted, "{}", describe(&err));
    assert_eq!(get(&mut rt, "new").await.0, "", "no upsert applied");
    assert_eq!(get(&mut rt, "y").await.0, "y0", "no delete applied");
    assert_eq!(get(&mut rt, "x").await.0, "x1");

    // A malformed operation type is INVALID_ARGUMENT naming it; nothing is applied.
    let err = transact(
        &mut rt,
        vec![("upsert", item("new", "n")), ("merge", item("y", "m"))],
    )
    .await
    .expect_err("unknown operation type");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(err.message().contains("merge"), "{}", describe(&err));
    assert_eq!(get(&mut rt, "new").await.0, "");

    // All valid: everything is applied.
    let (_, x_now) = get(&mut rt, "x").await;
    transact(
        &mut rt,
        vec![
            ("upsert", item("new", "n")),
            ("delete", item("y", "")),
            ("upsert", with_etag(item("x", "x2"), &x_now)),
        ],
    )
    .await
    .expect("valid transaction");
    assert_eq!(get(&mut rt, "new").await.0, "n");
    assert_eq!(get(&mut rt, "y").await.0, "");
    assert_eq!(get(&mut rt, "x").await.0, "x2");
}

#[tokio::test]
async fn ttl_in_seconds_expires_the_item() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut ttl_item = item("ttl", "short-lived");
    ttl_item.metadata = HashMap::from([("ttlInSeconds".to_owned(), "1".to_owned())]);
    let mut forever = item("forever", "stays");
    forever.metadata = HashMap::from([("ttlInSeconds".to_owned(), "-1".to_owned())]);
    save(&mut rt, vec![ttl_item, forever])
        .await
        .expect("save with ttl");

    let resp = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: STORE.into(),
            key: "ttl".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("GetState")
    .into_inner();
    // Either still there (with its expiry reported) or already gone: never anything else.
    if !resp.data.is_empty() {
        assert_eq!(resp.data, b"short-lived");
        assert!(
            resp.metadata.contains_key("ttlExpireTime"),
            "an item with a TTL reports ttlExpireTime: {:?}",
            resp.metadata
        );
    }

    // Wait (bounded) for the item to disappear.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let (data, etag) = get(&mut rt, "ttl").await;
        if data.is_empty() {
            assert!(etag.is_empty(), "an expired item has no etag");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "item with ttlInSeconds=1 still there after {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&mut rt, "forever").await.0,
        "stays",
        "ttl -1 never expires"
    );

    // A TTL that is not a positive integer (or -1) is refused.
    let mut bad = item("bad", "x");
    bad.metadata = HashMap::from([("ttlInSeconds".to_owned(), "soon".to_owned())]);
    let err = save(&mut rt, vec![bad]).await.expect_err("bad ttl");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
}

#[tokio::test]
async fn unknown_state_store_and_empty_key_are_invalid_argument() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let err = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: "nosuchstore".into(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("unknown store");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(
        err.message().contains("nosuchstore") && err.message().contains("statestore"),
        "names the unknown store and lists the configured one: {}",
        describe(&err)
    );

    let err = within(
        "SaveState",
        rt.save_state(SaveStateRequest {
            store_name: "nosuchstore".into(),
            states: vec![item("k", "v")],
        }),
    )
    .await
    .expect_err("unknown store");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));

    let err = save(&mut rt, vec![item("", "v")])
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
}
