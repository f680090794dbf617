//! One component's link to Redis: a lazily created `ConnectionManager` (reconnects by itself;
//! replaced after a timeout), a probe connection of its own for health pings, a deadline on
//! every call, and the mapping of Redis errors onto [`Error`] kinds.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ProtocolVersion, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::time::Instant;

use super::settings::Settings;
use crate::error::{Error, Result};

/// The longest pause between two tries of a refused connection within one call.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);

pub(crate) struct Backend {
    pub s: Settings,
    client: redis::Client,
    /// Created on first use (it needs a Tokio runtime; building a registry must not), and
    /// replaced after errors it would not recover from by itself (see `needs_new_connection`).
    manager: Mutex<Option<ConnectionManager>>,
    /// Health pings' own connection. A connection's I/O task runs on the runtime that first
    /// used it, and `/ready` (the admin thread) usually asks first: pinging on the shared
    /// connection would put every request's Redis I/O on the admin thread.
    probe: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("component", &self.s.label)
            .field("addr", &self.s.addr)
            .finish()
    }
}

impl Backend {
    pub fn new(s: Settings) -> Result<Self> {
        let client = redis::Client::open(s.info.clone())
            .map_err(|e| Error::InvalidArgument(format!("metadata.redisHost: {e}")))?;
        Ok(Self {
            s,
            client,
            manager: Mutex::new(None),
            probe: Mutex::new(None),
        })
    }

    pub fn label(&self) -> &str {
        &self.s.label
    }

    fn config(&self, response_timeout: Option<Duration>) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.s.dial_timeout))
            .set_response_timeout(response_timeout)
            // One connection attempt per reconnect: calls retry a refused connection themselves
            // within their own deadline, so a down Redis fails each call quickly instead of
            // queueing it behind a long backoff.
            .set_number_of_retries(0)
    }

    /// The shared connection (multiplexed: concurrent calls pipeline on it).
    fn shared(&self) -> RedisResult<ConnectionManager> {
        let mut slot = self.manager.lock();
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.config(Some(self.s.timeout)),
        )?;
        *slot = Some(m.clone());
        Ok(m)
    }

    /// A connection of its own, for blocking reads (XREADGROUP BLOCK) that would otherwise
    /// stall every call queued behind them on the shared connection.
    pub fn dedicated(
        &self,
        response_timeout: Duration,
        what: &str,
        key: &str,
    ) -> Result<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.config(Some(response_timeout)),
        )
        .map_err(|e| self.map_err(&e, what, key))
    }

    /// A client for a pub/sub connection: RESP2, which the crate's async `PubSub` speaks.
    pub fn pubsub_client(&self) -> Result<redis::Client> {
        let settings = self
            .s
            .info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP2);
        redis::Client::open(self.s.info.clone().set_redis_settings(settings))
            .map_err(|e| Error::InvalidArgument(format!("metadata.redisHost: {e}")))
    }

    /// Runs `f` on the shared connection within the component's timeout. For commands that may
    /// run twice without harm (reads, idempotent writes, at-least-once publishing): a command
    /// sent on a connection found dead (Redis restarted, an idle connection closed by the
    /// server or the network) is sent once more on a new connection.
    pub async fn call<T, F, Fut>(&self, what: &str, key: &str, f: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run(None, self.s.timeout, Repeat::Safe, what, key, f)
            .await
    }

    /// Like [`Backend::call`], for commands whose outcome a repeat would misreport (an ETag
    /// write that succeeded would then report a mismatch; a lock taken would read as held by
    /// someone): a dropped connection fails the call as UNAVAILABLE, outcome unknown.
    pub async fn call_once<T, F, Fut>(&self, what: &str, key: &str, f: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run(None, self.s.timeout, Repeat::Unsafe, what, key, f)
            .await
    }

    /// [`Backend::call`] or [`Backend::call_once`], chosen per request.
    pub async fn call_as<T, F, Fut>(&self, repeat: Repeat, what: &str, key: &str, f: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run(None, self.s.timeout, repeat, what, key, f).await
    }

    /// Runs a repeatable `f` on a dedicated connection within `timeout`.
    pub async fn call_on<T, F, Fut>(
        &self,
        conn: &ConnectionManager,
        timeout: Duration,
        what: &str,
        key: &str,
        f: F,
    ) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run(Some(conn), timeout, Repeat::Safe, what, key, f)
            .await
    }

    /// Runs `f` within `timeout`. A refused connection, or a server still loading its data
    /// after a restart, never ran the command, so it is tried again (after a short pause) while
    /// the deadline allows: calls made while Redis restarts wait for it instead of failing. A
    /// dropped connection is tried again once when `repeat` allows.
    async fn run<T, F, Fut>(
        &self,
        conn: Option<&ConnectionManager>,
        timeout: Duration,
        repeat: Repeat,
        what: &str,
        key: &str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + timeout;
        let attempts = async {
            let mut pause = Duration::from_millis(10);
            let mut repeated = false;
            loop {
                let c = match conn {
                    Some(c) => c.clone(),
                    None => self.shared()?,
                };
                match f(c).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        if conn.is_none() && (needs_new_connection(&e) || e.is_timeout()) {
                            *self.manager.lock() = None;
                        }
                        if never_ran(&e) && Instant::now() + pause < deadline {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        } else if repeat == Repeat::Safe && !repeated && e.is_connection_dropped() {
                            // Once: the manager is reconnecting by now.
                            repeated = true;
                        } else {
                            return Err(e);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(&e, what, key)),
            Err(_) => {
                // A connection that let a call time out may be stuck (a stalled server, a
                // half-open socket): later calls start on a new one.
                if conn.is_none() {
                    *self.manager.lock() = None;
                }
                Err(Error::Unavailable(format!(
                    "{}: redis at {} did not answer within {timeout:?} ({})",
                    self.s.label,
                    self.s.addr,
                    target(what, key)
                )))
            }
        }
    }

    /// PING within the timeout, on the probe connection: what `/ready` asks.
    pub async fn ping(&self) -> Result<()> {
        let conn = {
            let mut slot = self.probe.lock();
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.dedicated(self.s.timeout, "ping", "")?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let cmd = redis::cmd("PING");
        let res = self
            .call_on(&conn, self.s.timeout, "ping", "", |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async::<Value>(&mut c).await }
            })
            .await;
        if res.is_err() {
            // The next ping starts on a fresh connection (a handshake that failed on a loading
            // or stalled server would otherwise keep failing).
            *self.probe.lock() = None;
        }
        res.map(drop)
    }

    /// Maps a Redis error onto an error kind, naming the component, the address and the item.
    pub fn map_err(&self, e: &RedisError, what: &str, key: &str) -> Error {
        let (label, addr) = (&self.s.label, &self.s.addr);
        if is_unavailable(e) {
            Error::Unavailable(format!(
                "{label}: redis at {addr} is unavailable ({}): {e}",
                target(what, key)
            ))
        } else {
            Error::Internal(format!(
                "{label}: redis at {addr} failed ({}): {e}",
                target(what, key)
            ))
        }
    }
}

/// Whether a command may be sent again after its connection dropped under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    Safe,
    Unsafe,
}

/// `get key "k"`, or just `ping` when there is no key.
fn target(what: &str, key: &str) -> String {
    if key.is_empty() {
        what.to_owned()
    } else {
        format!("{what} {key:?}")
    }
}

/// The command certainly did not run: the connection was refused, or the server is loading.
fn never_ran(e: &RedisError) -> bool {
    e.is_connection_refusal() || e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

/// The connection manager only re-connects after I/O errors; a handshake that failed otherwise
/// (wrong password, server loading) would fail every later call. Such errors drop the manager,
/// and the next call builds a new one.
fn needs_new_connection(e: &RedisError) -> bool {
    is_auth_failure(e) || e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

fn is_auth_failure(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || is_auth_failure(e)
        || matches!(
            e.kind(),
            ErrorKind::InvalidClientConfig
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// `true` for a server error with this code (`NOGROUP`, `BUSYGROUP`, …).
pub(crate) fn has_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
}

// === Reply helpers (replies differ between RESP2 and RESP3) ===

pub(crate) fn into_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        Value::VerbatimString { text, .. } => Some(Bytes::from(text)),
        Value::Int(i) => Some(Bytes::from(i.to_string())),
        Value::Okay => Some(Bytes::from_static(b"OK")),
        _ => None,
    }
}

pub(crate) fn into_string(v: Value) -> Option<String> {
    into_bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The elements of an array-like reply; a map's pairs are flattened (`k1 v1 k2 v2 …`).
pub(crate) fn into_items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Map(pairs) => Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Attribute { data, .. } => into_items(*data),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
