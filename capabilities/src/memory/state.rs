//! `state.memory`: a key/value map with ETags, first-write, all-or-nothing transactions and TTL.
//!
//! - ETags are decimal version numbers. They come from one store-wide counter, so a key that is
//!   deleted and written again never gets back an ETag it had before (no ABA on old ETags).
//! - An empty ETag (`Some("")`) means "no ETag", as Dapr's `HasETag` treats it.
//! - The ETag is checked whenever one is given, whatever the concurrency option says.
//! - Expired entries are invisible at once and removed lazily: when a write touches them, and by
//!   a sweep every `max(64, len)` writes (amortised O(1) per write, no background task).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::spec::{BuildContext, ComponentSpec};
use crate::state::{
    check_key, ttl_from_metadata, BulkGetItem, Concurrency, DeleteRequest, Metadata, SetRequest,
    StateFeatures, StateStore, StateValue, TransactionOp,
};
use crate::Health;

/// Response metadata key carrying the expiry of an item with a TTL (RFC 3339, UTC), as in Dapr.
pub const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

#[derive(Debug)]
pub struct MemoryState {
    /// `state store "<name>"`: the prefix of every error message.
    label: String,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    items: HashMap<String, Entry>,
    /// The last version issued (store-wide).
    version: u64,
    writes_since_sweep: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    data: Bytes,
    version: u64,
    expiry: Option<Expiry>,
}

#[derive(Debug, Clone, Copy)]
struct Expiry {
    /// Monotonic deadline: what visibility is decided on.
    at: Instant,
    /// The same deadline on the wall clock, only for reporting `ttlExpireTime`.
    wall: SystemTime,
}

/// A write validated and ready to apply.
struct Staged {
    key: String,
    entry: Option<Entry>,
}

// === impl Entry ===

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expiry.is_none_or(|e| e.at > now)
    }
}

// === impl Inner ===

impl Inner {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.items.get(key).filter(|e| e.live(now))
    }

    /// Drops expired entries once every `max(64, len)` writes.
    fn maybe_sweep(&mut self, now: Instant) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= self.items.len().max(64) {
            self.writes_since_sweep = 0;
            self.items.retain(|_, e| e.live(now));
        }
    }
}

// === impl MemoryState ===

impl MemoryState {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            label: format!("state store {:?}", spec.name),
            inner: RwLock::default(),
        })
    }

    /// `None` for no ETag (absent or empty); a non-numeric one cannot have come from us.
    fn parse_etag(&self, key: &str, etag: Option<&str>) -> Result<Option<u64>> {
        match etag {
            None | Some("") => Ok(None),
            Some(raw) => raw.parse::<u64>().map(Some).map_err(|_| {
                Error::EtagInvalid(format!(
                    "{}: etag {raw:?} for key {key:?} is not a version this store issued",
                    self.label
                ))
            }),
        }
    }

    /// The optimistic-concurrency check of one write against the current version of its key.
    fn check(
        &self,
        key: &str,
        current: Option<u64>,
        etag: Option<u64>,
        concurrency: Concurrency,
    ) -> Result<()> {
        match (etag, current) {
            (Some(want), Some(have)) if want == have => Ok(()),
            (Some(want), Some(_)) => Err(Error::EtagMismatch(format!(
                "{}: etag \"{want}\" does not match the current version of key {key:?}",
                self.label
            ))),
            (Some(want), None) => Err(Error::EtagMismatch(format!(
                "{}: etag \"{want}\" given but key {key:?} does not exist",
                self.label
            ))),
            (None, Some(_)) if concurrency == Concurrency::FirstWrite => {
                Err(Error::EtagMismatch(format!(
                    "{}: key {key:?} already exists (first-write without an etag)",
                    self.label
                )))
            }
            (None, _) => Ok(()),
        }
    }

    fn expiry(&self, key: &str, metadata: &Metadata) -> Result<Option<Expiry>> {
        let ttl = ttl_from_metadata(&self.label, key, metadata)?;
        Ok(ttl.map(|secs| {
            let d = Duration::from_secs(secs);
            Expiry {
                at: Instant::now() + d,
                wall: SystemTime::now() + d,
            }
        }))
    }

    fn value_of(entry: &Entry) -> StateValue {
        let mut metadata = Metadata::new();
        if let Some(e) = entry.expiry {
            metadata.insert(TTL_EXPIRE_TIME.to_owned(), super::rfc3339_utc(e.wall));
        }
        StateValue {
            data: entry.data.clone(),
            etag: Some(entry.version.to_string()),
            metadata,
        }
    }

    /// Validates one operation against `current` (the key's version as earlier operations of
    /// the same batch left it) and returns the write to apply. `next_version` is the counter to
    /// issue from; it only advances for upserts.
    fn stage(
        &self,
        op: &TransactionOp,
        current: Option<u64>,
        next_version: &mut u64,
    ) -> Result<Staged> {
        match op {
            TransactionOp::Upsert(req) => {
                check_key(&self.label, &req.key)?;
                let etag = self.parse_etag(&req.key, req.etag.as_deref())?;
                self.check(&req.key, current, etag, req.options.concurrency)?;
                let expiry = self.expiry(&req.key, &req.metadata)?;
                *next_version += 1;
                let entry = Entry {
                    data: req.value.clone(),
                    version: *next_version,
                    expiry,
                };
                Ok(Staged {
                    key: req.key.clone(),
                    entry: Some(entry),
                })
            }
            TransactionOp::Delete(req) => {
                check_key(&self.label, &req.key)?;
                let etag = self.parse_etag(&req.key, req.etag.as_deref())?;
                // First-write has no meaning for a delete: only the ETag is checked.
                self.check(&req.key, current, etag, Concurrency::Unspecified)?;
                Ok(Staged {
                    key: req.key.clone(),
                    entry: None,
                })
            }
        }
    }

    /// Validates every operation under one write lock, then applies them all; on any error
    /// nothing is changed.
    fn apply_all(&self, ops: &[TransactionOp]) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.inner.write();
        let mut next_version = inner.version;
        // Versions as the batch leaves them so far, for operations touching a key twice.
        let mut overlay: HashMap<&str, Option<u64>> = HashMap::new();
        let mut staged = Vec::with_capacity(ops.len());
        for op in ops {
            let key = match op {
                TransactionOp::Upsert(r) => r.key.as_str(),
                TransactionOp::Delete(r) => r.key.as_str(),
            };
            let current = match overlay.get(key) {
                Some(v) => *v,
                None => inner.live(key, now).map(|e| e.version),
            };
            let s = self.stage(op, current, &mut next_version)?;
            overlay.insert(key, s.entry.as_ref().map(|e| e.version));
            staged.push(s);
        }
        inner.version = next_version;
        for s in staged {
            match s.entry {
                Some(e) => {
                    inner.items.insert(s.key, e);
                }
                None => {
                    inner.items.remove(&s.key);
                }
            }
            inner.maybe_sweep(now);
        }
        Ok(())
    }
}

#[async_trait]
impl Health for MemoryState {}

#[async_trait]
impl StateStore for MemoryState {
    fn features(&self) -> StateFeatures {
        StateFeatures {
            etag: true,
            transactional: true,
            ttl: true,
        }
    }

    async fn get(&self, key: &str, _metadata: &Metadata) -> Result<Option<StateValue>> {
        check_key(&self.label, key)?;
        let inner = self.inner.read();
        Ok(inner.live(key, Instant::now()).map(Self::value_of))
    }

    async fn bulk_get(&self, keys: &[String], _metadata: &Metadata) -> Result<Vec<BulkGetItem>> {
        let now = Instant::now();
        let inner = self.inner.read();
        Ok(keys
            .iter()
            .map(|key| match check_key(&self.label, key) {
                Ok(()) => BulkGetItem {
                    key: key.clone(),
                    value: inner.live(key, now).map(Self::value_of),
                    error: None,
                },
                Err(e) => BulkGetItem {
                    key: key.clone(),
                    value: None,
                    error: Some(e.to_string()),
                },
            })
            .collect())
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        self.apply_all(&[TransactionOp::Upsert(req)])
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        self.apply_all(&[TransactionOp::Delete(req)])
    }

    async fn transact(&self, ops: Vec<TransactionOp>, _metadata: &Metadata) -> Result<()> {
        self.apply_all(&ops)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::state::TTL_METADATA;

    fn store() -> MemoryState {
        MemoryState::new(
            &ComponentSpec::new("mem", "state.memory"),
            &BuildContext::default(),
        )
        .expect("builds")
    }

    fn set(key: &str, value: &str, etag: Option<&str>) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: Bytes::from(value.to_owned()),
            etag: etag.map(str::to_owned),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn etags_are_increasing_decimal_versions() {
        let s = store();
        s.set(set("k", "a", None)).await.unwrap();
        let e1: u64 = s
            .get("k", &Metadata::new())
            .await
            .unwrap()
            .unwrap()
            .etag
            .unwrap()
            .parse()
            .unwrap();
        s.set(set("k", "b", None)).await.unwrap();
        let e2: u64 = s
            .get("k", &Metadata::new())
            .await
            .unwrap()
            .unwrap()
            .etag
            .unwrap()
            .parse()
            .unwrap();
        assert!(e2 > e1);
    }

    #[tokio::test]
    async fn etag_of_a_deleted_key_never_matches_its_successor() {
        let s = store();
        s.set(set("k", "a", None)).await.unwrap();
        let old = s.get("k", &Metadata::new()).await.unwrap().unwrap().etag;
        s.delete(DeleteRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        s.set(set("k", "b", None)).await.unwrap();
        let err = s.set(set("k", "c", old.as_deref())).await.unwrap_err();
        assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
    }

    #[tokio::test]
    async fn non_numeric_etag_is_invalid_and_names_store_and_key() {
        let s = store();
        s.set(set("k", "a", None)).await.unwrap();
        let err = s.set(set("k", "b", Some("abc"))).await.unwrap_err();
        let Error::EtagInvalid(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("\"mem\"") && msg.contains("\"k\""), "{msg}");
        let err = s
            .delete(DeleteRequest {
                key: "k".into(),
                etag: Some("x".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::EtagInvalid(_)), "{err:?}");
    }

    #[tokio::test]
    async fn mismatch_names_store_and_key() {
        let s = store();
        let err = s.set(set("missing", "b", Some("7"))).await.unwrap_err();
        let Error::EtagMismatch(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("\"mem\"") && msg.contains("\"missing\""),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn empty_etag_means_none() {
        let s = store();
        s.set(set("k", "a", Some(""))).await.unwrap();
        s.set(set("k", "b", Some(""))).await.unwrap();
        assert_eq!(
            s.get("k", &Metadata::new()).await.unwrap().unwrap().data,
            "b"
        );
    }

    #[tokio::test]
    async fn ttl_reports_expire_time_and_hides_expired() {
        let s = store();
        let mut req = set("t", "v", None);
        req.metadata.insert(TTL_METADATA.into(), "100".into());
        s.set(req).await.unwrap();
        let v = s.get("t", &Metadata::new()).await.unwrap().unwrap();
        let when = v.metadata.get(TTL_EXPIRE_TIME).expect("ttlExpireTime");
        assert!(when.ends_with('Z') && when.len() == 20, "{when}");

        // Without a TTL there is no ttlExpireTime.
        s.set(set("p", "v", None)).await.unwrap();
        let v = s.get("p", &Metadata::new()).await.unwrap().unwrap();
        assert!(!v.metadata.contains_key(TTL_EXPIRE_TIME));

        // An entry whose deadline passed is invisible and behaves as absent for writes.
        {
            let mut inner = s.inner.write();
            let e = inner.items.get_mut("t").unwrap();
            e.expiry = Some(Expiry {
                at: Instant::now(),
                wall: SystemTime::now(),
            });
        }
        assert!(s.get("t", &Metadata::new()).await.unwrap().is_none());
        let mut fw = set("t", "again", None);
        fw.options.concurrency = Concurrency::FirstWrite;
        s.set(fw).await.unwrap();
        assert_eq!(
            s.get("t", &Metadata::new()).await.unwrap().unwrap().data,
            "again"
        );
    }

    #[tokio::test]
    async fn sweep_removes_expired_entries() {
        let s = store();
        for i in 0..10 {
            let mut req = set(&format!("k{i}"), "v", None);
            req.metadata.insert(TTL_METADATA.into(), "100".into());
            s.set(req).await.unwrap();
        }
        {
            let mut inner = s.inner.write();
            for e in inner.items.values_mut() {
                e.expiry = Some(Expiry {
                    at: Instant::now(),
                    wall: SystemTime::now(),
                });
            }
        }
        for _ in 0..64 {
            s.set(set("keep", "v", None)).await.unwrap();
        }
        assert_eq!(s.inner.read().items.len(), 1);
    }

    #[tokio::test]
    async fn transaction_sees_its_own_earlier_writes() {
        let s = store();
        s.set(set("k", "a", None)).await.unwrap();
        let etag = s.get("k", &Metadata::new()).await.unwrap().unwrap().etag;
        // Upsert with the current etag, then first-write the same key: the key exists by then.
        let mut fw = set("k", "c", None);
        fw.options.concurrency = Concurrency::FirstWrite;
        let ops = vec![
            TransactionOp::Upsert(set("k", "b", etag.as_deref())),
            TransactionOp::Upsert(fw),
        ];
        let err = s.transact(ops, &Metadata::new()).await.unwrap_err();
        assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
        assert_eq!(
            s.get("k", &Metadata::new()).await.unwrap().unwrap().data,
            "a"
        );
        // Delete then first-write in one batch succeeds.
        let mut fw = set("k", "d", None);
        fw.options.concurrency = Concurrency::FirstWrite;
        let ops = vec![
            TransactionOp::Delete(DeleteRequest {
                key: "k".into(),
                etag,
                ..Default::default()
            }),
            TransactionOp::Upsert(fw),
        ];
        s.transact(ops, &Metadata::new()).await.unwrap();
        assert_eq!(
            s.get("k", &Metadata::new()).await.unwrap().unwrap().data,
            "d"
        );
    }

    #[tokio::test]
    async fn bad_ttl_aborts_the_transaction() {
        let s = store();
        let mut bad = set("b", "v", None);
        bad.metadata.insert(TTL_METADATA.into(), "soon".into());
        let ops = vec![
            TransactionOp::Upsert(set("a", "v", None)),
            TransactionOp::Upsert(bad),
        ];
        let err = s.transact(ops, &Metadata::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(s.get("a", &Metadata::new()).await.unwrap().is_none());
    }
}
