//! Mesh metrics families, registered once per process; clusters and routes take their labelled
//! handles when built, so recording allocates nothing.
//!
//! Per-cluster and per-route series live in one map each ([`Series`]), encoded as their
//! families on scrape by a collector: a cluster takes one map entry, not one entry in each of
//! 8 families (with its label hashed and cloned 8 times). At thousands of clusters pushed at
//! once, that registration was a third of building a cluster.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;

use crate::histogram::LatencyHistogram as Histogram;
use prometheus_client::registry::Registry;

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
    clusters: Arc<Series<ClusterMetrics>>,
    routes: Arc<Series<RouteMetrics>>,
}

/// Series by cluster name or route label, with the families they are encoded as.
#[derive(Debug)]
struct Series<T: 'static> {
    map: RwLock<HashMap<String, T, foldhash::fast::RandomState>>,
    /// `(name, help, type, series)`: the families in scrape order; `series` lists one
    /// entry's series with the label values they add (`class` for routes).
    families: &'static [FamilyDef<T>],
    /// The label naming an entry: `cluster` or `route`.
    key: &'static str,
}

type FamilyDef<T> = (&'static str, &'static str, MetricType, SeriesOf<T>);
type SeriesOf<T> = fn(
    &T,
    &mut dyn FnMut(
        Option<(&'static str, &'static str)>,
        &dyn EncodeMetric,
    ) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error>;

impl<T: Clone + Default + 'static> Series<T> {
    fn new(key: &'static str, families: &'static [FamilyDef<T>]) -> Self {
        Series {
            map: RwLock::new(HashMap::default()),
            families,
            key,
        }
    }

    /// The entry's handles, created (zero) the first time.
    fn get_or_create(&self, name: &str) -> T {
        if let Some(m) = self.map.read().get(name) {
            return m.clone();
        }
        self.map.write().entry(name.to_owned()).or_default().clone()
    }

    fn remove(&self, name: &str) {
        self.map.write().remove(name);
    }
}

impl<T: std::fmt::Debug + Send + Sync + 'static> Collector for Series<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.map.read();
        for (name, help, metric_type, series) in self.families {
            let mut family = encoder.encode_descriptor(name, help, None, *metric_type)?;
            for (key, entry) in map.iter() {
                series(entry, &mut |extra, metric| {
                    let mut labels = vec![(self.key, key.as_str())];
                    labels.extend(extra);
                    metric.encode(family.encode_family(&labels)?)
                })?;
            }
        }
        Ok(())
    }
}

macro_rules! cluster_family {
    ($name:literal, $help:literal, $ty:ident, $field:ident) => {
        ($name, $help, MetricType::$ty, |m: &ClusterMetrics, put| {
            put(None, &m.$field)
        })
    };
}

/// The per-cluster families, as registered before they moved into one map (`Registry::register`
/// ends each help with a full stop; a collector writes it as given).
static CLUSTER_FAMILIES: [FamilyDef<ClusterMetrics>; 8] = [
    cluster_family!(
        "mecha_cluster_upstream_requests",
        "Upstream attempts by cluster.",
        Counter,
        upstream_requests
    ),
    cluster_family!(
        "mecha_cluster_upstream_failures",
        "Upstream attempts that failed (connect, reset, timeout) by cluster.",
        Counter,
        upstream_failures
    ),
    cluster_family!(
        "mecha_cluster_upstream_connections_opened",
        "New upstream connections by cluster (pooled reuse not counted).",
        Counter,
        connections_opened
    ),
    cluster_family!(
        "mecha_cluster_upstream_requests_active",
        "Requests holding an upstream connection slot (max_connections) by cluster.",
        Gauge,
        active_requests
    ),
    cluster_family!(
        "mecha_cluster_pending_requests",
        "Requests waiting for an upstream connection slot by cluster.",
        Gauge,
        pending
    ),
    cluster_family!(
        "mecha_cluster_retries",
        "Retries by cluster.",
        Counter,
        retries
    ),
    cluster_family!(
        "mecha_cluster_outlier_ejections",
        "Outlier ejections by cluster.",
        Counter,
        ejections
    ),
    cluster_family!(
        "mecha_cluster_breaker_trips",
        "Circuit breaker overflows by cluster.",
        Counter,
        breaker_trips
    ),
];

static ROUTE_FAMILIES: [FamilyDef<RouteMetrics>; 2] = [
    (
        "mecha_route_requests",
        "Requests by route and status class.",
        MetricType::Counter,
        |m: &RouteMetrics, put| {
            for (class, c) in CLASSES.iter().zip(&m.by_class) {
                put(Some(("class", class)), c)?;
            }
            Ok(())
        },
    ),
    (
        "mecha_route_request_duration_seconds",
        "Request latency by route.",
        MetricType::Histogram,
        |m: &RouteMetrics, put| put(None, &m.latency),
    ),
];

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.5, 14))
}

#[derive(Clone, Debug, Default)]
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

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            by_class: Default::default(),
            latency: latency(),
        }
    }
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
            clusters: Arc::new(Series::new("cluster", &CLUSTER_FAMILIES)),
            routes: Arc::new(Series::new("route", &ROUTE_FAMILIES)),
        };
        registry.register_collector(Box::new(m.routes.clone()));
        registry.register_collector(Box::new(m.clusters.clone()));
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
        self.clusters.get_or_create(name)
    }

    /// Drops a removed cluster's series, so scrapes stop reporting it.
    pub fn remove_cluster(&self, name: &str) {
        self.clusters.remove(name);
    }

    /// Drops a removed route's series.
    pub fn remove_route(&self, label: &str) {
        self.routes.remove(label);
    }

    pub fn route(&self, label: &str) -> RouteMetrics {
        self.routes.get_or_create(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ClusterLabel {
        cluster: String,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RouteStatusLabels {
        route: String,
        class: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RouteLabel {
        route: String,
    }

    fn lines(r: &Registry) -> Vec<String> {
        let mut out = String::new();
        encode(&mut out, r).expect("encodes");
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    /// The collector must scrape exactly as the families it replaced did (names, help, types,
    /// `_total` suffixes, labels, histogram buckets), forget removed entries, and hand out the
    /// same series for the same name.
    #[test]
    fn series_scrape_as_the_families_they_replace() {
        let mut registry = Registry::default();
        let m = MeshMetrics::register(&mut registry);
        let a = m.cluster("a");
        a.upstream_requests.inc_by(3);
        a.pending.set(2);
        a.retries.inc();
        let _b = m.cluster("b");
        let r = m.route("r1");
        r.record(200, 0.01);
        r.record(503, 0.2);

        let mut reference = Registry::default();
        let counters: Vec<Family<ClusterLabel, Counter>> =
            (0..6).map(|_| Family::default()).collect();
        let gauges: Vec<Family<ClusterLabel, Gauge>> = (0..2).map(|_| Family::default()).collect();
        let requests: Family<RouteStatusLabels, Counter> = Family::default();
        let route_latency: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency as fn() -> Histogram);
        let help = |h: &str| h.trim_end_matches('.').to_owned();
        reference.register(
            ROUTE_FAMILIES[0].0,
            help(ROUTE_FAMILIES[0].1),
            requests.clone(),
        );
        reference.register(
            ROUTE_FAMILIES[1].0,
            help(ROUTE_FAMILIES[1].1),
            route_latency.clone(),
        );
        let (mut ci, mut gi) = (0, 0);
        let mut by_name = HashMap::new();
        for (name, h, ty, _) in &CLUSTER_FAMILIES {
            if matches!(ty, MetricType::Gauge) {
                reference.register(*name, help(h), gauges[gi].clone());
                by_name.insert(*name, (None, Some(gi)));
                gi += 1;
            } else {
                reference.register(*name, help(h), counters[ci].clone());
                by_name.insert(*name, (Some(ci), None));
                ci += 1;
            }
        }
        let invocations: Family<InvocationLabels, Counter> = Family::default();
        let invocation_latency: Family<AppLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency as fn() -> Histogram);
        reference.register(
            "mecha_invocations",
            "Service invocations this sidecar made, by target app and outcome",
            invocations,
        );
        reference.register(
            "mecha_invocation_duration_seconds",
            "Service invocation latency (all tries) by target app",
            invocation_latency,
        );
        let label = |c: &str| ClusterLabel {
            cluster: c.to_owned(),
        };
        for c in ["a", "b"] {
            for (ci, gi) in by_name.values() {
                if let Some(i) = ci {
                    let _ = counters[*i].get_or_create(&label(c));
                }
                if let Some(i) = gi {
                    let _ = gauges[*i].get_or_create(&label(c));
                }
            }
        }
        let counter = |name: &str| counters[by_name[name].0.expect("a counter")].clone();
        counter("mecha_cluster_upstream_requests")
            .get_or_create(&label("a"))
            .inc_by(3);
        counter("mecha_cluster_retries")
            .get_or_create(&label("a"))
            .inc();
        gauges[by_name["mecha_cluster_pending_requests"]
            .1
            .expect("a gauge")]
        .get_or_create(&label("a"))
        .set(2);
        for class in CLASSES {
            let l = RouteStatusLabels {
                route: "r1".to_owned(),
                class,
            };
            let c = requests.get_or_create(&l);
            if class == "2xx" || class == "5xx" {
                c.inc();
            }
        }
        let h = route_latency.get_or_create(&RouteLabel {
            route: "r1".to_owned(),
        });
        h.observe(0.01);
        h.observe(0.2);
        assert_eq!(lines(&registry), lines(&reference));

        m.cluster("a").upstream_requests.inc();
        let text = lines(&registry).join("\n");
        assert!(
            text.contains("mecha_cluster_upstream_requests_total{cluster=\"a\"} 4"),
            "{text}"
        );
        m.remove_cluster("b");
        m.remove_route("r1");
        let text = lines(&registry).join("\n");
        assert!(!text.contains("cluster=\"b\""), "{text}");
        assert!(!text.contains("route=\"r1\""), "{text}");
        assert!(
            text.contains("# TYPE mecha_route_requests counter"),
            "{text}"
        );
    }
}
