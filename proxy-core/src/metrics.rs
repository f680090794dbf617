//! The process-wide Prometheus registry and the metric families registered once at start
//! (Snapshots are rebuilt on config changes; their filters record into these).

use std::sync::Arc;

use mecha_filters::metrics::GrpcMetrics;
use mecha_mesh::metrics::MeshMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `mecha_config_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// `file`, later `xds`.
    pub source: &'static str,
    /// `applied`, `rejected` or `unchanged`.
    pub result: &'static str,
}
/// Labels of `mecha_xds_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// The resource type URL.
    pub type_url: String,
    /// `accepted` (ACKed) or `rejected` (NACKed).
    pub result: &'static str,
}

/// The xDS client's metrics (registered always; they stay empty without `xds:`).
pub struct XdsMetrics {
    pub responses: Family<XdsLabels, Counter>,
    /// 1 while an ADS stream is open.
    pub connected: Gauge,
    /// Unix time of the last accepted response, by type URL.
    pub last_update: Family<Vec<(String, String)>, Gauge>,
    /// Streams opened (reconnects are this minus one).
    pub streams: Counter,
}

/// `mecha_listener_connections_refused_total{listener}`.
pub type ListenerRefused = Family<Vec<(String, String)>, Counter>;
/// `mecha_downstream_connections{listener}`.
pub type ListenerGauge = Family<Vec<(String, String)>, Gauge>;

pub struct Metrics {
    pub registry: Registry,
    pub layotto: Arc<GrpcMetrics>,
    pub mesh: MeshMetrics,
    /// Handles that record nowhere: for objects built only to be checked or to stand in.
    pub throwaway_mesh: MeshMetrics,
    pub config_updates: Family<UpdateLabels, Counter>,
    /// Connections closed at accept because the listener had `max_connections` open.
    pub listener_connections_refused: ListenerRefused,
    /// Connections accepted, by the listener that served them (a virtual listener for a
    /// redirected connection).
    pub listener_connections_accepted: ListenerRefused,
    /// Connections open now, by listener.
    pub downstream_connections: ListenerGauge,
    pub xds: XdsMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        // No prefix: `with_prefix("")` would print every name with a leading `_`.
        let mut registry = Registry::default();
        let layotto = Arc::new(GrpcMetrics::register(
            &mut registry,
            "layotto",
            mecha_filters::capability::LAYOTTO_METHODS,
        ));
        let mesh = MeshMetrics::register(&mut registry);
        let config_updates = Family::<UpdateLabels, Counter>::default();
        registry.register(
            "mecha_config_updates",
            "Config updates by source and result (applied, rejected, unchanged)",
            config_updates.clone(),
        );
        let listener_connections_refused = ListenerRefused::default();
        registry.register(
            "mecha_listener_connections_refused",
            "Connections closed at accept because the listener had max_connections open",
            listener_connections_refused.clone(),
        );
        let listener_connections_accepted = ListenerRefused::default();
        registry.register(
            "mecha_listener_connections_accepted",
            "Connections accepted, by the listener that served them (for a connection \
             redirected to a use_original_dst listener: the virtual listener it matched)",
            listener_connections_accepted.clone(),
        );
        let downstream_connections = ListenerGauge::default();
        registry.register(
            "mecha_downstream_connections",
            "Open downstream connections per listener",
            downstream_connections.clone(),
        );
        let xds = XdsMetrics {
            responses: Family::default(),
            connected: Gauge::default(),
            last_update: Family::default(),
            streams: Counter::default(),
        };
        registry.register(
            "mecha_xds_responses",
            "xDS responses by type URL and result (accepted: applied and ACKed, rejected: NACKed)",
            xds.responses.clone(),
        );
        registry.register(
            "mecha_xds_connected",
            "1 while the ADS stream to the control plane is open",
            xds.connected.clone(),
        );
        registry.register(
            "mecha_xds_last_update_timestamp_seconds",
            "Unix time of the last accepted xDS response, by type URL",
            xds.last_update.clone(),
        );
        registry.register(
            "mecha_xds_streams",
            "ADS streams opened to the control plane",
            xds.streams.clone(),
        );
        Self {
            registry,
            layotto,
            mesh,
            throwaway_mesh: MeshMetrics::register(&mut Registry::default()),
            config_updates,
            listener_connections_refused,
            listener_connections_accepted,
            downstream_connections,
            xds,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident set size of this process in bytes, from `/proc/self/status` (Linux).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
