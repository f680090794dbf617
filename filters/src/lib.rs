//! The filter chain over Pingora's request phases, and its filters.
//!
//! - [`chain`]: the [`HttpFilter`](chain::HttpFilter) trait and the ordered
//!   [`FilterChain`](chain::FilterChain) a listener runs for each request.
//! - [`capability`]: the capability filter — terminates runtime APIs (Layotto gRPC) in-process
//!   by handing the request to the API's tonic service through [`grpc_bridge`]; HTTP service
//!   invocation (`dapr-app-id`, `/v1.0/invoke/…`, `Host: <app>`) through the mesh invoker.
//! - [`grpc_bridge`]: Pingora h2 session ↔ tower service (framing by tonic; deadlines and the
//!   message-size limit here).
//! - [`metrics`]: per-method API metrics with label sets fixed at build time.
//! - [`router`]: the router filter — route match, direct responses, redirects, and the upstream
//!   phases, driving the mesh client's `Attempts` (endpoint pick, timeouts, retries, outlier
//!   feedback) plus route metrics and the access log.
//!
//! Dependency direction: proxy-core → filters → {api → capabilities → proto, mesh}.

#![forbid(unsafe_code)]

pub mod capability;
pub mod chain;
pub mod grpc_bridge;
pub mod metrics;
pub mod router;

pub use capability::{CapabilityFilter, GrpcApi, GrpcService};
pub use chain::{Decision, FilterChain, HttpFilter, RequestCtx};
