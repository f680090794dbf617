//! A component as config declares it, and typed access to its metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One configured component: `{ name, type, metadata }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
    /// milliseconds.
    pub fn meta_duration(&self, key: &str, default: Duration) -> Result<Duration> {
        match self.meta_str(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => parse_duration(v)
                .ok_or_else(|| self.bad(key, "expected a duration like 2s, 500ms or 1m", v)),
        }
    }
}

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
    fn metadata_errors_name_the_key() {
        let spec = ComponentSpec::new("s", "state.redis").with("redisDB", "x");
        let err = spec
            .meta_u64("redisDB", 0)
            .expect_err("x is no integer")
            .to_string();
        assert!(err.starts_with("metadata.redisDB:"), "{err}");
    }
}
