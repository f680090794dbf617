//! `state.redis`: one hash per key, `{data, version}` (Dapr's layout), with the version as the
//! ETag. Every write is a Lua script, so the ETag / first-write check and the write are atomic;
//! a transaction is one script that checks every operation before applying any.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::{Script, Value};

use super::backend::{as_int, into_bytes, into_items, Backend, Repeat};
use super::settings::Settings;
use crate::error::{Error, Result};
use crate::memory::rfc3339_utc;
use crate::spec::{BuildContext, ComponentSpec};
use crate::state::{
    check_key, ttl_from_metadata, BulkGetItem, Concurrency, DeleteRequest, Metadata, SetRequest,
    StateFeatures, StateStore, StateValue, TransactionOp,
};
use crate::Health;

static SET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/state_set.lua")));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/state_delete.lua")));
static TRANSACT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/state_transact.lua")));

/// The Redis state store.
#[derive(Debug, Clone)]
pub struct RedisState {
    backend: Arc<Backend>,
    /// The store's version counter (see `scripts/state_set.lua`). Outside the key prefix, so
    /// no state key can collide with it.
    version_key: String,
}

impl RedisState {
    /// Parses the metadata; connects on first use.
    pub fn new(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        let settings = Settings::from_spec(spec, ctx)?;
        let version_key = format!("mecha-state-version||{}", settings.key_prefix);
        Ok(Self {
            backend: Arc::new(Backend::new(settings)?),
            version_key,
        })
    }

    fn label(&self) -> &str {
        self.backend.label()
    }

    /// ETags this store issues are versions (decimal integers); an empty one means none, as
    /// Dapr treats it. Anything else cannot match: invalid.
    fn check_etag(&self, key: &str, etag: Option<&str>) -> Result<String> {
        match etag {
            None | Some("") => Ok(String::new()),
            Some(e) if e.parse::<u64>().is_ok() => Ok(e.to_owned()),
            Some(e) => Err(Error::EtagInvalid(format!(
                "{}: ETag {e:?} for key {key:?} is not a version this store issued",
                self.label()
            ))),
        }
    }

    fn mismatch(&self, key: &str, etag: &str) -> Error {
        let addr = &self.backend.s.addr;
        if etag.is_empty() {
            Error::EtagMismatch(format!(
                "{} (redis at {addr}): key {key:?} already exists (first-write)",
                self.label()
            ))
        } else {
            Error::EtagMismatch(format!(
                "{} (redis at {addr}): ETag {etag:?} for key {key:?} does not match the stored \
                 version",
                self.label()
            ))
        }
    }

    /// The script's ttl argument: seconds, or `''` for an item that does not expire (no
    /// `ttlInSeconds`, or `-1`): every write sets the item's expiry afresh.
    fn ttl_arg(&self, key: &str, metadata: &Metadata) -> Result<String> {
        Ok(ttl_from_metadata(self.label(), key, metadata)?
            .map(|s| s.to_string())
            .unwrap_or_default())
    }

    /// `HMGET data version` + `PTTL` for one key.
    fn read_cmds(&self, pipe: &mut redis::Pipeline, key: &str) {
        let k = self.backend.s.key(key);
        pipe.cmd("HMGET").arg(&k).arg("data").arg("version");
        pipe.cmd("PTTL").arg(&k);
    }
}

/// Builds a value from the replies to [`RedisState::read_cmds`]; `None` when the key is absent.
/// An item with a TTL reports its expiry as metadata `ttlExpireTime` (RFC 3339 UTC), as Dapr
/// does.
fn parse_item(fields: Value, pttl: &Value) -> Option<StateValue> {
    let mut items = into_items(fields)?.into_iter();
    let data = into_bytes(items.next()?)?;
    let etag = items.next().and_then(|v| as_int(&v)).map(|v| v.to_string());
    let mut metadata = Metadata::new();
    if let Some(ms) = as_int(pttl).and_then(|ms| u64::try_from(ms).ok()) {
        let at = SystemTime::now() + Duration::from_millis(ms);
        metadata.insert(TTL_EXPIRE_TIME.to_owned(), rfc3339_utc(at));
    }
    Some(StateValue {
        data,
        etag,
        metadata,
    })
}

/// A last-write set or a delete without ETag has the same effect when repeated; a checked one
/// would report a mismatch for its own success.
fn repeat_if(unchecked: bool) -> Repeat {
    if unchecked {
        Repeat::Safe
    } else {
        Repeat::Unsafe
    }
}

/// Metadata key of an item's expiry in a read, as Dapr names it.
const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

#[async_trait]
impl Health for RedisState {
    async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
}

#[async_trait]
impl StateStore for RedisState {
    fn features(&self) -> StateFeatures {
        StateFeatures {
            etag: true,
            transactional: true,
            ttl: true,
        }
    }

    async fn get(&self, key: &str, _metadata: &Metadata) -> Result<Option<StateValue>> {
        check_key(self.label(), key)?;
        let mut pipe = redis::pipe();
        self.read_cmds(&mut pipe, key);
        let (fields, pttl): (Value, Value) = self
            .backend
            .call("get key", key, |mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(parse_item(fields, &pttl))
    }

    /// One pipeline, one round trip; a key whose read fails (e.g. it holds another type) is
    /// reported in its own item.
    async fn bulk_get(&self, keys: &[String], _metadata: &Metadata) -> Result<Vec<BulkGetItem>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        for key in keys {
            check_key(self.label(), key)?;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in keys {
            self.read_cmds(&mut pipe, key);
        }
        let replies: Vec<redis::RedisResult<Value>> = self
            .backend
            .call("bulk get, first key", &keys[0], |mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let (fields, pttl) = (replies.next(), replies.next());
            out.push(match (fields, pttl) {
                (Some(Ok(fields)), Some(Ok(pttl))) => BulkGetItem {
                    key: key.clone(),
                    value: parse_item(fields, &pttl),
                    error: None,
                },
                (Some(Err(e)), _) | (_, Some(Err(e))) => BulkGetItem {
                    key: key.clone(),
                    value: None,
                    error: Some(self.backend.map_err(&e, "get key", key).to_string()),
                },
                _ => BulkGetItem {
                    key: key.clone(),
                    value: None,
                    error: Some(format!("{}: no reply for key {key:?}", self.label())),
                },
            });
        }
        Ok(out)
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        check_key(self.label(), &req.key)?;
        let etag = self.check_etag(&req.key, req.etag.as_deref())?;
        let ttl = self.ttl_arg(&req.key, &req.metadata)?;
        let first = req.options.concurrency == Concurrency::FirstWrite;
        let mut inv = SET.prepare_invoke();
        inv.key(self.backend.s.key(&req.key))
            .key(&self.version_key)
            .arg(req.value.as_ref())
            .arg(&etag)
            .arg(if first { "1" } else { "0" })
            .arg(&ttl);
        let version: i64 = self
            .backend
            .call_as(
                repeat_if(etag.is_empty() && !first),
                "set key",
                &req.key,
                |mut c| {
                    let inv = &inv;
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        if version < 0 {
            return Err(self.mismatch(&req.key, &etag));
        }
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        check_key(self.label(), &req.key)?;
        let etag = self.check_etag(&req.key, req.etag.as_deref())?;
        let mut inv = DELETE.prepare_invoke();
        inv.key(self.backend.s.key(&req.key)).arg(&etag);
        let res: i64 = self
            .backend
            .call_as(
                repeat_if(etag.is_empty()),
                "delete key",
                &req.key,
                |mut c| {
                    let inv = &inv;
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        if res < 0 {
            return Err(self.mismatch(&req.key, &etag));
        }
        Ok(())
    }

    async fn transact(&self, ops: Vec<TransactionOp>, _metadata: &Metadata) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // Validate everything before touching Redis: a bad ETag or TTL fails the whole
        // transaction with nothing applied.
        let mut inv = TRANSACT.prepare_invoke();
        let mut etags = Vec::with_capacity(ops.len());
        let mut keys = Vec::with_capacity(ops.len());
        for op in &ops {
            match op {
                TransactionOp::Upsert(r) => {
                    check_key(self.label(), &r.key)?;
                    let etag = self.check_etag(&r.key, r.etag.as_deref())?;
                    let ttl = self.ttl_arg(&r.key, &r.metadata)?;
                    let first = r.options.concurrency == Concurrency::FirstWrite;
                    inv.key(self.backend.s.key(&r.key))
                        .arg("set")
                        .arg(&etag)
                        .arg(if first { "1" } else { "0" })
                        .arg(&ttl)
                        .arg(r.value.as_ref());
                    etags.push(etag);
                    keys.push(r.key.as_str());
                }
                TransactionOp::Delete(r) => {
                    check_key(self.label(), &r.key)?;
                    let etag = self.check_etag(&r.key, r.etag.as_deref())?;
                    inv.key(self.backend.s.key(&r.key))
                        .arg("del")
                        .arg(&etag)
                        .arg("0")
                        .arg("")
                        .arg("");
                    etags.push(etag);
                    keys.push(r.key.as_str());
                }
            }
        }
        inv.key(&self.version_key);
        let (code, index): (i64, i64) = self
            .backend
            .call_once("transaction, first key", keys[0], |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        // Lua indexes operations from 1.
        let at = usize::try_from(index - 1).ok().filter(|i| *i < keys.len());
        match (code, at) {
            (0, _) => Ok(()),
            (-1, Some(i)) => Err(self.mismatch(keys[i], &etags[i])),
            (-2, Some(i)) => Err(Error::Internal(format!(
                "{} (redis at {}): key {:?} holds a value that is not a state item; transaction \
                 not applied",
                self.label(),
                self.backend.s.addr,
                keys[i]
            ))),
            _ => Err(Error::Internal(format!(
                "{} (redis at {}): unexpected transaction script reply ({code}, {index})",
                self.label(),
                self.backend.s.addr
            ))),
        }
    }
}
