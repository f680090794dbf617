//! `sequencer.redis`: a counter per key (`<prefix>sequencer||<key>`), advanced with INCR.
//!
//! - `STRONG`: one INCR per id, so ids are strictly increasing across every sidecar.
//! - `WEAK`: with metadata `segmentSize: N` (N > 1) a sidecar reserves N ids with one INCRBY and
//!   hands them out locally: increasing per sidecar, interleaved (not ordered) across sidecars,
//!   and the unused rest of a segment is skipped after a restart. The default `segmentSize: 1`
//!   makes `WEAK` behave like `STRONG`.
//! - Layotto's `biggerThan`: metadata `biggerThan.<key>: N` (on the component, or on the call)
//!   makes every id of `<key>` greater than N; the counter is raised to N atomically, in the same
//!   script as the increment.
//! - Ids are increasing, not contiguous: a call repeated after a dropped connection may skip
//!   one, as may unused segment ids.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;

use super::backend::Backend;
use super::settings::Settings;
use crate::error::{Error, Result};
use crate::sequencer::{Increment, Sequencer};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

static NEXT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/sequencer_next.lua")));

const BIGGER_THAN: &str = "biggerThan.";

/// Ids reserved by this sidecar and not yet handed out: `next..=last`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    next: i64,
    last: i64,
}

/// The Redis sequencer.
#[derive(Debug, Clone)]
pub struct RedisSequencer {
    backend: Arc<Backend>,
    segment_size: i64,
    /// `biggerThan.<key>` from the component metadata.
    floors: Arc<HashMap<String, i64>>,
    segments: Arc<Mutex<HashMap<String, Segment>>>,
}

impl RedisSequencer {
    /// Parses the metadata; connects on first use.
    pub fn new(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        let segment_size = spec.meta_i64("segmentSize", 1)?;
        if segment_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "metadata.segmentSize: expected an integer >= 1, got {segment_size}"
            )));
        }
        let mut floors = HashMap::new();
        for (k, _) in spec
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with(BIGGER_THAN))
        {
            let key = &k[BIGGER_THAN.len()..];
            floors.insert(key.to_owned(), spec.meta_i64(k, 0)?);
        }
        Ok(Self {
            backend: Arc::new(Backend::new(Settings::from_spec(spec, ctx)?)?),
            segment_size,
            floors: Arc::new(floors),
            segments: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The highest `biggerThan` that applies to `key` (component or call metadata).
    fn floor(&self, key: &str, metadata: &HashMap<String, String>) -> Result<Option<i64>> {
        let mut floor = self.floors.get(key).copied();
        let call_key = format!("{BIGGER_THAN}{key}");
        if let Some(raw) = metadata.get(&call_key) {
            let n: i64 = raw.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "{}: metadata {call_key}={raw:?} is not an integer",
                    self.backend.label()
                ))
            })?;
            floor = Some(floor.map_or(n, |f| f.max(n)));
        }
        Ok(floor)
    }

    /// Reserves `count` ids; returns the last one.
    async fn reserve(&self, key: &str, count: i64, floor: Option<i64>) -> Result<i64> {
        let mut inv = NEXT.prepare_invoke();
        inv.key(self.backend.s.key(&format!("sequencer||{key}")))
            .arg(count)
            .arg(floor.map(|f| f.to_string()).unwrap_or_default());
        self.backend
            .call("next id of key", key, |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await
    }
}

#[async_trait]
impl Health for RedisSequencer {
    async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
}

#[async_trait]
impl Sequencer for RedisSequencer {
    async fn next_id(
        &self,
        key: &str,
        increment: Increment,
        metadata: &HashMap<String, String>,
    ) -> Result<i64> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: sequencer key is empty",
                self.backend.label()
            )));
        }
        let floor = self.floor(key, metadata)?;
        if increment == Increment::Strong || self.segment_size == 1 {
            return self.reserve(key, 1, floor).await;
        }

        // The lock is never held across the network call.
        {
            let mut segments = self.segments.lock();
            if let Some(seg) = segments.get_mut(key) {
                if seg.next <= seg.last && floor.is_none_or(|f| seg.next > f) {
                    let id = seg.next;
                    seg.next += 1;
                    return Ok(id);
                }
            }
        }
        let last = self.reserve(key, self.segment_size, floor).await?;
        let first = last - self.segment_size + 1;
        let mut segments = self.segments.lock();
        // Concurrent callers may each reserve a segment; keep the highest so later ids only grow.
        match segments.get(key) {
            Some(seg) if seg.last >= last => {}
            _ => {
                segments.insert(
                    key.to_owned(),
                    Segment {
                        next: first + 1,
                        last,
                    },
                );
            }
        }
        Ok(first)
    }
}
