//! The xDS source: Mecha configured by a control plane (istiod, go-control-plane).
//!
//! - [`ads`]: the ADS client — delta (`DeltaAggregatedResources`) or state-of-the-world
//!   (`StreamAggregatedResources`), ACK/NACK of every response, wildcard LDS/CDS/components and
//!   named RDS/EDS subscriptions, reconnect with backoff resending what it holds.
//! - [`translate`]: Envoy v3 Listener / RouteConfiguration / Cluster / ClusterLoadAssignment and
//!   `mecha.config.v1.Component` onto Mecha's config model; anything that would change
//!   behaviour and is not supported is an error naming the field (the resource is NACKed).
//! - [`source`]: the client as the sidecar's config feed — each checked response translated,
//!   merged with the bootstrap file and applied by the resource manager (ACK), or refused with
//!   its errors (NACK).
//!
//! Dependency direction: binary → xds → proxy-core (the config model it produces).

#![forbid(unsafe_code)]

pub mod ads;
pub mod resources;
pub mod source;
pub mod translate;
