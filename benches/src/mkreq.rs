//! Writes the request bodies h2load sends (`h2load -d FILE`): the 5-byte gRPC message prefix
//! (compressed flag 0, big-endian length) followed by the prost-encoded request.
//!
//! ```text
//! mkreq OUT_DIR
//! ```
//! Files: `sayhello.bin` (SayHelloRequest{service_name:"helloworld", name:"bench"}),
//! `getstate.bin` (GetStateRequest{store_name:"statestore", key:"bench-key"}),
//! `savestate.bin` (SaveStateRequest{store_name:"statestore", states:[{key:"bench-save",
//! value:"0123456789abcdef"}]}: last-write, no ETag, so every request succeeds), and
//! `publish.bin` (PublishEventRequest{pubsub_name:"pubsub", topic:"bench-topic",
//! data:"0123456789abcdef", data_content_type:"text/plain"}).

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use mecha_proto::layotto as pb;
use prost::Message;

/// The gRPC length-prefixed message: flag byte 0 (uncompressed), u32 BE length, message.
fn framed<M: Message>(msg: &M) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: mkreq OUT_DIR");
        return ExitCode::from(2);
    };
    let dir = Path::new(&dir);
    let files: [(&str, Vec<u8>); 4] = [
        (
            "sayhello.bin",
            framed(&pb::SayHelloRequest {
                service_name: "helloworld".into(),
                name: "bench".into(),
                data: None,
            }),
        ),
        (
            "getstate.bin",
            framed(&pb::GetStateRequest {
                store_name: "statestore".into(),
                key: "bench-key".into(),
                ..Default::default()
            }),
        ),
        (
            "savestate.bin",
            framed(&pb::SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![pb::StateItem {
                    key: "bench-save".into(),
                    value: b"0123456789abcdef".to_vec(),
                    ..Default::default()
                }],
            }),
        ),
        (
            "publish.bin",
            framed(&pb::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: "bench-topic".into(),
                data: b"0123456789abcdef".to_vec(),
                data_content_type: "text/plain".into(),
                ..Default::default()
            }),
        ),
    ];
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("mkreq: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, &bytes) {
            eprintln!("mkreq: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    ExitCode::SUCCESS
}
