//! The mesh part of the config file: clusters and route tables, as plain serde data.
//! Shaped after Envoy's model (virtual hosts → routes → clusters → endpoints) so xDS resources
//! map onto it without a second model.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `250ms`, `2s`, `1m` or a bare number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(ms) => Ok(Dur(Duration::from_millis(ms))),
            Raw::Str(s) => parse_duration(&s).map(Dur).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected a duration like 250ms, 2s or 1m, got {s:?}"
                ))
            }),
        }
    }
}

/// Written back as the file would have it (`/config_dump`): whole seconds as `2s`, else
/// milliseconds, else microseconds.
impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let text = if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}us", d.as_micros())
        };
        s.serialize_str(&text)
    }
}

/// Durations read the same everywhere in the config (`250ms`, `2s`, `1m`, bare ms).
pub use mecha_capabilities::spec::parse_duration;

// === clusters ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// Required, unless `original_dst`.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Envoy's `ORIGINAL_DST` cluster (Istio's `PassthroughCluster`): no endpoints; each
    /// connection or request goes to where its downstream connection was going before an
    /// iptables REDIRECT (`SO_ORIGINAL_DST`). A connection that was not redirected has no
    /// such destination and is refused (503 over HTTP), never sent back to Mecha itself.
    #[serde(default)]
    pub original_dst: bool,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// SNI for `protocol: h2` (TLS); defaults to the endpoint host. The upstream's
    /// certificate must be valid for this name.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM file with the CA certificates trusted for `protocol: h2` upstreams, instead of the
    /// platform trust store (read when the config is loaded).
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// What `ring_hash` and `maglev` hash: a request header, or the client address when absent.
    #[serde(default)]
    pub hash_header: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// How often endpoints given as `host:port` names are re-resolved.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    /// Concurrent streams per upstream HTTP/2 connection.
    #[serde(default = "default_h2_streams")]
    pub max_h2_streams: usize,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    #[serde(default)]
    pub circuit_breakers: CircuitBreakerConfig,
}

impl ClusterConfig {
    /// An HTTP/1.1 cluster over `endpoints` with every other setting at its default.
    pub fn with_endpoints(name: &str, endpoints: Vec<EndpointConfig>) -> Self {
        Self {
            name: name.to_owned(),
            endpoints,
            original_dst: false,
            protocol: UpstreamProtocol::default(),
            sni: None,
            ca_file: None,
            lb_policy: LbPolicy::default(),
            hash_header: None,
            connect_timeout: default_connect_timeout(),
            dns_refresh: default_dns_refresh(),
            max_h2_streams: default_h2_streams(),
            health_check: None,
            outlier_detection: None,
            circuit_breakers: CircuitBreakerConfig::default(),
        }
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_dns_refresh() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_h2_streams() -> usize {
    100
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port`, or `host:port` (resolved at start and every `dns_refresh`).
    pub address: String,
    #[serde(default = "one")]
    pub weight: usize,
    /// Failover level, 0 (the default) the highest, at most
    /// [`MAX_ENDPOINT_PRIORITY`](crate::bounds::MAX_ENDPOINT_PRIORITY). Picks go to the
    /// lowest-numbered level with a usable endpoint (healthy, not ejected, not the one a retry
    /// avoids). A whole level fails over only when the level above has no usable endpoint
    /// left; Envoy's gradual spill by overprovisioning factor is not implemented.
    #[serde(default)]
    pub priority: u32,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
    /// HTTP/2 over TLS (rustls), ALPN h2.
    H2,
    /// The protocol the request came in: HTTP/2 requests go as h2c, the others as HTTP/1.1
    /// (Envoy's `use_downstream_protocol_config`, which Istio's passthrough clusters use).
    Downstream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two random choices, fewer in-flight requests wins.
    LeastRequest,
    /// Consistent hashing (Ketama) on `hash_header` or the client address.
    RingHash,
    /// Maglev consistent hashing on `hash_header` or the client address: a lookup table
    /// (65537 entries per cluster) instead of a ring; few keys move when endpoints change.
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// Path for `http` checks.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Service name for `grpc` checks (empty: the server as a whole).
    #[serde(default)]
    pub service: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    #[serde(default = "one")]
    pub healthy_threshold: usize,
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: usize,
}

fn default_hc_path() -> String {
    "/healthz".to_owned()
}

fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_hc_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_unhealthy() -> usize {
    2
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check` for `service`.
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx responses (or resets) that eject an endpoint.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject an endpoint.
    #[serde(default = "default_consecutive")]
    pub consecutive_connect_failures: u32,
    /// Ejection time; the n-th ejection of an endpoint lasts n × this (capped by
    /// `max_ejection_time`).
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// Never eject more than this share of a cluster's endpoints.
    #[serde(default = "default_max_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}

fn default_base_ejection() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_max_ejection() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_max_percent() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Upstream connections in use. An HTTP/1.1 request holds one while it is upstream; on
    /// HTTP/2 (`h2`, `h2c`) one connection carries `max_h2_streams` requests. A request that
    /// finds none free waits as pending.
    #[serde(default = "default_max_requests")]
    pub max_connections: usize,
    /// Requests waiting for a connection (see `max_connections`); beyond → 503
    /// `x-mecha-overloaded: max_pending_requests`. Waiting is bounded by the route timeout.
    #[serde(default = "default_max_requests")]
    pub max_pending_requests: usize,
    /// Requests in flight to the cluster; beyond → 503 `x-mecha-overloaded: max_requests`.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Retries in flight to the cluster; beyond, failures are not retried.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Retry budget as Envoy defines it: retries in flight may be at most this share (%) of
    /// the requests in flight (but always at least `min_retry_concurrency`). When set, it
    /// replaces `max_retries`.
    #[serde(default)]
    pub retry_budget_percent: Option<u32>,
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: usize,
}

fn default_min_retry_concurrency() -> usize {
    3
}

fn default_max_requests() -> usize {
    1024
}

fn default_max_retries() -> usize {
    3
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_requests(),
            max_pending_requests: default_max_requests(),
            max_requests: default_max_requests(),
            max_retries: default_max_retries(),
            retry_budget_percent: None,
            min_retry_concurrency: default_min_retry_concurrency(),
        }
    }
}

// === routes ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub virtual_hosts: Vec<VirtualHostConfig>,
    /// One JSON line per request on stderr (through the log); off by default.
    #[serde(default)]
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    pub name: String,
    /// `example.com` (exact), `*.example.com` (suffix), `*` (any). Port in Host is ignored.
    pub domains: Vec<String>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Option<Vec<WeightedClusterConfig>>,
    #[serde(default)]
    pub direct_response: Option<DirectResponseConfig>,
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub host_rewrite: Option<String>,
    /// The whole request, as Envoy's route timeout: from the route match — waiting for a
    /// connection slot, every try and the backoff between them — until the response is
    /// complete (default 15 s; `0` disables it, e.g. for long-lived streams). Elapsed before
    /// an answer → 504; while a response streams → the stream is reset.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Bounds each try's wait for upstream bytes (within `timeout`).
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Stream idle timeout (Envoy's `idle_timeout`): the longest wait for the next bytes from
    /// the upstream, or to hand bytes to it, for the whole stream — also when `timeout` is 0
    /// (default 5 min, as Envoy's stream idle timeout; `0` disables it).
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicyConfig>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueConfig>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueConfig>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatchConfig>,
    /// Query parameters that must match (all of them), by the raw value of their first
    /// occurrence in the URL, as Envoy's `query_parameters` compare.
    #[serde(default)]
    pub query: Vec<QueryMatchConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatchConfig {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Matches when the parameter is present (`true`, also `?flag` without a value) or
    /// absent (`false`). Neither `exact` nor `regex` nor `present`: present.
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Matches when the header is present (`true`) or absent (`false`).
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterConfig {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub code: u16,
}

fn default_redirect_code() -> u16 {
    301
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// Any of `connect-failure`, `reset`, `5xx`, `retriable-status-codes`, and the gRPC
    /// conditions `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`,
    /// `unavailable` (for trailers-only gRPC answers).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default = "default_base_interval")]
    pub base_interval: Dur,
    #[serde(default = "default_max_interval")]
    pub max_interval: Dur,
    /// Also retry non-idempotent requests (POST, PATCH, … — every method RFC 9110 does not
    /// call idempotent, so every gRPC call) after they may have reached the upstream: on a
    /// reset, a 5xx or a retriable status. Off by default: such a request is retried only
    /// when it never left (`connect-failure`). Set it only when the upstream tolerates
    /// duplicates.
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

fn default_retry_on() -> Vec<String> {
    vec!["connect-failure".to_owned(), "reset".to_owned()]
}

fn default_num_retries() -> u32 {
    1
}

fn default_base_interval() -> Dur {
    Dur(Duration::from_millis(25))
}

fn default_max_interval() -> Dur {
    Dur(Duration::from_millis(250))
}
