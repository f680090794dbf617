//! `lock.memory`: owner-checked, expiring locks in one map.
//!
//! As in Layotto, a held lock is not re-entrant: `try_lock` by its own owner fails too. Expired
//! locks count as absent at once and are removed when touched, and by a sweep every
//! `max(64, len)` calls that take a lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::lock::{LockRequest, LockStatus, LockStore};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

#[derive(Debug)]
pub struct MemoryLock {
    /// `lock store "<name>"`: the prefix of every error message.
    label: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    locks: HashMap<String, Held>,
    since_sweep: usize,
}

#[derive(Debug)]
struct Held {
    owner: String,
    until: Instant,
}

// === impl MemoryLock ===

impl MemoryLock {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            label: format!("lock store {:?}", spec.name),
            inner: Mutex::default(),
        })
    }

    fn check_ids(&self, resource_id: &str, owner: &str) -> Result<()> {
        if resource_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: resource id is empty",
                self.label
            )));
        }
        if owner.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: owner is empty for resource {resource_id:?}",
                self.label
            )));
        }
        Ok(())
    }

    /// Validates a request and returns its lease length.
    fn lease(&self, req: &LockRequest) -> Result<Duration> {
        self.check_ids(&req.resource_id, &req.owner)?;
        match u64::try_from(req.expire_secs) {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(Error::InvalidArgument(format!(
                "{}: expire must be a positive number of seconds for resource {:?}, got {}",
                self.label, req.resource_id, req.expire_secs
            ))),
        }
    }
}

#[async_trait]
impl Health for MemoryLock {}

#[async_trait]
impl LockStore for MemoryLock {
    async fn try_lock(&self, req: LockRequest) -> Result<bool> {
        let lease = self.lease(&req)?;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.since_sweep += 1;
        if inner.since_sweep >= inner.locks.len().max(64) {
            inner.since_sweep = 0;
            inner.locks.retain(|_, h| h.until > now);
        }
        if inner
            .locks
            .get(&req.resource_id)
            .is_some_and(|h| h.until > now)
        {
            return Ok(false);
        }
        inner.locks.insert(
            req.resource_id,
            Held {
                owner: req.owner,
                until: now + lease,
            },
        );
        Ok(true)
    }

    async fn unlock(&self, resource_id: &str, owner: &str) -> Result<LockStatus> {
        self.check_ids(resource_id, owner)?;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let status = match inner.locks.get(resource_id) {
            Some(h) if h.until <= now => LockStatus::LockUnexist,
            Some(h) if h.owner != owner => return Ok(LockStatus::LockBelongToOthers),
            Some(_) => LockStatus::Success,
            None => return Ok(LockStatus::LockUnexist),
        };
        // Both a released and an expired lock leave the map.
        inner.locks.remove(resource_id);
        Ok(status)
    }

    async fn keep_alive(&self, req: LockRequest) -> Result<LockStatus> {
        let lease = self.lease(&req)?;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.locks.get_mut(&req.resource_id) {
            Some(h) if h.until <= now => Ok(LockStatus::LockUnexist),
            Some(h) if h.owner != req.owner => Ok(LockStatus::LockBelongToOthers),
            Some(h) => {
                h.until = now + lease;
                Ok(LockStatus::Success)
            }
            None => Ok(LockStatus::LockUnexist),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn store() -> MemoryLock {
        MemoryLock::new(
            &ComponentSpec::new("locks", "lock.memory"),
            &BuildContext::default(),
        )
        .unwrap()
    }

    fn req(resource: &str, owner: &str, secs: i32) -> LockRequest {
        LockRequest {
            resource_id: resource.into(),
            owner: owner.into(),
            expire_secs: secs,
        }
    }

    /// Moves a held lock's deadline to now, as if its lease ran out.
    fn expire(l: &MemoryLock, resource: &str) {
        l.inner.lock().locks.get_mut(resource).unwrap().until = Instant::now();
    }

    #[tokio::test]
    async fn expired_lock_is_free_and_unexist() {
        let l = store();
        assert!(l.try_lock(req("r", "a", 100)).await.unwrap());
        expire(&l, "r");
        assert_eq!(l.unlock("r", "a").await.unwrap(), LockStatus::LockUnexist);
        assert_eq!(
            l.keep_alive(req("r", "a", 5)).await.unwrap(),
            LockStatus::LockUnexist
        );
        assert!(l.try_lock(req("r", "b", 100)).await.unwrap());
        expire(&l, "r");
        assert!(l.try_lock(req("r", "c", 100)).await.unwrap());
        assert_eq!(l.unlock("r", "c").await.unwrap(), LockStatus::Success);
    }

    #[tokio::test]
    async fn bad_arguments_name_the_store_and_resource() {
        let l = store();
        for secs in [0, -1] {
            let err = l.try_lock(req("r", "a", secs)).await.unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains("\"locks\"") && err.to_string().contains("\"r\""));
            assert!(l.keep_alive(req("r", "a", secs)).await.is_err());
        }
        assert!(l.try_lock(req("", "a", 1)).await.is_err());
        assert!(l.try_lock(req("r", "", 1)).await.is_err());
        assert!(l.unlock("", "a").await.is_err());
    }

    #[tokio::test]
    async fn sweep_drops_expired_locks() {
        let l = store();
        for i in 0..10 {
            assert!(l.try_lock(req(&format!("r{i}"), "a", 100)).await.unwrap());
            expire(&l, &format!("r{i}"));
        }
        for _ in 0..64 {
            let _ = l.try_lock(req("keep", "a", 100)).await.unwrap();
        }
        assert_eq!(l.inner.lock().locks.len(), 1);
    }
}
