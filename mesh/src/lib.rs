//! Mesh building blocks, shaped after Envoy's model and free of Pingora session types:
//!
//! - [`config`]: clusters and route tables as config data (serde).
//! - [`bounds`]: limits on every duration, count and path of that config.
//! - [`route`]: compiled route tables — virtual hosts on the authority (exact, `*.suffix`, `*`),
//!   routes on path (exact, prefix, regex), method and headers; actions cluster, weighted
//!   clusters, direct response, redirect; rewrites and header mutations.
//! - [`cluster`]: endpoints, load balancing, active health checks, outlier detection, circuit
//!   breakers.
//! - [`grpc_health`]: gRPC health v1 active checks.
//! - [`maglev`]: Maglev consistent hashing (pingora-load-balancing has Ketama only).
//! - [`retry`]: retry policies and backoff.
//! - [`metrics`]: per-route, per-cluster and per-invocation metric families;
//!   [`histogram`]: the lock-free latency histogram they (and the API metrics) record into.
//! - [`client`]: the mesh as a client — the one implementation of the upstream policies
//!   (pick, breakers, retries, timeouts, outlier accounting), driven by the router filter from
//!   Pingora's proxy phases and by [`client::MeshClient`] for invocations and event delivery.
//! - [`invoke`]: app ids resolved to clusters; [`invoke::MeshInvoker`] implements the
//!   service-invocation building block over the client.
//! - [`trace`]: W3C trace context.

#![forbid(unsafe_code)]

pub mod bounds;
pub mod client;
pub mod cluster;
pub mod config;
pub mod grpc_health;
pub mod histogram;
pub mod invoke;
pub mod maglev;
pub mod metrics;
pub mod retry;
pub mod route;
pub mod trace;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

pub use cluster::{AttemptResult, Cluster, Endpoint, PickError};
pub use route::{Action, Route, RouteTable};

/// The clusters of one Snapshot, by name.
pub type Clusters = HashMap<String, Arc<Cluster>>;

/// What a config update does to one cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChange {
    /// Unchanged: the same object (health, outlier, breaker and pool state) serves on.
    Kept,
    /// Only the endpoint list changed: the same object adopts it in place when the update is
    /// applied ([`Cluster::set_endpoints`]).
    Endpoints(Vec<config::EndpointConfig>),
    /// Changed otherwise: a new object (seeded with the old one's endpoint state).
    Rebuilt,
    Added,
}

/// The clusters an update asks for, and how each relates to the running ones.
#[derive(Debug, Default)]
pub struct ClusterPlan {
    pub clusters: Clusters,
    pub changes: Vec<(String, ClusterChange)>,
    /// Running clusters the update drops.
    pub removed: Vec<String>,
}

/// Builds every cluster; errors carry `clusters[i].…` paths.
pub fn build_clusters(
    cfgs: &[config::ClusterConfig],
    metrics: &metrics::MeshMetrics,
) -> Result<Clusters, Vec<String>> {
    plan_clusters(cfgs, metrics, None).map(|p| p.clusters)
}

/// Checks a cluster whose endpoint list alone changed: it is adopted in place
/// ([`Cluster::set_endpoints`]), not rebuilt, so it is checked here as [`Cluster::build`]
/// would check it. The errors are relative to the cluster (`endpoints[0].address: …`).
pub fn check_adopted_endpoints(c: &config::ClusterConfig) -> Vec<String> {
    let mut errs = bounds::cluster(c);
    if let Err(e) = cluster::check_endpoints(c) {
        errs.extend(e);
    }
    errs
}

/// Builds the clusters of a config update against the running ones (`prev`), carrying over
/// unchanged clusters as the same objects. Changes nothing that runs: endpoint-only changes
/// are applied by the caller once the whole update is accepted.
pub fn plan_clusters(
    cfgs: &[config::ClusterConfig],
    metrics: &metrics::MeshMetrics,
    prev: Option<&Clusters>,
) -> Result<ClusterPlan, Vec<String>> {
    let mut plan = ClusterPlan::default();
    let mut errors = Vec::new();
    for (i, c) in cfgs.iter().enumerate() {
        if c.name.trim().is_empty() {
            errors.push(format!("clusters[{i}].name: must not be empty"));
            continue;
        }
        if plan.clusters.contains_key(&c.name) {
            errors.push(format!("clusters[{i}].name: {:?} is defined twice", c.name));
            continue;
        }
        let old = prev.and_then(|p| p.get(&c.name));
        let (cluster, change) = match old {
            Some(o) if o.serves(c) => (Ok(o.clone()), ClusterChange::Kept),
            Some(o) if o.differs_in_endpoints_only(c) => {
                let errs = check_adopted_endpoints(c);
                let ok = if errs.is_empty() {
                    Ok(o.clone())
                } else {
                    Err(errs)
                };
                (ok, ClusterChange::Endpoints(c.endpoints.clone()))
            }
            Some(o) => (
                Cluster::build_from(c, metrics, Some(o)).map(Arc::new),
                ClusterChange::Rebuilt,
            ),
            None => (
                Cluster::build(c, metrics).map(Arc::new),
                ClusterChange::Added,
            ),
        };
        match cluster {
            Ok(cl) => {
                plan.clusters.insert(c.name.clone(), cl);
                plan.changes.push((c.name.clone(), change));
            }
            Err(es) => errors.extend(es.into_iter().map(|e| format!("clusters[{i}].{e}"))),
        }
    }
    if let Some(p) = prev {
        let mut removed: Vec<String> = p
            .keys()
            .filter(|n| !plan.clusters.contains_key(*n))
            .cloned()
            .collect();
        removed.sort();
        plan.removed = removed;
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}
