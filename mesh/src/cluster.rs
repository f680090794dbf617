//! Clusters: endpoints, load balancing (pingora-load-balancing for round robin, random and
//! Ketama; power-of-two-choices least-request here and Maglev in [`crate::maglev`], which that
//! crate lacks), active health
//! checks, passive outlier detection and circuit breakers (requests, retries, connections,
//! pending requests).

use std::collections::{BTreeSet, HashMap};

type EndpointMap = HashMap<SocketAddr, Arc<EndpointState>, foldhash::fast::RandomState>;

/// The endpoints the balancer knows, with their priority levels.
#[derive(Default)]
struct Endpoints {
    map: EndpointMap,
    /// With endpoints at more than one priority: each level, best (lowest number) first.
    /// Empty with one level (the common case): picks then use the balancer alone and never
    /// look at priorities.
    levels: Vec<Level>,
}

/// Bounded search of a selection; 256 covers any cluster we expect (Ketama walks its ring).
const MAX_ITER: usize = 256;

/// One priority level of a cluster that has several: its endpoints, and a selector built by
/// the cluster's policy from them alone, so weights, round robin and consistent hashing work
/// within the level as for a cluster of these endpoints only. Health is still the balancer's
/// (one health check per endpoint, whatever its level).
struct Level {
    priority: u32,
    backends: Vec<Backend>,
    selector: LevelSelector,
}

enum LevelSelector {
    RoundRobin(Arc<RoundRobin>),
    Random(Arc<Random>),
    RingHash(Arc<Consistent>),
    Maglev(Arc<Maglev>),
}

impl LevelSelector {
    fn build(policy: LbPolicy, backends: &BTreeSet<Backend>) -> Self {
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin(Arc::new(RoundRobin::build(backends))),
            LbPolicy::Random | LbPolicy::LeastRequest => {
                Self::Random(Arc::new(Random::build(backends)))
            }
            LbPolicy::RingHash => Self::RingHash(Arc::new(Consistent::build(backends))),
            LbPolicy::Maglev => Self::Maglev(Arc::new(Maglev::build(backends))),
        }
    }

    /// The first backend `accept`s, in the selection's order for `key`.
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend) -> bool) -> Option<Backend> {
        fn first<I: BackendIter>(iter: I, accept: impl Fn(&Backend) -> bool) -> Option<Backend> {
            let mut it = UniqueIterator::new(iter, MAX_ITER);
            while let Some(b) = it.get_next() {
                if accept(&b) {
                    return Some(b);
                }
            }
            None
        }
        match self {
            Self::RoundRobin(s) => first(s.iter(key), accept),
            Self::Random(s) => first(s.iter(key), accept),
            Self::RingHash(s) => first(s.iter(key), accept),
            Self::Maglev(s) => first(s.iter(key), accept),
        }
    }
}
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin, UniqueIterator,
};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::tls::CaType;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{
    ClusterConfig, HealthCheckConfig, HealthCheckKind, LbPolicy, OutlierConfig, UpstreamProtocol,
};
use crate::maglev::Maglev;
use crate::metrics::{ClusterMetrics, MeshMetrics};

/// How one upstream attempt ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    /// A 5xx answer or a reset mid-response.
    ServerError,
    ConnectFailure,
}

/// Live state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    pub inflight: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_connect: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl EndpointState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().is_some_and(|t| t > now)
    }
}

/// A chosen endpoint; counts as in flight until dropped.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub state: Arc<EndpointState>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    RingHash(LoadBalancer<Consistent>),
    Maglev(LoadBalancer<Maglev>),
}

impl Balancer {
    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::RingHash(lb) => lb.backends(),
            Balancer::Maglev(lb) => lb.backends(),
        }
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_ITER, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_ITER, accept),
            Balancer::RingHash(lb) => lb.select_with(key, MAX_ITER, accept),
            Balancer::Maglev(lb) => lb.select_with(key, MAX_ITER, accept),
        }
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("cluster {0:?} has no healthy endpoint")]
    NoHealthy(String),
    #[error("cluster {0:?} circuit breaker open: {1} requests in flight (max_requests)")]
    Overloaded(String, usize),
    #[error(
        "cluster {0:?} circuit breaker open: {1} requests already waiting for a connection \
         (max_pending_requests)"
    )]
    PendingOverflow(String, usize),
    #[error("cluster {0:?}: no upstream connection free within {1:?} (max_connections {2})")]
    PendingTimeout(String, Duration, usize),
    #[error(
        "cluster {0:?} sends to the original destination, and this connection has none (it \
         was not redirected to this listener)"
    )]
    NoOriginalDst(String),
}

impl PickError {
    /// The breaker that tripped, for the `x-mecha-overloaded` header.
    pub fn breaker(&self) -> Option<&'static str> {
        match self {
            PickError::Overloaded(..) => Some("max_requests"),
            PickError::PendingOverflow(..) => Some("max_pending_requests"),
            PickError::NoHealthy(_)
            | PickError::PendingTimeout(..)
            | PickError::NoOriginalDst(_) => None,
        }
    }
}

pub struct Cluster {
    pub name: String,
    /// Sends to the downstream connection's original destination ([`Cluster::pick_original`])
    /// instead of picking among endpoints (it has none).
    pub original_dst: bool,
    pub protocol: UpstreamProtocol,
    pub sni: String,
    /// Trusted roots for TLS upstreams (`ca_file`); the platform store when absent.
    pub ca: Option<Arc<CaType>>,
    /// Separates pooled upstream connections by trusted roots (0: platform roots, or none).
    pub pool_key: u64,
    pub connect_timeout: Duration,
    pub max_h2_streams: usize,
    /// Request header `ring_hash` hashes on (client address when absent).
    pub hash_header: Option<String>,
    policy: LbPolicy,
    balancer: Balancer,
    /// Looked up on every pick: foldhash, not SipHash (the keys are our own endpoints' addresses,
    /// so hash flooding is not a concern).
    endpoints: RwLock<Endpoints>,
    /// What config lists as endpoints (addresses and DNS names with their last resolution);
    /// the balancer's discovery reads it, so adopting a change is synchronous.
    source: Arc<Mutex<EndpointSource>>,
    /// Serialises balancer updates (pingora: updates of one view must not overlap).
    update_lock: Mutex<()>,
    /// The config this cluster was built from, its endpoints as last set (see
    /// [`Cluster::set_endpoints`]): what the next config update is compared with.
    spec: RwLock<ClusterConfig>,
    /// How often endpoints given as DNS names are re-resolved.
    pub dns_refresh: Duration,
    outlier: Option<OutlierConfig>,
    pub health_check: Option<HealthCheckConfig>,
    max_requests: usize,
    max_retries: usize,
    retry_budget: Option<(u32, usize)>,
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
    max_connections: usize,
    max_pending: usize,
    /// Upstream request slots: `max_connections` (× `max_h2_streams` on HTTP/2).
    connection_slots: Arc<Semaphore>,
    pending: AtomicUsize,
    pub metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field(
                "endpoints",
                &self
                    .endpoints
                    .read()
                    .map
                    .keys()
                    .copied()
                    .collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .field(
                "priorities",
                &self
                    .endpoints
                    .read()
                    .levels
                    .iter()
                    .map(|l| l.priority)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Holds one request slot of the cluster's `max_requests` breaker until dropped.
#[derive(Debug)]
pub struct RequestSlot(Arc<Cluster>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one retry slot of the cluster's `max_retries` breaker until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<Cluster>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one upstream connection slot (`max_connections`) until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    active: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Counts one pending request until dropped (also when the waiting request is abandoned).
struct PendingGuard<'a>(&'a Cluster);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.pending.dec();
    }
}

// === impl Cluster ===

impl Cluster {
    /// Errors are `field: message` under the cluster's path. Does no I/O but reading
    /// `ca_file`: DNS names are resolved by [`Cluster::refresh`].
    pub fn build(cfg: &ClusterConfig, metrics: &MeshMetrics) -> Result<Self, Vec<String>> {
        Self::build_from(cfg, metrics, None)
    }

    /// Like [`Cluster::build`], for a cluster that replaces `prev` (same name, changed
    /// config): endpoints that stay keep their outlier state, and DNS names keep their last
    /// resolution, so the new cluster serves at once.
    pub fn build_from(
        cfg: &ClusterConfig,
        metrics: &MeshMetrics,
        prev: Option<&Cluster>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let parsed = match check_endpoints_of(cfg) {
            Ok(parsed) => parsed,
            Err(es) => {
                errors.extend(es);
                Default::default()
            }
        };
        // Endpoints that stay keep their state; `sync_endpoints` drops the ones that went.
        let mut endpoints: EndpointMap = prev
            .map(|p| p.endpoints.read().map.clone())
            .unwrap_or_default();
        for b in &parsed.fixed {
            if let Some(sa) = b.addr.as_inet() {
                endpoints.entry(*sa).or_default();
            }
        }
        errors.extend(crate::bounds::cluster(cfg));
        let cb = &cfg.circuit_breakers;
        let ca = match &cfg.ca_file {
            Some(path) => match load_ca(path) {
                Ok(ca) => Some(ca),
                Err(e) => {
                    errors.push(format!("ca_file: {path}: {e}"));
                    None
                }
            },
            None => None,
        };
        if cfg.ca_file.is_some() && cfg.protocol != UpstreamProtocol::H2 {
            errors.push("ca_file: only used with protocol: h2 (TLS)".to_owned());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let last = match prev {
            Some(p) => {
                let old = p.source.lock();
                parsed
                    .names
                    .iter()
                    .filter_map(|(n, ..)| old.last.get(n).map(|a| (n.clone(), a.clone())))
                    .collect()
            }
            None => HashMap::new(),
        };
        let source = Arc::new(Mutex::new(EndpointSource {
            fixed: parsed.fixed,
            fixed_priority: parsed.fixed_priority,
            names: parsed.names,
            last,
        }));
        let discovery = DnsDiscovery {
            source: source.clone(),
        };
        let balancer = match cfg.lb_policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin(lb_from(discovery)),
            LbPolicy::Random | LbPolicy::LeastRequest => Balancer::Random(lb_from(discovery)),
            LbPolicy::RingHash => Balancer::RingHash(lb_from(discovery)),
            LbPolicy::Maglev => Balancer::Maglev(lb_from(discovery)),
        };
        let first_host = cfg
            .endpoints
            .first()
            .and_then(|e| e.address.rsplit_once(':').map(|(h, _)| h.to_owned()))
            .unwrap_or_default();
        let mut cluster = Cluster {
            name: cfg.name.clone(),
            original_dst: cfg.original_dst,
            protocol: cfg.protocol,
            sni: cfg.sni.clone().unwrap_or(first_host),
            pool_key: ca.as_deref().map_or(0, ca_key),
            ca,
            connect_timeout: cfg.connect_timeout.0,
            max_h2_streams: cfg.max_h2_streams,
            hash_header: cfg.hash_header.clone(),
            policy: cfg.lb_policy,
            balancer,
            endpoints: RwLock::new(Endpoints {
                map: endpoints,
                ..Endpoints::default()
            }),
            source,
            update_lock: Mutex::new(()),
            spec: RwLock::new(cfg.clone()),
            dns_refresh: cfg.dns_refresh.0,
            outlier: cfg.outlier_detection.clone(),
            health_check: cfg.health_check.clone(),
            max_requests: cfg.circuit_breakers.max_requests,
            max_retries: cfg.circuit_breakers.max_retries,
            retry_budget: cfg
                .circuit_breakers
                .retry_budget_percent
                .map(|p| (p, cfg.circuit_breakers.min_retry_concurrency)),
            active_requests: AtomicUsize::new(0),
            active_retries: AtomicUsize::new(0),
            max_connections: cb.max_connections,
            max_pending: cb.max_pending_requests,
            connection_slots: Arc::new(Semaphore::new(
                cb.max_connections
                    .saturating_mul(match cfg.protocol {
                        UpstreamProtocol::Http1 => 1,
                        UpstreamProtocol::H2c
                        | UpstreamProtocol::H2
                        | UpstreamProtocol::Downstream => cfg.max_h2_streams,
                    })
                    .min(Semaphore::MAX_PERMITS),
            )),
            pending: AtomicUsize::new(0),
            metrics: metrics.cluster(&cfg.name),
        };
        cluster.sync_endpoints();
        if let Some(hc) = &cfg.health_check {
            let check = cluster.health_checker(hc);
            match &mut cluster.balancer {
                Balancer::RoundRobin(lb) => lb.set_health_check(check),
                Balancer::Random(lb) => lb.set_health_check(check),
                Balancer::RingHash(lb) => lb.set_health_check(check),
                Balancer::Maglev(lb) => lb.set_health_check(check),
            }
        }
        Ok(cluster)
    }

    fn health_checker(&self, hc: &HealthCheckConfig) -> Box<dyn HealthCheck + Send + Sync> {
        match hc.kind {
            HealthCheckKind::Tcp => {
                let mut c = TcpHealthCheck::new();
                c.consecutive_success = hc.healthy_threshold.max(1);
                c.consecutive_failure = hc.unhealthy_threshold.max(1);
                c.peer_template.options.connection_timeout = Some(hc.timeout.0);
                c
            }
            HealthCheckKind::Grpc => Box::new(crate::grpc_health::GrpcHealthCheck {
                service: hc.service.clone(),
                timeout: hc.timeout.0,
                consecutive_success: hc.healthy_threshold.max(1),
                consecutive_failure: hc.unhealthy_threshold.max(1),
                transport: crate::grpc_health::Transport::for_cluster(
                    self.protocol,
                    &self.sni,
                    self.ca.clone(),
                ),
            }),
            HealthCheckKind::Http => {
                let tls = self.protocol == UpstreamProtocol::H2;
                let mut c = HttpHealthCheck::new(&self.sni, tls);
                c.consecutive_success = hc.healthy_threshold.max(1);
                c.consecutive_failure = hc.unhealthy_threshold.max(1);
                c.peer_template.options.connection_timeout = Some(hc.timeout.0);
                c.peer_template.options.read_timeout = Some(hc.timeout.0);
                if matches!(self.protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2) {
                    c.peer_template.options.set_http_version(2, 2);
                }
                c.peer_template.options.ca = self.ca.clone();
                if let Ok(uri) = hc.path.parse() {
                    c.req.set_uri(uri);
                }
                Box::new(c)
            }
        }
    }

    /// Runs one round of active health checks (all endpoints in parallel).
    pub async fn run_health_check(&self) {
        self.balancer.backends().run_health_check(true).await;
    }

    /// Whether picks use the hash key (ring hash, Maglev).
    pub fn hashes(&self) -> bool {
        matches!(self.policy, LbPolicy::RingHash | LbPolicy::Maglev)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.read().map.len()
    }

    /// Whether some endpoint is a DNS name (re-resolved every `dns_refresh`).
    pub fn has_dns_names(&self) -> bool {
        !self.source.lock().names.is_empty()
    }

    /// The config this cluster serves, endpoints as last set.
    pub fn spec(&self) -> ClusterConfig {
        self.spec.read().clone()
    }

    /// Whether this cluster serves exactly `cfg` (without cloning the spec: updates compare
    /// thousands of clusters).
    pub fn serves(&self, cfg: &ClusterConfig) -> bool {
        *self.spec.read() == *cfg
    }

    /// Whether `cfg` differs from what this cluster serves in its endpoints only (so
    /// [`Cluster::set_endpoints`] can adopt it in place, keeping every other state).
    pub fn differs_in_endpoints_only(&self, cfg: &ClusterConfig) -> bool {
        let spec = self.spec.read();
        if spec.endpoints == cfg.endpoints {
            return false;
        }
        // The default SNI is the first endpoint's host: a change there is a new cluster.
        let first_host = |c: &ClusterConfig| {
            c.endpoints
                .first()
                .and_then(|e| e.address.rsplit_once(':').map(|(h, _)| h.to_owned()))
        };
        if cfg.sni.is_none() && first_host(&spec) != first_host(cfg) {
            return false;
        }
        let mut same = cfg.clone();
        same.endpoints.clone_from(&spec.endpoints);
        same == *spec
    }

    /// Adopts a new endpoint list in place (an EDS-style update): health, outlier, breaker
    /// and pool state of the cluster and of the endpoints that stay are kept. New DNS names
    /// are resolved before this returns. The list must have passed [`Cluster::build`].
    pub async fn set_endpoints(&self, list: &[crate::config::EndpointConfig]) {
        let parsed = match parse_endpoints(list) {
            Ok(parsed) => parsed,
            Err(errs) => {
                return tracing::error!(cluster = %self.name, errors = ?errs,
                    "endpoint update refused");
            }
        };
        let unresolved = {
            let mut src = self.source.lock();
            src.last
                .retain(|n, _| parsed.names.iter().any(|(m, ..)| m == n));
            src.fixed = parsed.fixed;
            src.fixed_priority = parsed.fixed_priority;
            src.names = parsed.names;
            src.names.iter().any(|(n, ..)| !src.last.contains_key(n))
        };
        self.spec.write().endpoints = list.to_vec();
        if unresolved {
            self.resolve_names().await;
        }
        self.adopt_endpoints();
        tracing::info!(cluster = %self.name, endpoints = self.endpoint_count(), "endpoints updated");
    }

    /// Re-resolves DNS endpoints and adopts the result (every `dns_refresh`, and once when a
    /// cluster with names is first published). A name that fails to resolve keeps its last
    /// good addresses: a DNS hiccup must not empty a cluster.
    pub async fn refresh(&self) {
        self.resolve_names().await;
        self.adopt_endpoints();
    }

    async fn resolve_names(&self) {
        let names: Vec<String> = self
            .source
            .lock()
            .names
            .iter()
            .map(|(n, ..)| n.clone())
            .collect();
        for name in names {
            let n = name.clone();
            // Blocking getaddrinfo: off the runtime's workers when there is a runtime.
            let res = match tokio::runtime::Handle::try_current() {
                Ok(_) => tokio::task::spawn_blocking(move || resolve(&n))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
                Err(_) => resolve(&n),
            };
            match res {
                Ok(a) if !a.is_empty() => {
                    self.source.lock().last.insert(name, a);
                }
                Ok(_) => {
                    tracing::warn!(cluster = %self.name, endpoint = %name,
                        "DNS name resolved to no address; keeping last addresses");
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.name, endpoint = %name, error = %e,
                        "DNS resolution failed; keeping last addresses");
                }
            }
        }
    }

    /// Hands the current endpoint source to the balancer. Discovery reads memory only, so
    /// the update completes in this call.
    fn adopt_endpoints(&self) {
        let _serial = self.update_lock.lock();
        // A pick needs the endpoint's state: give new endpoints theirs before the balancer
        // can choose them (otherwise a request landing in between finds "no healthy
        // endpoint"). Vanished ones lose theirs in `sync_endpoints`, after the balancer
        // stopped choosing them.
        let next = self.source.lock().priorities();
        {
            let mut eps = self.endpoints.write();
            for a in next.keys() {
                eps.map.entry(*a).or_default();
            }
        }
        let done = match &self.balancer {
            Balancer::RoundRobin(lb) => futures::FutureExt::now_or_never(lb.update()),
            Balancer::Random(lb) => futures::FutureExt::now_or_never(lb.update()),
            Balancer::RingHash(lb) => futures::FutureExt::now_or_never(lb.update()),
            Balancer::Maglev(lb) => futures::FutureExt::now_or_never(lb.update()),
        };
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(cluster = %self.name, error = %e, "endpoint update failed")
            }
            None => tracing::error!(cluster = %self.name, "endpoint discovery did not complete"),
        }
        self.sync_endpoints();
    }

    /// Gives every discovered backend an endpoint state (kept across refreshes, so outlier
    /// history survives re-resolution) with its priority as config lists it, forgets vanished
    /// ones, and notes the priority levels present.
    fn sync_endpoints(&self) {
        let current = self.balancer.backends().get_backend();
        let priorities = self.source.lock().priorities();
        let mut by_level: std::collections::BTreeMap<u32, BTreeSet<Backend>> = Default::default();
        for b in current.iter() {
            let p = b
                .addr
                .as_inet()
                .and_then(|sa| priorities.get(sa))
                .copied()
                .unwrap_or(0);
            by_level.entry(p).or_default().insert(b.clone());
        }
        // Built before the lock: a Maglev table or a Ketama ring takes a while.
        let levels: Vec<Level> = if by_level.len() > 1 {
            by_level
                .into_iter()
                .map(|(priority, set)| Level {
                    priority,
                    selector: LevelSelector::build(self.policy, &set),
                    backends: set.into_iter().collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut eps = self.endpoints.write();
        let live: Vec<SocketAddr> = current
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
        eps.map.retain(|a, _| live.contains(a));
        for a in live {
            eps.map.entry(a).or_default();
        }
        eps.levels = levels;
    }

    /// Takes a `max_requests` slot, or says the breaker is open.
    pub fn admit(self: &Arc<Self>) -> Result<RequestSlot, PickError> {
        let n = self.active_requests.fetch_add(1, Ordering::AcqRel);
        let slot = RequestSlot(self.clone());
        if n >= self.max_requests {
            self.metrics.breaker_trips.inc();
            return Err(PickError::Overloaded(self.name.clone(), n));
        }
        Ok(slot)
    }

    /// Takes an upstream connection slot (`max_connections`). When none is free the request
    /// waits as pending — unless `max_pending_requests` already wait — for at most `wait`
    /// (`None`: until one frees).
    pub async fn acquire_connection(
        &self,
        wait: Option<Duration>,
    ) -> Result<ConnectionSlot, PickError> {
        let permit = match self.connection_slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let n = self.pending.fetch_add(1, Ordering::AcqRel);
                self.metrics.pending.inc();
                let _guard = PendingGuard(self);
                if n >= self.max_pending {
                    self.metrics.breaker_trips.inc();
                    return Err(PickError::PendingOverflow(self.name.clone(), n));
                }
                let acquire = self.connection_slots.clone().acquire_owned();
                let res = match wait {
                    Some(w) => tokio::time::timeout(w, acquire).await.map_err(|_| w),
                    None => Ok(acquire.await),
                };
                match res {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it like a timeout all the same.
                    Ok(Err(_)) | Err(_) => {
                        return Err(PickError::PendingTimeout(
                            self.name.clone(),
                            wait.unwrap_or_default(),
                            self.max_connections,
                        ))
                    }
                }
            }
        };
        self.metrics.active_requests.inc();
        Ok(ConnectionSlot {
            _permit: permit,
            active: self.metrics.active_requests.clone(),
        })
    }

    /// Takes a `max_retries` slot; `None` when retries are exhausted cluster-wide.
    pub fn admit_retry(self: &Arc<Self>) -> Option<RetrySlot> {
        let n = self.active_retries.fetch_add(1, Ordering::AcqRel);
        let slot = RetrySlot(self.clone());
        let limit = match self.retry_budget {
            Some((percent, min)) => {
                let active = self.active_requests.load(Ordering::Acquire);
                (active * percent as usize / 100).max(min)
            }
            None => self.max_retries,
        };
        if n >= limit {
            self.metrics.breaker_trips.inc();
            return None;
        }
        self.metrics.retries.inc();
        Some(slot)
    }

    /// Picks an endpoint by the cluster's policy among healthy, non-ejected ones of the
    /// highest priority level (lowest number) that has one. `hash_key` is used by ring hash
    /// and Maglev only. `avoid` skips an endpoint (the one that just failed): a level whose
    /// only usable endpoint is avoided fails over to the next one.
    pub fn pick(&self, hash_key: &[u8], avoid: Option<SocketAddr>) -> Result<Endpoint, PickError> {
        /// Selections tried before a pick says no endpoint is usable (see below).
        const PICK_TRIES: usize = 3;
        // Without outlier detection nothing is ever ejected: skip the clock and the locks.
        let now = self.outlier.is_some().then(Instant::now);
        let endpoints = self.endpoints.read();
        let usable = |b: &Backend, healthy: bool, avoid: Option<SocketAddr>| {
            let Some(sa) = b.addr.as_inet() else {
                return false;
            };
            healthy
                && Some(*sa) != avoid
                && endpoints
                    .map
                    .get(sa)
                    .is_some_and(|s| now.is_none_or(|n| !s.is_ejected(n)))
        };
        let backends = self.balancer.backends();
        // The level picked from (None: the balancer, over every endpoint).
        let select = || {
            if endpoints.levels.is_empty() {
                self.balancer
                    .select_with(hash_key, |b, h| usable(b, h, avoid))
                    .map(|b| (b, None))
            } else {
                endpoints.levels.iter().find_map(|level| {
                    let ok = |b: &Backend| usable(b, backends.ready(b), avoid);
                    // A level with nothing usable is passed over without walking its selection;
                    // one with a usable endpoint serves, even if the bounded walk misses it.
                    let any = level.backends.iter().find(|b| ok(b))?;
                    let b = level
                        .selector
                        .select_with(hash_key, ok)
                        .unwrap_or_else(|| any.clone());
                    Some((b, Some(level)))
                })
            }
        };
        // Pingora publishes a new selector and then the new membership's readiness: a pick
        // that loaded the old selector just before an endpoint update and checks readiness
        // just after finds its backend no longer ready. A fresh selection sees the new
        // selector; only a cluster with nothing usable pays for the retries.
        let found = (0..PICK_TRIES).find_map(|_| select());
        let (first, level) = found
            // The avoided endpoint is still better than none (no other is usable at any level).
            .or_else(|| {
                avoid.and_then(|_| {
                    self.balancer
                        .select_with(hash_key, |b, h| usable(b, h, None))
                        .map(|b| (b, None))
                })
            })
            .ok_or_else(|| PickError::NoHealthy(self.name.clone()))?;
        let mut chosen = first;
        if self.policy == LbPolicy::LeastRequest {
            // Power of two choices: a second random pick of the same level; fewer in-flight
            // requests wins.
            let first_addr = chosen.addr.clone();
            let second = match level {
                Some(l) => l.selector.select_with(b"", |b| {
                    usable(b, backends.ready(b), avoid) && b.addr != first_addr
                }),
                None => self
                    .balancer
                    .select_with(b"", |b, h| usable(b, h, avoid) && b.addr != first_addr),
            };
            if let Some(second) = second {
                let load = |b: &Backend| {
                    b.addr
                        .as_inet()
                        .and_then(|sa| endpoints.map.get(sa))
                        .map_or(usize::MAX, |s| s.inflight.load(Ordering::Acquire))
                };
                if load(&second) < load(&chosen) {
                    chosen = second;
                }
            }
        }
        let Some(sa) = chosen.addr.as_inet().copied() else {
            return Err(PickError::NoHealthy(self.name.clone()));
        };
        let state = endpoints
            .map
            .get(&sa)
            .cloned()
            .ok_or_else(|| PickError::NoHealthy(self.name.clone()))?;
        state.inflight.fetch_add(1, Ordering::AcqRel);
        Ok(Endpoint { addr: sa, state })
    }

    /// The endpoint of an `original_dst` cluster for a connection redirected from `dst`. It
    /// has no standing of its own: no health, no outlier state (as in Envoy, each original
    /// destination is a host of its own).
    pub fn pick_original(&self, dst: SocketAddr) -> Endpoint {
        let state = Arc::new(EndpointState::default());
        state.inflight.fetch_add(1, Ordering::AcqRel);
        Endpoint { addr: dst, state }
    }

    /// Feeds passive outlier detection with one attempt's result.
    pub fn report(&self, ep: &Endpoint, result: AttemptResult) {
        let Some(o) = &self.outlier else { return };
        let s = &ep.state;
        let tripped = match result {
            AttemptResult::Success => {
                s.consecutive_5xx.store(0, Ordering::Release);
                s.consecutive_connect.store(0, Ordering::Release);
                false
            }
            AttemptResult::ServerError => {
                s.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1 >= o.consecutive_5xx
            }
            AttemptResult::ConnectFailure => {
                s.consecutive_connect.fetch_add(1, Ordering::AcqRel) + 1
                    >= o.consecutive_connect_failures
            }
        };
        if !tripped {
            return;
        }
        let now = Instant::now();
        let (ejected_now, total) = {
            let eps = self.endpoints.read();
            (
                eps.map.values().filter(|e| e.is_ejected(now)).count(),
                eps.map.len(),
            )
        };
        // Like Envoy, at least one endpoint may be ejected whatever the percentage.
        let cap = ((total * o.max_ejection_percent as usize) / 100).max(1);
        if ejected_now >= cap || s.is_ejected(now) {
            return;
        }
        let n = s.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let time = o
            .base_ejection_time
            .0
            .saturating_mul(n)
            .min(o.max_ejection_time.0);
        *s.ejected_until.lock() = Some(now + time);
        s.consecutive_5xx.store(0, Ordering::Release);
        s.consecutive_connect.store(0, Ordering::Release);
        self.metrics.ejections.inc();
        tracing::warn!(cluster = %self.name, endpoint = %ep.addr, ejection = n, ?time, "outlier ejected");
    }
}

/// A process-local key for a set of trusted roots (never 0, which means the platform roots).
fn ca_key(ca: &CaType) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for cert in ca {
        cert.borrow_raw_cert().hash(&mut h);
    }
    h.finish().max(1)
}

/// Reads a PEM bundle of CA certificates; every certificate must parse.
fn load_ca(path: &str) -> Result<Arc<CaType>, String> {
    use pingora::utils::tls::{parse_x509, WrappedX509};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = item.map_err(|e| format!("certificate {}: {e}", i + 1))?;
        // Pingora's wrapper panics on what x509-parser rejects: check first.
        if let Err(e) = x509_parser::parse_x509_certificate(der.as_ref()) {
            return Err(format!("certificate {}: {e}", i + 1));
        }
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_owned());
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}

fn lb_from<S>(discovery: DnsDiscovery) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let lb = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
    // Discovery reads memory only (names are resolved by `Cluster::refresh`), so this
    // completes in place and the cluster's fixed endpoints are usable immediately.
    if let Some(Err(e)) = futures::FutureExt::now_or_never(lb.update()) {
        tracing::error!(error = %e, "endpoint discovery failed");
    }
    lb
}

fn backend(sa: SocketAddr, weight: usize) -> Backend {
    Backend {
        addr: PingoraAddr::Inet(sa),
        weight,
        ext: Default::default(),
    }
}

/// A cluster's endpoints as config lists them: fixed addresses, and DNS names with their last
/// resolution (kept when a later resolution fails).
#[derive(Default)]
struct EndpointSource {
    fixed: BTreeSet<Backend>,
    /// The priority of each fixed address.
    fixed_priority: HashMap<SocketAddr, u32>,
    /// `host:port` with weight and priority.
    names: Vec<(String, usize, u32)>,
    last: HashMap<String, Vec<SocketAddr>>,
}

impl EndpointSource {
    /// The priority of every address, fixed or resolved; an address listed more than once
    /// (or also resolved from a name) takes its highest level (lowest number).
    fn priorities(&self) -> HashMap<SocketAddr, u32> {
        let mut out = self.fixed_priority.clone();
        for (name, _, p) in &self.names {
            for a in self.last.get(name).into_iter().flatten() {
                out.entry(*a)
                    .and_modify(|q| *q = (*q).min(*p))
                    .or_insert(*p);
            }
        }
        out
    }
}

/// Checks a cluster's endpoints as [`Cluster::build`] does (errors are `endpoints[i].…`).
pub fn check_endpoints(cfg: &ClusterConfig) -> Result<(), Vec<String>> {
    check_endpoints_of(cfg).map(|_| ())
}

fn check_endpoints_of(cfg: &ClusterConfig) -> Result<ParsedEndpoints, Vec<String>> {
    if !cfg.original_dst {
        return parse_endpoints(&cfg.endpoints);
    }
    let mut errors = Vec::new();
    if !cfg.endpoints.is_empty() {
        errors.push(
            "endpoints: an original_dst cluster has none (each connection goes to its \
             original destination)"
                .to_owned(),
        );
    }
    if cfg.health_check.is_some() {
        errors.push("health_check: an original_dst cluster has no endpoints to check".to_owned());
    }
    if cfg.protocol == UpstreamProtocol::H2 {
        errors.push(
            "protocol: h2 (TLS) needs a server name; an original_dst cluster sends to \
             addresses"
                .to_owned(),
        );
    }
    if errors.is_empty() {
        Ok(Default::default())
    } else {
        Err(errors)
    }
}

/// Fixed backends with their priorities, and DNS names (`host:port`) with their weights and
/// priorities.
#[derive(Default)]
struct ParsedEndpoints {
    fixed: BTreeSet<Backend>,
    fixed_priority: HashMap<SocketAddr, u32>,
    names: Vec<(String, usize, u32)>,
}

/// Parses endpoint addresses: `ip:port` is fixed, `host:port` a DNS name.
fn parse_endpoints(list: &[crate::config::EndpointConfig]) -> Result<ParsedEndpoints, Vec<String>> {
    let mut errors = Vec::new();
    let mut parsed = ParsedEndpoints::default();
    if list.is_empty() {
        errors.push("endpoints: at least one endpoint is required".to_owned());
    }
    for (i, e) in list.iter().enumerate() {
        // Weights and priorities are bounded by `bounds::cluster`.
        match e.address.parse::<SocketAddr>() {
            Ok(sa) => {
                parsed.fixed.insert(backend(sa, e.weight));
                parsed
                    .fixed_priority
                    .entry(sa)
                    .and_modify(|p| *p = (*p).min(e.priority))
                    .or_insert(e.priority);
            }
            Err(_) => match e.address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    parsed.names.push((e.address.clone(), e.weight, e.priority));
                }
                _ => errors.push(format!(
                    "endpoints[{i}].address: expected ip:port or host:port, got {:?}",
                    e.address
                )),
            },
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "called in spawn_blocking on a runtime (being replaced by async resolution)"
)]
fn resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok(name.to_socket_addrs()?.collect())
}

/// The balancer's discovery: reads the cluster's [`EndpointSource`], never the network.
struct DnsDiscovery {
    source: Arc<Mutex<EndpointSource>>,
}

#[async_trait::async_trait]
impl pingora::lb::discovery::ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let src = self.source.lock();
        let mut out = src.fixed.clone();
        for (name, weight, _) in &src.names {
            for a in src.last.get(name).into_iter().flatten() {
                out.insert(backend(*a, *weight));
            }
        }
        Ok((out, HashMap::new()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{CircuitBreakerConfig, Dur, EndpointConfig};

    /// A one-endpoint cluster named `name` (for route-table tests).
    pub(crate) fn cluster_named(name: &str) -> Arc<Cluster> {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        let mut cfg = config(CircuitBreakerConfig::default());
        cfg.name = name.to_owned();
        Arc::new(Cluster::build(&cfg, &metrics).expect("valid"))
    }

    fn config(breakers: CircuitBreakerConfig) -> ClusterConfig {
        ClusterConfig {
            name: "c".into(),
            endpoints: vec![EndpointConfig {
                address: "127.0.0.1:1".into(),
                weight: 1,
                priority: 0,
            }],
            original_dst: false,
            protocol: UpstreamProtocol::Http1,
            sni: None,
            ca_file: None,
            lb_policy: LbPolicy::RoundRobin,
            hash_header: None,
            connect_timeout: Dur(Duration::from_secs(1)),
            dns_refresh: Dur(Duration::from_secs(30)),
            max_h2_streams: 1,
            health_check: None,
            outlier_detection: None,
            circuit_breakers: breakers,
        }
    }

    fn cluster(breakers: CircuitBreakerConfig) -> Arc<Cluster> {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        Arc::new(Cluster::build(&config(breakers), &metrics).expect("valid"))
    }

    /// Endpoint updates swap the balancer while requests pick: no pick may fall in a gap
    /// where the new endpoint is chosen but has no state yet (it used to answer 503 "no
    /// healthy endpoint" during xDS endpoint churn).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn picks_never_fail_while_endpoints_are_swapped() {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        let c = Arc::new(
            Cluster::build(&config(CircuitBreakerConfig::default()), &metrics).expect("valid"),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let picker = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut picks, mut failures) = (0u64, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    match c.pick(b"", None) {
                        Ok(_) => {}
                        Err(e) => failures.push(e.to_string()),
                    }
                    picks += 1;
                }
                (picks, failures)
            })
        };
        for i in 0..2000u32 {
            let port = 2 + (i % 2);
            let list = [EndpointConfig {
                address: format!("127.0.0.1:{port}"),
                weight: 1,
                priority: 0,
            }];
            c.set_endpoints(&list).await;
        }
        stop.store(true, Ordering::Release);
        let (picks, failures) = picker.join().expect("picker");
        assert!(picks > 0);
        assert!(
            failures.is_empty(),
            "{} of {picks} picks failed: {:?}",
            failures.len(),
            failures.first()
        );
    }

    #[test]
    fn an_original_dst_cluster_sends_to_the_destination_and_has_no_endpoints() {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        let mut cfg = config(CircuitBreakerConfig::default());
        cfg.original_dst = true;
        let errors = Cluster::build(&cfg, &metrics).expect_err("endpoints given");
        assert_eq!(
            errors,
            [
                "endpoints: an original_dst cluster has none (each connection goes to its \
              original destination)"
            ]
        );
        cfg.endpoints.clear();
        let c = Cluster::build(&cfg, &metrics).expect("valid");
        let dst: SocketAddr = "10.0.0.7:8080".parse().expect("addr");
        let ep = c.pick_original(dst);
        assert_eq!(ep.addr, dst);
        assert_eq!(ep.state.inflight.load(Ordering::Acquire), 1);
        assert!(matches!(c.pick(b"", None), Err(PickError::NoHealthy(_))));
    }

    #[test]
    fn maglev_keeps_a_key_on_one_endpoint_and_falls_back_elsewhere() {
        let cfg = ClusterConfig {
            name: "m".into(),
            endpoints: (1..=5)
                .map(|p| EndpointConfig {
                    address: format!("127.0.0.1:{p}"),
                    weight: 1,
                    priority: 0,
                })
                .collect(),
            original_dst: false,
            protocol: UpstreamProtocol::Http1,
            sni: None,
            ca_file: None,
            lb_policy: LbPolicy::Maglev,
            hash_header: Some("x-user".into()),
            connect_timeout: Dur(Duration::from_secs(1)),
            dns_refresh: Dur(Duration::from_secs(30)),
            max_h2_streams: 1,
            health_check: None,
            outlier_detection: None,
            circuit_breakers: CircuitBreakerConfig::default(),
        };
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        let c = Cluster::build(&cfg, &metrics).expect("valid");
        assert!(c.hashes());
        let first = c.pick(b"alice", None).expect("pick").addr;
        for _ in 0..20 {
            assert_eq!(c.pick(b"alice", None).expect("pick").addr, first);
        }
        let spread: std::collections::HashSet<_> = (0..200)
            .map(|i| {
                c.pick(format!("user-{i}").as_bytes(), None)
                    .expect("pick")
                    .addr
            })
            .collect();
        assert_eq!(spread.len(), 5, "keys spread over all endpoints");
        let other = c.pick(b"alice", Some(first)).expect("fallback").addr;
        assert_ne!(other, first);
        assert_eq!(c.pick(b"alice", Some(first)).expect("fallback").addr, other);
    }

    #[test]
    fn retry_budget_is_a_share_of_requests_in_flight() {
        let c = cluster(CircuitBreakerConfig {
            retry_budget_percent: Some(50),
            min_retry_concurrency: 1,
            ..CircuitBreakerConfig::default()
        });
        let _reqs: Vec<_> = (0..4).map(|_| c.admit().expect("admitted")).collect();
        let r1 = c.admit_retry();
        let r2 = c.admit_retry();
        assert!(r1.is_some() && r2.is_some(), "2 of 4 in flight may retry");
        assert!(c.admit_retry().is_none(), "a third retry exceeds 50%");
        drop(r1);
        assert!(c.admit_retry().is_some(), "a finished retry frees its slot");
    }

    #[tokio::test]
    async fn connection_slots_queue_then_overflow_pending() {
        let c = cluster(CircuitBreakerConfig {
            max_connections: 1,
            max_pending_requests: 1,
            ..CircuitBreakerConfig::default()
        });
        let first = c.acquire_connection(None).await.expect("a free slot");
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.acquire_connection(None).await.map(|_| ()) })
        };
        // The waiter counts as pending once it is parked on the semaphore.
        while c.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let overflow = c.acquire_connection(None).await;
        assert!(
            matches!(&overflow, Err(e) if e.breaker() == Some("max_pending_requests")),
            "{overflow:?}"
        );
        drop(first);
        waiter
            .await
            .expect("joined")
            .expect("served once the slot freed");
        assert_eq!(c.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn pending_wait_is_bounded() {
        let c = cluster(CircuitBreakerConfig {
            max_connections: 1,
            ..CircuitBreakerConfig::default()
        });
        let _held = c.acquire_connection(None).await.expect("a free slot");
        let r = c.acquire_connection(Some(Duration::from_millis(1))).await;
        assert!(matches!(r, Err(PickError::PendingTimeout(..))), "{r:?}");
        assert_eq!(c.pending.load(Ordering::Acquire), 0, "the waiter left");
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("mecha-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").expect("write");
        let err = load_ca(empty.to_str().expect("utf8")).expect_err("no certificate");
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = dir.join("missing.pem");
        assert!(load_ca(missing.to_str().expect("utf8")).is_err());
        let bad = dir.join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = load_ca(bad.to_str().expect("utf8")).expect_err("garbage DER");
        assert!(err.contains("certificate 1"), "{err}");
    }

    fn yaml_cluster(yaml: &str) -> Cluster {
        let metrics = MeshMetrics::register(&mut prometheus_client::registry::Registry::default());
        let cfg: ClusterConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
        Cluster::build(&cfg, &metrics).expect("valid")
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Ejects `a` as outlier detection would after a connect failure.
    fn eject(c: &Cluster, a: SocketAddr) {
        let state = c.endpoints.read().map.get(&a).cloned().expect("endpoint");
        state.inflight.fetch_add(1, Ordering::AcqRel);
        c.report(&Endpoint { addr: a, state }, AttemptResult::ConnectFailure);
        assert!(
            c.endpoints.read().map[&a].is_ejected(Instant::now()),
            "{a} ejected"
        );
    }

    /// Ends `a`'s ejection (as its ejection time running out would).
    fn readmit(c: &Cluster, a: SocketAddr) {
        *c.endpoints.read().map[&a].ejected_until.lock() = None;
    }

    /// The priorities of a cluster's levels (none with one level).
    fn levels(c: &Cluster) -> Vec<u32> {
        c.endpoints
            .read()
            .levels
            .iter()
            .map(|l| l.priority)
            .collect()
    }

    /// The endpoints 100 picks (keys varying) went to.
    fn picked(c: &Cluster, avoid: Option<SocketAddr>) -> BTreeSet<SocketAddr> {
        (0..100)
            .map(|i| {
                c.pick(format!("key-{i}").as_bytes(), avoid)
                    .expect("pick")
                    .addr
            })
            .collect()
    }

    #[test]
    fn picks_stay_on_the_highest_priority_with_a_usable_endpoint() {
        for policy in [
            "round_robin",
            "random",
            "least_request",
            "ring_hash",
            "maglev",
        ] {
            let c = yaml_cluster(&format!(
                "{{name: c, lb_policy: {policy}, endpoints: [\
                 {{address: \"127.0.0.1:1\"}}, {{address: \"127.0.0.1:2\", weight: 3}}, \
                 {{address: \"127.0.0.1:3\", priority: 1, weight: 5}}, \
                 {{address: \"127.0.0.1:4\", priority: 1}}], \
                 outlier_detection: {{consecutive_connect_failures: 1, max_ejection_percent: 100}}}}"
            ));
            let (a, b, c3, d) = (addr(1), addr(2), addr(3), addr(4));
            assert_eq!(levels(&c), [0, 1], "{policy}");
            assert_eq!(
                picked(&c, None),
                BTreeSet::from([a, b]),
                "{policy}: P0 only"
            );
            eject(&c, a);
            assert_eq!(
                picked(&c, None),
                BTreeSet::from([b]),
                "{policy}: P0 while one is left"
            );
            // A level whose only usable endpoint is avoided fails over.
            assert_eq!(
                picked(&c, Some(b)),
                BTreeSet::from([c3, d]),
                "{policy}: avoid"
            );
            eject(&c, b);
            assert_eq!(picked(&c, None), BTreeSet::from([c3, d]), "{policy}: P1");
            assert_eq!(
                picked(&c, Some(d)),
                BTreeSet::from([c3]),
                "{policy}: avoid in P1"
            );
            readmit(&c, a);
            assert_eq!(
                picked(&c, None),
                BTreeSet::from([a]),
                "{policy}: back to P0"
            );
            readmit(&c, b);
            assert_eq!(
                picked(&c, None),
                BTreeSet::from([a, b]),
                "{policy}: all of P0"
            );
            assert_eq!(
                picked(&c, Some(a)),
                BTreeSet::from([b]),
                "{policy}: avoid in P0"
            );
            // The avoided endpoint is the last resort when nothing else is usable.
            for e in [b, c3, d] {
                eject(&c, e);
            }
            assert_eq!(
                picked(&c, Some(a)),
                BTreeSet::from([a]),
                "{policy}: last resort"
            );
            eject(&c, a);
            assert!(matches!(c.pick(b"", None), Err(PickError::NoHealthy(_))));
        }
    }

    #[test]
    fn weights_hold_within_a_level() {
        let c = yaml_cluster(
            "{name: c, endpoints: [{address: \"127.0.0.1:1\", weight: 3}, \
             {address: \"127.0.0.1:2\"}, {address: \"127.0.0.1:3\", weight: 50, priority: 1}, \
             {address: \"127.0.0.1:4\", weight: 2, priority: 1}]}",
        );
        let count = |c: &Cluster| {
            let mut n: HashMap<SocketAddr, usize> = HashMap::new();
            for _ in 0..400 {
                *n.entry(c.pick(b"", None).expect("pick").addr).or_default() += 1;
            }
            n
        };
        assert_eq!(
            count(&c),
            HashMap::from([(addr(1), 300), (addr(2), 100)]),
            "round robin over P0's weights"
        );
        // P0 gone: P1's weights, whatever P0's were.
        let c = yaml_cluster(
            "{name: c, endpoints: [{address: \"127.0.0.1:1\", weight: 1000}, \
             {address: \"127.0.0.1:3\", weight: 3, priority: 1}, \
             {address: \"127.0.0.1:4\", priority: 1}], \
             outlier_detection: {consecutive_connect_failures: 1, max_ejection_percent: 100}}",
        );
        eject(&c, addr(1));
        assert_eq!(
            count(&c),
            HashMap::from([(addr(3), 300), (addr(4), 100)]),
            "round robin over P1's weights"
        );
    }

    #[test]
    fn one_level_needs_no_priority_filter() {
        let c = yaml_cluster(
            "{name: c, endpoints: [{address: \"127.0.0.1:1\", priority: 3}, \
             {address: \"127.0.0.1:2\", priority: 3}]}",
        );
        assert!(levels(&c).is_empty(), "one level: the balancer alone");
        assert_eq!(picked(&c, None), BTreeSet::from([addr(1), addr(2)]));
        assert_eq!(picked(&c, Some(addr(1))), BTreeSet::from([addr(2)]));
        let c = yaml_cluster(
            "{name: c, endpoints: [{address: \"127.0.0.1:1\"}, \
             {address: \"127.0.0.1:1\", weight: 2, priority: 1}]}",
        );
        assert!(
            levels(&c).is_empty(),
            "an address listed twice takes its best level"
        );
    }

    #[tokio::test]
    async fn endpoint_updates_carry_priorities() {
        let yaml = |pa: u32, pb: u32| {
            format!(
                "{{name: c, endpoints: [{{address: \"127.0.0.1:1\", priority: {pa}}}, \
                 {{address: \"127.0.0.1:2\", priority: {pb}}}]}}"
            )
        };
        let c = yaml_cluster(&yaml(0, 1));
        assert_eq!(picked(&c, None), BTreeSet::from([addr(1)]));
        let swapped: ClusterConfig = serde_yaml_ng::from_str(&yaml(1, 0)).expect("yaml");
        assert!(c.differs_in_endpoints_only(&swapped));
        c.set_endpoints(&swapped.endpoints).await;
        assert_eq!(picked(&c, None), BTreeSet::from([addr(2)]));
        assert_eq!(c.spec().endpoints, swapped.endpoints);
        let flat: ClusterConfig = serde_yaml_ng::from_str(&yaml(0, 0)).expect("yaml");
        c.set_endpoints(&flat.endpoints).await;
        assert!(levels(&c).is_empty());
        assert_eq!(picked(&c, None), BTreeSet::from([addr(1), addr(2)]));
    }

    #[test]
    fn resolved_names_take_their_priority() {
        let mut fixed_priority = HashMap::new();
        fixed_priority.insert(addr(1), 2);
        let src = EndpointSource {
            fixed: BTreeSet::from([backend(addr(1), 1)]),
            fixed_priority,
            names: vec![("a.test:1".into(), 1, 1), ("b.test:5".into(), 1, 4)],
            last: HashMap::from([
                ("a.test:1".to_owned(), vec![addr(1), addr(6)]),
                ("b.test:5".to_owned(), vec![addr(5), addr(6)]),
            ]),
        };
        let p = src.priorities();
        assert_eq!(p.get(&addr(1)), Some(&1), "the best of fixed and resolved");
        assert_eq!(p.get(&addr(5)), Some(&4));
        assert_eq!(p.get(&addr(6)), Some(&1));
    }

    #[tokio::test]
    async fn unhealthy_priority_zero_fails_over_and_back() {
        // A closed port for P0 (bound, then released) and a listening one for P1.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p0 = closed.local_addr().expect("addr");
        drop(closed);
        let p1_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p1 = p1_listener.local_addr().expect("addr");
        let c = yaml_cluster(&format!(
            "{{name: c, endpoints: [{{address: \"{p0}\"}}, {{address: \"{p1}\", priority: 1}}], \
             health_check: {{type: tcp, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1}}}}"
        ));
        assert_eq!(
            picked(&c, None),
            BTreeSet::from([p0]),
            "healthy until checked"
        );
        c.run_health_check().await;
        assert_eq!(picked(&c, None), BTreeSet::from([p1]), "P0 down: P1");
        let Ok(_back) = std::net::TcpListener::bind(p0) else {
            return; // the port was taken meanwhile; the failover itself was checked
        };
        c.run_health_check().await;
        assert_eq!(picked(&c, None), BTreeSet::from([p0]), "P0 up again");
    }

    #[test]
    fn max_requests_breaker_counts_in_flight() {
        let c = cluster(CircuitBreakerConfig {
            max_requests: 1,
            ..CircuitBreakerConfig::default()
        });
        let first = c.admit().expect("first");
        assert!(matches!(c.admit(), Err(PickError::Overloaded(..))));
        drop(first);
        assert!(c.admit().is_ok());
    }
}
