//! Redis components, on redis-rs' `ConnectionManager` (multiplexed, reconnects by itself).
//!
//! | type                  | struct               | metadata (besides the connection's)                      |
//! |-----------------------|----------------------|----------------------------------------------------------|
//! | `state.redis`         | [`RedisState`]       | `keyPrefix`                                              |
//! | `pubsub.redis`        | [`RedisPubSub`]      | `consumerID`, `processingTimeout`, `redeliverInterval`, `maxLenApprox`, `queueDepth`, `concurrency` |
//! | `lock.redis`          | [`RedisLock`]        | `keyPrefix`                                              |
//! | `sequencer.redis`     | [`RedisSequencer`]   | `keyPrefix`, `segmentSize`, `biggerThan.<key>`           |
//! | `configuration.redis` | [`RedisConfigStore`] | `keyPrefix`                                              |
//!
//! Connection metadata, the same for all (Dapr's names where Dapr has one): `redisHost`
//! (`host:port`, default `127.0.0.1:6379`, or a `redis://` / `rediss://` URL), `redisUsername`,
//! `redisPassword`, `redisDB`, `enableTLS`, `timeout` (every call, default `1s`), `dialTimeout`
//! (default: `timeout`), `redisProtocol` (`resp3`, the default, or `resp2` for Redis < 6).
//!
//! Shared behaviour:
//! - Constructors parse metadata only; the connection is made on first use, so a registry builds
//!   (and `mecha validate` runs) without Redis, and the sidecar starts while Redis is down.
//! - Every call has a deadline (`timeout`). Redis unreachable → [`Error::Unavailable`] naming
//!   the component, the address and the key, within that deadline; a refused connection is
//!   tried again until then, so calls made during a quick Redis restart succeed. The connection
//!   is re-established in the background: the same component object works again once Redis is
//!   back. A command sent on a connection found dead (Redis restarted, an idle connection
//!   closed) is sent once more on a new one when repeating it is harmless: reads, last-write
//!   sets and deletes without ETag, keep-alive, config writes, publish (at-least-once: a repeat
//!   may duplicate an event), next id (a repeat may skip an id). ETag / first-write writes,
//!   transactions, lock and unlock are not repeated: they fail as UNAVAILABLE, outcome unknown,
//!   rather than misreport their own success as a conflict.
//! - Keys get Dapr's `keyPrefix`: `appid` (default) → `<app id>||key`, `name` → `<component
//!   name>||key`, `none` → `key`, any other string → `<string>||key`. Locks live under
//!   `<prefix>lock||<resource>`, sequences under `<prefix>sequencer||<key>`, configuration
//!   under `<prefix>config||<app id>`. Topics (streams) are not prefixed.
//!
//! [`Error::Unavailable`]: crate::Error::Unavailable

mod backend;
mod configuration;
mod lock;
mod pubsub;
mod sequencer;
mod settings;
mod state;

pub use configuration::RedisConfigStore;
pub use lock::RedisLock;
pub use pubsub::RedisPubSub;
pub use sequencer::RedisSequencer;
pub use state::RedisState;
