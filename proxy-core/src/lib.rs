//! Mecha's data plane on Pingora.
//!
//! - [`config`]: the YAML schema, parsing and validation (every error with its path).
//! - [`snapshot`]: the immutable [`Snapshot`](snapshot::Snapshot) built from a config — component
//!   registry and one filter chain per listener — published through `ArcSwap`.
//! - [`lean`]: capability-only listeners served without the proxy phases.
//! - [`proxy`]: the Pingora `ProxyHttp` of a listener: load the Snapshot once, run the chain.
//! - [`sniff`]: HTTP/1 vs h2c detection that never waits on a short HTTP/1 request.
//! - [`tcp`]: L4 TCP proxy listeners (opaque protocols to a cluster).
//! - [`admin`]: `/healthz`, `/ready`, Layotto's `/actuator/health/*`, `/metrics`.
//! - [`server`]: bootstrap (one Pingora service per listener, admin, background tasks) and
//!   SIGTERM draining.
//!
//! Dependency direction: binary → proxy-core → filters → api → capabilities → proto.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod lean;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod sniff;
pub mod tcp;

pub use config::Config;
pub use server::{run, run_with_source, StartError};
