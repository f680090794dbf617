//! `state.memory`: a key/value map with ETags, first-write, all-or-nothing transactions and TTL.
//!
//! - ETags are decimal version numbers. They come from one store-wide counter, so a key that is
//!   deleted and written again never gets back an ETag it had before (no ABA on old ETags).
//! - An empty ETag (`Some("")`) means "no ETag", as Dapr's `HasETag` treats it.
//! - The ETag is checked whenever one is given, whatever the concurrency option says.
//! - Expired entries are invisible at once and removed lazily: when a write touches them, and by
//!   a sweep every `max(64, len)` writes (amortised O(1) per write, no background task).
//! - Bounded: metadata `maxKeys` (default 100 000) and `maxBytes` (default 64 MiB, keys plus
//!   values) cap what clients can store ([`super::Limits`]). Expired entries count until swept;
//!   a write that would cross a bound first sweeps them if any has expired. A write (or a whole
//!   transaction) that would still cross it fails with RESOURCE_EXHAUSTED and changes nothing.

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

use super::{Limits, Usage, DEFAULT_MAX_BYTES, DEFAULT_MAX_KEYS};

/// Response metadata key carrying the expiry of an item with a TTL (RFC 3339, UTC), as in Dapr.
pub const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

#[derive(Debug)]
pub struct MemoryState {
    /// `state store "<name>"`: the prefix of every error message.
    label: String,
    limits: Limits,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    items: HashMap<String, Entry>,
    /// The last version issued (store-wide).
    version: u64,
    writes_since_sweep: usize,
    /// What `items` holds (expired entries included until swept).
    usage: Usage,
    /// No entry expires before this (it may be earlier than the true first expiry after
    /// overwrites; a sweep makes it exact). `None`: no entry has a TTL.
    next_expiry: Option<Instant>,
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

/// What an entry counts against `maxBytes`.
fn size_of(key: &str, data: &Bytes) -> usize {
    key.len() + data.len()
}

impl Inner {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.items.get(key).filter(|e| e.live(now))
    }

    /// Drops expired entries once every `max(64, len)` writes.
    fn maybe_sweep(&mut self, now: Instant) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= self.items.len().max(64) {
            self.sweep(now);
        }
    }

    /// Drops every expired entry.
    fn sweep(&mut self, now: Instant) {
        self.writes_since_sweep = 0;
        let usage = &mut self.usage;
        let mut next_expiry = None::<Instant>;
        self.items.retain(|k, e| {
            if !e.live(now) {
                usage.remove(size_of(k, &e.data));
                return false;
            }
            if let Some(x) = e.expiry {
                next_expiry = Some(next_expiry.map_or(x.at, |n| n.min(x.at)));
            }
            true
        });
        self.next_expiry = next_expiry;
    }

    /// Whether some entry may have expired by `now` (so a sweep could free room).
    fn may_have_expired(&self, now: Instant) -> bool {
        self.next_expiry.is_some_and(|t| t <= now)
    }

    /// The usage after applying `staged` in order.
    fn project(&self, staged: &[Staged]) -> Usage {
        let mut after = self.usage;
        // Size of each key as earlier writes of the batch left it (`None`: absent).
        let mut sizes: HashMap<&str, Option<usize>> = HashMap::new();
        for s in staged {
            let old = match sizes.get(s.key.as_str()) {
                Some(size) => *size,
                None => self.items.get(&s.key).map(|e| size_of(&s.key, &e.data)),
            };
            if let Some(b) = old {
                after.remove(b);
            }
            let new = s.entry.as_ref().map(|e| size_of(&s.key, &e.data));
            if let Some(b) = new {
                after.add(b);
            }
            sizes.insert(&s.key, new);
        }
        after
    }

    fn insert(&mut self, key: String, entry: Entry) {
        if let Some(x) = entry.expiry {
            self.next_expiry = Some(self.next_expiry.map_or(x.at, |n| n.min(x.at)));
        }
        let key_len = key.len();
        self.usage.add(key_len + entry.data.len());
        if let Some(old) = self.items.insert(key, entry) {
            self.usage.remove(key_len + old.data.len());
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.items.remove(key) {
            self.usage.remove(size_of(key, &old.data));
        }
    }
}

// === impl MemoryState ===

impl MemoryState {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            label: format!("state store {:?}", spec.name),
            limits: Limits::from_spec(spec, DEFAULT_MAX_KEYS, DEFAULT_MAX_BYTES)?,
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

    /// Validates every operation (and the bounds of the result) under one write lock, then
    /// applies them all; on any error nothing is changed.
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
        let before = inner.usage;
        let mut after = inner.project(&staged);
        if self.limits.check(&self.label, before, after).is_err() && inner.may_have_expired(now) {
            // Expired entries are not data anyone can read: make room before refusing.
            inner.sweep(now);
            after = inner.project(&staged);
        }
        self.limits.check(&self.label, inner.usage, after)?;
        inner.version = next_version;
        for s in staged {
            match s.entry {
                Some(e) => inner.insert(s.key, e),
                None => inner.remove(&s.key),
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

    fn bounded(keys: &str, bytes: &str) -> MemoryState {
        MemoryState::new(
            &ComponentSpec::new("mem", "state.memory")
                .with("maxKeys", keys)
                .with("maxBytes", bytes),
            &BuildContext::default(),
        )
        .expect("builds")
    }

    fn del(key: &str) -> DeleteRequest {
        DeleteRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn max_keys_refuses_new_keys_but_not_updates_and_deletes_free_room() {
        let s = bounded("2", "1000");
        s.set(set("a", "1", None)).await.unwrap();
        s.set(set("b", "1", None)).await.unwrap();
        let err = s.set(set("c", "1", None)).await.unwrap_err();
        let Error::ResourceExhausted(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("\"mem\"") && msg.contains("maxKeys=2"),
            "{msg}"
        );
        assert!(s.get("c", &Metadata::new()).await.unwrap().is_none());
        // Updating an existing key does not add one.
        s.set(set("a", "2", None)).await.unwrap();
        s.delete(del("a")).await.unwrap();
        s.set(set("c", "1", None)).await.unwrap();
        assert_eq!(s.inner.read().usage, Usage { keys: 2, bytes: 4 });
    }

    #[tokio::test]
    async fn max_bytes_counts_keys_and_values() {
        let s = bounded("100", "10");
        s.set(set("a", "123456789", None)).await.unwrap(); // 1 + 9 bytes: exactly full
        s.set(set("a", "987654321", None)).await.unwrap(); // same size: allowed
        let err = s.set(set("a", "0123456789", None)).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("maxBytes=10")),
            "{err:?}"
        );
        assert_eq!(
            s.get("a", &Metadata::new()).await.unwrap().unwrap().data,
            "987654321"
        );
        // A transaction that frees room first fits.
        let ops = vec![
            TransactionOp::Delete(del("a")),
            TransactionOp::Upsert(set("b", "12345678", None)),
        ];
        s.transact(ops, &Metadata::new()).await.unwrap();
        assert_eq!(s.inner.read().usage, Usage { keys: 1, bytes: 9 });
    }

    #[tokio::test]
    async fn a_transaction_over_the_bound_changes_nothing() {
        let s = bounded("2", "1000");
        let ops = ["a", "b", "c"]
            .into_iter()
            .map(|k| TransactionOp::Upsert(set(k, "v", None)))
            .collect();
        let err = s.transact(ops, &Metadata::new()).await.unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(s.get("a", &Metadata::new()).await.unwrap().is_none());
        assert_eq!(s.inner.read().usage, Usage::default());
        // Writing one key twice in a batch counts it once.
        let ops = vec![
            TransactionOp::Upsert(set("a", "v", None)),
            TransactionOp::Upsert(set("a", "w", None)),
            TransactionOp::Upsert(set("b", "v", None)),
        ];
        s.transact(ops, &Metadata::new()).await.unwrap();
    }

    #[tokio::test]
    async fn expired_entries_make_room() {
        let s = bounded("1", "1000");
        let mut req = set("t", "v", None);
        req.metadata.insert(TTL_METADATA.into(), "100".into());
        s.set(req).await.unwrap();
        assert!(s.set(set("u", "v", None)).await.is_err());
        {
            let mut inner = s.inner.write();
            let now = Instant::now();
            inner.items.get_mut("t").unwrap().expiry = Some(Expiry {
                at: now,
                wall: SystemTime::now(),
            });
            inner.next_expiry = Some(now);
        }
        s.set(set("u", "v", None)).await.unwrap();
        assert_eq!(s.inner.read().usage, Usage { keys: 1, bytes: 2 });
        assert!(s.get("u", &Metadata::new()).await.unwrap().is_some());
    }

    #[test]
    fn zero_bounds_are_rejected_naming_the_key() {
        let err = MemoryState::new(
            &ComponentSpec::new("mem", "state.memory").with("maxKeys", "0"),
            &BuildContext::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("metadata.maxKeys:"), "{err}");
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
