//! The state building block: a key/value store with ETags, concurrency modes, bulk calls,
//! all-or-nothing transactions and per-item TTL.
//!
//! Semantics every implementation shares (checked by [`crate::conformance`]):
//! - ETags are opaque strings issued by the store; each successful write issues a new one.
//! - `set` with an ETag succeeds only if it equals the current one, else [`Error::EtagMismatch`]
//!   and nothing changes (a missing key never matches). An ETag the store cannot have issued is
//!   [`Error::EtagInvalid`].
//! - `set` without an ETag: [`Concurrency::FirstWrite`] succeeds only if the key does not exist;
//!   otherwise (last-write, the default) it overwrites.
//! - `delete` with an ETag is checked the same way; without one it always succeeds.
//! - `transact` applies every operation or none.
//! - metadata `ttlInSeconds` (integer; `-1` = never expire) sets an expiry on a write.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::Health;

/// Request/response metadata: free-form string pairs, as on the wire.
pub type Metadata = HashMap<String, String>;

/// Metadata key setting a TTL on a write, as Dapr and Layotto name it.
pub const TTL_METADATA: &str = "ttlInSeconds";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Concurrency {
    #[default]
    Unspecified,
    FirstWrite,
    LastWrite,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    #[default]
    Unspecified,
    Eventual,
    Strong,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateOptions {
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One item to write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    pub etag: Option<String>,
    pub metadata: Metadata,
    pub options: StateOptions,
}

/// One key to delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub metadata: Metadata,
    pub options: StateOptions,
}

/// A stored value with its current ETag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateValue {
    pub data: Bytes,
    pub etag: Option<String>,
    pub metadata: Metadata,
}

/// One result of a bulk get: either a value (possibly absent) or a per-key error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkGetItem {
    pub key: String,
    /// `None` when the key does not exist (or its lookup failed; see `error`).
    pub value: Option<StateValue>,
    /// Set when this one key could not be read; other keys are still answered.
    pub error: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionOp {
    Upsert(SetRequest),
    Delete(DeleteRequest),
}

/// What a store supports, so adapters can answer UNIMPLEMENTED with a clear message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateFeatures {
    pub etag: bool,
    pub transactional: bool,
    pub ttl: bool,
}

#[async_trait]
pub trait StateStore: Health {
    fn features(&self) -> StateFeatures;

    /// `Ok(None)` when the key does not exist.
    async fn get(&self, key: &str, metadata: &Metadata) -> Result<Option<StateValue>>;

    /// Reads many keys; a failure on one key is reported in its item, not for the whole call.
    async fn bulk_get(&self, keys: &[String], metadata: &Metadata) -> Result<Vec<BulkGetItem>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.get(key, metadata).await {
                Ok(value) => out.push(BulkGetItem {
                    key: key.clone(),
                    value,
                    error: None,
                }),
                Err(e) => out.push(BulkGetItem {
                    key: key.clone(),
                    value: None,
                    error: Some(e.to_string()),
                }),
            }
        }
        Ok(out)
    }

    async fn set(&self, req: SetRequest) -> Result<()>;

    /// Writes items one by one and stops at the first failure (not atomic; use `transact`).
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        for r in reqs {
            self.set(r).await?;
        }
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()>;

    /// Deletes keys one by one and stops at the first failure (not atomic; use `transact`).
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        for r in reqs {
            self.delete(r).await?;
        }
        Ok(())
    }

    /// Applies all operations atomically: every one or none (any ETag failure aborts all).
    async fn transact(&self, ops: Vec<TransactionOp>, metadata: &Metadata) -> Result<()>;
}

/// Parses `ttlInSeconds` from write metadata: `Ok(None)` = no expiry (absent or `-1`).
pub fn ttl_from_metadata(component: &str, key: &str, metadata: &Metadata) -> Result<Option<u64>> {
    let Some(raw) = metadata.get(TTL_METADATA) else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(n as u64)),
        _ => Err(Error::InvalidArgument(format!(
            "{component}: metadata {TTL_METADATA}={raw:?} for key {key:?} is not a positive \
             integer or -1"
        ))),
    }
}

/// Rejects empty keys with a message naming the store.
pub fn check_key(component: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{component}: state key is empty"
        )));
    }
    Ok(())
}
