//! Pre-populates the benchmark key and checks that each benchmarked call answers OK, before any
//! load is sent. h2load only sees HTTP statuses, and a gRPC error travels as HTTP 200 with a
//! non-zero `grpc-status` trailer, so without this check a misconfigured server would "win"
//! the benchmark by failing fast.
//!
//! ```text
//! bench-check ADDR OP...      OP: prepare | hello | get | save | publish
//! ```
//! `prepare` saves `bench-key` = `bench-value` in `statestore`; `get` reads it back and checks
//! the value. The other ops send exactly what `mkreq` writes for h2load.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use mecha_proto::layotto as pb;
use pb::runtime_client::RuntimeClient;
use tonic::transport::Channel;

const VALUE: &[u8] = b"bench-value";

async fn op(client: &mut RuntimeClient<Channel>, name: &str) -> Result<(), String> {
    match name {
        "prepare" => {
            client
                .save_state(pb::SaveStateRequest {
                    store_name: "statestore".into(),
                    states: vec![pb::StateItem {
                        key: "bench-key".into(),
                        value: VALUE.to_vec(),
                        ..Default::default()
                    }],
                })
                .await
                .map_err(|s| format!("SaveState bench-key: {s}"))?;
        }
        "hello" => {
            let r = client
                .say_hello(pb::SayHelloRequest {
                    service_name: "helloworld".into(),
                    name: "bench".into(),
                    data: None,
                })
                .await
                .map_err(|s| format!("SayHello: {s}"))?;
            if r.get_ref().hello.is_empty() {
                return Err("SayHello: empty greeting".into());
            }
        }
        "get" => {
            let r = client
                .get_state(pb::GetStateRequest {
                    store_name: "statestore".into(),
                    key: "bench-key".into(),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("GetState bench-key: {s}"))?;
            if r.get_ref().data != VALUE {
                return Err(format!(
                    "GetState bench-key: expected {:?}, got {:?} (run `prepare` first)",
                    String::from_utf8_lossy(VALUE),
                    String::from_utf8_lossy(&r.get_ref().data)
                ));
            }
        }
        "save" => {
            client
                .save_state(pb::SaveStateRequest {
                    store_name: "statestore".into(),
                    states: vec![pb::StateItem {
                        key: "bench-save".into(),
                        value: b"0123456789abcdef".to_vec(),
                        ..Default::default()
                    }],
                })
                .await
                .map_err(|s| format!("SaveState bench-save: {s}"))?;
        }
        "publish" => {
            client
                .publish_event(pb::PublishEventRequest {
                    pubsub_name: "pubsub".into(),
                    topic: "bench-topic".into(),
                    data: b"0123456789abcdef".to_vec(),
                    data_content_type: "text/plain".into(),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("PublishEvent bench-topic: {s}"))?;
        }
        other => {
            return Err(format!(
                "unknown op {other:?} (prepare|hello|get|save|publish)"
            ))
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((addr, ops)) = args.split_first() else {
        eprintln!("usage: bench-check ADDR OP...   (OP: prepare|hello|get|save|publish)");
        return ExitCode::from(2);
    };
    let mut client = match RuntimeClient::connect(format!("http://{addr}")).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-check: connect {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for name in ops {
        if let Err(e) = op(&mut client, name).await {
            eprintln!("bench-check: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
