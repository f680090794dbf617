//! Embedded components: everything lives in this process, nothing survives a restart.
//!
//! They are the default (`mecha run` with no config) and the reference implementations the
//! conformance suite ([`crate::conformance`]) is first run against. Constructors are synchronous
//! and cheap; a component that needs a background task (pub/sub dispatch, configuration pushes)
//! spawns it lazily on the first `subscribe`, which always runs inside a tokio runtime.
//!
//! | type                          | struct                | metadata                                   |
//! |-------------------------------|-----------------------|--------------------------------------------|
//! | `state.memory`                | [`MemoryState`]       | `maxKeys`, `maxBytes`                      |
//! | `pubsub.memory`               | [`MemoryPubSub`]      | `queueDepth`, `concurrency`, `processingTimeout`, `redeliverInterval`, `publishTimeout`, `maxBytes` |
//! | `lock.memory`                 | [`MemoryLock`]        | `maxKeys`, `maxBytes`                      |
//! | `sequencer.memory`            | [`MemorySequencer`]   | `biggerThan.<key>`, `maxKeys`, `maxBytes`  |
//! | `configuration.memory`        | [`MemoryConfigStore`] | `maxKeys`, `maxBytes`                      |
//! | `secretstores.local.env`      | [`EnvSecretStore`]    | `prefix`                                   |
//! | `secretstores.local.file`     | [`FileSecretStore`]   | `secretsFile`, `nestedSeparator`, `multiValued` |
//! | `hello.helloworld`            | [`HelloWorld`]        | `hello`                                    |
//!
//! Locks are `parking_lot` ones and are never held across an `.await`.
//!
//! ## Bounds
//!
//! Everything a client stores here lives in this process's memory, and the runtime API may be
//! reachable by more than one client, so every component holding client data is bounded
//! ([`Limits`]): `maxKeys` caps the number of entries and `maxBytes` the bytes of their keys and
//! values (payload only: per-entry bookkeeping is not counted). A write that would take the
//! component over a bound fails with RESOURCE_EXHAUSTED naming the component and the bound, and
//! changes nothing; writes that do not grow past a bound (an update of an existing key with a
//! value no larger, a delete) always work, and deletes and expiries free room.
//!
//! | component              | counts as a key        | bytes counted                         | defaults          |
//! |------------------------|------------------------|---------------------------------------|-------------------|
//! | `state.memory`         | a key (expired ones until swept) | key + value                 | 100 000 / 64 MiB  |
//! | `configuration.memory` | an item                | app id, group, label, key, content, tags, metadata | 100 000 / 64 MiB |
//! | `lock.memory`          | a held lock            | resource id + owner                   | 100 000 / 16 MiB  |
//! | `sequencer.memory`     | a key (never forgotten: ids must keep increasing) | key        | 100 000 / 16 MiB  |
//! | `pubsub.memory`        | — (`queueDepth` and `concurrency` bound the count per subscription) | every queued or in-flight event's data, topic, content type and metadata, once per subscription holding it | — / 64 MiB |

mod configuration;
mod hello;
mod lock;
mod pubsub;
mod secrets;
mod sequencer;
mod state;

pub use configuration::MemoryConfigStore;
pub use hello::HelloWorld;
pub use lock::MemoryLock;
pub use pubsub::MemoryPubSub;
pub use secrets::{EnvSecretStore, FileSecretStore};
pub use sequencer::MemorySequencer;
pub use state::MemoryState;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::spec::ComponentSpec;

/// Default `maxKeys` of the memory components that take it: enough for any development or
/// test workload, small enough that a client filling it costs tens of MiB of bookkeeping.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;

/// Default `maxBytes` of `state.memory`, `configuration.memory` and `pubsub.memory`: what an
/// embedded sidecar can afford to hold for its clients without threatening the host.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Default `maxBytes` of `lock.memory` and `sequencer.memory`, which hold only short ids.
pub const DEFAULT_MAX_ID_BYTES: u64 = 16 * 1024 * 1024;

/// How much a component holds: entries and the bytes of their keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub keys: u64,
    pub bytes: u64,
}

impl Usage {
    /// Adds one entry of `bytes`.
    pub fn add(&mut self, bytes: usize) {
        self.keys += 1;
        self.bytes += bytes as u64;
    }

    /// Removes one entry of `bytes` (saturating: never below empty).
    pub fn remove(&mut self, bytes: usize) {
        self.keys = self.keys.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
    }
}

/// The `maxKeys` / `maxBytes` bounds of one memory component (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_keys: u64,
    pub max_bytes: u64,
}

impl Limits {
    /// Reads `maxKeys` and `maxBytes` from `spec`; each must be at least 1 (a store that can
    /// hold nothing is a config mistake, and `0` meaning "unbounded" would make the safe
    /// default one typo away).
    pub fn from_spec(spec: &ComponentSpec, default_keys: u64, default_bytes: u64) -> Result<Self> {
        Ok(Self {
            max_keys: at_least_one(spec, "maxKeys", default_keys)?,
            max_bytes: at_least_one(spec, "maxBytes", default_bytes)?,
        })
    }

    /// Whether going from `before` to `after` is allowed: every bound is either kept or not
    /// made worse (so updates that do not grow and deletes always pass). The error names the
    /// component (`label`) and the bound.
    pub fn check(&self, label: &str, before: Usage, after: Usage) -> Result<()> {
        if after.keys > self.max_keys && after.keys > before.keys {
            return Err(Error::ResourceExhausted(format!(
                "{label}: full: the write needs {} keys, over its limit maxKeys={} (delete keys \
                 or raise metadata.maxKeys)",
                after.keys, self.max_keys
            )));
        }
        if after.bytes > self.max_bytes && after.bytes > before.bytes {
            return Err(Error::ResourceExhausted(format!(
                "{label}: full: the write needs {} bytes, over its limit maxBytes={} (delete keys \
                 or raise metadata.maxBytes)",
                after.bytes, self.max_bytes
            )));
        }
        Ok(())
    }
}

/// `metadata.<key>` as a count of at least 1.
pub(crate) fn at_least_one(spec: &ComponentSpec, key: &str, default: u64) -> Result<u64> {
    match spec.meta_u64(key, default)? {
        0 => Err(Error::InvalidArgument(format!(
            "metadata.{key}: must be at least 1, got 0"
        ))),
        n => Ok(n),
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC (`2024-05-01T12:00:00Z`), the way Dapr reports
/// `ttlExpireTime`. Hand-written (Howard Hinnant's days-to-civil) because it is the only date
/// formatting the crate needs, which does not justify a date-time dependency.
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    // Times before 1970 cannot come from `now + ttl`; clamp rather than fail.
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);

    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_refuse_growth_past_a_bound_only() {
        let l = Limits {
            max_keys: 2,
            max_bytes: 10,
        };
        let u = |keys, bytes| Usage { keys, bytes };
        l.check("s", u(1, 5), u(2, 10)).expect("accepted");
        let err = l
            .check("store \"s\"", u(2, 5), u(3, 6))
            .expect_err("refused");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(
            err.to_string().contains("store \"s\"") && err.to_string().contains("maxKeys=2"),
            "{err}"
        );
        let err = l.check("s", u(1, 5), u(1, 11)).expect_err("refused");
        assert!(err.to_string().contains("maxBytes=10"), "{err}");
        // Already over (e.g. limits lowered): shrinking or staying level still passes.
        l.check("s", u(3, 20), u(3, 20)).expect("accepted");
        l.check("s", u(3, 20), u(2, 15)).expect("accepted");
    }

    #[test]
    fn limits_come_from_metadata_and_must_be_positive() {
        let spec = ComponentSpec::new("s", "state.memory");
        assert_eq!(
            Limits::from_spec(&spec, 7, 8).expect("accepted"),
            Limits {
                max_keys: 7,
                max_bytes: 8
            }
        );
        let spec = spec.with("maxKeys", "3").with("maxBytes", "4");
        assert_eq!(
            Limits::from_spec(&spec, 7, 8).expect("accepted"),
            Limits {
                max_keys: 3,
                max_bytes: 4
            }
        );
        for (key, value) in [("maxKeys", "0"), ("maxBytes", "0"), ("maxKeys", "lots")] {
            let spec = ComponentSpec::new("s", "state.memory").with(key, value);
            let err = Limits::from_spec(&spec, 7, 8)
                .expect_err("refused")
                .to_string();
            assert!(err.starts_with(&format!("metadata.{key}:")), "{err}");
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339_utc(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_714_564_800 + 3_723);
        assert_eq!(rfc3339_utc(t), "2024-05-01T13:02:03Z");
    }
}
