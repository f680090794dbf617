//! Connection metadata shared by every Redis component, parsed once at build time (no I/O).
//!
//! Dapr's names: `redisHost` (`host:port`, or a `redis://` / `rediss://` URL), `redisUsername`,
//! `redisPassword`, `redisDB`, `enableTLS`, `keyPrefix`; plus ours: `timeout` (every call, default
//! 1s), `dialTimeout` (connect, default = `timeout`) and `redisProtocol` (`resp3`, the default, or
//! `resp2` for servers older than Redis 6).

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::error::{Error, Result};
use crate::spec::{BuildContext, ComponentSpec};

pub(crate) const DEFAULT_HOST: &str = "127.0.0.1:6379";
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how one component talks to Redis.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `state.redis "statestore"`: how every error message names the component.
    pub label: String,
    /// `host:port` as errors print it.
    pub addr: String,
    pub info: ConnectionInfo,
    /// Upper bound for every call, connection included.
    pub timeout: Duration,
    pub dial_timeout: Duration,
    /// Prepended to every key: `""` or `"<prefix>||"`.
    pub key_prefix: String,
}

impl Settings {
    pub fn from_spec(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        let host = spec
            .meta_str("redisHost")
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let host = host.unwrap_or(DEFAULT_HOST);
        let tls = spec.meta_bool("enableTLS", false)?;
        if spec.meta_bool("insecureSkipVerify", false)? {
            return Err(Error::InvalidArgument(
                "metadata.insecureSkipVerify: skipping certificate verification is not supported"
                    .to_owned(),
            ));
        }

        let mut info = if host.contains("://") {
            host.into_connection_info().map_err(|e| {
                Error::InvalidArgument(format!("metadata.redisHost: {e}, got {host:?}"))
            })?
        } else {
            let (h, port) = split_host_port(host)?;
            let addr = if tls {
                ConnectionAddr::TcpTls {
                    host: h,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(h, port)
            };
            addr.into_connection_info().map_err(|e| {
                Error::InvalidArgument(format!("metadata.redisHost: {e}, got {host:?}"))
            })?
        };
        if tls {
            if let ConnectionAddr::Tcp(h, port) = info.addr().clone() {
                info = info.set_addr(ConnectionAddr::TcpTls {
                    host: h,
                    port,
                    insecure: false,
                    tls_params: None,
                });
            }
        }

        let mut redis = info.redis_settings().clone();
        if let Some(user) = spec.meta_str("redisUsername").filter(|u| !u.is_empty()) {
            redis = redis.set_username(user);
        }
        if let Some(pass) = spec.meta_str("redisPassword").filter(|p| !p.is_empty()) {
            redis = redis.set_password(pass);
        }
        if spec
            .meta_str("redisDB")
            .is_some_and(|v| !v.trim().is_empty())
        {
            let db = spec.meta_i64("redisDB", 0)?;
            if db < 0 {
                return Err(Error::InvalidArgument(format!(
                    "metadata.redisDB: expected a database number >= 0, got {db}"
                )));
            }
            redis = redis.set_db(db);
        }
        let protocol = match spec.meta_str("redisProtocol").map(str::trim) {
            None | Some("") => ProtocolVersion::RESP3,
            Some(p) if p.eq_ignore_ascii_case("resp3") || p == "3" => ProtocolVersion::RESP3,
            Some(p) if p.eq_ignore_ascii_case("resp2") || p == "2" => ProtocolVersion::RESP2,
            Some(p) => {
                return Err(Error::InvalidArgument(format!(
                    "metadata.redisProtocol: expected resp3 or resp2, got {p:?}"
                )))
            }
        };
        // RESP3 lets the connection manager see a dropped connection as it happens (a push
        // message) and reconnect before the next call, instead of failing that call.
        redis = redis.set_protocol(protocol);
        info = info.set_redis_settings(redis);

        // Zero would fail every call (and every dial) at once.
        let timeout = spec.meta_positive_duration("timeout", DEFAULT_TIMEOUT)?;
        let dial_timeout = spec.meta_positive_duration("dialTimeout", timeout)?;

        Ok(Self {
            label: format!("{} {:?}", spec.kind, spec.name),
            addr: info.addr().to_string(),
            info,
            timeout,
            dial_timeout,
            key_prefix: key_prefix(spec, ctx),
        })
    }

    /// The key as stored in Redis.
    pub fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.key_prefix.len() + key.len());
        k.push_str(&self.key_prefix);
        k.push_str(key);
        k
    }
}

/// Dapr's key prefix strategy: `appid` (default) → `<app id>||key`, `name` → `<component
/// name>||key`, `none` → key as is, anything else → `<that string>||key`.
fn key_prefix(spec: &ComponentSpec, ctx: &BuildContext) -> String {
    let raw = spec.meta_str("keyPrefix").map(str::trim).unwrap_or("appid");
    let prefix = match raw {
        "" | "appid" => ctx.app_id.as_str(),
        "name" => spec.name.as_str(),
        "none" => "",
        other => other,
    };
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}||")
    }
}

/// `host:port`, `host` (port 6379) or `[v6]:port`.
fn split_host_port(raw: &str) -> Result<(String, u16)> {
    let bad =
        |what: &str| Error::InvalidArgument(format!("metadata.redisHost: {what}, got {raw:?}"));
    if let Some(rest) = raw.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("expected host:port"))?,
            None if tail.is_empty() => 6379,
            None => return Err(bad("expected host:port")),
        };
        return Ok((h.to_owned(), port));
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Ok((
            h.to_owned(),
            p.parse().map_err(|_| bad("expected host:port"))?,
        )),
        Some(_) => Err(bad("expected host:port")),
        None => Ok((raw.to_owned(), 6379)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(spec: ComponentSpec) -> Result<Settings> {
        Settings::from_spec(
            &spec,
            &BuildContext {
                app_id: "app1".to_owned(),
            },
        )
    }

    #[test]
    fn defaults() {
        let s = settings(ComponentSpec::new("statestore", "state.redis")).expect("valid");
        assert_eq!(s.addr, "127.0.0.1:6379");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.key("k"), "app1||k");
        assert_eq!(s.label, "state.redis \"statestore\"");
    }

    #[test]
    fn key_prefix_strategies() {
        let spec = |p: &str| ComponentSpec::new("store", "state.redis").with("keyPrefix", p);
        assert_eq!(settings(spec("name")).expect("valid").key("k"), "store||k");
        assert_eq!(settings(spec("none")).expect("valid").key("k"), "k");
        assert_eq!(
            settings(spec("shared")).expect("valid").key("k"),
            "shared||k"
        );
    }

    #[test]
    fn hosts_and_urls() {
        let spec = |h: &str| ComponentSpec::new("s", "state.redis").with("redisHost", h);
        assert_eq!(
            settings(spec("redis.local")).expect("valid").addr,
            "redis.local:6379"
        );
        assert_eq!(
            settings(spec("[::1]:7000")).expect("valid").addr,
            "::1:7000"
        );
        let url = settings(spec("redis://:pw@10.0.0.1:6390/2")).expect("valid");
        assert_eq!(url.addr, "10.0.0.1:6390");
        assert_eq!(url.info.redis_settings().db(), 2);
        assert!(settings(spec("host:notaport")).is_err());
        let tls = settings(spec("h:6380").with("enableTLS", "true")).expect("valid");
        assert!(matches!(tls.info.addr(), ConnectionAddr::TcpTls { .. }));
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let err = settings(ComponentSpec::new("s", "state.redis").with("redisDB", "-1"))
            .expect_err("negative db");
        assert!(err.to_string().starts_with("metadata.redisDB:"), "{err}");
        let err = settings(ComponentSpec::new("s", "state.redis").with("timeout", "0s"))
            .expect_err("zero timeout");
        assert!(err.to_string().starts_with("metadata.timeout:"), "{err}");
    }
}
