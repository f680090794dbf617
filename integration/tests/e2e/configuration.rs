//! Configuration: GetConfiguration, SaveConfiguration, DeleteConfiguration and the bidi
//! SubscribeConfiguration stream (a save pushes a change to the subscriber).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::{
    ConfigurationItem, DeleteConfigurationRequest, GetConfigurationRequest,
    SaveConfigurationRequest, SubscribeConfigurationRequest, SubscribeConfigurationResponse,
};
use mecha_integration::{describe, within, Sidecar, STEP_TIMEOUT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const STORE: &str = "configstore";

fn citem(key: &str, content: &str, group: &str, label: &str) -> ConfigurationItem {
    ConfigurationItem {
        key: key.into(),
        content: content.into(),
        group: group.into(),
        label: label.into(),
        tags: HashMap::from([("owner".to_owned(), "e2e".to_owned())]),
        metadata: HashMap::new(),
    }
}

async fn save(rt: &mut RuntimeClient<Channel>, app: &str, items: Vec<ConfigurationItem>) {
    within(
        "SaveConfiguration",
        rt.save_configuration(SaveConfigurationRequest {
            store_name: STORE.into(),
            app_id: app.into(),
            items,
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SaveConfiguration: {}", describe(&s)));
}

async fn get(
    rt: &mut RuntimeClient<Channel>,
    app: &str,
    group: &str,
    keys: &[&str],
) -> Vec<ConfigurationItem> {
    let mut items = within(
        "GetConfiguration",
        rt.get_configuration(GetConfigurationRequest {
            store_name: STORE.into(),
            app_id: app.into(),
            group: group.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetConfiguration: {}", describe(&s)))
    .into_inner()
    .items;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    items
}

#[tokio::test]
async fn save_get_delete() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    save(
        &mut rt,
        "shop",
        vec![
            citem("db.url", "postgres://x", "backend", "prod"),
            citem("feature.x", "on", "frontend", "prod"),
        ],
    )
    .await;

    let all = get(&mut rt, "shop", "", &[]).await;
    assert_eq!(
        all.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["db.url", "feature.x"]
    );
    let db = &all[0];
    assert_eq!(
        (db.content.as_str(), db.group.as_str(), db.label.as_str()),
        ("postgres://x", "backend", "prod")
    );
    assert_eq!(db.tags.get("owner").map(String::as_str), Some("e2e"));

    // By key and by group.
    let one = get(&mut rt, "shop", "", &["feature.x"]).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].content, "on");
    let backend = get(&mut rt, "shop", "backend", &[]).await;
    assert_eq!(backend.len(), 1);
    assert_eq!(backend[0].key, "db.url");

    // Another app sees nothing of shop's; an empty app id means the sidecar's (`app`).
    assert!(get(&mut rt, "other", "", &[]).await.is_empty());
    save(&mut rt, "", vec![citem("mine", "1", "", "")]).await;
    assert_eq!(get(&mut rt, "app", "", &["mine"]).await.len(), 1);

    within(
        "DeleteConfiguration",
        rt.delete_configuration(DeleteConfigurationRequest {
            store_name: STORE.into(),
            app_id: "shop".into(),
            keys: vec!["db.url".into()],
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("DeleteConfiguration: {}", describe(&s)));
    let left = get(&mut rt, "shop", "", &[]).await;
    assert_eq!(
        left.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["feature.x"]
    );

    // Unknown store: INVALID_ARGUMENT naming it and listing the configured one.
    let err = within(
        "GetConfiguration",
        rt.get_configuration(GetConfigurationRequest {
            store_name: "nocfg".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("unknown store");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    assert!(
        err.message().contains("nocfg") && err.message().contains(STORE),
        "{}",
        describe(&err)
    );
}

async fn next_change(
    rx: &mut Streaming<SubscribeConfigurationResponse>,
    wait: Duration,
) -> Option<SubscribeConfigurationResponse> {
    match tokio::time::timeout(wait, rx.message()).await {
        Ok(Ok(Some(m))) => Some(m),
        Ok(Ok(None)) => panic!("SubscribeConfiguration stream ended"),
        Ok(Err(s)) => panic!("SubscribeConfiguration failed: {}", describe(&s)),
        Err(_) => None,
    }
}

#[tokio::test]
async fn subscribe_pushes_saves_and_deletes() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(SubscribeConfigurationRequest {
        store_name: STORE.into(),
        app_id: "shop".into(),
        keys: vec!["watched".into()],
        ..Default::default()
    })
    .await
    .expect("queue subscribe request");
    let mut changes = within(
        "SubscribeConfiguration",
        rt.subscribe_configuration(ReceiverStream::new(rx)),
    )
    .await
    .unwrap_or_else(|s| panic!("SubscribeConfiguration: {}", describe(&s)))
    .into_inner();

    // The API has no "subscribed" acknowledgement, so the subscription may not be registered
    // when the call returns: save until the first push arrives (bounded).
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut n = 0;
    let first = loop {
        n += 1;
        save(
            &mut rt,
            "shop",
            vec![citem("watched", &format!("probe-{n}"), "", "")],
        )
        .await;
        if let Some(c) = next_change(&mut changes, Duration::from_millis(500)).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no configuration change was ever pushed"
        );
    };
    assert_eq!(first.store_name, STORE);
    assert_eq!(first.app_id, "shop");
    assert_eq!(first.items.len(), 1, "{first:?}");
    assert_eq!(first.items[0].key, "watched");
    assert!(first.items[0].content.starts_with("probe-"), "{first:?}");
    // Drain any push of an earlier probe still on its way, up to the last probe's.
    let last_probe = format!("probe-{n}");
    let mut seen = first.items[0].content.clone();
    while seen != last_probe {
        let c = within("probe push", changes.message())
            .await
            .expect("stream ok")
            .expect("stream open");
        seen = c.items[0].content.clone();
    }

    // From now on every change is pushed: an unwatched key is not, the watched one is.
    save(&mut rt, "shop", vec![citem("unwatched", "x", "", "")]).await;
    save(&mut rt, "shop", vec![citem("watched", "v2", "", "")]).await;
    let c = next_change(&mut changes, STEP_TIMEOUT)
        .await
        .expect("push of v2");
    assert_eq!(c.items.len(), 1, "only the watched key: {c:?}");
    assert_eq!(
        (c.items[0].key.as_str(), c.items[0].content.as_str()),
        ("watched", "v2")
    );

    within(
        "DeleteConfiguration",
        rt.delete_configuration(DeleteConfigurationRequest {
            store_name: STORE.into(),
            app_id: "shop".into(),
            keys: vec!["watched".into()],
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("DeleteConfiguration: {}", describe(&s)));
    let c = next_change(&mut changes, STEP_TIMEOUT)
        .await
        .expect("push of the delete");
    assert_eq!(c.items.len(), 1, "{c:?}");
    assert_eq!(c.items[0].key, "watched");
    assert!(c.items[0].content.is_empty(), "{c:?}");
    assert_eq!(
        c.items[0].metadata.get("deleted").map(String::as_str),
        Some("true"),
        "{c:?}"
    );
    drop(tx);
}

#[tokio::test]
async fn subscribe_to_unknown_store_fails() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(SubscribeConfigurationRequest {
        store_name: "nocfg".into(),
        ..Default::default()
    })
    .await
    .expect("queue");
    let status = match within(
        "SubscribeConfiguration",
        rt.subscribe_configuration(ReceiverStream::new(rx)),
    )
    .await
    {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            within("stream status", stream.message())
                .await
                .expect_err("unknown store ends the stream with an error")
        }
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{}",
        describe(&status)
    );
    assert!(status.message().contains("nocfg"), "{}", describe(&status));
}
