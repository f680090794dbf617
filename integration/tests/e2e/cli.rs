//! The command line and config handling: `mecha validate`, `mecha run -c` with a bad config
//! or a taken port, `mecha default-config`.

use std::time::Duration;

use mecha_integration::{free_addr, listening, run_mecha, workspace_root, TempDir};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_prints_every_error_with_its_path_and_exits_1() {
    let dir = TempDir::new("validate");
    let path = dir.write(
        "bad.yaml",
        r#"
threads: 0
admin:
  address: "not an address"
listeners:
  - name: runtime
    address: "nonsense"
    filters:
      - { type: capability, apis: [dapr2], max_request_message_bytes: 10 }
components:
  - { name: statestore, type: state.memory }
  - { name: s2, type: state.foo }
  - name: pubsub
    type: pubsub.memory
    metadata: { processingTimeout: soon }
  - { name: statestore, type: state.memory }
"#,
    );
    let out = run_mecha(
        &["validate", path.to_str().expect("utf-8 path")],
        CLI_TIMEOUT,
    )
    .expect("run mecha validate");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    for expected in [
        "threads: must be between",
        "admin.address: expected ip:port",
        "listeners[0].address: expected ip:port",
        "listeners[0].filters[0].apis[0]: unknown API \"dapr2\"",
        "listeners[0].filters[0].max_request_message_bytes: must be at least",
        "components[1].type: unknown type \"state.foo\"",
        "components[2].metadata.processingTimeout:",
        "components[3].name:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(path.to_str().expect("utf-8 path")),
        "names the file:\n{stderr}"
    );
}

#[test]
fn validate_reports_schema_errors_and_unreadable_files() {
    let dir = TempDir::new("validate-schema");
    let path = dir.write(
        "schema.yaml",
        "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    bogus_field: 1\n",
    );
    let out = run_mecha(&["validate", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("run mecha validate");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners[0]") && stderr.contains("bogus_field"),
        "{stderr}"
    );

    let missing = dir.path().join("does-not-exist.yaml");
    let out = run_mecha(&["validate", missing.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("run mecha validate");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does-not-exist.yaml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn every_shipped_config_is_valid() {
    let configs = workspace_root().join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&configs).expect("read configs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let out = run_mecha(&["validate", path.to_str().expect("utf-8")], CLI_TIMEOUT)
            .expect("run mecha validate");
        assert!(
            out.status.success(),
            "{} is invalid:\n{}",
            path.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("valid"), "{}", text(&out.stdout));
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected at least default.yaml and redis.yaml"
    );

    // The embedded default is configs/default.yaml.
    let out = run_mecha(&["default-config"], CLI_TIMEOUT).expect("run default-config");
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(configs.join("default.yaml")).expect("default.yaml");
    assert_eq!(text(&out.stdout), shipped);
}

fn run_config(grpc: std::net::SocketAddr, admin: std::net::SocketAddr, components: &str) -> String {
    format!(
        "admin:\n  address: {admin}\nlisteners:\n  - name: runtime\n    address: {grpc}\n    filters:\n      - type: capability\ncomponents:\n{components}"
    )
}

#[test]
fn run_with_an_invalid_config_exits_non_zero_and_listens_nowhere() {
    let dir = TempDir::new("run-bad");
    let (grpc, admin) = (free_addr(), free_addr());
    let path = dir.write(
        "bad.yaml",
        &run_config(
            grpc,
            admin,
            "  - { name: statestore, type: state.foo }\n  - { name: s, type: secretstores.local.file }\n",
        ),
    );
    let out = run_mecha(&["run", "-c", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("mecha run exits by itself on a bad config");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("components[0].type: unknown type \"state.foo\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("components[1].metadata.secretsFile"),
        "{stderr}"
    );
    assert!(!listening(grpc), "nothing may listen on {grpc}");
    assert!(!listening(admin), "nothing may listen on {admin}");
}

#[test]
fn run_on_a_taken_port_exits_non_zero_naming_the_address() {
    let dir = TempDir::new("run-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let admin = free_addr();
    let path = dir.write(
        "taken.yaml",
        &run_config(
            taken_addr,
            admin,
            "  - { name: statestore, type: state.memory }\n",
        ),
    );
    let out = run_mecha(&["run", "-c", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("mecha run exits by itself on a taken port");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&taken_addr.to_string()),
        "the message names {taken_addr}:\n{stderr}"
    );
    assert!(
        !listening(admin),
        "the admin port {admin} must not be left listening"
    );
    drop(taken);

    // The same for a taken admin port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_admin = taken.local_addr().expect("addr");
    let grpc = free_addr();
    let path = dir.write(
        "taken-admin.yaml",
        &run_config(
            grpc,
            taken_admin,
            "  - { name: statestore, type: state.memory }\n",
        ),
    );
    let out = run_mecha(&["run", "-c", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("mecha run exits by itself on a taken admin port");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains(&taken_admin.to_string()), "{stderr}");
    assert!(
        !listening(grpc),
        "the runtime port {grpc} must not be left listening"
    );
}

/// Durations, counts and paths out of bounds: a listener routing to a cluster, with `cluster`
/// (YAML lines at the cluster's indentation) and `route` (flow-mapping entries) added.
fn bounds_config(cluster: &str, route: &str, components: &str) -> String {
    format!(
        r#"
admin: {{ address: null }}
shutdown: {{ drain_seconds: 100000 }}
listeners:
  - name: edge
    address: 127.0.0.1:1
    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: / }}, cluster: c{route} }}
clusters:
  - name: c
    endpoints: [{{ address: "127.0.0.1:2" }}]
{cluster}
components:
{components}
"#
    )
}

#[test]
fn validate_refuses_out_of_bounds_durations_counts_and_paths_naming_each() {
    let dir = TempDir::new("validate-bounds");
    let path = dir.write(
        "bounds.yaml",
        &bounds_config(
            "    connect_timeout: 0\n    health_check: { interval: 0, path: healthz }\n    \
             outlier_detection: { base_ejection_time: 10s, max_ejection_time: 1s }",
            ", per_try_timeout: 0, retry_policy: { base_interval: 0 }",
            "  - { name: ps, type: pubsub.memory, metadata: { redeliverInterval: 0, queueDepth: 99999999999 } }",
        ),
    );
    let out = run_mecha(&["validate", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("run mecha validate");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    for expected in [
        "shutdown.drain_seconds: must be at most 3600, got 100000",
        "clusters[0].connect_timeout: must be at least 1ms, got 0ns",
        "clusters[0].health_check.interval: must be at least 1ms, got 0ns",
        "clusters[0].health_check.path: must be a path starting with \"/\"",
        "clusters[0].outlier_detection.max_ejection_time: must be at least base_ejection_time",
        "listeners[0].filters[0].virtual_hosts[0].routes[0].per_try_timeout: must be at least 1ms",
        "listeners[0].filters[0].virtual_hosts[0].routes[0].retry_policy.base_interval: must be \
         at least 1ms",
        "components[0].metadata.",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // The same config within bounds is valid: the errors above are about the values.
    let good = dir.write(
        "good.yaml",
        &bounds_config(
            "    health_check: { interval: 1ms, path: /healthz }",
            ", timeout: 0, per_try_timeout: 1ms",
            "  - { name: ps, type: pubsub.memory, metadata: { redeliverInterval: 1ms } }",
        )
        .replace("drain_seconds: 100000", "drain_seconds: 0"),
    );
    let out = run_mecha(&["validate", good.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("run mecha validate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "valid within bounds; stderr:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn run_refuses_a_zero_health_check_interval_instead_of_panicking() {
    // This config used to pass validation, then panic the maintenance thread at start.
    let dir = TempDir::new("run-hc-zero");
    let (edge, admin) = (free_addr(), free_addr());
    let path = dir.write(
        "hc.yaml",
        &format!(
            r#"
admin: {{ address: "{admin}" }}
listeners:
  - name: edge
    address: "{edge}"
    filters:
      - type: router
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: c }}] }}
clusters:
  - name: c
    endpoints: [{{ address: "127.0.0.1:2" }}]
    health_check: {{ interval: 0 }}
"#
        ),
    );
    let out = run_mecha(&["run", "-c", path.to_str().expect("utf-8")], CLI_TIMEOUT)
        .expect("mecha run exits by itself on a bad config");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("clusters[0].health_check.interval: must be at least 1ms, got 0ns"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!listening(edge), "nothing may listen on {edge}");
    assert!(!listening(admin), "nothing may listen on {admin}");
}
