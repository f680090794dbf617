//! A first call against a running sidecar (`scripts/run.sh`):
//! `cargo run -q -p mecha-integration --example first_call [http://127.0.0.1:34904]`
//!
//! Says hello, saves a state item, reads it back with its ETag, and takes a lock.

use mecha_proto::runtime::v1::runtime_client::RuntimeClient;
use mecha_proto::runtime::v1::{
    GetStateRequest, SaveStateRequest, SayHelloRequest, StateItem, TryLockRequest,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:34904".to_owned());
    let mut rt = RuntimeClient::connect(addr).await?;

    let hello = rt
        .say_hello(SayHelloRequest {
            service_name: "helloworld".into(),
            name: "mecha".into(),
            data: None,
        })
        .await?;
    println!("SayHello   -> {}", hello.into_inner().hello);

    rt.save_state(SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![StateItem {
            key: "greeting".into(),
            value: b"hi there".to_vec(),
            ..Default::default()
        }],
    })
    .await?;
    let got = rt
        .get_state(GetStateRequest {
            store_name: "statestore".into(),
            key: "greeting".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "GetState   -> {:?} (etag {})",
        String::from_utf8_lossy(&got.data),
        got.etag
    );

    let lock = rt
        .try_lock(TryLockRequest {
            store_name: "lockstore".into(),
            resource_id: "orders".into(),
            lock_owner: "first-call".into(),
            expire: 10,
        })
        .await?
        .into_inner();
    println!("TryLock    -> acquired: {}", lock.success);
    Ok(())
}
