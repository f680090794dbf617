//! `lock.memory`: owner-checked, expiring locks in one map.
//!
//! As in Layotto, a held lock is not re-entrant: `try_lock` by its own owner fails too. Expired
//! locks count as absent at once and are removed when touched, and by a sweep every
//! `max(64, len)` calls that take a lock.
//!
//! Bounded: metadata `maxKeys` (default 100 000 held locks) and `maxBytes` (default 16 MiB of
//! resource ids and owners) ([`super::Limits`]). A `try_lock` that would cross a bound first
//! drops expired locks; if it still would, it fails with RESOURCE_EXHAUSTED naming the store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::lock::{LockRequest, LockStatus, LockStore};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

use super::{Limits, Usage, DEFAULT_MAX_ID_BYTES, DEFAULT_MAX_KEYS};

#[derive(Debug)]
pub struct MemoryLock {
    /// `lock store "<name>"`: the prefix of every error message.
    label: String,
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    locks: HashMap<String, Held>,
    since_sweep: usize,
    /// What `locks` holds (expired locks included until removed).
    usage: Usage,
    /// No lock expires before this (earlier than the truth after a keep-alive; a sweep makes
    /// it exact).
    next_expiry: Option<Instant>,
}

#[derive(Debug)]
struct Held {
    owner: String,
    until: Instant,
}

/// What a lock counts against `maxBytes`.
fn size_of(resource_id: &str, held: &Held) -> usize {
    resource_id.len() + held.owner.len()
}

impl Inner {
    /// Drops every expired lock.
    fn sweep(&mut self, now: Instant) {
        self.since_sweep = 0;
        let usage = &mut self.usage;
        let mut next = None::<Instant>;
        self.locks.retain(|r, h| {
            if h.until <= now {
                usage.remove(size_of(r, h));
                return false;
            }
            next = Some(next.map_or(h.until, |n| n.min(h.until)));
            true
        });
        self.next_expiry = next;
    }

    /// The usage once `resource_id` is held by `held` instead of what holds it now.
    fn with(&self, resource_id: &str, held: &Held) -> Usage {
        let mut after = self.usage;
        if let Some(old) = self.locks.get(resource_id) {
            after.remove(size_of(resource_id, old));
        }
        after.add(size_of(resource_id, held));
        after
    }

    fn remove(&mut self, resource_id: &str) {
        if let Some(old) = self.locks.remove(resource_id) {
            self.usage.remove(size_of(resource_id, &old));
        }
    }
}

// === impl MemoryLock ===

impl MemoryLock {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            label: format!("lock store {:?}", spec.name),
            limits: Limits::from_spec(spec, DEFAULT_MAX_KEYS, DEFAULT_MAX_ID_BYTES)?,
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
            inner.sweep(now);
        }
        if inner
            .locks
            .get(&req.resource_id)
            .is_some_and(|h| h.until > now)
        {
            return Ok(false);
        }
        let held = Held {
            owner: req.owner,
            until: now + lease,
        };
        let mut after = inner.with(&req.resource_id, &held);
        if self.limits.check(&self.label, inner.usage, after).is_err()
            && inner.next_expiry.is_some_and(|t| t <= now)
        {
            // Expired locks hold nothing: make room before refusing.
            inner.sweep(now);
            after = inner.with(&req.resource_id, &held);
        }
        self.limits.check(&self.label, inner.usage, after)?;
        inner.usage = after;
        inner.next_expiry = Some(inner.next_expiry.map_or(held.until, |n| n.min(held.until)));
        inner.locks.insert(req.resource_id, held);
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
        inner.remove(resource_id);
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

    fn bounded(keys: &str, bytes: &str) -> MemoryLock {
        MemoryLock::new(
            &ComponentSpec::new("locks", "lock.memory")
                .with("maxKeys", keys)
                .with("maxBytes", bytes),
            &BuildContext::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn max_keys_bounds_held_locks_and_unlock_or_expiry_frees_room() {
        let l = bounded("2", "1000");
        assert!(l.try_lock(req("r1", "a", 100)).await.unwrap());
        assert!(l.try_lock(req("r2", "a", 100)).await.unwrap());
        let err = l.try_lock(req("r3", "a", 100)).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("\"locks\"") && m.contains("maxKeys=2")),
            "{err:?}"
        );
        // A held lock is still just held (false), not an error.
        assert!(!l.try_lock(req("r1", "b", 100)).await.unwrap());
        assert_eq!(l.unlock("r1", "a").await.unwrap(), LockStatus::Success);
        assert!(l.try_lock(req("r3", "a", 100)).await.unwrap());
        // An expired lock makes room too.
        expire(&l, "r2");
        l.inner.lock().next_expiry = Some(Instant::now());
        assert!(l.try_lock(req("r4", "a", 100)).await.unwrap());
        assert_eq!(l.inner.lock().usage, Usage { keys: 2, bytes: 6 });
    }

    #[tokio::test]
    async fn max_bytes_counts_resource_and_owner() {
        let l = bounded("100", "5");
        assert!(l.try_lock(req("rr", "abc", 100)).await.unwrap());
        let err = l.try_lock(req("s", "a", 100)).await.unwrap_err();
        assert!(err.to_string().contains("maxBytes=5"), "{err}");
        // Re-taking an expired lock of the same size fits.
        expire(&l, "rr");
        assert!(l.try_lock(req("rr", "xyz", 100)).await.unwrap());
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
