//! [`AdsStatus`]: what the client is doing, for `/config_dump`, metrics and tests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::Api;

/// The state of the connection to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting to the control plane.
    Connecting,
    /// Connected (HTTP/2 up) and the stream opened or opening; its response headers may only
    /// come with the first response.
    Connected,
    /// The last stream failed or ended; the next attempt starts after `delay`.
    Backoff { delay: Duration },
}

/// Per resource type: what was last accepted and rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The version of the last accepted response (SotW `version_info`, delta
    /// `system_version_info`, which is informational only).
    pub version: String,
    /// The nonce of the last response received, accepted or not.
    pub nonce: String,
    /// The `error_detail` message of the last NACK, and when it was sent.
    pub last_error: Option<(String, SystemTime)>,
    pub accepted: u64,
    pub rejected: u64,
    /// When a response of this type was last accepted.
    pub last_update: Option<SystemTime>,
}

/// A copy of the status at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub state: ConnectionState,
    /// The variant in use: the configured one, or [`Api::Sotw`] after a delta fallback.
    pub api: Api,
    /// The server answered UNIMPLEMENTED to delta and the client fell back to SotW.
    pub delta_fallback: bool,
    /// Streams opened so far (reconnects are `streams - 1`).
    pub streams: u64,
    /// Why the last stream or connection attempt ended.
    pub last_stream_error: Option<String>,
    /// By type URL.
    pub types: BTreeMap<&'static str, TypeStatus>,
}

/// Shared, readable status of one ADS client. Writers are the client's single task; readers
/// take snapshots or watch for changes (a `watch` channel: one lock, no reader can block the
/// client for long).
#[derive(Debug)]
pub struct AdsStatus {
    tx: watch::Sender<StatusSnapshot>,
}

impl Default for AdsStatus {
    fn default() -> Self {
        AdsStatus::new()
    }
}

impl AdsStatus {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(StatusSnapshot {
            state: ConnectionState::Connecting,
            api: Api::Sotw,
            delta_fallback: false,
            streams: 0,
            last_stream_error: None,
            types: BTreeMap::new(),
        });
        AdsStatus { tx }
    }

    /// The status now.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every change (e.g. to wait for a state without polling).
    pub fn watch(&self) -> watch::Receiver<StatusSnapshot> {
        self.tx.subscribe()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        self.tx.send_modify(f);
    }

    pub(crate) fn update_type(&self, type_url: &'static str, f: impl FnOnce(&mut TypeStatus)) {
        self.tx
            .send_modify(|s| f(s.types.entry(type_url).or_default()));
    }
}
