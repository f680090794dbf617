//! Embedded components: everything lives in this process, nothing survives a restart.
//!
//! They are the default (`mecha run` with no config) and the reference implementations the
//! conformance suite ([`crate::conformance`]) is first run against. Constructors are synchronous
//! and cheap; a component that needs a background task (pub/sub dispatch, configuration pushes)
//! spawns it lazily on the first `subscribe`, which always runs inside a tokio runtime.
//!
//! | type                          | struct                | metadata                                   |
//! |-------------------------------|-----------------------|--------------------------------------------|
//! | `state.memory`                | [`MemoryState`]       | —                                          |
//! | `pubsub.memory`               | [`MemoryPubSub`]      | `queueDepth`, `concurrency`, `processingTimeout`, `redeliverInterval`, `publishTimeout` |
//! | `lock.memory`                 | [`MemoryLock`]        | —                                          |
//! | `sequencer.memory`            | [`MemorySequencer`]   | `biggerThan.<key>`                         |
//! | `configuration.memory`        | [`MemoryConfigStore`] | —                                          |
//! | `secretstores.local.env`      | [`EnvSecretStore`]    | `prefix`                                   |
//! | `secretstores.local.file`     | [`FileSecretStore`]   | `secretsFile`, `nestedSeparator`, `multiValued` |
//! | `hello.helloworld`            | [`HelloWorld`]        | `hello`                                    |
//!
//! Locks are `parking_lot` ones and are never held across an `.await`.

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
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339_utc(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_714_564_800 + 3_723);
        assert_eq!(rfc3339_utc(t), "2024-05-01T13:02:03Z");
    }
}
