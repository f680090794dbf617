//! What the ADS client hands to translation: every xDS resource it holds, decoded, by type.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use mecha_proto::config::v1::Component;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const COMPONENT_TYPE: &str = "type.googleapis.com/mecha.config.v1.Component";

/// The full set of resources of every type the client holds (a candidate set while a
/// response is being checked), keyed by resource name. Resources are shared: a candidate is a
/// copy of the held set with one response applied, so copying must not copy thousands of
/// decoded messages, and translation recognises an unchanged resource by its pointer
/// ([`crate::translate::Translator`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsResources {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteConfiguration>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// By `cluster_name` of the assignment (the EDS service name).
    pub endpoints: BTreeMap<String, Arc<ClusterLoadAssignment>>,
    pub components: BTreeMap<String, Arc<Component>>,
}

/// Why one resource cannot be applied: NACKed, with this in `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {message}")]
pub struct ResourceError {
    /// `listener`, `route_config`, `cluster`, `endpoints`, `component`.
    pub kind: &'static str,
    pub name: String,
    pub message: String,
}

/// The ClusterLoadAssignment an EDS cluster takes its endpoints from:
/// `eds_cluster_config.service_name`, else the cluster's name (`None`: not an EDS cluster).
pub fn eds_service_name(c: &Cluster) -> Option<&str> {
    if c.cluster_discovery_type != Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
        return None;
    }
    Some(
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&c.name),
    )
}
