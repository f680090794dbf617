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
//! - [`metrics`]: per-route and per-cluster metric families.
//!
//! The router filter (`mecha-filters`) drives these from Pingora's proxy phases.

#![forbid(unsafe_code)]

pub mod bounds;
pub mod cluster;
pub mod config;
pub mod grpc_health;
pub mod maglev;
pub mod metrics;
pub mod retry;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;

pub use cluster::{AttemptResult, Cluster, Endpoint, PickError};
pub use route::{Action, Route, RouteTable};

/// The clusters of one Snapshot, by name.
pub type Clusters = HashMap<String, Arc<Cluster>>;

/// Builds every cluster; errors carry `clusters[i].…` paths.
pub fn build_clusters(
    cfgs: &[config::ClusterConfig],
    metrics: &metrics::MeshMetrics,
) -> Result<Clusters, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (i, c) in cfgs.iter().enumerate() {
        if c.name.trim().is_empty() {
            errors.push(format!("clusters[{i}].name: must not be empty"));
            continue;
        }
        if out.contains_key(&c.name) {
            errors.push(format!("clusters[{i}].name: {:?} is defined twice", c.name));
            continue;
        }
        match Cluster::build(c, metrics) {
            Ok(cl) => {
                out.insert(c.name.clone(), Arc::new(cl));
            }
            Err(es) => errors.extend(es.into_iter().map(|e| format!("clusters[{i}].{e}"))),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
