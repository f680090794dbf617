//! What the ADS client hands to translation: every xDS resource it holds, decoded, by type.

use std::collections::{btree_map, BTreeMap};
use std::ops::{Deref, DerefMut};
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
/// response is being checked), keyed by resource name. A candidate is a copy of the held set
/// with one response applied, so copying must cost nothing: each type's map is shared until
/// it is changed ([`Shared`]), each resource is shared too, and translation recognises an
/// unchanged resource by its pointer ([`crate::translate::Translator`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsResources {
    pub listeners: Shared<Listener>,
    pub routes: Shared<RouteConfiguration>,
    pub clusters: Shared<Cluster>,
    /// By `cluster_name` of the assignment (the EDS service name).
    pub endpoints: Shared<ClusterLoadAssignment>,
    pub components: Shared<Component>,
}

/// One type's resources by name, copied on write: reading derefs to the map; the first
/// change through a copy that shares the map clones it (the names and pointers, not the
/// resources), so an endpoint push copies the endpoint map only.
#[derive(Debug, PartialEq)]
pub struct Shared<T>(Arc<BTreeMap<String, Arc<T>>>);

impl<T> Shared<T> {
    /// Whether both are the same map (no change between them).
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared(Arc::new(BTreeMap::new()))
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Deref for Shared<T> {
    type Target = BTreeMap<String, Arc<T>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        Arc::make_mut(&mut self.0)
    }
}

impl<'a, T> IntoIterator for &'a Shared<T> {
    type Item = (&'a String, &'a Arc<T>);
    type IntoIter = btree_map::Iter<'a, String, Arc<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> FromIterator<(String, Arc<T>)> for Shared<T> {
    fn from_iter<I: IntoIterator<Item = (String, Arc<T>)>>(iter: I) -> Self {
        Shared(Arc::new(iter.into_iter().collect()))
    }
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
