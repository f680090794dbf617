//! What the ADS client hands to translation: every xDS resource it holds, decoded, by type.

use std::collections::BTreeMap;

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
/// response is being checked), keyed by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsResources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    /// By `cluster_name` of the assignment (the EDS service name).
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    pub components: BTreeMap<String, Component>,
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
