//! Redis components: `state.redis`, `pubsub.redis` (Streams), `lock.redis`, `sequencer.redis`
//! and `configuration.redis`, on redis-rs' `ConnectionManager`.
//!
//! Shared behaviour (see [`settings`] for the connection metadata):
//! - Constructors parse metadata only; the connection is made on first use, so a registry builds
//!   (and `mecha validate` runs) without Redis, and the sidecar starts while Redis is down.
//! - Every call has a deadline (`timeout`, default 1s). Redis unreachable → [`Error::Unavailable`]
//!   naming the component, the address and the key, within that deadline. The connection is
//!   re-established in the background; the same component object works again once Redis is back.
//! - Keys get Dapr's `keyPrefix` (default: `<app id>||`), except stream names (topics).
//!
//! [`Error::Unavailable`]: crate::Error::Unavailable

mod backend;
mod configuration;
mod lock;
mod pubsub;
mod sequencer;
pub(crate) mod settings;
mod state;

pub use configuration::RedisConfigStore;
pub use lock::RedisLock;
pub use pubsub::RedisPubSub;
pub use sequencer::RedisSequencer;
pub use state::RedisState;
