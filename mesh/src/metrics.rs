//! Mesh metrics families, registered once per process; clusters and routes take their labelled
//! handles when built, so recording allocates nothing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;

use crate::histogram::LatencyHistogram as Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// Labels of one finished invocation: the target app and the outcome (`2xx`…`5xx` for an
/// answer, the gRPC code name for a call that got none: `unavailable`, `deadline_exceeded`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub app: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug)]
pub struct MeshMetrics {
    invocations: Family<InvocationLabels, Counter>,
    invocation_latency: Family<AppLabel, Histogram, fn() -> Histogram>,
    retries: Family<ClusterLabel, Counter>,
    ejections: Family<ClusterLabel, Counter>,
    breaker_trips: Family<ClusterLabel, Counter>,
    upstream_requests: Family<ClusterLabel, Counter>,
    upstream_failures: Family<ClusterLabel, Counter>,
    connections_opened: Family<ClusterLabel, Counter>,
    active_requests: Family<ClusterLabel, Gauge>,
    pending: Family<ClusterLabel, Gauge>,
    route_requests: Family<RouteStatusLabels, Counter>,
    route_latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.5, 14))
}

#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    pub retries: Counter,
    pub ejections: Counter,
    pub breaker_trips: Counter,
    pub upstream_requests: Counter,
    pub upstream_failures: Counter,
    /// New upstream connections (reused pooled ones are not counted).
    pub connections_opened: Counter,
    /// Requests holding an upstream connection slot (`max_connections`).
    pub active_requests: Gauge,
    /// Requests waiting for a connection slot (`max_pending_requests`).
    pub pending: Gauge,
}

/// The `class` label values of route requests, in [`RouteMetrics::record`]'s index order.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "aborted"];

/// Per-route handles: requests by status class (1xx–5xx) and latency.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 6],
    pub latency: Histogram,
}

impl RouteMetrics {
    /// `status` 0 (no response: the client went away first) counts as class `aborted`.
    pub fn record(&self, status: u16, seconds: f64) {
        let idx = if status < 100 {
            5
        } else {
            (status / 100).clamp(1, 5) as usize - 1
        };
        if let Some(c) = self.by_class.get(idx) {
            c.inc();
        }
        self.latency.observe(seconds);
    }
}

impl MeshMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = MeshMetrics {
            invocations: Family::default(),
            invocation_latency: Family::new_with_constructor(latency as fn() -> Histogram),
            retries: Family::default(),
            ejections: Family::default(),
            breaker_trips: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            connections_opened: Family::default(),
            active_requests: Family::default(),
            pending: Family::default(),
            route_requests: Family::default(),
            route_latency: Family::new_with_constructor(latency as fn() -> Histogram),
        };
        registry.register(
            "mecha_route_requests",
            "Requests by route and status class",
            m.route_requests.clone(),
        );
        registry.register(
            "mecha_route_request_duration_seconds",
            "Request latency by route",
            m.route_latency.clone(),
        );
        registry.register(
            "mecha_cluster_upstream_requests",
            "Upstream attempts by cluster",
            m.upstream_requests.clone(),
        );
        registry.register(
            "mecha_cluster_upstream_failures",
            "Upstream attempts that failed (connect, reset, timeout) by cluster",
            m.upstream_failures.clone(),
        );
        registry.register(
            "mecha_cluster_upstream_connections_opened",
            "New upstream connections by cluster (pooled reuse not counted)",
            m.connections_opened.clone(),
        );
        registry.register(
            "mecha_cluster_upstream_requests_active",
            "Requests holding an upstream connection slot (max_connections) by cluster",
            m.active_requests.clone(),
        );
        registry.register(
            "mecha_cluster_pending_requests",
            "Requests waiting for an upstream connection slot by cluster",
            m.pending.clone(),
        );
        registry.register(
            "mecha_cluster_retries",
            "Retries by cluster",
            m.retries.clone(),
        );
        registry.register(
            "mecha_cluster_outlier_ejections",
            "Outlier ejections by cluster",
            m.ejections.clone(),
        );
        registry.register(
            "mecha_cluster_breaker_trips",
            "Circuit breaker overflows by cluster",
            m.breaker_trips.clone(),
        );
        registry.register(
            "mecha_invocations",
            "Service invocations this sidecar made, by target app and outcome",
            m.invocations.clone(),
        );
        registry.register(
            "mecha_invocation_duration_seconds",
            "Service invocation latency (all tries) by target app",
            m.invocation_latency.clone(),
        );
        m
    }

    /// Records one finished invocation of `app`.
    pub fn record_invocation(&self, app: &str, outcome: &str, seconds: f64) {
        self.invocations
            .get_or_create(&InvocationLabels {
                app: app.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.invocation_latency
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .observe(seconds);
    }

    pub fn cluster(&self, name: &str) -> ClusterMetrics {
        let l = ClusterLabel {
            cluster: name.to_owned(),
        };
        ClusterMetrics {
            retries: self.retries.get_or_create(&l).clone(),
            ejections: self.ejections.get_or_create(&l).clone(),
            breaker_trips: self.breaker_trips.get_or_create(&l).clone(),
            upstream_requests: self.upstream_requests.get_or_create(&l).clone(),
            upstream_failures: self.upstream_failures.get_or_create(&l).clone(),
            connections_opened: self.connections_opened.get_or_create(&l).clone(),
            active_requests: self.active_requests.get_or_create(&l).clone(),
            pending: self.pending.get_or_create(&l).clone(),
        }
    }

    /// Drops a removed cluster's series, so scrapes stop reporting it.
    pub fn remove_cluster(&self, name: &str) {
        let l = ClusterLabel {
            cluster: name.to_owned(),
        };
        self.retries.remove(&l);
        self.ejections.remove(&l);
        self.breaker_trips.remove(&l);
        self.upstream_requests.remove(&l);
        self.upstream_failures.remove(&l);
        self.connections_opened.remove(&l);
        self.active_requests.remove(&l);
        self.pending.remove(&l);
    }

    /// Drops a removed route's series.
    pub fn remove_route(&self, label: &str) {
        for class in CLASSES {
            self.route_requests.remove(&RouteStatusLabels {
                route: label.to_owned(),
                class,
            });
        }
        self.route_latency.remove(&RouteLabel {
            route: label.to_owned(),
        });
    }

    pub fn route(&self, label: &str) -> RouteMetrics {
        let class = |c: &'static str| {
            self.route_requests
                .get_or_create(&RouteStatusLabels {
                    route: label.to_owned(),
                    class: c,
                })
                .clone()
        };
        RouteMetrics {
            by_class: CLASSES.map(class),
            latency: self
                .route_latency
                .get_or_create(&RouteLabel {
                    route: label.to_owned(),
                })
                .clone(),
        }
    }
}
