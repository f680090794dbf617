//! Bounded inputs of the embedded components, through the real binary: a memory component
//! over its `maxKeys` answers RESOURCE_EXHAUSTED naming itself and the bound, and keeps serving.

use std::collections::HashMap;

use mecha_integration::pb::{DeleteStateRequest, GetStateRequest, SaveStateRequest, StateItem};
use mecha_integration::{describe, within, Sidecar};
use tonic::Code;

fn item(key: &str, value: &str) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn save(items: Vec<StateItem>) -> SaveStateRequest {
    SaveStateRequest {
        store_name: "small".into(),
        states: items,
    }
}

#[tokio::test]
async fn state_memory_beyond_max_keys_is_resource_exhausted() {
    let sc = Sidecar::builder()
        .extra_components(
            "  - name: small
    type: state.memory
    metadata:
      maxKeys: \"3\"
",
        )
        .start()
        .await;
    let mut rt = sc.client().await;
    within(
        "SaveState",
        rt.save_state(save(vec![item("a", "1"), item("b", "1"), item("c", "1")])),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveState 3 keys: {}", describe(&s)));

    let err = within("SaveState", rt.save_state(save(vec![item("d", "1")])))
        .await
        .expect_err("a fourth key is over maxKeys");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", describe(&err));
    assert!(
        err.message().contains("\"small\"") && err.message().contains("maxKeys=3"),
        "{}",
        describe(&err)
    );
    let got = within(
        "GetState",
        rt.get_state(GetStateRequest {
            store_name: "small".into(),
            key: "d".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetState: {}", describe(&s)))
    .into_inner();
    assert!(got.data.is_empty(), "the refused key was not stored");

    // Updating a stored key still works; a delete makes room for a new one.
    within("SaveState", rt.save_state(save(vec![item("a", "2")])))
        .await
        .unwrap_or_else(|s| panic!("update: {}", describe(&s)));
    within(
        "DeleteState",
        rt.delete_state(DeleteStateRequest {
            store_name: "small".into(),
            key: "b".into(),
            etag: None,
            options: None,
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("DeleteState: {}", describe(&s)));
    within("SaveState", rt.save_state(save(vec![item("d", "1")])))
        .await
        .unwrap_or_else(|s| panic!("after delete: {}", describe(&s)));
}
