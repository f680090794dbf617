//! Translation of Envoy v3 resources (and `mecha.config.v1.Component`) onto Mecha's config
//! model: [`translate`] turns the resource set the ADS client holds into listeners, clusters
//! and components; [`merge`] adds them to the bootstrap's static ones.
//!
//! The rule: a field is either mapped exactly, ignored because it is cosmetic (names,
//! `stat_prefix`, metadata, access logs, tracing, stats), or an error naming the resource and
//! the field path, so the control plane gets a NACK instead of a proxy that silently behaves
//! differently from what it asked for. Every message field is destructured without `..`: a
//! field added to envoy-types fails the build here until somebody decides where it goes.
//!
//! # Supported
//! - **Listener**: `address` (socket address, TCP), `bind_to_port`, `use_original_dst`,
//!   `listener_filters_timeout`, `continue_on_listener_filters_timeout`;
//!   filter chains: the chain matching everything (else `default_filter_chain`) is the
//!   listener's own, and each chain whose `filter_chain_match` names destinations or TLS
//!   criteria becomes a virtual listener `chain_of` it
//!   (`<listener>/<chain name or filter_chains[i]>`) at `0.0.0.0:<destination_port>` or
//!   `<ip>:<port>` for single addresses in `prefix_ranges` (`0.0.0.0/0` is any; on a listener
//!   not redirecting, the port defaults to its own), with `server_names`,
//!   `transport_protocol` and — on a chain for TLS (`tls` or `server_names`) — the ClientHello's
//!   `application_protocols` as its `chain_match` (chains without a `transport_socket`: TLS
//!   passes through; chains for one destination may differ by these, identical ones are
//!   refused naming both). `transport_protocol: raw_buffer` is kept only when some chain asks
//!   for TLS (otherwise every chain serves plain text anyway), and HTTP
//!   `application_protocols` on a plain-text HTTP chain match what it serves anyway;
//!   listener filters `original_dst`, `tls_inspector`, `http_inspector` (ignored: the listener
//!   manager reads destinations and ClientHellos itself); network filters
//!   `http_connection_manager` (RDS over ADS or an inline `route_config`) and `tcp_proxy`
//!   (`cluster`), Istio's `istio.metadata_exchange` / `istio.stats` (ignored).
//! - **HttpConnectionManager**: `http_filters` with the router last; Istio's `istio.alpn`,
//!   `istio.metadata_exchange`, `istio.stats`, `envoy.filters.http.grpc_stats`, `cors` (a no-op
//!   without a CORS policy, and policies are refused) and an *empty* `fault` filter (no fault
//!   configured: a no-op) are ignored and listed; `stream_idle_timeout` (default idle timeout of
//!   its routes), `request_headers_timeout` (the listener's `request_header_timeout`),
//!   `websocket` upgrades (forwarded as Pingora forwards upgrades).
//! - **RouteConfiguration**: virtual hosts (`domains` exact, `*.suffix`, `*`); route match
//!   `prefix`, `path`, `safe_regex`, `headers` (exact, safe_regex, present, string_match
//!   exact/prefix/suffix/contains/regex with ignore_case, `invert_match`), `query_parameters`
//!   (the same string matching, `present_match`; the raw first value), `grpc`; actions
//!   `cluster`, `weighted_clusters`, `redirect`, `direct_response` (inline body),
//!   `prefix_rewrite`, `host_rewrite_literal`, `timeout`, `idle_timeout`, `retry_policy`
//!   (`retry_on`, `num_retries`, `retriable_status_codes`, `per_try_timeout`,
//!   `retry_back_off`; the virtual host's policy is the routes' default); request/response
//!   headers to add (append, overwrite) and remove at route, virtual host and route
//!   configuration level (folded into each route).
//! - **Cluster**: `EDS` (endpoints from the ClusterLoadAssignment named by
//!   `eds_cluster_config.service_name`, else the cluster name; absent → *warming*), `STATIC`,
//!   `STRICT_DNS` (`dns_refresh_rate`), `ORIGINAL_DST` with `CLUSTER_PROVIDED` (each
//!   connection or request to its original destination; `original_dst_lb_config` options
//!   refused); `lb_policy` ROUND_ROBIN, LEAST_REQUEST (2 choices),
//!   RANDOM, RING_HASH, MAGLEV (table 65537); `connect_timeout`; one health check (HTTP path,
//!   gRPC service, TCP connect); `outlier_detection` (consecutive 5xx / local-origin failures,
//!   ejection times and percent; success-rate ejection must be off); `circuit_breakers`
//!   (default priority; `retry_budget`); HTTP/2 via `typed_extension_protocol_options`
//!   (`HttpProtocolOptions.explicit_http_config.http2_protocol_options` → `h2c`, Envoy speaks
//!   h2 prior knowledge without a transport socket; `max_concurrent_streams`), and
//!   `use_downstream_protocol_config` (→ `downstream`: h2c for HTTP/2 requests, HTTP/1.1
//!   otherwise; Istio's passthrough clusters).
//! - **ClusterLoadAssignment**: endpoints with `load_balancing_weight`; `UNHEALTHY`,
//!   `DRAINING`, `TIMEOUT` are left out (`DEGRADED` counts as healthy); `priority` (≤ 127)
//!   becomes the endpoints' priority: picks go to the highest priority with a usable endpoint,
//!   failing over a whole priority at a time (no gradual spill by
//!   `overprovisioning_factor`).
//! - **Component**: name, type, metadata → [`ComponentSpec`], validated by building it as a
//!   file component is.
//! - `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` configs are recognised by their
//!   inner type URL (an Envoy filter's config is chosen by type, not by name).
//!
//! # Not supported yet (error "not supported yet")
//! Filter chains chosen by the application protocol of plain-text connections
//! (`http_inspector`: an HTTP and a TCP chain for one destination), by source, or by address
//! ranges other than one address or any; chains with TLS criteria but no destination port on
//! a `use_original_dst` listener; transport sockets (TLS) on listeners and clusters, `LOGICAL_DNS` clusters,
//! `upstream_bind_config`, cookie / runtime matchers, route hash policies other than the
//! source IP,
//! `normalize_path`, `merge_slashes`, `use_remote_address`, gRPC timeout headers
//! (`max_grpc_timeout`, `max_stream_duration`), per-filter configs, mirrors, rate limits,
//! hedging, CORS policies, HTTP/1-only or HTTP/2-only codecs, subsets, locality weighting.
//! Security filters (RBAC, JWT, external authorization) are refused outright: serving without
//! them would serve what they forbid.
//!
//! # Envoy behaviour kept by [`merge`]
//! A route to a cluster that is not there (unknown, warming, or without usable endpoints)
//! answers 503, as Envoy's `cluster_not_found_response_code` does by default.

mod cluster;
mod filters;
mod listener;
mod route;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use mecha_capabilities::{BuildContext, ComponentSpec};
use mecha_mesh::config::{
    ClusterConfig, DirectResponseConfig, Dur, EndpointConfig, RouteConfig, RouterConfig,
};
use mecha_proto::config::v1::Component;
use mecha_proxy_core::config::{Config, FilterConfig, ListenerConfig};

use crate::resources::{eds_service_name, ResourceError, XdsResources};

/// What the resource set translates to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    pub components: Vec<ComponentSpec>,
    /// Resources left out until what they need arrives: a listener waiting for its route
    /// configuration, a cluster waiting for its endpoints (`listener "l": waiting for
    /// route_config "r"`).
    pub warming: Vec<String>,
    /// What was accepted and does nothing here (Istio's telemetry filters, optional unknown
    /// filters), for `/config_dump`.
    pub ignored: Vec<String>,
}

/// Translates every resource of `res`; returns every error, each naming its resource and
/// the field path. (A [`Translator`] without memory.)
pub fn translate(res: &XdsResources) -> Result<Translated, Vec<ResourceError>> {
    Translator::default().translate(res)
}

/// Translation that remembers what it translated last time, per resource: an unchanged
/// cluster, endpoint assignment or route configuration (the same shared message, compared by
/// pointer) is not translated again. A response carrying one ClusterLoadAssignment then costs
/// the translation of one assignment and one cluster, not of every resource held: that is
/// what keeps an endpoint push under a few milliseconds at thousands of clusters.
///
/// Only translations without errors are remembered, so a remembered resource contributes no
/// errors; the entries hold the messages they were made from, so a pointer never outlives its
/// message and cannot be mistaken for another one. Each call keeps only the entries of the
/// resources it was given. Listeners are always translated: they copy their routers and
/// depend on which clusters are absent, and there are few of them.
#[derive(Default)]
pub struct Translator {
    assignments: Memos<AssignmentMemo>,
    clusters: Memos<ClusterMemo>,
    routes: Memos<RouteMemo>,
    /// Counts calls: an entry not used by the current call is dropped at its end.
    generation: u64,
}

/// Memos by resource name (foldhash: names come from the control plane, the map is private to
/// one client and rebuilt per call, so SipHash's flooding resistance buys nothing here).
type Memos<T> = HashMap<String, (u64, T), foldhash::fast::RandomState>;

struct AssignmentMemo {
    assignment: Arc<ClusterLoadAssignment>,
    endpoints: Vec<EndpointConfig>,
}

/// A cluster's translation and what it was made from (its endpoints' assignment for EDS).
struct ClusterMemo {
    cluster: Arc<Cluster>,
    assignment: Option<Arc<ClusterLoadAssignment>>,
    outcome: cluster::Outcome,
}

struct RouteMemo {
    config: Arc<RouteConfiguration>,
    router: RouterConfig,
    ignored: Vec<String>,
}

/// The memo of `key` if `valid` says it was made from what is held now, marked as used.
fn recall<'m, T>(
    memos: &'m mut Memos<T>,
    generation: u64,
    key: &str,
    valid: impl FnOnce(&T) -> bool,
) -> Option<&'m T> {
    match memos.get_mut(key) {
        Some((seen, memo)) if valid(memo) => {
            *seen = generation;
            Some(memo)
        }
        _ => None,
    }
}

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Translator {
    /// As [`translate`], reusing the translations of unchanged resources.
    pub fn translate(&mut self, res: &XdsResources) -> Result<Translated, Vec<ResourceError>> {
        self.generation += 1;
        let generation = self.generation;
        let mut errors = Vec::new();
        let mut out = Translated::default();

        for (key, c) in &res.components {
            let mut e = Errs::new("component", key, &mut errors);
            if let Some(spec) = component(key, c, &mut e) {
                out.components.push(spec);
            }
        }

        // Endpoints first: clusters take theirs from here.
        for (key, cla) in &res.endpoints {
            let valid = |m: &AssignmentMemo| Arc::ptr_eq(&m.assignment, cla);
            if recall(&mut self.assignments, generation, key, valid).is_some() {
                continue;
            }
            self.assignments.remove(key);
            let mut e = Errs::new("endpoints", key, &mut errors);
            let before = e.count();
            let endpoints = cluster::assignment(cla, "", &mut e, key);
            if e.count() == before {
                let memo = AssignmentMemo {
                    assignment: cla.clone(),
                    endpoints,
                };
                self.assignments.insert(key.clone(), (generation, memo));
            }
        }
        self.assignments.retain(|_, (seen, _)| *seen == generation);
        let assignments: BTreeMap<&str, &[EndpointConfig]> = self
            .assignments
            .iter()
            .map(|(k, (_, m))| (k.as_str(), m.endpoints.as_slice()))
            .collect();

        // Clusters left out (warming, or no usable endpoints): what refers to them is handled
        // as Envoy does (503 for a route, see `merge`; a tcp_proxy listener waits).
        let mut absent_clusters = HashSet::new();
        for (key, c) in &res.clusters {
            let assignment = eds_service_name(c).and_then(|s| res.endpoints.get(s));
            let valid = |m: &ClusterMemo| {
                Arc::ptr_eq(&m.cluster, c) && same(m.assignment.as_ref(), assignment)
            };
            let outcome = match recall(&mut self.clusters, generation, key, valid) {
                Some(memo) => memo.outcome.clone(),
                None => {
                    let mut e = Errs::new("cluster", key, &mut errors);
                    let before = e.count();
                    let outcome = cluster::translate(key, c, res, &assignments, &mut e);
                    if e.count() == before && !matches!(outcome, cluster::Outcome::Failed) {
                        let memo = ClusterMemo {
                            cluster: c.clone(),
                            assignment: assignment.cloned(),
                            outcome: outcome.clone(),
                        };
                        self.clusters.insert(key.clone(), (generation, memo));
                    }
                    outcome
                }
            };
            match outcome {
                cluster::Outcome::Ready(cfg) => out.clusters.push(*cfg),
                cluster::Outcome::Warming(why) => {
                    absent_clusters.insert(key.clone());
                    out.warming.push(format!("cluster {key:?}: {why}"));
                }
                cluster::Outcome::Empty(why) => {
                    absent_clusters.insert(key.clone());
                    out.ignored.push(format!("cluster {key:?}: {why}"));
                }
                cluster::Outcome::Failed => {}
            }
        }
        self.clusters.retain(|_, (seen, _)| *seen == generation);

        // Route configurations once each; listeners copy theirs (the model keeps a router per
        // listener).
        for (key, rc) in &res.routes {
            let valid = |m: &RouteMemo| Arc::ptr_eq(&m.config, rc);
            if let Some(memo) = recall(&mut self.routes, generation, key, valid) {
                out.ignored.extend(memo.ignored.iter().cloned());
                continue;
            }
            self.routes.remove(key);
            let mut e = Errs::new("route_config", key, &mut errors);
            let before = e.count();
            let mut ignored = Vec::new();
            let router = route::translate_config(rc, "", &mut e, &mut ignored, key);
            if rc.name != *key && !rc.name.is_empty() {
                e.at(
                    "name",
                    format!("{:?} differs from the resource name", rc.name),
                );
            }
            out.ignored.extend(ignored.iter().cloned());
            if e.count() == before {
                let memo = RouteMemo {
                    config: rc.clone(),
                    router,
                    ignored,
                };
                self.routes.insert(key.clone(), (generation, memo));
            }
        }
        self.routes.retain(|_, (seen, _)| *seen == generation);
        let routers: BTreeMap<&str, &RouterConfig> = self
            .routes
            .iter()
            .map(|(k, (_, m))| (k.as_str(), &m.router))
            .collect();

        let ctx = listener::Context {
            res,
            routers: &routers,
            absent_clusters: &absent_clusters,
        };
        for (key, l) in &res.listeners {
            let mut e = Errs::new("listener", key, &mut errors);
            match listener::translate(key, l, &ctx, &mut e, &mut out.ignored) {
                listener::Outcome::Ready(cfgs) => out.listeners.extend(cfgs),
                listener::Outcome::Warming(why) => {
                    out.warming.push(format!("listener {key:?}: {why}"))
                }
                listener::Outcome::Failed => {}
            }
        }

        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// The bootstrap's static listeners, clusters and components plus the translated ones. A
/// translated resource named like a static one is an error naming both. Routes of translated
/// listeners to clusters that are not in the result answer 503 (Envoy's default
/// `cluster_not_found_response_code`); a weighted split or a tcp_proxy naming one is an error.
/// The result is checked by building it (`Snapshot::build`), as a file is.
pub fn merge(bootstrap: &Config, t: Translated) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let mut cfg = bootstrap.clone();
    let static_listeners: HashMap<&str, usize> = bootstrap
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    for l in &t.listeners {
        if let Some(i) = static_listeners.get(l.name.as_str()) {
            errors.push(format!(
                "listener {:?} from xDS: its name is taken by the static listeners[{i}] of the \
                 bootstrap",
                l.name
            ));
        }
    }
    let static_clusters: HashMap<&str, usize> = bootstrap
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    for c in &t.clusters {
        if let Some(i) = static_clusters.get(c.name.as_str()) {
            errors.push(format!(
                "cluster {:?} from xDS: its name is taken by the static clusters[{i}] of the \
                 bootstrap",
                c.name
            ));
        }
    }
    let static_components: HashMap<&str, usize> = bootstrap
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    for c in &t.components {
        if let Some(i) = static_components.get(c.name.as_str()) {
            errors.push(format!(
                "component {:?} from xDS: its name is taken by the static components[{i}] of \
                 the bootstrap",
                c.name
            ));
        }
    }
    cfg.clusters.extend(t.clusters);
    cfg.components.extend(t.components);
    let known: HashSet<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut listeners = t.listeners;
    for l in &mut listeners {
        if let Some(tp) = &l.tcp_proxy {
            if !known.contains(tp.cluster.as_str()) {
                errors.push(format!(
                    "listener {:?}: tcp_proxy.cluster: unknown cluster {:?}",
                    l.name, tp.cluster
                ));
            }
        }
        for f in &mut l.filters {
            let FilterConfig::Router(rc) = f else {
                continue;
            };
            for (vi, vh) in rc.virtual_hosts.iter_mut().enumerate() {
                for (ri, r) in vh.routes.iter_mut().enumerate() {
                    route_to_missing_clusters(&l.name, vi, ri, r, &known, &mut errors);
                }
            }
        }
    }
    cfg.listeners.extend(listeners);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// Envoy answers a route to a cluster it does not have with 503; the model refuses such a
/// route, so it becomes a 503 direct response. A weighted split cannot answer 503 for one
/// share only: an error.
fn route_to_missing_clusters(
    listener: &str,
    vi: usize,
    ri: usize,
    r: &mut RouteConfig,
    known: &HashSet<&str>,
    errors: &mut Vec<String>,
) {
    if let Some(c) = &r.cluster {
        if !known.contains(c.as_str()) {
            r.cluster = None;
            r.prefix_rewrite = None;
            r.host_rewrite = None;
            r.retry_policy = None;
            r.direct_response = Some(DirectResponseConfig {
                status: 503,
                body: String::new(),
            });
        }
    }
    if let Some(w) = &r.weighted_clusters {
        for (i, wc) in w.iter().enumerate() {
            if !known.contains(wc.name.as_str()) {
                errors.push(format!(
                    "listener {listener:?}: virtual_hosts[{vi}].routes[{ri}].\
                     weighted_clusters[{i}].name: unknown cluster {:?} (a split with a missing \
                     cluster is not supported yet)",
                    wc.name
                ));
            }
        }
    }
}

/// A `mecha.config.v1.Component`, validated by building it alone (no I/O), as the
/// registry builds file components.
fn component(key: &str, c: &Component, e: &mut Errs<'_>) -> Option<ComponentSpec> {
    let Component {
        name,
        r#type,
        metadata,
    } = c;
    if name != key {
        e.at(
            "name",
            format!("{name:?} differs from the resource name {key:?}"),
        );
        return None;
    }
    let spec = ComponentSpec {
        name: name.clone(),
        kind: r#type.clone(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    if spec.name.trim().is_empty() {
        e.at("name", "must not be empty");
        return None;
    }
    match mecha_capabilities::registry::Registry::build(
        std::slice::from_ref(&spec),
        &BuildContext::default(),
    ) {
        Ok(_) => Some(spec),
        Err(errs) => {
            for msg in errs {
                // The registry prefixes `components[0].` or `components[0] (name): `.
                let msg = msg
                    .strip_prefix("components[0].")
                    .map(str::to_owned)
                    .or_else(|| {
                        msg.strip_prefix(&format!("components[0] ({name}): "))
                            .map(str::to_owned)
                    })
                    .unwrap_or(msg);
                e.at("", msg);
            }
            None
        }
    }
}

// === helpers shared by the submodules ===

/// Collects the errors of one resource.
pub(crate) struct Errs<'a> {
    kind: &'static str,
    name: String,
    out: &'a mut Vec<ResourceError>,
    mine: usize,
}

impl<'a> Errs<'a> {
    fn new(kind: &'static str, name: &str, out: &'a mut Vec<ResourceError>) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            out,
            mine: 0,
        }
    }

    /// Errors pushed so far for this resource.
    pub(crate) fn count(&self) -> usize {
        self.mine
    }

    /// `path: message` (just `message` for an empty path).
    pub(crate) fn at(&mut self, path: &str, msg: impl Display) {
        let message = if path.is_empty() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.mine += 1;
        self.out.push(ResourceError {
            kind: self.kind,
            name: self.name.clone(),
            message,
        });
    }

    /// A field that would change behaviour and has no place in the model.
    pub(crate) fn unsupported(&mut self, path: &str, field: &str) {
        self.at(&join(path, field), "not supported yet");
    }
}

/// `a.b`, or `b` when `a` is empty, or `a (name): b`.
pub(crate) fn join(path: &str, field: impl Display) -> String {
    if path.is_empty() {
        field.to_string()
    } else if path.ends_with(')') {
        // After a filter's `(name)`: `filters[0] (envoy.filters.network.tcp_proxy): cluster`.
        format!("{path}: {field}")
    } else {
        format!("{path}.{field}")
    }
}

/// Whether a field holds something other than its default (an empty message counts as
/// unset: Envoy reads it as all defaults).
pub(crate) trait IsSet {
    fn is_set(&self) -> bool;
}

impl<T: Default + PartialEq> IsSet for Option<T> {
    fn is_set(&self) -> bool {
        self.as_ref().is_some_and(|v| *v != T::default())
    }
}

impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl<K, V> IsSet for HashMap<K, V> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for bool {
    fn is_set(&self) -> bool {
        *self
    }
}

macro_rules! impl_is_set_num {
    ($($t:ty),*) => { $(impl IsSet for $t { fn is_set(&self) -> bool { *self != 0 } })* };
}
impl_is_set_num!(i32, u32, i64, u64);

/// `refuse!(errs, path; field, …)`: each field that is set is an error "not supported yet".
macro_rules! refuse {
    ($e:expr, $path:expr; $($field:ident),+ $(,)?) => {
        $(
            if $crate::translate::IsSet::is_set($field) {
                $e.unsupported(&$path, stringify!($field));
            }
        )+
    };
}
pub(crate) use refuse;

/// A protobuf duration; negative or out of range → error.
pub(crate) fn duration(e: &mut Errs<'_>, path: &str, d: &Option<PbDuration>) -> Option<Duration> {
    let d = d.as_ref()?;
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(s), Ok(n)) if n < 1_000_000_000 => Some(Duration::new(s, n)),
        _ => {
            e.at(
                path,
                format!("invalid duration {}s {}ns", d.seconds, d.nanos),
            );
            None
        }
    }
}

pub(crate) fn dur(e: &mut Errs<'_>, path: &str, d: &Option<PbDuration>) -> Option<Dur> {
    duration(e, path, d).map(Dur)
}

pub(crate) fn u32v(v: &Option<UInt32Value>) -> Option<u32> {
    v.as_ref().map(|v| v.value)
}

pub(crate) fn boolv(v: &Option<BoolValue>) -> Option<bool> {
    v.as_ref().map(|v| v.value)
}
