//! Mecha's data plane on Pingora.
//!
//! - [`config`]: the YAML schema, parsing and validation (every error with its path).
//! - [`snapshot`]: the immutable [`Snapshot`](snapshot::Snapshot): the named resources of one
//!   config version (listeners, route tables, clusters, components, invocation targets),
//!   built against the running
//!   one so unchanged resources are the same objects; building is also how config is validated.
//! - [`resources`]: the resource manager — applies config updates as diffs (no data, state or
//!   subscription lost for what did not change), publishes Snapshots, reports `/config_dump`.
//! - [`listeners`]: the listener manager — per-worker `SO_REUSEPORT` accept loops on
//!   current-thread runtimes, listeners added/removed/moved live, original-destination
//!   dispatch to virtual listeners.
//! - [`lean`]: capability-only listeners served without the proxy phases.
//! - [`proxy`]: the Pingora `ProxyHttp` of a listener: load the Snapshot once, run the chain.
//! - [`sniff`]: HTTP/1 vs h2c detection that never waits on a short HTTP/1 request.
//! - [`tcp`]: L4 TCP proxy listeners (opaque protocols to a cluster).
//! - [`admin`]: `/healthz`, `/ready`, Layotto's `/actuator/health/*`, `/metrics`.
//! - [`server`]: bootstrap (worker threads and listeners, Pingora's admin and background
//!   services) and SIGTERM draining.
//!
//! Dependency direction: binary → proxy-core → filters → api → capabilities → proto.

#![forbid(unsafe_code)]

pub mod admin;
pub mod chains;
pub mod config;
pub mod lean;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod sniff;
pub mod tcp;

pub use config::Config;
pub use server::{run, run_with, run_with_source, Feed, StartError};

/// Checks a config text as serving it would: parse, then build every resource with no network
/// I/O (`mecha validate`). Returns the config, or every problem with its path.
pub fn check(yaml: &str) -> Result<Config, Vec<String>> {
    let cfg = config::parse(yaml)?;
    let mut errors = config::validate(&cfg);
    let metrics = metrics::Metrics::new();
    let source = snapshot::UpdateSource::yaml("check", yaml);
    if let Err(e) = snapshot::Snapshot::build(cfg.clone(), &metrics, None, &source) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}
