//! The YAML config file: its schema, parsing with paths in every error, and validation.
//!
//! ```yaml
//! threads: 2                       # worker threads, one runtime and socket each (default: 1)
//! app: { id: myapp }               # app id: default key prefix for state, consumer group, …
//! admin: { address: 127.0.0.1:34999 }
//! shutdown: { drain_seconds: 5 }   # on SIGTERM: stop being ready, finish requests, exit
//! listeners:
//!   - name: runtime
//!     address: 127.0.0.1:34904     # HTTP/1.1 and h2c on the same port
//!     max_connections: 10000       # open connections; beyond, new ones are closed at once
//!     request_header_timeout: 10s  # from a request's first byte to its complete head
//!     request_body_timeout: 60s    # longest stall while a request body is read
//!     # bind_to_port: false        # virtual: served via a use_original_dst listener
//!     # use_original_dst: true     # dispatch iptables-redirected connections by destination
//!     filters:
//!       - type: capability         # terminates the runtime APIs listed in `apis`
//!         apis: [layotto]
//!         # api_token: s3cret      # required in `dapr-api-token` / `authorization: Bearer`;
//!         #                        # default: $MECHA_API_TOKEN; none → no authentication,
//!         #                        # allowed only on loopback unless allow_unauthenticated
//! components:
//!   - { name: statestore, type: state.memory }
//! ```
//!
//! [`load`] parses and validates; on failure it returns every problem found, each with its path
//! (`listeners[0].address: …`, `components[2].type: unknown type "state.foo" …`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use mecha_capabilities::{BuildContext, ComponentSpec};
use mecha_mesh::config::{ClusterConfig, Dur, RouterConfig};
use serde::{Deserialize, Serialize};

/// The embedded default config: runtime API on 127.0.0.1:34904, admin on 127.0.0.1:34999,
/// every building block on an embedded component. `configs/default.yaml` is the same file.
pub const DEFAULT_YAML: &str = include_str!("../../configs/default.yaml");

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads: each runs its own current-thread runtime and accepts on its own
    /// `SO_REUSEPORT` socket of every listener (see `listeners`).
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
    /// The apps this sidecar can invoke (`InvokeService`, HTTP `dapr-app-id`), by app id:
    /// where each one's sidecar takes inbound traffic.
    #[serde(default)]
    pub apps: BTreeMap<String, AppTargetConfig>,
    /// Service invocation settings (defaults for every app; a naming rule for the rest).
    #[serde(default)]
    pub invocation: InvocationConfig,
    /// A control plane to take listeners, routes, clusters, endpoints and components from
    /// (ADS); what this file declares stays and is merged with what the control plane sends.
    #[serde(default)]
    pub xds: Option<XdsConfig>,
}

/// The control plane: one ADS stream (`mecha-xds`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// `host:port` of the ADS server (plaintext gRPC).
    pub server: String,
    /// `delta` (incremental, Istio's default) or `sotw` (state of the world). With `delta`, a
    /// server that answers UNIMPLEMENTED is spoken to in state of the world.
    #[serde(default)]
    pub api: XdsApi,
    #[serde(default)]
    pub node: XdsNode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsApi {
    #[default]
    Sotw,
    Delta,
}

/// Who this sidecar is, as the control plane sees it (Envoy's bootstrap `node`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsNode {
    /// Istio: `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Where one invocable app is reached: `address` / `addresses` (its sidecar's inbound
/// listener; a cluster named `app/<id>` is made for it) or `cluster` (a cluster of
/// `clusters`, with all its policies). `timeout` and `retry` override `invocation`'s.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppTargetConfig {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retry: Option<mecha_mesh::config::RetryPolicyConfig>,
}

/// Service invocation settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationConfig {
    /// Bound on one invocation, every try included (default 15 s); a shorter `grpc-timeout`
    /// from the caller wins.
    #[serde(default = "default_invoke_timeout")]
    pub timeout: Dur,
    /// Retries (default: `connect-failure` and `reset`, 2 retries; a reset is retried only
    /// for idempotent verbs unless `retry_non_idempotent`).
    #[serde(default)]
    pub retry: Option<mecha_mesh::config::RetryPolicyConfig>,
    /// Largest request and response body of one invocation (default 4 MiB).
    #[serde(default = "default_max_message")]
    pub max_body_bytes: usize,
    /// Apps not listed in `apps` are resolved by this template, e.g.
    /// `"{app}.{namespace}.svc.cluster.local:{port}"` (Kubernetes services); without it an
    /// unlisted app id is NOT_FOUND.
    #[serde(default)]
    pub dns_template: Option<String>,
    /// `{namespace}` in `dns_template` (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `{port}` in `dns_template`: the port of the callee sidecars' inbound listener
    /// (default 34906).
    #[serde(default = "default_inbound_port")]
    pub port: u16,
}

fn default_invoke_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}

fn default_namespace() -> String {
    "default".to_owned()
}

fn default_inbound_port() -> u16 {
    34906
}

impl Default for InvocationConfig {
    fn default() -> Self {
        Self {
            timeout: default_invoke_timeout(),
            retry: None,
            max_body_bytes: default_max_message(),
            dns_template: None,
            namespace: default_namespace(),
            port: default_inbound_port(),
        }
    }
}

fn default_threads() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// The port of the app's HTTP server on 127.0.0.1: `inbound` listeners deliver HTTP
    /// invocations there.
    #[serde(default)]
    pub http_port: Option<u16>,
    /// The port of the app's gRPC server on 127.0.0.1: `inbound` listeners deliver gRPC there,
    /// and it is the `AppCallback` endpoint unless `grpc_callback` names another.
    #[serde(default)]
    pub grpc_port: Option<u16>,
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
            http_port: None,
            grpc_port: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// HTTP listeners: most connections open at once (default 10000); a connection beyond it
    /// is closed as soon as it is accepted and counted in
    /// `mecha_listener_connections_refused_total{listener}`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP listeners: how long a request head may take from its first byte to its end
    /// (HTTP/1.1 request line and headers; the h2c connection preface), default 10 s; a
    /// client slower than that (slowloris) is answered 408 and cut off.
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: Dur,
    /// HTTP listeners: the longest a request body may stall (no bytes arrive) before the
    /// request is cut off, default 60 s (unary gRPC calls then get DEADLINE_EXCEEDED).
    /// Requests of streaming gRPC methods are exempt: their clients may rightly be silent.
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: Dur,
    /// `false` makes this a *virtual* listener (Envoy's `bind_to_port: false`): nothing is
    /// bound at `address`; it serves the connections a `use_original_dst` listener accepted
    /// whose original destination (before an iptables REDIRECT) is `address` (an exact
    /// `ip:port` first, then `0.0.0.0:port`). Default `true`.
    #[serde(default = "default_true")]
    pub bind_to_port: bool,
    /// On each accepted connection, read its original destination (`SO_ORIGINAL_DST`, set by
    /// an iptables REDIRECT) and hand the connection to the virtual listener for that address;
    /// a connection no virtual listener matches is served by this listener's own filters.
    #[serde(default)]
    pub use_original_dst: bool,
    /// Makes this virtual listener a *filter chain* of the named (bound) listener, as Envoy's
    /// `filter_chains` with a `filter_chain_match` on destination: it serves that listener's
    /// connections whose original destination (or, when not redirected, the address they
    /// reached) is `address` — an exact `ip:port`, else `0.0.0.0:port` for a
    /// `destination_port` match. A connection no chain matches is served by the listener's
    /// own filters (its default chain). Needs `bind_to_port: false`. The named listener may
    /// itself be virtual (Istio's per-port outbound listeners choose a chain by the service's
    /// address): its chains are matched on the same original destination.
    #[serde(default)]
    pub chain_of: Option<String>,
    /// A filter chain's TLS criteria (Envoy's `filter_chain_match` `server_names`,
    /// `transport_protocol`, `application_protocols`), read from the ClientHello without
    /// terminating TLS: chains may share an address when their matches differ. Only on a
    /// filter chain (`chain_of`). See [`ChainMatch`].
    #[serde(default)]
    pub chain_match: Option<ChainMatch>,
    /// How long this listener waits for the first bytes of a connection (the TLS ClientHello)
    /// when one of its chains has a `chain_match` that needs them (Envoy's
    /// `listener_filters_timeout`); default 15 s, `0s` = no limit. Connections to
    /// destinations whose chains have no TLS criteria are not inspected at all.
    #[serde(default = "default_listener_filters_timeout")]
    pub listener_filters_timeout: Dur,
    /// On `listener_filters_timeout`: `true` chooses the chain as for a plain-text
    /// (`raw_buffer`) connection without SNI or ALPN; `false` (the default, as Envoy) closes
    /// the connection, counted in
    /// `mecha_listener_connections_refused_total{listener,reason="listener_filters_timeout"}`.
    #[serde(default)]
    pub continue_on_listener_filters_timeout: bool,
}

/// The TLS criteria of a filter chain, matched against the connection's first bytes as
/// Envoy's `tls_inspector` reads them, in Envoy's order (after the destination): the server
/// name (an exact name beats the longest matching `*.suffix` wildcard, which beats chains
/// without `server_names`), the transport protocol (a chain naming it beats one that does
/// not), the ALPN protocols (a chain with one the client offers — in the client's order —
/// beats one without). At each step, when some chains match specifically only those remain;
/// when none match and none leave the criterion unset, no chain matches and the listener's
/// own filters serve the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainMatch {
    /// SNI values: exact names or `*.suffix` wildcards (`*.example.com` matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`); compared case-insensitively.
    /// Empty: any connection, with or without SNI.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// `tls` (the first bytes are a TLS handshake record) or `raw_buffer` (anything else).
    #[serde(default)]
    pub transport_protocol: Option<TransportProtocol>,
    /// ALPN protocols offered in the ClientHello (`h2`, `http/1.1`, `istio-peer-exchange`…);
    /// any one offered matches. A plain-text connection offers none.
    #[serde(default)]
    pub application_protocols: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    Tls,
    RawBuffer,
}

impl ChainMatch {
    /// Whether choosing by this match needs the connection's first bytes.
    pub fn inspects(&self) -> bool {
        *self != ChainMatch::default()
    }

    /// Whether some connection matches both `self` and `other` equally well (Envoy refuses
    /// such chains as duplicates): each criterion is equal, or both lists share a value.
    pub fn overlaps(&self, other: &ChainMatch) -> bool {
        fn lists(a: &[String], b: &[String], eq: fn(&str, &str) -> bool) -> bool {
            (a.is_empty() && b.is_empty()) || a.iter().any(|x| b.iter().any(|y| eq(x, y)))
        }
        lists(&self.server_names, &other.server_names, |a, b| {
            a.eq_ignore_ascii_case(b)
        }) && self.transport_protocol == other.transport_protocol
            && lists(
                &self.application_protocols,
                &other.application_protocols,
                |a, b| a == b,
            )
    }
}

/// Why `name` cannot be a `server_names` entry, if it cannot: a host name, or `*.` and one
/// (Envoy allows no other wildcard form).
pub fn server_name_problem(name: &str) -> Option<String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() {
        return Some(format!("{name:?}: expected a host name or *.suffix"));
    }
    if host.contains('*') {
        return Some(format!(
            "{name:?}: a wildcard is only allowed as a whole leading label (*.example.com)"
        ));
    }
    if host.starts_with('.')
        || host.ends_with('.')
        || host.contains("..")
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Some(format!("{name:?}: not a host name"));
    }
    None
}

fn default_listener_filters_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}

fn default_true() -> bool {
    true
}

/// Upper bound of `max_connections`: far beyond what one sidecar's file descriptors allow, so
/// a larger value is a typo rather than a plan.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;

/// Upper bound of the listener timeouts: a longer one no longer protects the port.
pub const MAX_LISTENER_TIMEOUT: Duration = Duration::from_secs(3600);

fn default_max_connections() -> usize {
    10_000
}

fn default_request_header_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_request_body_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    pub cluster: String,
}

/// One filter of a listener's chain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    /// Terminates runtime APIs in-process.
    Capability {
        /// Which APIs: `layotto` (Layotto's `spec.proto.runtime.v1.Runtime`).
        #[serde(default = "default_apis")]
        apis: Vec<String>,
        /// Largest request message accepted (bytes); larger → RESOURCE_EXHAUSTED. A unary
        /// (or server-streaming) call carries exactly one message, so this bounds its body.
        #[serde(default = "default_max_message")]
        max_request_message_bytes: usize,
        /// The token every runtime-API request must carry, in `dapr-api-token: <token>` or
        /// `authorization: Bearer <token>`; otherwise UNAUTHENTICATED. Absent: the
        /// `MECHA_API_TOKEN` environment variable, if set and not empty.
        #[serde(default)]
        api_token: Option<ApiToken>,
        /// Serve without a token on a non-loopback address (otherwise a config error).
        #[serde(default)]
        allow_unauthenticated: bool,
    },
    /// Routes to clusters (the last filter of a chain).
    Router(RouterConfig),
    /// Delivers mesh traffic to the local app: gRPC (`content-type: application/grpc…`) to
    /// `app.grpc_port`, the rest to `app.http_port`. Expanded at parse time into a router with
    /// the clusters `local-app/grpc` and `local-app/http` (the last filter of a chain).
    Inbound {
        /// Bound on one delivery (default 15 s; `0s`: none, for streams).
        #[serde(default)]
        timeout: Option<Dur>,
        #[serde(default)]
        access_log: bool,
    },
}

/// A runtime-API token: kept out of `Debug` output (logs, dumps).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiToken(pub String);

/// Never written out (`/config_dump` shows that one is set, not what it is).
impl Serialize for ApiToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The environment variable holding the runtime-API token when `api_token` is absent.
pub const API_TOKEN_ENV: &str = "MECHA_API_TOKEN";

/// The token a capability filter enforces: `api_token`, else `$MECHA_API_TOKEN` when set and
/// not empty, else none.
pub fn resolve_api_token(field: Option<&ApiToken>) -> Option<String> {
    match field {
        Some(t) => Some(t.0.clone()),
        None => std::env::var(API_TOKEN_ENV).ok().filter(|t| !t.is_empty()),
    }
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
    let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            vec![inner]
        } else {
            vec![format!("{path}: {inner}")]
        }
    })?;
    expand(cfg)
}

/// Name of the cluster made for the local app's gRPC server (inbound gRPC, AppCallback).
pub const LOCAL_APP_GRPC: &str = "local-app/grpc";
/// Name of the cluster made for the local app's HTTP server (inbound HTTP).
pub const LOCAL_APP_HTTP: &str = "local-app/http";

/// The name of the cluster made for an app listed with `address` / `addresses`.
pub fn app_cluster_name(app_id: &str) -> String {
    format!("app/{app_id}")
}

/// Turns the shorthand sections into the resources they stand for, so everything downstream
/// (building, diffing, metrics, `/config_dump`) sees plain clusters and routers:
/// - `app.grpc_port` / `app.grpc_callback` and `app.http_port` → the clusters
///   [`LOCAL_APP_GRPC`] (h2c) and [`LOCAL_APP_HTTP`];
/// - each `inbound` filter → a router sending gRPC to the first and the rest to the second;
/// - each app listed with `address`/`addresses` → a cluster `app/<id>`.
fn expand(mut cfg: Config) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let taken: HashSet<String> = cfg.clusters.iter().map(|c| c.name.clone()).collect();
    let add_cluster = |cfg: &mut Config, errors: &mut Vec<String>, path: &str, yaml: String| {
        match serde_yaml_ng::from_str::<ClusterConfig>(&yaml) {
            Ok(c) if taken.contains(&c.name) => errors.push(format!(
                "{path}: makes a cluster named {:?}, which `clusters` already has",
                c.name
            )),
            Ok(c) => cfg.clusters.push(c),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    };
    let grpc_app = cfg
        .app
        .grpc_callback
        .clone()
        .or_else(|| cfg.app.grpc_port.map(|p| format!("127.0.0.1:{p}")));
    if let Some(ep) = &grpc_app {
        add_cluster(
            &mut cfg,
            &mut errors,
            "app.grpc_port",
            format!(
                "{{name: {LOCAL_APP_GRPC:?}, protocol: h2c, endpoints: [{{address: {ep:?}}}]}}"
            ),
        );
    }
    if let Some(p) = cfg.app.http_port {
        add_cluster(
            &mut cfg,
            &mut errors,
            "app.http_port",
            format!("{{name: {LOCAL_APP_HTTP:?}, endpoints: [{{address: \"127.0.0.1:{p}\"}}]}}"),
        );
    }
    let (has_grpc, has_http) = (grpc_app.is_some(), cfg.app.http_port.is_some());
    for (i, l) in cfg.listeners.iter_mut().enumerate() {
        for (j, f) in l.filters.iter_mut().enumerate() {
            let FilterConfig::Inbound {
                timeout,
                access_log,
            } = f
            else {
                continue;
            };
            if !has_grpc && !has_http {
                errors.push(format!(
                    "listeners[{i}].filters[{j}]: an inbound filter delivers to the local app: \
                     set app.http_port or app.grpc_port"
                ));
                continue;
            }
            let timeout = match timeout {
                Some(t) => format!(", timeout: {}", t.0.as_millis()),
                None => String::new(),
            };
            let mut routes = Vec::new();
            if has_grpc {
                routes.push(format!(
                    "{{name: inbound-grpc, match: {{prefix: /, headers: [{{name: content-type, \
                     regex: \"^application/grpc\"}}]}}, cluster: {LOCAL_APP_GRPC:?}{timeout}}}"
                ));
            }
            if has_http {
                routes.push(format!(
                    "{{name: inbound-http, match: {{prefix: /}}, cluster: {LOCAL_APP_HTTP:?}{timeout}}}"
                ));
            }
            let yaml = format!(
                "{{access_log: {access_log}, virtual_hosts: [{{name: local-app, domains: [\"*\"], \
                 routes: [{}]}}]}}",
                routes.join(", ")
            );
            match serde_yaml_ng::from_str::<RouterConfig>(&yaml) {
                Ok(rc) => *f = FilterConfig::Router(rc),
                Err(e) => errors.push(format!("listeners[{i}].filters[{j}]: {e}")),
            }
        }
    }
    let apps: Vec<(String, Vec<String>)> = cfg
        .apps
        .iter()
        .map(|(id, t)| {
            let mut addrs = t.addresses.clone();
            addrs.extend(t.address.clone());
            (id.clone(), addrs)
        })
        .collect();
    for (id, addrs) in apps {
        let t = &cfg.apps[&id];
        let path = format!("apps.{id}");
        if !valid_app_id(&id) {
            errors.push(format!(
                "{path}: an app id is 1 to 63 characters of a-z, 0-9, '-', '_' and '.'"
            ));
            continue;
        }
        match (addrs.is_empty(), &t.cluster) {
            (true, None) => errors.push(format!(
                "{path}: needs `address`, `addresses` or `cluster` (where app {id:?} is reached)"
            )),
            (false, Some(_)) => errors.push(format!(
                "{path}: give either `address`/`addresses` or `cluster`, not both"
            )),
            (true, Some(c)) => {
                if !taken.contains(c) {
                    errors.push(format!("{path}.cluster: unknown cluster {c:?}"));
                }
            }
            (false, None) => {
                let eps: Vec<String> = addrs
                    .iter()
                    .map(|a| format!("{{address: {a:?}}}"))
                    .collect();
                let name = app_cluster_name(&id);
                add_cluster(
                    &mut cfg,
                    &mut errors,
                    &path,
                    format!("{{name: {name:?}, endpoints: [{}]}}", eps.join(", ")),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// App ids are DNS-label-like, so they are safe in a DNS template, a metric label and a
/// header value (the mesh invoker checks ids from requests by the same rule).
pub use mecha_mesh::invoke::valid_app_id;

/// Checks what the schema cannot and building does not: addresses, names, filter settings.
pub fn validate(cfg: &Config) -> Vec<String> {
    let mut errors = top_level_bounds(cfg);
    if cfg.app.id.trim().is_empty() {
        errors.push("app.id: must not be empty".to_owned());
    }
    if let Some(cb) = &cfg.app.grpc_callback {
        if cb.parse::<SocketAddr>().is_err() && !cb.contains(':') {
            errors.push(format!("app.grpc_callback: expected host:port, got {cb:?}"));
        }
    }
    errors.extend(invocation_bounds(cfg));
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
    if cfg.listeners.is_empty() && cfg.xds.is_none() {
        errors.push(
            "listeners: at least one listener is required (or an xds: control plane)".to_owned(),
        );
    }
    if let Some(x) = &cfg.xds {
        if x.server
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            errors.push(format!(
                "xds.server: expected host:port, got {:?}",
                x.server
            ));
        }
        if x.node.id.trim().is_empty() {
            errors.push(
                "xds.node.id: must not be empty (the control plane keys its answers by it)"
                    .to_owned(),
            );
        }
    }
    let mut names = HashSet::new();
    // Virtual listeners by (chain owner, address): index and match of each.
    type Shared<'a> = HashMap<(Option<&'a str>, SocketAddr), Vec<(usize, ChainMatch)>>;
    let mut virtual_addresses = Shared::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.name.trim().is_empty() {
            errors.push(format!("listeners[{i}].name: must not be empty"));
        } else if !names.insert(l.name.as_str()) {
            errors.push(format!(
                "listeners[{i}].name: {:?} is used by another listener",
                l.name
            ));
        }
        if l.max_connections == 0 || l.max_connections > MAX_MAX_CONNECTIONS {
            errors.push(format!(
                "listeners[{i}].max_connections: must be between 1 and {MAX_MAX_CONNECTIONS}, \
                 got {}",
                l.max_connections
            ));
        }
        for (field, d) in [
            ("request_header_timeout", l.request_header_timeout),
            ("request_body_timeout", l.request_body_timeout),
        ] {
            if d.0.is_zero() || d.0 > MAX_LISTENER_TIMEOUT {
                errors.push(format!(
                    "listeners[{i}].{field}: must be more than 0 and at most {}s, got {:?}",
                    MAX_LISTENER_TIMEOUT.as_secs(),
                    d.0
                ));
            }
        }
        let listen_addr = l.address.parse::<SocketAddr>().ok();
        if l.listener_filters_timeout.0 > MAX_LISTENER_TIMEOUT {
            errors.push(format!(
                "listeners[{i}].listener_filters_timeout: must be at most {}s (0s: no limit), \
                 got {:?}",
                MAX_LISTENER_TIMEOUT.as_secs(),
                l.listener_filters_timeout.0
            ));
        }
        if let Some(m) = &l.chain_match {
            if l.chain_of.is_none() {
                errors.push(format!(
                    "listeners[{i}].chain_match: only a filter chain (chain_of) is chosen by a \
                     match"
                ));
            }
            for (j, n) in m.server_names.iter().enumerate() {
                if let Some(p) = server_name_problem(n) {
                    errors.push(format!("listeners[{i}].chain_match.server_names[{j}]: {p}"));
                }
            }
            for (j, p) in m.application_protocols.iter().enumerate() {
                if p.is_empty() || p.len() > 255 {
                    errors.push(format!(
                        "listeners[{i}].chain_match.application_protocols[{j}]: an ALPN \
                         protocol has 1 to 255 bytes, got {}",
                        p.len()
                    ));
                }
            }
        }
        if let Some(owner) = &l.chain_of {
            if l.bind_to_port {
                errors.push(format!(
                    "listeners[{i}].chain_of: a filter chain is reached through {owner:?}; it \
                     needs bind_to_port: false"
                ));
            }
            match cfg.listeners.iter().find(|o| &o.name == owner) {
                None => errors.push(format!(
                    "listeners[{i}].chain_of: no listener is named {owner:?}"
                )),
                Some(o) if o.chain_of.is_some() => errors.push(format!(
                    "listeners[{i}].chain_of: {owner:?} is itself a filter chain; chains belong \
                     to a listener"
                )),
                Some(_) => {}
            }
        }
        if !l.bind_to_port && l.use_original_dst {
            errors.push(format!(
                "listeners[{i}]: a virtual listener (bind_to_port: false) accepts nothing \
                 itself, so it cannot use_original_dst"
            ));
        }
        match l.address.parse::<SocketAddr>() {
            Ok(sa) if l.bind_to_port => {
                if !addresses.insert(sa) {
                    errors.push(format!(
                        "listeners[{i}].address: {sa} is used by another listener or the admin"
                    ));
                }
            }
            Ok(sa) => {
                // Chains of one listener may share an address when their matches differ.
                let m = l.chain_match.clone().unwrap_or_default();
                let same: &mut Vec<(usize, ChainMatch)> = virtual_addresses
                    .entry((l.chain_of.as_deref(), sa))
                    .or_default();
                if let Some((j, _)) = same.iter().find(|(_, o)| o.overlaps(&m)) {
                    let of = match &l.chain_of {
                        Some(o) => format!("filter chain of {o:?}"),
                        None => "virtual listener".to_owned(),
                    };
                    errors.push(format!(
                        "listeners[{i}].address: {sa} is used by another {of} (listeners[{j}], \
                         {:?}) with a chain_match that matches the same connections",
                        cfg.listeners[*j].name
                    ));
                }
                same.push((i, m));
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
                    api_token,
                    allow_unauthenticated,
                } => {
                    if api_token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
                        errors.push(format!(
                            "listeners[{i}].filters[{j}].api_token: must not be empty"
                        ));
                    }
                    if let Some(sa) = listen_addr {
                        if !sa.ip().is_loopback()
                            && resolve_api_token(api_token.as_ref()).is_none()
                            && !allow_unauthenticated
                        {
                            errors.push(format!(
                                "listeners[{i}].filters[{j}].api_token: the runtime API on \
                                 non-loopback address {sa} needs a token (api_token or \
                                 ${API_TOKEN_ENV}); set allow_unauthenticated: true to serve \
                                 it to anyone who can reach the address"
                            ));
                        }
                    }
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
                // The table itself is checked by building it (Snapshot::build); an inbound
                // filter is a router by now (`expand`).
                FilterConfig::Router(_) | FilterConfig::Inbound { .. } => {
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

/// Largest `invocation.max_body_bytes` (64 MiB): invocation bodies are held whole.
pub const MAX_INVOKE_BODY: usize = 64 * 1024 * 1024;

/// Longest invocation timeout (1 hour).
pub const MAX_INVOKE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Checks of `invocation` and `apps` (their clusters are checked by building them).
fn invocation_bounds(cfg: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    let inv = &cfg.invocation;
    let timeout = |path: &str, d: Duration, errors: &mut Vec<String>| {
        if d < Duration::from_millis(1) || d > MAX_INVOKE_TIMEOUT {
            errors.push(format!(
                "{path}: must be between 1ms and {MAX_INVOKE_TIMEOUT:?}, got {d:?}"
            ));
        }
    };
    timeout("invocation.timeout", inv.timeout.0, &mut errors);
    if !(1024..=MAX_INVOKE_BODY).contains(&inv.max_body_bytes) {
        errors.push(format!(
            "invocation.max_body_bytes: must be between 1024 and {MAX_INVOKE_BODY}, got {}",
            inv.max_body_bytes
        ));
    }
    if let Some(t) = &inv.dns_template {
        if !t.contains("{app}") {
            errors.push(format!(
                "invocation.dns_template: must contain {{app}}, got {t:?}"
            ));
        }
        let sample = t
            .replace("{app}", "app")
            .replace("{namespace}", &inv.namespace)
            .replace("{port}", &inv.port.to_string());
        if sample.contains('{') || sample.contains('}') || !sample.contains(':') {
            errors.push(format!(
                "invocation.dns_template: expected host:port with {{app}}, {{namespace}}, \
                 {{port}}, got {t:?}"
            ));
        }
    }
    if !valid_app_id(&inv.namespace) {
        errors.push(format!(
            "invocation.namespace: {:?} is not a valid name",
            inv.namespace
        ));
    }
    for (id, t) in &cfg.apps {
        if let Some(d) = t.timeout {
            timeout(&format!("apps.{id}.timeout"), d.0, &mut errors);
        }
    }
    errors
}

/// Most worker threads per listener: far above the cores of any host, low enough that a typo
/// cannot spawn a thread storm.
pub const MAX_THREADS: usize = 1024;

/// Longest shutdown drain (1 hour): beyond it a SIGTERM effectively never finishes (orchestrators
/// kill long before), and the deadline arithmetic stays far from overflowing.
pub const MAX_DRAIN_SECONDS: u64 = 3600;

/// Bounds of the top-level settings (`threads`, `shutdown`); the mesh's are in
/// `mecha_mesh::bounds`, the components' in their metadata parsing.
fn top_level_bounds(cfg: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if cfg.threads == 0 || cfg.threads > MAX_THREADS {
        errors.push(format!(
            "threads: must be between 1 and {MAX_THREADS}, got {}",
            cfg.threads
        ));
    }
    // 0 is allowed: exit right after SIGTERM without waiting for in-flight requests.
    if cfg.shutdown.drain_seconds > MAX_DRAIN_SECONDS {
        errors.push(format!(
            "shutdown.drain_seconds: must be at most {MAX_DRAIN_SECONDS}, got {}",
            cfg.shutdown.drain_seconds
        ));
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
    fn the_demo_configs_expand_into_clusters_and_routers() {
        let a = load(include_str!("../../configs/demo-a.yaml")).expect("demo-a is valid");
        assert!(a
            .clusters
            .iter()
            .any(|c| c.name == "app/app-b" && c.endpoints[0].address == "127.0.0.1:35006"));
        let b = load(include_str!("../../configs/demo-b.yaml")).expect("demo-b is valid");
        let names: Vec<&str> = b.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [LOCAL_APP_GRPC, LOCAL_APP_HTTP]);
        let grpc = &b.clusters[0];
        assert_eq!(grpc.protocol, mecha_mesh::config::UpstreamProtocol::H2c);
        assert_eq!(grpc.endpoints[0].address, "127.0.0.1:9003");
        let FilterConfig::Router(rc) = &b.listeners[1].filters[0] else {
            panic!(
                "the inbound filter became a router: {:?}",
                b.listeners[1].filters
            );
        };
        let routes = &rc.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].name.as_deref(), Some("inbound-grpc"));
        assert_eq!(routes[1].name.as_deref(), Some("inbound-http"));
        crate::check(include_str!("../../configs/demo-b.yaml")).expect("demo-b builds");
    }

    #[test]
    fn bad_apps_and_invocation_settings_are_named() {
        let base = "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    filters: [{type: capability}]\n";
        for (extra, want) in [
            ("apps: {b: {}}", "apps.b: needs `address`, `addresses` or `cluster`"),
            (
                "apps: {b: {address: \"127.0.0.1:2\", cluster: c}}",
                "apps.b: give either",
            ),
            ("apps: {b: {cluster: nope}}", "apps.b.cluster: unknown cluster \"nope\""),
            ("apps: {B!: {address: \"127.0.0.1:2\"}}", "apps.B!: an app id is"),
            ("invocation: {timeout: 0ms}", "invocation.timeout: must be between"),
            ("invocation: {max_body_bytes: 10}", "invocation.max_body_bytes: must be between"),
            ("invocation: {dns_template: \"svc:80\"}", "invocation.dns_template: must contain {app}"),
            (
                "clusters: [{name: app/b, endpoints: [{address: \"127.0.0.1:3\"}]}]\napps: {b: {address: \"127.0.0.1:2\"}}",
                "makes a cluster named \"app/b\", which `clusters` already has",
            ),
        ] {
            let errors = crate::check(&format!("{base}{extra}\n")).expect_err(extra);
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{extra}: {errors:?} lacks {want:?}"
            );
        }
        let inbound =
            "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    filters: [{type: inbound}]\n";
        let errors = crate::check(inbound).expect_err("inbound without app ports");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("set app.http_port or app.grpc_port")),
            "{errors:?}"
        );
    }

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

    fn listener_with(settings: &str, filter: &str) -> String {
        format!(
            "listeners:\n  - name: a\n    address: {settings}\n    filters: [{{ type: capability{filter} }}]\n"
        )
    }

    #[test]
    fn listener_bounds_are_validated_with_their_path() {
        let yaml = listener_with(
            "127.0.0.1:1\n    max_connections: 0\n    request_header_timeout: 0s\n    \
             request_body_timeout: 2h",
            "",
        );
        let joined = load(&yaml).expect_err("invalid").join("\n");
        for want in [
            "listeners[0].max_connections: must be between 1 and",
            "listeners[0].request_header_timeout: must be more than 0",
            "listeners[0].request_body_timeout: must be more than 0 and at most 3600s",
        ] {
            assert!(joined.contains(want), "{want}: {joined}");
        }
        let ok = load(&listener_with("127.0.0.1:1", "")).expect("defaults are valid");
        assert_eq!(ok.listeners[0].max_connections, 10_000);
        assert_eq!(
            ok.listeners[0].request_header_timeout.0,
            Duration::from_secs(10)
        );
        assert_eq!(
            ok.listeners[0].request_body_timeout.0,
            Duration::from_secs(60)
        );
    }

    /// The errors of a one-listener config with `yaml` (more top-level keys) added.
    fn errors_with(yaml: &str) -> Vec<String> {
        let base = "listeners: [{ name: a, address: \"127.0.0.1:1\" }]";
        // The whole check (parse, validate, build), as `mecha validate` runs it.
        match crate::check(&format!("{base}\n{yaml}\n")) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn threads_are_bounded() {
        assert_eq!(
            errors_with("threads: 0"),
            vec!["threads: must be between 1 and 1024, got 0".to_owned()]
        );
        assert_eq!(
            errors_with("threads: 1025"),
            vec!["threads: must be between 1 and 1024, got 1025".to_owned()]
        );
        assert!(errors_with("threads: 1024").is_empty());
    }

    #[test]
    fn drain_seconds_are_bounded() {
        assert_eq!(
            errors_with("shutdown: { drain_seconds: 3601 }"),
            vec!["shutdown.drain_seconds: must be at most 3600, got 3601".to_owned()]
        );
        assert_eq!(
            errors_with("shutdown: { drain_seconds: 18446744073709551615 }").len(),
            1
        );
        assert!(errors_with("shutdown: { drain_seconds: 0 }").is_empty());
    }

    #[test]
    fn a_zero_health_check_interval_is_refused_with_its_path() {
        // This config used to pass validation and panic the maintenance thread at start.
        let errs = errors_with(
            "clusters:\n  - name: c\n    endpoints: [{ address: \"127.0.0.1:1\" }]\n    \
             health_check: { interval: 0 }",
        );
        assert_eq!(
            errs,
            vec!["clusters[0].health_check.interval: must be at least 1ms, got 0ns".to_owned()]
        );
    }

    #[test]
    fn a_public_runtime_api_needs_a_token_or_an_explicit_opt_out() {
        // (Assumes MECHA_API_TOKEN is not set for the test process.)
        let errs = load(&listener_with("0.0.0.0:1", "")).expect_err("no token");
        assert!(
            errs[0].starts_with(
                "listeners[0].filters[0].api_token: the runtime API on \
                                 non-loopback address 0.0.0.0:1 needs a token"
            ),
            "{errs:?}"
        );
        load(&listener_with("0.0.0.0:1", ", allow_unauthenticated: true")).expect("opted out");
        let cfg = load(&listener_with("0.0.0.0:1", ", api_token: t")).expect("token");
        let FilterConfig::Capability { api_token, .. } = &cfg.listeners[0].filters[0] else {
            panic!("capability filter expected");
        };
        assert_eq!(format!("{api_token:?}"), "Some(ApiToken(<redacted>))");
        load(&listener_with("\"[::1]:1\"", "")).expect("loopback needs no token");
        let errs = load(&listener_with("127.0.0.1:1", ", api_token: \" \"")).expect_err("blank");
        assert!(errs[0].contains("api_token: must not be empty"), "{errs:?}");
    }

    #[test]
    fn component_metadata_bounds_name_the_component() {
        let errs = errors_with(
            "components:\n  - { name: ps, type: pubsub.memory, metadata: { redeliverInterval: 0 } }",
        );
        assert!(
            errs.iter()
                .any(|e| e
                    .starts_with("components[0].metadata.redeliverInterval: must be at least 1ms")),
            "{errs:?}"
        );
    }

    #[test]
    fn schema_errors_carry_the_path() {
        let errs = load("listeners:\n  - name: a\n    address: 1.2.3.4:1\n    bogus: 1\n")
            .expect_err("unknown field");
        assert!(errs[0].starts_with("listeners[0]"), "{errs:?}");
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }

    #[test]
    fn xds_bootstraps_need_no_listeners_and_name_bad_fields() {
        for file in ["xds-bootstrap.yaml", "xds-bootstrap-delta.yaml"] {
            let path = format!("{}/../configs/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("bootstrap file");
            let cfg = load(&text).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            let x = cfg.xds.expect("xds section");
            assert_eq!(x.server, "127.0.0.1:18000");
            assert_eq!(
                x.node.id,
                "sidecar~127.0.0.1~app.default~default.svc.cluster.local"
            );
            assert_eq!(x.api == XdsApi::Delta, file.contains("delta"), "{file}");
            assert!(cfg.listeners.is_empty());
        }
        let errs = load("xds:\n  server: nowhere\n  node: {id: ''}\n").expect_err("invalid");
        assert!(errs.iter().any(|e| e.starts_with("xds.server")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.starts_with("xds.node.id")),
            "{errs:?}"
        );
        let errs = load("xds:\n  server: a:1\n  api: rest\n").expect_err("unknown api");
        assert!(errs[0].contains("xds"), "{errs:?}");
        let errs = load("threads: 1\n").expect_err("nothing to serve");
        assert!(errs.iter().any(|e| e.starts_with("listeners:")), "{errs:?}");
    }

    #[test]
    fn chain_matches_are_validated_by_path_and_shared_addresses_need_different_matches() {
        let base = "clusters:\n  - { name: c, endpoints: [{ address: 127.0.0.1:9 }] }\nlisteners:\n  - name: edge\n    address: 127.0.0.1:1\n    listener_filters_timeout: 2s\n    tcp_proxy: { cluster: c }\n";
        let chain = |name: &str, m: &str| {
            format!("  - name: {name}\n    address: 0.0.0.0:1\n    bind_to_port: false\n    chain_of: edge\n    tcp_proxy: {{ cluster: c }}\n    chain_match: {m}\n")
        };
        let good = format!(
            "{base}{}{}{}",
            chain("a", "{ server_names: [a.example.com] }"),
            chain(
                "org",
                "{ server_names: ['*.example.org'], transport_protocol: tls }"
            ),
            chain("raw", "{ transport_protocol: raw_buffer }"),
        );
        let cfg = load(&good).expect("chains with different matches share an address");
        assert_eq!(
            cfg.listeners[0].listener_filters_timeout.0,
            Duration::from_secs(2)
        );
        assert!(!cfg.listeners[0].continue_on_listener_filters_timeout);
        assert_eq!(
            cfg.listeners[2]
                .chain_match
                .as_ref()
                .map(|m| m.transport_protocol),
            Some(Some(TransportProtocol::Tls))
        );
        // The model serializes (for /config_dump) and reads back the same.
        let text = serde_yaml_ng::to_string(&cfg).expect("serialize");
        assert!(text.contains("transport_protocol: raw_buffer"), "{text}");
        assert!(text.contains("listener_filters_timeout: 2s"), "{text}");
        let again: Config = serde_yaml_ng::from_str(&text).expect("reads back");
        assert_eq!(again.listeners, cfg.listeners);
        // Defaults: Envoy's 15 s, closing on timeout.
        let plain = load(&base.replace("    listener_filters_timeout: 2s\n", "")).expect("valid");
        assert_eq!(
            plain.listeners[0].listener_filters_timeout.0,
            Duration::from_secs(15)
        );

        let errs = load(&format!(
            "{base}{}{}",
            chain(
                "bad",
                "{ server_names: ['*', 'a.*.com', '*w.example.com', ok.example.com] }"
            ),
            chain("worse", "{ application_protocols: [''] }"),
        ))
        .expect_err("bad names");
        for want in [
            "listeners[1].chain_match.server_names[0]: \"*\"",
            "listeners[1].chain_match.server_names[1]: \"a.*.com\": a wildcard is only allowed",
            "listeners[1].chain_match.server_names[2]: \"*w.example.com\": a wildcard",
            "listeners[2].chain_match.application_protocols[0]: an ALPN protocol has 1 to 255",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
        }
        assert_eq!(errs.len(), 4, "{errs:?}");

        let errs = load(&format!(
            "{base}{}",
            chain("t", "{ transport_protocol: quic }")
        ))
        .expect_err("unknown transport");
        assert!(
            errs[0].starts_with("listeners[1].chain_match.transport_protocol: ")
                && errs[0].contains("unknown variant `quic`, expected `tls` or `raw_buffer`"),
            "{errs:?}"
        );

        let errs = load(&base.replace(
            "    tcp_proxy: { cluster: c }\n",
            "    tcp_proxy: { cluster: c }\n    chain_match: { server_names: [a.example.com] }\n",
        ))
        .expect_err("not a chain");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("listeners[0].chain_match: only a filter chain")),
            "{errs:?}"
        );

        // Overlapping matches on one address (a shared name, same other criteria) name both;
        // so do two chains without a match (as before).
        let errs = load(&format!(
            "{base}{}{}{}{}",
            chain("x", "{ server_names: [a.example.com, b.example.com] }"),
            chain("y", "{ server_names: [B.example.com] }"),
            chain(
                "z",
                "{ server_names: [b.example.com], application_protocols: [h2] }"
            ),
            chain("w", "{}"),
        ))
        .expect_err("overlap");
        assert_eq!(
            errs,
            [
                "listeners[2].address: 0.0.0.0:1 is used by another filter chain of \"edge\" \
              (listeners[1], \"x\") with a chain_match that matches the same connections"
            ],
        );
        let errs = load(&format!("{base}{}{}", chain("v", "{}"), chain("w", "{}")))
            .expect_err("two defaults");
        assert!(errs[0].contains("(listeners[1], \"v\")"), "{errs:?}");

        let errs = load(&base.replace("2s", "2h")).expect_err("too long");
        assert!(
            errs[0].starts_with("listeners[0].listener_filters_timeout: must be at most 3600s"),
            "{errs:?}"
        );
        load(&base.replace("2s", "0s")).expect("0: no limit");
    }
}
