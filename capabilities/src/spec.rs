//! A component as config declares it, and typed access to its metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One configured component: `{ name, type, metadata }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    pub name: String,
    /// `<building block>.<implementation>`, e.g. `state.redis`, `secretstores.local.env`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What components may need from the process: the app id (Dapr's default key prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContext {
    pub app_id: String,
}

impl Default for BuildContext {
    fn default() -> Self {
        Self {
            app_id: "app".to_owned(),
        }
    }
}

// === impl ComponentSpec ===

impl ComponentSpec {
    pub fn new(name: &str, kind: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
            metadata: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Errors from metadata parsing start with `metadata.<key>:` so config validation can print
    /// them under the component's path.
    fn bad(&self, key: &str, what: &str, raw: &str) -> Error {
        Error::InvalidArgument(format!("metadata.{key}: {what}, got {raw:?}"))
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    pub fn meta_string_or(&self, key: &str, default: &str) -> String {
        self.meta_str(key).unwrap_or(default).to_owned()
    }

    pub fn meta_required(&self, key: &str) -> Result<&str> {
        match self.meta_str(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(Error::InvalidArgument(format!(
                "metadata.{key}: is required"
            ))),
        }
    }

    pub fn meta_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.meta_str(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(v) => Err(self.bad(key, "expected true or false", v)),
        }
    }

    pub fn meta_u64(&self, key: &str, default: u64) -> Result<u64> {
        match self.meta_str(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.bad(key, "expected a non-negative integer", v)),
        }
    }

    pub fn meta_i64(&self, key: &str, default: i64) -> Result<i64> {
        match self.meta_str(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.bad(key, "expected an integer", v)),
        }
    }

    /// Durations as Dapr writes them: `2s`, `500ms`, `1m`, `1h`, or a bare number of
    /// milliseconds; at most [`MAX_META_DURATION`]. Zero is allowed: use
    /// [`meta_positive_duration`](Self::meta_positive_duration) where zero would panic or
    /// switch something off.
    pub fn meta_duration(&self, key: &str, default: Duration) -> Result<Duration> {
        match self.meta_str(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => {
                let d = parse_duration(v)
                    .ok_or_else(|| self.bad(key, "expected a duration like 2s, 500ms or 1m", v))?;
                if d > MAX_META_DURATION {
                    return Err(Error::InvalidArgument(format!(
                        "metadata.{key}: must be at most {MAX_META_DURATION:?}, got {v:?}"
                    )));
                }
                Ok(d)
            }
        }
    }

    /// Like [`meta_duration`](Self::meta_duration), at least [`MIN_META_DURATION`]: for
    /// periods (a zero `tokio::time::interval` panics, a zero pause spins) and timeouts (zero
    /// would fail every call).
    pub fn meta_positive_duration(&self, key: &str, default: Duration) -> Result<Duration> {
        let d = self.meta_duration(key, default)?;
        if d < MIN_META_DURATION {
            return Err(Error::InvalidArgument(format!(
                "metadata.{key}: must be at least 1ms, got {d:?}"
            )));
        }
        Ok(d)
    }

    /// A count in `min..=max` (queue depths, concurrency, sizes): zero where it would disable
    /// the component, and sizes that would not fit in memory, are errors naming the key.
    pub fn meta_count(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64> {
        let n = self.meta_u64(key, default)?;
        if !(min..=max).contains(&n) {
            return Err(Error::InvalidArgument(format!(
                "metadata.{key}: must be between {min} and {max}, got {n}"
            )));
        }
        Ok(n)
    }
}

/// Largest `queueDepth` of a pub/sub component: a bounded channel of that many events per
/// subscription, each slot possibly holding an event (tokio panics above `usize::MAX >> 3`).
pub const MAX_QUEUE_DEPTH: u64 = 1 << 20;

/// Largest `concurrency` of a pub/sub component: deliveries outstanding per subscription, a
/// semaphore's permits (tokio panics above `usize::MAX >> 3`).
pub const MAX_CONCURRENCY: u64 = 1 << 16;

/// The shortest period or timeout [`ComponentSpec::meta_positive_duration`] accepts.
pub const MIN_META_DURATION: Duration = Duration::from_millis(1);

/// The longest duration component metadata may give (30 days): beyond any sane timeout or
/// period, and far below where `Instant + Duration` overflows (and panics).
pub const MAX_META_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h`, or bare milliseconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "" | "ms" => n / 1000.0,
        "us" => n / 1_000_000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_dapr() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn metadata_durations_are_bounded() {
        let spec = |v: &str| ComponentSpec::new("p", "pubsub.in-memory").with("every", v);
        let err = |v: &str| {
            spec(v)
                .meta_positive_duration("every", Duration::from_secs(1))
                .expect_err(v)
                .to_string()
        };
        assert_eq!(err("0"), "metadata.every: must be at least 1ms, got 0ns");
        assert!(err("0s").starts_with("metadata.every: must be at least 1ms"));
        assert!(err("100us").contains("must be at least 1ms"));
        assert_eq!(
            spec("1ms")
                .meta_positive_duration("every", Duration::ZERO)
                .ok(),
            Some(Duration::from_millis(1))
        );
        // Too long for `Instant` arithmetic, for either helper.
        let huge = spec("1000000000h");
        for r in [
            huge.meta_duration("every", Duration::ZERO),
            huge.meta_positive_duration("every", Duration::ZERO),
        ] {
            let e = r.expect_err("beyond the maximum").to_string();
            assert!(
                e.contains("metadata.every: must be at most 2592000s"),
                "{e}"
            );
        }
        // Zero stays allowed where it means "none".
        assert_eq!(
            spec("0")
                .meta_duration("every", Duration::from_secs(1))
                .ok(),
            Some(Duration::ZERO)
        );
        // Absent: the default (which is not checked: defaults are the code's business).
        assert_eq!(
            ComponentSpec::new("p", "x")
                .meta_positive_duration("every", Duration::from_secs(2))
                .ok(),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn metadata_counts_are_bounded() {
        let spec = |v: &str| ComponentSpec::new("p", "pubsub.in-memory").with("queueDepth", v);
        let e = spec("0")
            .meta_count("queueDepth", 100, 1, 1000)
            .expect_err("zero")
            .to_string();
        assert!(
            e.contains("metadata.queueDepth: must be between 1 and 1000, got 0"),
            "{e}"
        );
        assert!(spec("1001").meta_count("queueDepth", 100, 1, 1000).is_err());
        assert_eq!(
            spec("1000").meta_count("queueDepth", 100, 1, 1000).ok(),
            Some(1000)
        );
    }

    #[test]
    fn metadata_errors_name_the_key() {
        let spec = ComponentSpec::new("s", "state.redis").with("redisDB", "x");
        let err = spec
            .meta_u64("redisDB", 0)
            .expect_err("x is no integer")
            .to_string();
        assert!(err.starts_with("metadata.redisDB:"), "{err}");
    }
}
