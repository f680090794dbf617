//! The filter chain over Pingora's request phases, and its filters.
//!
//! - [`chain`]: the [`HttpFilter`](chain::HttpFilter) trait and the ordered
//!   [`FilterChain`](chain::FilterChain) a listener runs for each request.
//! - [`capability`]: the capability filter — terminates runtime APIs (Layotto gRPC) in-process
//!   by handing the request to the API's tonic service through [`grpc_bridge`].
//! - [`grpc_bridge`]: Pingora h2 session ↔ tower service (framing by tonic; deadlines and the
//!   message-size limit here).
//! - [`metrics`]: per-method API metrics with label sets fixed at build time.
//!
//! Dependency direction: proxy-core → filters → api → capabilities → proto.

#![forbid(unsafe_code)]

pub mod capability;
pub mod chain;
pub mod grpc_bridge;
pub mod metrics;

pub use capability::{CapabilityFilter, GrpcApi, GrpcService};
pub use chain::{Decision, FilterChain, HttpFilter, RequestCtx};
