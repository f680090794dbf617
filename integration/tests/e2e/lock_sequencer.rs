//! Lock (TryLock, Unlock, LockKeepAlive) and sequencer (GetNextId).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::sequencer_options::AutoIncrement;
use mecha_integration::pb::{
    lock_keep_alive_response, unlock_response, GetNextIdRequest, LockKeepAliveRequest,
    SequencerOptions, TryLockRequest, UnlockRequest,
};
use mecha_integration::{describe, within, Sidecar, STEP_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

const LOCKS: &str = "lockstore";

async fn try_lock(
    rt: &mut RuntimeClient<Channel>,
    resource: &str,
    owner: &str,
    expire: i32,
) -> Result<bool, tonic::Status> {
    within(
        "TryLock",
        rt.try_lock(TryLockRequest {
            store_name: LOCKS.into(),
            resource_id: resource.into(),
            lock_owner: owner.into(),
            expire,
        }),
    )
    .await
    .map(|r| r.into_inner().success)
}

async fn unlock(
    rt: &mut RuntimeClient<Channel>,
    resource: &str,
    owner: &str,
) -> unlock_response::Status {
    let r = within(
        "Unlock",
        rt.unlock(UnlockRequest {
            store_name: LOCKS.into(),
            resource_id: resource.into(),
            lock_owner: owner.into(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("Unlock: {}", describe(&s)))
    .into_inner();
    unlock_response::Status::try_from(r.status).expect("known unlock status")
}

async fn keep_alive(
    rt: &mut RuntimeClient<Channel>,
    resource: &str,
    owner: &str,
    expire: i32,
) -> lock_keep_alive_response::Status {
    let r = within(
        "LockKeepAlive",
        rt.lock_keep_alive(LockKeepAliveRequest {
            store_name: LOCKS.into(),
            resource_id: resource.into(),
            lock_owner: owner.into(),
            expire,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("LockKeepAlive: {}", describe(&s)))
    .into_inner();
    lock_keep_alive_response::Status::try_from(r.status).expect("known keep-alive status")
}

#[tokio::test]
async fn lock_ownership_and_statuses() {
    use lock_keep_alive_response::Status as K;
    use unlock_response::Status as U;
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;

    assert!(try_lock(&mut rt, "res", "alice", 60)
        .await
        .expect("TryLock"));
    // Held: nobody else gets it, and it is not re-entrant (Layotto).
    assert!(!try_lock(&mut rt, "res", "bob", 60).await.expect("TryLock"));
    assert!(!try_lock(&mut rt, "res", "alice", 60)
        .await
        .expect("TryLock"));

    assert_eq!(unlock(&mut rt, "res", "bob").await, U::LockBelongToOthers);
    assert_eq!(unlock(&mut rt, "nothing-here", "bob").await, U::LockUnexist);

    assert_eq!(keep_alive(&mut rt, "res", "alice", 60).await, K::Success);
    assert_eq!(
        keep_alive(&mut rt, "res", "bob", 60).await,
        K::LockBelongToOthers
    );
    assert_eq!(
        keep_alive(&mut rt, "nothing-here", "bob", 60).await,
        K::LockUnexist
    );

    assert_eq!(unlock(&mut rt, "res", "alice").await, U::Success);
    // Released: unlocking again finds nothing, and someone else can take it.
    assert_eq!(unlock(&mut rt, "res", "alice").await, U::LockUnexist);
    assert!(try_lock(&mut rt, "res", "bob", 60).await.expect("TryLock"));
}

#[tokio::test]
async fn lock_expires() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    assert!(try_lock(&mut rt, "short", "alice", 1)
        .await
        .expect("TryLock"));
    // Wait (bounded) until the 1 s lease has run out and bob can take it.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !try_lock(&mut rt, "short", "bob", 60)
        .await
        .expect("TryLock")
    {
        assert!(Instant::now() < deadline, "a 1s lock never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // alice's lease is gone: her unlock is answered as someone else's lock.
    assert_eq!(
        unlock(&mut rt, "short", "alice").await,
        unlock_response::Status::LockBelongToOthers
    );
}

#[tokio::test]
async fn lock_bad_arguments() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    for (resource, owner, expire) in [("r", "o", 0), ("r", "o", -5), ("", "o", 5), ("r", "", 5)] {
        let err = try_lock(&mut rt, resource, owner, expire)
            .await
            .expect_err("invalid TryLock");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{resource:?}/{owner:?}/{expire}: {}",
            describe(&err)
        );
    }
    let err = within(
        "TryLock",
        rt.try_lock(TryLockRequest {
            store_name: "nolocks".into(),
            resource_id: "r".into(),
            lock_owner: "o".into(),
            expire: 5,
        }),
    )
    .await
    .expect_err("unknown lock store");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(
        err.message().contains("nolocks") && err.message().contains(LOCKS),
        "{}",
        describe(&err)
    );
}

async fn next_id(rt: &mut RuntimeClient<Channel>, key: &str, strong: bool) -> i64 {
    within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: "sequencer".into(),
            key: key.into(),
            options: Some(SequencerOptions {
                increment: if strong {
                    AutoIncrement::Strong as i32
                } else {
                    AutoIncrement::Weak as i32
                },
            }),
            metadata: Default::default(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetNextId: {}", describe(&s)))
    .into_inner()
    .next_id
}

#[tokio::test]
async fn next_id_is_strictly_increasing_per_key() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let mut last = 0;
    for i in 0..50 {
        let id = next_id(&mut rt, "orders", i % 2 == 0).await;
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
    // Another key has its own sequence.
    let other = next_id(&mut rt, "users", false).await;
    assert!(other >= 1);
    assert!(next_id(&mut rt, "orders", false).await > last);

    // Concurrent callers never get the same id.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(next_id(&mut rt, "shared", false).await);
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let ids = t.await.expect("task");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "per caller increasing: {ids:?}"
        );
        for id in ids {
            assert!(all.insert(id), "id {id} issued twice");
        }
    }
    assert_eq!(all.len(), 100);

    // Empty key or unknown sequencer: INVALID_ARGUMENT.
    let err = within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: "sequencer".into(),
            key: String::new(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    let err = within(
        "GetNextId",
        rt.get_next_id(GetNextIdRequest {
            store_name: "noseq".into(),
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("unknown sequencer");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(err.message().contains("noseq"), "{}", describe(&err));
}
