//! Test support for the Redis component tests: a real redis-server, never a mock.
//!
//! The redis-server harness is `mecha_test_support::redis` (shared with the end-to-end tests),
//! re-exported here under the names these tests use:
//!
//! - `REDIS_URL` set (e.g. `redis://127.0.0.1:6379/0`): tests that do not stop Redis use that
//!   server ([`shared_host`]); they isolate their keys with unique prefixes and topics and never
//!   flush anything.
//! - `REDIS_URL` unset: each test binary starts one throw-away redis-server on a free port, in a
//!   temporary directory, with AOF on (`appendfsync always`).
//! - Tests that stop or restart Redis always start their own throw-away [`RedisServer`],
//!   whatever `REDIS_URL` says: they must never touch a server someone else uses.
//!
//! Added here: [`raw`] (a plain redis-rs connection), [`spec`] and [`ctx`] (component specs).

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use mecha_capabilities::{BuildContext, ComponentSpec};

pub use mecha_test_support::redis::{shared_host, unique, RedisServer};

/// A plain redis-rs connection for looking behind a component's back.
pub fn raw(host: &str) -> redis::Connection {
    let url = if host.contains("://") {
        host.to_owned()
    } else {
        format!("redis://{host}")
    };
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("raw redis connection to {host}: {e}"))
}

/// A component spec on `host` with a unique key prefix (isolates parallel tests).
pub fn spec(name: &str, kind: &str, host: &str) -> ComponentSpec {
    ComponentSpec::new(name, kind)
        .with("redisHost", host)
        .with("keyPrefix", &unique("t"))
}

pub fn ctx() -> BuildContext {
    BuildContext {
        app_id: "test-app".to_owned(),
    }
}
