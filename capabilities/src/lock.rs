//! The distributed-lock building block: owner-checked, expiring locks.

use async_trait::async_trait;

use crate::error::Result;
use crate::Health;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    pub resource_id: String,
    pub owner: String,
    /// Seconds until the lock expires unless kept alive; must be > 0.
    pub expire_secs: i32,
}

/// Outcome of unlock / keep-alive, as Layotto names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStatus {
    Success,
    /// No such lock (never taken, released, or expired).
    LockUnexist,
    /// The lock is held by another owner; nothing changed.
    LockBelongToOthers,
}

#[async_trait]
pub trait LockStore: Health {
    /// `Ok(true)` when acquired, `Ok(false)` when someone (including this owner) holds it.
    async fn try_lock(&self, req: LockRequest) -> Result<bool>;

    async fn unlock(&self, resource_id: &str, owner: &str) -> Result<LockStatus>;

    /// Extends the expiry of a lock this owner holds to `expire_secs` from now.
    async fn keep_alive(&self, req: LockRequest) -> Result<LockStatus>;
}
