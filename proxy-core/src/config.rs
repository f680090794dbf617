//! The YAML config file: its schema, parsing with paths in every error, and validation.
//!
//! ```yaml
//! threads: 2                       # worker threads per listener (default: 1)
//! app: { id: myapp }               # app id: default key prefix for state, consumer group, …
//! admin: { address: 127.0.0.1:34999 }
//! shutdown: { drain_seconds: 5 }   # on SIGTERM: stop being ready, finish requests, exit
//! listeners:
//!   - name: runtime
//!     address: 127.0.0.1:34904     # HTTP/1.1 and h2c on the same port
//!     filters:
//!       - type: capability         # terminates the runtime APIs listed in `apis`
//!         apis: [layotto]
//! components:
//!   - { name: statestore, type: state.memory }
//! ```
//!
//! [`load`] parses and validates; on failure it returns every problem found, each with its path
//! (`listeners[0].address: …`, `components[2].type: unknown type "state.foo" …`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use mecha_capabilities::{BuildContext, ComponentSpec};
use mecha_mesh::config::{ClusterConfig, Dur, RouterConfig};
use serde::Deserialize;

/// The embedded default config: runtime API on 127.0.0.1:34904, admin on 127.0.0.1:34999,
/// every building block on an embedded component. `configs/default.yaml` is the same file.
pub const DEFAULT_YAML: &str = include_str!("../../configs/default.yaml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads of each listener's runtime.
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default)]
    pub app: AppConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub components: Vec<ComponentSpec>,
    /// Upstream clusters the router filters send to.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

fn default_threads() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app this sidecar serves (default key prefix, default consumer group).
    #[serde(default = "default_app_id")]
    pub id: String,
    /// Where the app serves Layotto's `AppCallback` gRPC service (`host:port`); when set, the
    /// sidecar asks it for topic subscriptions at start and delivers events with OnTopicEvent.
    #[serde(default)]
    pub grpc_callback: Option<String>,
    /// How often the app's topic subscriptions are listed again (an app that restarted with
    /// other topics is served within this; at once when a delivery finds the app gone).
    #[serde(default = "default_list_interval")]
    pub list_subscriptions_interval: Dur,
}

fn default_list_interval() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_app_id() -> String {
    "app".to_owned()
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            id: default_app_id(),
            grpc_callback: None,
            list_subscriptions_interval: default_list_interval(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin listener; `null` disables it.
    #[serde(default = "default_admin_address")]
    pub address: Option<String>,
}

fn default_admin_address() -> Option<String> {
    Some("127.0.0.1:34999".to_owned())
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM: how long in-flight requests get to finish before the process exits.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
}

fn default_drain() -> u64 {
    5
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_seconds: default_drain(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `host:port`; HTTP/1.1 and h2c (prior knowledge) share it.
    pub address: String,
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Makes this an L4 listener passing raw TCP to the cluster (no `filters` then).
    #[serde(default)]
    pub tcp_proxy: Option<TcpProxyConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    pub cluster: String,
}

/// One filter of a listener's chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    /// Terminates runtime APIs in-process.
    Capability {
        /// Which APIs: `layotto` (Layotto's `spec.proto.runtime.v1.Runtime`).
        #[serde(default = "default_apis")]
        apis: Vec<String>,
        /// Largest request message accepted (bytes); larger → RESOURCE_EXHAUSTED.
        #[serde(default = "default_max_message")]
        max_request_message_bytes: usize,
    },
    /// Routes to clusters (the last filter of a chain).
    Router(RouterConfig),
}

fn default_apis() -> Vec<String> {
    vec!["layotto".to_owned()]
}

fn default_max_message() -> usize {
    4 * 1024 * 1024
}

/// The runtime APIs the capability filter can terminate.
pub const KNOWN_APIS: &[&str] = &["layotto"];

/// Parses a config and checks what needs no building (addresses, names, filter settings);
/// every problem is returned with its path. Components, clusters and route tables are
/// checked by building them ([`crate::snapshot::Snapshot::build`], no network I/O), so a
/// config is validated by the same code that serves it: see [`crate::check`].
pub fn load(yaml: &str) -> Result<Config, Vec<String>> {
    let cfg = parse(yaml)?;
    let errors = validate(&cfg);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// Parses a config against the schema only (unknown fields, wrong types: the first error,
/// with its path).
pub fn parse(yaml: &str) -> Result<Config, Vec<String>> {
    let de = serde_yaml_ng::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            vec![inner]
        } else {
            vec![format!("{path}: {inner}")]
        }
    })
}

/// Checks what the schema cannot and building does not: addresses, names, filter settings.
pub fn validate(cfg: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if cfg.threads == 0 || cfg.threads > 1024 {
        errors.push(format!(
            "threads: must be between 1 and 1024, got {}",
            cfg.threads
        ));
    }
    if cfg.app.id.trim().is_empty() {
        errors.push("app.id: must not be empty".to_owned());
    }
    if let Some(cb) = &cfg.app.grpc_callback {
        if cb.parse::<SocketAddr>().is_err() && !cb.contains(':') {
            errors.push(format!("app.grpc_callback: expected host:port, got {cb:?}"));
        }
    }
    if cfg.app.list_subscriptions_interval.0 < Duration::from_millis(100) {
        errors.push(format!(
            "app.list_subscriptions_interval: must be at least 100ms, got {:?}",
            cfg.app.list_subscriptions_interval.0
        ));
    }
    let mut addresses = HashSet::new();
    if let Some(a) = &cfg.admin.address {
        match a.parse::<SocketAddr>() {
            Ok(sa) => {
                addresses.insert(sa);
            }
            Err(_) => errors.push(format!("admin.address: expected ip:port, got {a:?}")),
        }
    }
    if cfg.listeners.is_empty() {
        errors.push("listeners: at least one listener is required".to_owned());
    }
    let mut names = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.name.trim().is_empty() {
            errors.push(format!("listeners[{i}].name: must not be empty"));
        } else if !names.insert(l.name.as_str()) {
            errors.push(format!(
                "listeners[{i}].name: {:?} is used by another listener",
                l.name
            ));
        }
        match l.address.parse::<SocketAddr>() {
            Ok(sa) => {
                if !addresses.insert(sa) {
                    errors.push(format!(
                        "listeners[{i}].address: {sa} is used by another listener or the admin"
                    ));
                }
            }
            Err(_) => errors.push(format!(
                "listeners[{i}].address: expected ip:port, got {:?}",
                l.address
            )),
        }
        if let Some(tp) = &l.tcp_proxy {
            if !l.filters.is_empty() {
                errors.push(format!(
                    "listeners[{i}]: a tcp_proxy listener has no filters"
                ));
            }
            if !cfg.clusters.iter().any(|c| c.name == tp.cluster) {
                errors.push(format!(
                    "listeners[{i}].tcp_proxy.cluster: unknown cluster {:?}",
                    tp.cluster
                ));
            }
        }
        for (j, f) in l.filters.iter().enumerate() {
            match f {
                FilterConfig::Capability {
                    apis,
                    max_request_message_bytes,
                } => {
                    if apis.is_empty() {
                        errors.push(format!(
                            "listeners[{i}].filters[{j}].apis: must not be empty"
                        ));
                    }
                    for (k, api) in apis.iter().enumerate() {
                        if !KNOWN_APIS.contains(&api.as_str()) {
                            errors.push(format!(
                                "listeners[{i}].filters[{j}].apis[{k}]: unknown API {api:?} \
                                 (known: {})",
                                KNOWN_APIS.join(", ")
                            ));
                        }
                    }
                    if *max_request_message_bytes < 1024 {
                        errors.push(format!(
                            "listeners[{i}].filters[{j}].max_request_message_bytes: must be at \
                             least 1024, got {max_request_message_bytes}"
                        ));
                    }
                }
                // The table itself is checked by building it (Snapshot::build).
                FilterConfig::Router(_) => {
                    if j + 1 != l.filters.len() {
                        errors.push(format!(
                            "listeners[{i}].filters[{j}]: the router must be the last filter"
                        ));
                    }
                }
            }
        }
    }
    errors
}

pub fn build_context(cfg: &Config) -> BuildContext {
    BuildContext {
        app_id: cfg.app.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let cfg = load(DEFAULT_YAML).expect("default config is valid");
        assert_eq!(cfg.listeners[0].address, "127.0.0.1:34904");
        assert_eq!(cfg.admin.address.as_deref(), Some("127.0.0.1:34999"));
        let names: Vec<&str> = cfg.components.iter().map(|c| c.name.as_str()).collect();
        for n in [
            "statestore",
            "pubsub",
            "lockstore",
            "sequencer",
            "configstore",
            "secretstore",
            "helloworld",
        ] {
            assert!(names.contains(&n), "default lacks {n}");
        }
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let load = crate::check;
        let yaml = r#"
threads: 0
listeners:
  - name: a
    address: "nonsense"
    filters: [{ type: capability, apis: [dapr2] }]
components:
  - { name: s, type: state.memory }
  - { name: t, type: state.memory }
  - { name: u, type: state.foo }
"#;
        let errs = load(yaml).expect_err("invalid");
        let joined = errs.join("\n");
        assert!(joined.contains("threads: must be between"), "{joined}");
        assert!(
            joined.contains("listeners[0].address: expected ip:port"),
            "{joined}"
        );
        assert!(
            joined.contains("listeners[0].filters[0].apis[0]: unknown API \"dapr2\""),
            "{joined}"
        );
        assert!(
            joined.contains("components[2].type: unknown type \"state.foo\""),
            "{joined}"
        );
        assert_eq!(errs.len(), 4, "{joined}");
    }

    #[test]
    fn schema_errors_carry_the_path() {
        let errs = load("listeners:\n  - name: a\n    address: 1.2.3.4:1\n    bogus: 1\n")
            .expect_err("unknown field");
        assert!(errs[0].starts_with("listeners[0]"), "{errs:?}");
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }
}
