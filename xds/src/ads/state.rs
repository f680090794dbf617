//! What the client holds across streams, independent of the wire variant: the last accepted
//! resources of every type (with their per-resource versions for delta), the decoding of Any
//! payloads, the candidate set a response would produce, and the RDS/EDS names the held
//! listeners and clusters point to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::google::protobuf::Any;
use mecha_proto::config::v1::Component;
use prost::Message;

use crate::resources::{
    eds_service_name, ResourceError, Shared, XdsResources, CLUSTER_TYPE, COMPONENT_TYPE,
    ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
};

/// The `typed_config` type URL of the HTTP connection manager network filter: the only place a
/// listener names RDS route configurations.
pub(crate) const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The resource types the client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Cluster,
    Listener,
    Component,
    Endpoint,
    Route,
}

impl Kind {
    /// The order a fresh stream subscribes in, as Envoy does: the wildcard roots first (CDS,
    /// LDS, and the components, which nothing else refers to), then the named types whose
    /// names the held roots imply (EDS, RDS).
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Listener,
        Kind::Component,
        Kind::Endpoint,
        Kind::Route,
    ];

    /// The named (non-wildcard) types: their subscription follows from the held roots.
    pub(crate) const NAMED: [Kind; 2] = [Kind::Endpoint, Kind::Route];

    pub(crate) fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => CLUSTER_TYPE,
            Kind::Listener => LISTENER_TYPE,
            Kind::Component => COMPONENT_TYPE,
            Kind::Endpoint => ENDPOINT_TYPE,
            Kind::Route => ROUTE_TYPE,
        }
    }

    pub(crate) fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Wildcard types: subscribed with no names, and in SotW every response is the full set.
    pub(crate) fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener | Kind::Component)
    }

    /// The `kind` of a [`ResourceError`] about a resource of this type.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Listener => "listener",
            Kind::Component => "component",
            Kind::Endpoint => "endpoints",
            Kind::Route => "route_config",
        }
    }
}

/// One decoded resource, shared from the start: a batch of responses is checked together and,
/// if refused, again one by one, so its updates are copied; and the held set keeps the same
/// allocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    Listener(Arc<Listener>),
    Route(Arc<RouteConfiguration>),
    Cluster(Arc<Cluster>),
    Endpoint(Arc<ClusterLoadAssignment>),
    Component(Arc<Component>),
}

impl Decoded {
    /// The name the resource gives itself (for SotW, where it is the only name there is).
    pub(crate) fn name(&self) -> &str {
        match self {
            Decoded::Listener(r) => &r.name,
            Decoded::Route(r) => &r.name,
            Decoded::Cluster(r) => &r.name,
            Decoded::Endpoint(r) => &r.cluster_name,
            Decoded::Component(r) => &r.name,
        }
    }
}

/// Decodes one Any payload of a response for `kind`; the error says why (the caller names the
/// resource).
pub(crate) fn decode(kind: Kind, any: &Any) -> Result<Decoded, String> {
    if any.type_url != kind.type_url() {
        return Err(format!(
            "has type {:?} in a response of type {:?}",
            any.type_url,
            kind.type_url()
        ));
    }
    let bytes = any.value.as_slice();
    let decoded = match kind {
        Kind::Listener => Listener::decode(bytes).map(|r| Decoded::Listener(Arc::new(r))),
        Kind::Route => RouteConfiguration::decode(bytes).map(|r| Decoded::Route(Arc::new(r))),
        Kind::Cluster => Cluster::decode(bytes).map(|r| Decoded::Cluster(Arc::new(r))),
        Kind::Endpoint => {
            ClusterLoadAssignment::decode(bytes).map(|r| Decoded::Endpoint(Arc::new(r)))
        }
        Kind::Component => Component::decode(bytes).map(|r| Decoded::Component(Arc::new(r))),
    };
    decoded.map_err(|e| format!("cannot be decoded as {}: {e}", kind.type_url()))
}

/// What one response asks for, before it is checked by the sink.
#[derive(Debug, Default, Clone)]
pub(crate) struct Update {
    /// SotW responses of wildcard types carry the full set: everything held and absent is removed.
    pub(crate) replace_all: bool,
    /// Resources added or replaced, by name, with their version (delta only).
    pub(crate) upserts: Vec<(String, Option<String>, Decoded)>,
    /// Resources removed by name (delta `removed_resources`).
    pub(crate) removals: Vec<String>,
}

/// Collects the decoded resources of one response, refusing a name seen twice.
#[derive(Default)]
pub(crate) struct UpdateBuilder {
    update: Update,
    seen: BTreeSet<String>,
    errors: Vec<ResourceError>,
}

impl UpdateBuilder {
    pub(crate) fn new(replace_all: bool) -> Self {
        UpdateBuilder {
            update: Update {
                replace_all,
                ..Update::default()
            },
            ..UpdateBuilder::default()
        }
    }

    /// Adds one payload. `name` is the delta `Resource.name` (SotW: `None`, the payload names
    /// itself); `position` identifies a payload that cannot be decoded far enough to have a name.
    pub(crate) fn add(
        &mut self,
        kind: Kind,
        position: usize,
        name: Option<&str>,
        version: Option<&str>,
        any: Option<&Any>,
    ) {
        let display = |name: Option<&str>| match name {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => format!("#{position} of the response"),
        };
        let Some(any) = any else {
            self.error(kind, display(name), "has no resource payload".to_owned());
            return;
        };
        let decoded = match decode(kind, any) {
            Ok(d) => d,
            Err(message) => {
                self.error(kind, display(name), message);
                return;
            }
        };
        let own = decoded.name().to_owned();
        if own.is_empty() {
            self.error(kind, display(name), "has an empty name".to_owned());
            return;
        }
        if let Some(wire) = name.filter(|n| !n.is_empty()) {
            // The map is keyed by name and translation reads the payload's name: the two must
            // agree or the same resource would be known by two names.
            if wire != own {
                self.error(
                    kind,
                    wire.to_owned(),
                    format!("is named {own:?} in its payload"),
                );
                return;
            }
        }
        if !self.seen.insert(own.clone()) {
            self.error(
                kind,
                own,
                "appears more than once in the response".to_owned(),
            );
            return;
        }
        self.update
            .upserts
            .push((own, version.map(str::to_owned), decoded));
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.update.removals.push(name.to_owned());
    }

    fn error(&mut self, kind: Kind, name: String, message: String) {
        self.errors.push(ResourceError {
            kind: kind.label(),
            name,
            message,
        });
    }

    /// The update, or every error found in the response.
    pub(crate) fn finish(self) -> Result<Update, Vec<ResourceError>> {
        if self.errors.is_empty() {
            Ok(self.update)
        } else {
            Err(self.errors)
        }
    }
}

/// A candidate: what the held state becomes if the sink accepts it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) resources: XdsResources,
    pub(crate) versions: BTreeMap<Kind, BTreeMap<String, String>>,
}

impl Candidate {
    /// This candidate with `update` applied on top (several queued responses checked as one).
    /// For named types, resources not subscribed are ignored (the protocol says the client
    /// silently ignores them); when roots change, the children no longer referred to are
    /// dropped in the same candidate, so the sink sees one consistent set and a NACK rolls
    /// both back.
    pub(crate) fn then(mut self, kind: Kind, update: Update) -> Candidate {
        let resources = &mut self.resources;
        let versions = &mut self.versions;
        // Which upserts are subscribed, decided before anything changes (borrowed names: an
        // endpoint push must not copy the names of every cluster held).
        let unsubscribed: Vec<bool> = match kind {
            Kind::Endpoint => {
                // Most clusters name their endpoints after themselves: look those up, and check
                // only the names not found that way against every cluster's service name.
                let direct = |n: &str| {
                    resources
                        .clusters
                        .get(n)
                        .is_some_and(|c| eds_service_name(c) == Some(n))
                };
                let mut unsubscribed: Vec<bool> =
                    update.upserts.iter().map(|(n, _, _)| !direct(n)).collect();
                if unsubscribed.iter().any(|u| *u) {
                    let names: std::collections::HashSet<&str> = resources
                        .clusters
                        .values()
                        .filter_map(|c| eds_service_name(c))
                        .collect();
                    for (u, (n, _, _)) in unsubscribed.iter_mut().zip(&update.upserts) {
                        *u = *u && !names.contains(n.as_str());
                    }
                }
                unsubscribed
            }
            Kind::Route => {
                let names = subscription(resources, kind);
                update
                    .upserts
                    .iter()
                    .map(|(n, _, _)| !names.contains(n))
                    .collect()
            }
            _ => Vec::new(),
        };
        let kind_versions = versions.entry(kind).or_default();
        if update.replace_all {
            clear(resources, kind);
            kind_versions.clear();
        }
        for name in &update.removals {
            remove(resources, kind, name);
            kind_versions.remove(name);
        }
        for (i, (name, version, decoded)) in update.upserts.into_iter().enumerate() {
            if unsubscribed.get(i).copied().unwrap_or(false) {
                tracing::debug!(type_url = kind.type_url(), %name, "ignoring a resource not subscribed");
                continue;
            }
            match version {
                Some(v) => kind_versions.insert(name, v),
                None => kind_versions.remove(&name),
            };
            insert(resources, decoded);
        }
        match kind {
            Kind::Listener => {
                let keep = rds_names(resources.listeners.values().map(|l| &**l));
                // Only when something goes: changing the map copies it.
                if resources.routes.keys().any(|n| !keep.contains(n)) {
                    resources.routes.retain(|name, _| keep.contains(name));
                }
                prune_versions(versions, Kind::Route, &keep);
            }
            Kind::Cluster => {
                let keep = eds_names(resources.clusters.values().map(|c| &**c));
                if resources.endpoints.keys().any(|n| !keep.contains(n)) {
                    resources.endpoints.retain(|name, _| keep.contains(name));
                }
                prune_versions(versions, Kind::Endpoint, &keep);
            }
            _ => {}
        }
        self
    }
}

/// The names a named type is subscribed to in `res`, as implied by its roots.
fn subscription(res: &XdsResources, kind: Kind) -> BTreeSet<String> {
    match kind {
        Kind::Route => rds_names(res.listeners.values().map(|l| &**l)),
        Kind::Endpoint => eds_names(res.clusters.values().map(|c| &**c)),
        _ => BTreeSet::new(),
    }
}

/// Everything the client holds; survives stream loss, so that a reconnect resends versions and
/// the sink never sees a set emptied because the control plane went away.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) accepted: XdsResources,
    /// Per-resource versions (delta `Resource.version`), for `initial_resource_versions`.
    pub(crate) versions: BTreeMap<Kind, BTreeMap<String, String>>,
    /// The RDS and EDS names the accepted roots imply, kept with them: every ACK of an
    /// endpoint push sends the EDS names, and recomputing them from thousands of clusters per
    /// response cost more than the push.
    routes_subscribed: BTreeSet<String>,
    endpoints_subscribed: BTreeSet<String>,
}

/// The subscription of a type that has none (wildcard types).
static NO_NAMES: BTreeSet<String> = BTreeSet::new();

impl Held {
    /// The names a named type is subscribed to, as implied by the accepted roots.
    pub(crate) fn subscription(&self, kind: Kind) -> &BTreeSet<String> {
        match kind {
            Kind::Route => &self.routes_subscribed,
            Kind::Endpoint => &self.endpoints_subscribed,
            _ => &NO_NAMES,
        }
    }

    /// The per-resource versions of what is held of `kind`, for `initial_resource_versions`.
    pub(crate) fn resource_versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.versions.get(&kind).cloned().unwrap_or_default()
    }

    /// The candidate set `update` produces (see [`Candidate::then`]).
    pub(crate) fn candidate(&self, kind: Kind, update: Update) -> Candidate {
        Candidate {
            resources: self.accepted.clone(),
            versions: self.versions.clone(),
        }
        .then(kind, update)
    }

    pub(crate) fn accept(&mut self, candidate: Candidate) {
        let listeners_changed =
            !same_entries(&self.accepted.listeners, &candidate.resources.listeners);
        let clusters_changed =
            !same_entries(&self.accepted.clusters, &candidate.resources.clusters);
        self.accepted = candidate.resources;
        self.versions = candidate.versions;
        if listeners_changed {
            self.routes_subscribed = subscription(&self.accepted, Kind::Route);
        }
        if clusters_changed {
            self.endpoints_subscribed = subscription(&self.accepted, Kind::Endpoint);
        }
    }
}

/// Whether two resource maps hold the same shared messages under the same names.
fn same_entries<T>(a: &Shared<T>, b: &Shared<T>) -> bool {
    a.same_as(b)
        || a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, va), (kb, vb))| Arc::ptr_eq(va, vb) && ka == kb)
}

fn prune_versions(
    versions: &mut BTreeMap<Kind, BTreeMap<String, String>>,
    kind: Kind,
    keep: &BTreeSet<String>,
) {
    if let Some(v) = versions.get_mut(&kind) {
        v.retain(|name, _| keep.contains(name));
    }
}

fn clear(res: &mut XdsResources, kind: Kind) {
    match kind {
        Kind::Listener => res.listeners.clear(),
        Kind::Route => res.routes.clear(),
        Kind::Cluster => res.clusters.clear(),
        Kind::Endpoint => res.endpoints.clear(),
        Kind::Component => res.components.clear(),
    }
}

fn remove(res: &mut XdsResources, kind: Kind, name: &str) {
    match kind {
        Kind::Listener => {
            res.listeners.remove(name);
        }
        Kind::Route => {
            res.routes.remove(name);
        }
        Kind::Cluster => {
            res.clusters.remove(name);
        }
        Kind::Endpoint => {
            res.endpoints.remove(name);
        }
        Kind::Component => {
            res.components.remove(name);
        }
    }
}

fn insert(res: &mut XdsResources, decoded: Decoded) {
    match decoded {
        Decoded::Listener(r) => {
            res.listeners.insert(r.name.clone(), r);
        }
        Decoded::Route(r) => {
            res.routes.insert(r.name.clone(), r);
        }
        Decoded::Cluster(r) => {
            res.clusters.insert(r.name.clone(), r);
        }
        Decoded::Endpoint(r) => {
            res.endpoints.insert(r.cluster_name.clone(), r);
        }
        Decoded::Component(r) => {
            res.components.insert(r.name.clone(), r);
        }
    }
}

/// Every `rds.route_config_name` of an HTTP connection manager in `listeners` (filter chains
/// and the default filter chain). A manager that does not decode names nothing here;
/// translation rejects its listener.
pub(crate) fn rds_names<'a>(listeners: impl Iterator<Item = &'a Listener>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for listener in listeners {
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter());
        for f in chains.flat_map(|c| c.filters.iter()) {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != HCM_TYPE {
                continue;
            }
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                if !rds.route_config_name.is_empty() {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names
}

/// For each EDS cluster, `eds_cluster_config.service_name`, or else the cluster's name.
pub(crate) fn eds_names<'a>(clusters: impl Iterator<Item = &'a Cluster>) -> BTreeSet<String> {
    clusters
        .filter_map(eds_service_name)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: m.encode_to_vec(),
        }
    }

    fn listener(name: &str, route: &str) -> Listener {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.to_owned(),
                ..Rds::default()
            })),
            ..HttpConnectionManager::default()
        };
        Listener {
            name: name.to_owned(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(HCM_TYPE, &hcm))),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    fn eds_cluster(name: &str, service: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.to_owned(),
                ..EdsClusterConfig::default()
            }),
            ..Cluster::default()
        }
    }

    #[test]
    fn rds_and_eds_names_follow_the_roots() {
        let ls = [
            listener("a", "r1"),
            listener("b", "r2"),
            listener("c", "r1"),
        ];
        assert_eq!(
            rds_names(ls.iter()),
            BTreeSet::from(["r1".to_owned(), "r2".to_owned()])
        );
        let static_cluster = Cluster {
            name: "s".to_owned(),
            ..Cluster::default()
        };
        let cs = [
            eds_cluster("x", "svc-x"),
            eds_cluster("y", ""),
            static_cluster,
        ];
        assert_eq!(
            eds_names(cs.iter()),
            BTreeSet::from(["svc-x".to_owned(), "y".to_owned()])
        );
    }

    #[test]
    fn duplicate_and_undecodable_resources_are_named() {
        let mut b = UpdateBuilder::new(true);
        let l = any(LISTENER_TYPE, &listener("l1", "r"));
        b.add(Kind::Listener, 0, None, None, Some(&l));
        b.add(Kind::Listener, 1, None, None, Some(&l));
        let junk = Any {
            type_url: LISTENER_TYPE.to_owned(),
            value: vec![0xff, 0xff],
        };
        b.add(Kind::Listener, 2, None, None, Some(&junk));
        let errors = b.finish().expect_err("must be refused");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].name, "l1");
        assert!(errors[0].message.contains("more than once"));
        assert_eq!(errors[1].name, "#2 of the response");
    }

    /// EDS names come from the accepted clusters (their service name, else their own name);
    /// an assignment named otherwise is ignored, and the subscription follows each accepted
    /// cluster set.
    #[test]
    fn endpoints_are_kept_only_for_subscribed_names() {
        let mut held = Held::default();
        let mut b = UpdateBuilder::new(true);
        for (i, c) in [eds_cluster("x", "svc-x"), eds_cluster("y", "")]
            .iter()
            .enumerate()
        {
            b.add(Kind::Cluster, i, None, None, Some(&any(CLUSTER_TYPE, c)));
        }
        let c = held.candidate(Kind::Cluster, b.finish().expect("valid"));
        held.accept(c);
        assert_eq!(
            *held.subscription(Kind::Endpoint),
            BTreeSet::from(["svc-x".to_owned(), "y".to_owned()])
        );
        let mut b = UpdateBuilder::new(false);
        for (i, name) in ["svc-x", "y", "x", "zzz"].iter().enumerate() {
            let cla = ClusterLoadAssignment {
                cluster_name: (*name).to_owned(),
                ..ClusterLoadAssignment::default()
            };
            b.add(
                Kind::Endpoint,
                i,
                None,
                None,
                Some(&any(ENDPOINT_TYPE, &cla)),
            );
        }
        let c = held.candidate(Kind::Endpoint, b.finish().expect("valid"));
        assert_eq!(
            c.resources.endpoints.keys().collect::<Vec<_>>(),
            ["svc-x", "y"]
        );
        // The candidate copied only the map it changed; the held set is untouched until
        // accepted.
        assert!(c.resources.clusters.same_as(&held.accepted.clusters));
        assert!(!c.resources.endpoints.same_as(&held.accepted.endpoints));
        assert!(held.accepted.endpoints.is_empty());
        held.accept(c);

        // y goes: its endpoints go with it, and so does its name from the subscription.
        let mut b = UpdateBuilder::new(true);
        let x = eds_cluster("x", "svc-x");
        b.add(Kind::Cluster, 0, None, None, Some(&any(CLUSTER_TYPE, &x)));
        let c = held.candidate(Kind::Cluster, b.finish().expect("valid"));
        held.accept(c);
        assert_eq!(
            *held.subscription(Kind::Endpoint),
            BTreeSet::from(["svc-x".to_owned()])
        );
        assert_eq!(
            held.accepted.endpoints.keys().collect::<Vec<_>>(),
            ["svc-x"]
        );
    }

    #[test]
    fn removing_a_root_drops_its_children_in_the_same_candidate() {
        let mut held = Held::default();
        let mut b = UpdateBuilder::new(true);
        b.add(
            Kind::Listener,
            0,
            None,
            None,
            Some(&any(LISTENER_TYPE, &listener("l1", "r1"))),
        );
        let c = held.candidate(Kind::Listener, b.finish().expect("valid"));
        held.accept(c);
        assert_eq!(
            *held.subscription(Kind::Route),
            BTreeSet::from(["r1".to_owned()])
        );

        // A route not subscribed is ignored; the subscribed one is kept.
        let mut b = UpdateBuilder::new(false);
        for name in ["r1", "r9"] {
            let r = RouteConfiguration {
                name: name.to_owned(),
                ..RouteConfiguration::default()
            };
            b.add(Kind::Route, 0, None, None, Some(&any(ROUTE_TYPE, &r)));
        }
        let c = held.candidate(Kind::Route, b.finish().expect("valid"));
        held.accept(c);
        assert_eq!(held.accepted.routes.keys().collect::<Vec<_>>(), ["r1"]);

        let empty = UpdateBuilder::new(true).finish().expect("valid");
        let c = held.candidate(Kind::Listener, empty);
        assert!(c.resources.listeners.is_empty());
        assert!(c.resources.routes.is_empty());
        // Not accepted yet: the held set is unchanged (a NACK keeps it).
        assert_eq!(held.accepted.routes.len(), 1);
    }
}
