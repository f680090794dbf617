//! Secrets: GetSecret and GetBulkSecret from environment variables of the sidecar process
//! (`secretstores.local.env`, with and without `prefix`, and as the embedded default declares
//! it) and from a JSON file (`secretstores.local.file`).

use std::collections::HashMap;
use std::time::Duration;

use mecha_integration::pb::runtime_client::RuntimeClient;
use mecha_integration::pb::{GetBulkSecretRequest, GetSecretRequest};
use mecha_integration::{describe, run_mecha, within, Sidecar, TEST_COMPONENTS};
use tonic::transport::Channel;
use tonic::Code;

/// The `components:` list of the embedded default, as `mecha default-config` prints it.
fn default_components() -> String {
    let out = run_mecha(&["default-config"], Duration::from_secs(30)).expect("default-config");
    assert!(out.status.success(), "mecha default-config failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (_, components) = text
        .split_once("\ncomponents:\n")
        .expect("the default config has a components list");
    components.to_owned()
}

async fn get_secret(
    rt: &mut RuntimeClient<Channel>,
    store: &str,
    key: &str,
) -> Result<HashMap<String, String>, tonic::Status> {
    within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: store.into(),
            key: key.into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .map(|r| r.into_inner().data)
}

/// The embedded default's env store serves only `MECHA_SECRET_<NAME>`, as `<NAME>`: the rest
/// of the sidecar's environment is not readable through the (unauthenticated) runtime API.
#[tokio::test]
async fn default_env_store_serves_only_mecha_secret_variables() {
    let sc = Sidecar::builder()
        .components(&default_components())
        .env("MECHA_SECRET_FOO", "foo value")
        .env("MECHA_SECRET_BAR", "bar value")
        .env("MECHA_E2E_CLOUD_KEY", "must stay hidden")
        .start()
        .await;
    let mut rt = sc.client().await;

    let got = get_secret(&mut rt, "secretstore", "FOO")
        .await
        .unwrap_or_else(|s| panic!("GetSecret FOO: {}", describe(&s)));
    assert_eq!(
        got,
        HashMap::from([("FOO".to_owned(), "foo value".to_owned())])
    );

    // A variable without the prefix, and the prefixed name itself, are not secrets.
    for key in ["MECHA_E2E_CLOUD_KEY", "MECHA_SECRET_FOO", "PATH"] {
        let err = get_secret(&mut rt, "secretstore", key)
            .await
            .expect_err(key);
        assert_eq!(err.code(), Code::NotFound, "{key}: {}", describe(&err));
        assert!(
            err.message().contains(key) && err.message().contains("\"secretstore\""),
            "{key}: {}",
            describe(&err)
        );
        assert!(
            !err.message().contains("must stay hidden"),
            "{}",
            describe(&err)
        );
    }

    let bulk = within(
        "GetBulkSecret",
        rt.get_bulk_secret(GetBulkSecretRequest {
            store_name: "secretstore".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetBulkSecret: {}", describe(&s)))
    .into_inner();
    let mut names: Vec<&str> = bulk.data.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["BAR", "FOO"],
        "only MECHA_SECRET_* variables, unprefixed"
    );
    assert_eq!(
        bulk.data["BAR"].secrets,
        HashMap::from([("BAR".to_owned(), "bar value".to_owned())])
    );
}

const SECRETS_JSON: &str = r#"{
  "api_key": "k-123",
  "db": { "user": "admin", "password": "pw" },
  "hosts": ["a.example", "b.example"],
  "port": 5432
}"#;

async fn start() -> Sidecar {
    Sidecar::builder()
        .components(TEST_COMPONENTS)
        .extra_components(
            "  - name: filesecrets
    type: secretstores.local.file
    metadata:
      secretsFile: \"{dir}/secrets.json\"
  - name: prefixed
    type: secretstores.local.env
    metadata:
      prefix: MECHA_E2E_APP_
",
        )
        .file("secrets.json", SECRETS_JSON)
        .env("MECHA_E2E_SECRET", "s3cr3t value")
        .env("MECHA_E2E_APP_DB", "from-prefix")
        .start()
        .await
}

/// A store without `prefix` (as the test components declare it) exposes every variable.
#[tokio::test]
async fn env_secret_store() {
    let sc = start().await;
    let mut rt = sc.client().await;
    let got = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: "secretstore".into(),
            key: "MECHA_E2E_SECRET".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetSecret: {}", describe(&s)))
    .into_inner();
    assert_eq!(
        got.data,
        HashMap::from([("MECHA_E2E_SECRET".to_owned(), "s3cr3t value".to_owned())])
    );

    let err = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: "secretstore".into(),
            key: "MECHA_E2E_NOT_SET".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .expect_err("missing secret");
    assert_eq!(err.code(), Code::NotFound, "{}", describe(&err));
    assert!(
        err.message().contains("MECHA_E2E_NOT_SET"),
        "{}",
        describe(&err)
    );

    let bulk = within(
        "GetBulkSecret",
        rt.get_bulk_secret(GetBulkSecretRequest {
            store_name: "secretstore".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetBulkSecret: {}", describe(&s)))
    .into_inner();
    let entry = bulk
        .data
        .get("MECHA_E2E_SECRET")
        .expect("bulk has the variable");
    assert_eq!(
        entry.secrets.get("MECHA_E2E_SECRET").map(String::as_str),
        Some("s3cr3t value")
    );

    // A prefixed store sees only its variables, named without the prefix.
    let got = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: "prefixed".into(),
            key: "DB".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetSecret prefixed: {}", describe(&s)))
    .into_inner();
    assert_eq!(got.data.get("DB").map(String::as_str), Some("from-prefix"));
    let bulk = within(
        "GetBulkSecret",
        rt.get_bulk_secret(GetBulkSecretRequest {
            store_name: "prefixed".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetBulkSecret prefixed: {}", describe(&s)))
    .into_inner();
    assert_eq!(bulk.data.keys().collect::<Vec<_>>(), ["DB"]);
}

#[tokio::test]
async fn file_secret_store() {
    let sc = start().await;
    let mut rt = sc.client().await;
    for (key, want) in [
        ("api_key", "k-123"),
        ("db:password", "pw"),
        ("db:user", "admin"),
        ("hosts:1", "b.example"),
        ("port", "5432"),
    ] {
        let got = within(
            "GetSecret",
            rt.get_secret(GetSecretRequest {
                store_name: "filesecrets".into(),
                key: key.into(),
                metadata: HashMap::new(),
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("GetSecret {key}: {}", describe(&s)))
        .into_inner();
        assert_eq!(
            got.data,
            HashMap::from([(key.to_owned(), want.to_owned())]),
            "secret {key}"
        );
    }

    let err = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: "filesecrets".into(),
            key: "nope".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .expect_err("missing secret");
    assert_eq!(err.code(), Code::NotFound, "{}", describe(&err));

    let bulk = within(
        "GetBulkSecret",
        rt.get_bulk_secret(GetBulkSecretRequest {
            store_name: "filesecrets".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetBulkSecret: {}", describe(&s)))
    .into_inner();
    let mut names: Vec<&str> = bulk.data.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "api_key",
            "db:password",
            "db:user",
            "hosts:0",
            "hosts:1",
            "port"
        ]
    );
    assert_eq!(
        bulk.data["db:password"]
            .secrets
            .get("db:password")
            .map(String::as_str),
        Some("pw")
    );

    // Unknown secret store: INVALID_ARGUMENT naming it and listing the configured ones.
    let err = within(
        "GetSecret",
        rt.get_secret(GetSecretRequest {
            store_name: "vault".into(),
            key: "x".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    .expect_err("unknown store");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    for name in ["vault", "filesecrets", "secretstore", "prefixed"] {
        assert!(err.message().contains(name), "{name}: {}", describe(&err));
    }
}
