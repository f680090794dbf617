//! `lock.redis`: `SET <prefix>lock||<resource> <owner> NX PX <ms>`; unlock and keep-alive are
//! compare-and-act Lua scripts, so only the owner can release or extend a lock.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::{Script, Value};

use super::backend::{Backend, Repeat};
use super::settings::Settings;
use crate::error::{Error, Result};
use crate::lock::{LockRequest, LockStatus, LockStore};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

static UNLOCK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_unlock.lua")));
static KEEP_ALIVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_keepalive.lua")));

/// The Redis lock store.
#[derive(Debug, Clone)]
pub struct RedisLock {
    backend: Arc<Backend>,
}

impl RedisLock {
    /// Parses the metadata; connects on first use.
    pub fn new(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            backend: Arc::new(Backend::new(Settings::from_spec(spec, ctx)?)?),
        })
    }

    fn key(&self, resource: &str) -> String {
        self.backend.s.key(&format!("lock||{resource}"))
    }

    fn check(&self, resource: &str, owner: &str) -> Result<()> {
        if resource.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: lock resource id is empty",
                self.backend.label()
            )));
        }
        if owner.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: lock owner for resource {resource:?} is empty",
                self.backend.label()
            )));
        }
        Ok(())
    }

    fn expiry_ms(&self, req: &LockRequest) -> Result<u64> {
        match u64::try_from(req.expire_secs) {
            Ok(secs) if secs > 0 => Ok(secs * 1000),
            _ => Err(Error::InvalidArgument(format!(
                "{}: lock expiry for resource {:?} must be > 0 seconds, got {}",
                self.backend.label(),
                req.resource_id,
                req.expire_secs
            ))),
        }
    }

    /// Runs an owner-checked script. Unlock is not repeated after a dropped connection (a
    /// repeat of a successful unlock would report LOCK_UNEXIST); keep-alive may be.
    async fn compare_and_act(
        &self,
        script: &Script,
        repeat: Repeat,
        what: &str,
        req: (&str, &str, Option<u64>),
    ) -> Result<LockStatus> {
        let (resource, owner, expiry) = req;
        let mut inv = script.prepare_invoke();
        inv.key(self.key(resource)).arg(owner);
        if let Some(ms) = expiry {
            inv.arg(ms);
        }
        let code: i64 = self
            .backend
            .call_as(repeat, what, resource, |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(match code {
            0 => LockStatus::Success,
            1 => LockStatus::LockUnexist,
            _ => LockStatus::LockBelongToOthers,
        })
    }
}

#[async_trait]
impl Health for RedisLock {
    async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
}

#[async_trait]
impl LockStore for RedisLock {
    async fn try_lock(&self, req: LockRequest) -> Result<bool> {
        self.check(&req.resource_id, &req.owner)?;
        let ms = self.expiry_ms(&req)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&req.resource_id))
            .arg(&req.owner)
            .arg("NX")
            .arg("PX")
            .arg(ms);
        let reply: Value = self
            .backend
            .call_once("lock resource", &req.resource_id, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        // OK when set; nil when the key exists.
        Ok(!matches!(reply, Value::Nil))
    }

    async fn unlock(&self, resource_id: &str, owner: &str) -> Result<LockStatus> {
        self.check(resource_id, owner)?;
        self.compare_and_act(
            &UNLOCK,
            Repeat::Unsafe,
            "unlock resource",
            (resource_id, owner, None),
        )
        .await
    }

    async fn keep_alive(&self, req: LockRequest) -> Result<LockStatus> {
        self.check(&req.resource_id, &req.owner)?;
        let ms = self.expiry_ms(&req)?;
        self.compare_and_act(
            &KEEP_ALIVE,
            Repeat::Safe,
            "keep lock alive",
            (&req.resource_id, &req.owner, Some(ms)),
        )
        .await
    }
}
