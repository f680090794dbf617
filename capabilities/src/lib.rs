//! Mecha's capability layer: protocol-neutral building blocks, the registry of named components,
//! and the components behind them.
//!
//! - Building blocks ([`state`], [`pubsub`], [`lock`], [`sequencer`], [`configuration`],
//!   [`secrets`], [`hello`], [`invoke`]) are traits over plain Rust types. Nothing here knows gRPC or HTTP:
//!   the API adapters (`mecha-api`) map wire messages onto these traits.
//! - [`registry::Registry`] builds the components a config names (`type: state.redis`, …) and
//!   hands them out by name; an unknown name is an error that lists the configured ones.
//! - Components: [`memory`] (embedded, the default) and [`redis`].
//! - [`conformance`]: the behaviours every implementation of a building block shares, written once
//!   and run against every component (the way Dapr's conformance suite works).

#![forbid(unsafe_code)]

pub mod configuration;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod hello;
pub mod invoke;
pub mod lock;
pub mod memory;
pub mod pubsub;
pub mod redis;
pub mod registry;
pub mod secrets;
pub mod sequencer;
pub mod spec;
pub mod state;
pub mod time;

use async_trait::async_trait;

pub use error::{Error, Result};
pub use registry::Registry;
pub use spec::{BuildContext, ComponentSpec};

/// Liveness of one component's backend, asked by the admin `/ready` endpoint.
#[async_trait]
pub trait Health: Send + Sync {
    /// `Ok(())` when the component can serve calls now (e.g. Redis answers PING).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
