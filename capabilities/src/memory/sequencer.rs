//! `sequencer.memory`: one counter per key, ids strictly increasing from 1.
//!
//! Layotto configures a floor per key with `biggerThan: {key: n}`; our metadata is a flat map,
//! so the same option is spelled `biggerThan.<key>: n` (e.g. `biggerThan.order: "1000"` makes
//! the first id of key `order` 1001). Weak and strong increments are the same thing here.
//!
//! Bounded: metadata `maxKeys` (default 100 000 keys) and `maxBytes` (default 16 MiB of key
//! names) ([`super::Limits`]). Keys are never forgotten (a forgotten key would start again at
//! 1 and hand out duplicate ids), so once full, ids of a new key fail with RESOURCE_EXHAUSTED
//! naming the sequencer while existing keys keep counting.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::sequencer::{Increment, Sequencer};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

use super::{Limits, Usage, DEFAULT_MAX_ID_BYTES, DEFAULT_MAX_KEYS};

/// Metadata key prefix of the per-key floor: `biggerThan.<key>`.
pub const BIGGER_THAN_PREFIX: &str = "biggerThan.";

#[derive(Debug)]
pub struct MemorySequencer {
    /// `sequencer "<name>"`: the prefix of every error message.
    label: String,
    bigger_than: HashMap<String, i64>,
    limits: Limits,
    /// The last id issued per key, and what that map holds.
    last: Mutex<(HashMap<String, i64>, Usage)>,
}

impl MemorySequencer {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        let mut bigger_than = HashMap::new();
        for name in spec.metadata.keys() {
            let Some(key) = name.strip_prefix(BIGGER_THAN_PREFIX) else {
                continue;
            };
            if key.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "metadata.{name}: names no key (expected {BIGGER_THAN_PREFIX}<key>)"
                )));
            }
            bigger_than.insert(key.to_owned(), spec.meta_i64(name, 0)?);
        }
        Ok(Self {
            label: format!("sequencer {:?}", spec.name),
            bigger_than,
            limits: Limits::from_spec(spec, DEFAULT_MAX_KEYS, DEFAULT_MAX_ID_BYTES)?,
            last: Mutex::default(),
        })
    }
}

#[async_trait]
impl Health for MemorySequencer {}

#[async_trait]
impl Sequencer for MemorySequencer {
    async fn next_id(
        &self,
        key: &str,
        _increment: Increment,
        _metadata: &HashMap<String, String>,
    ) -> Result<i64> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: key is empty",
                self.label
            )));
        }
        let exhausted = || {
            Error::ResourceExhausted(format!("{}: ids for key {key:?} are exhausted", self.label))
        };
        let mut guard = self.last.lock();
        let (last, usage) = &mut *guard;
        let next = match last.get_mut(key) {
            Some(current) => {
                *current = current.checked_add(1).ok_or_else(exhausted)?;
                *current
            }
            None => {
                // Ids start at 1, or just above the configured floor.
                let floor = self.bigger_than.get(key).copied().unwrap_or(0).max(0);
                let first = floor.checked_add(1).ok_or_else(exhausted)?;
                let mut after = *usage;
                after.add(key.len());
                self.limits.check(&self.label, *usage, after)?;
                *usage = after;
                last.insert(key.to_owned(), first);
                first
            }
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn build(spec: ComponentSpec) -> Result<MemorySequencer> {
        MemorySequencer::new(&spec, &BuildContext::default())
    }

    #[tokio::test]
    async fn bigger_than_sets_a_floor_per_key() {
        let s =
            build(ComponentSpec::new("seq", "sequencer.memory").with("biggerThan.order", "1000"))
                .unwrap();
        let m = HashMap::new();
        assert_eq!(s.next_id("order", Increment::Weak, &m).await.unwrap(), 1001);
        assert_eq!(
            s.next_id("order", Increment::Strong, &m).await.unwrap(),
            1002
        );
        assert_eq!(s.next_id("other", Increment::Weak, &m).await.unwrap(), 1);
    }

    #[test]
    fn bad_floor_names_the_metadata_key() {
        let err = build(ComponentSpec::new("seq", "sequencer.memory").with("biggerThan.k", "lots"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metadata.biggerThan.k:"), "{err}");
        let err = build(ComponentSpec::new("seq", "sequencer.memory").with("biggerThan.", "1"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metadata.biggerThan.:"), "{err}");
    }

    #[tokio::test]
    async fn bounds_refuse_new_keys_only() {
        let s = build(
            ComponentSpec::new("seq", "sequencer.memory")
                .with("maxKeys", "2")
                .with("maxBytes", "5"),
        )
        .unwrap();
        let m = HashMap::new();
        assert_eq!(s.next_id("a", Increment::Weak, &m).await.unwrap(), 1);
        assert_eq!(s.next_id("bcd", Increment::Weak, &m).await.unwrap(), 1);
        let err = s.next_id("e", Increment::Weak, &m).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("\"seq\"") && m.contains("maxKeys=2")),
            "{err:?}"
        );
        // Known keys keep counting.
        assert_eq!(s.next_id("a", Increment::Weak, &m).await.unwrap(), 2);

        let s = build(ComponentSpec::new("seq", "sequencer.memory").with("maxBytes", "3")).unwrap();
        s.next_id("abc", Increment::Weak, &m).await.unwrap();
        let err = s.next_id("d", Increment::Weak, &m).await.unwrap_err();
        assert!(err.to_string().contains("maxBytes=3"), "{err}");
    }

    #[tokio::test]
    async fn exhaustion_is_an_error_not_a_wrap() {
        let s = build(
            ComponentSpec::new("seq", "sequencer.memory")
                .with("biggerThan.k", &(i64::MAX - 1).to_string()),
        )
        .unwrap();
        let m = HashMap::new();
        assert_eq!(s.next_id("k", Increment::Weak, &m).await.unwrap(), i64::MAX);
        let err = s.next_id("k", Increment::Weak, &m).await.unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
        assert!(s.next_id("", Increment::Weak, &m).await.is_err());
    }
}
