//! Service invocation: call a method of another app by its app id.
//!
//! Protocol-neutral like every building block: the API adapters map Layotto's
//! `InvokeService` (and the HTTP `dapr-app-id` form) onto [`ServiceInvoker`]; the mesh
//! implements it by resolving the app id to a cluster and sending the call with the mesh's
//! routes, policies and metrics.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One invocation.
#[derive(Debug, Clone, Default)]
pub struct InvokeRequest {
    /// The target app.
    pub app_id: String,
    /// The method: the path on the callee (`/` is added when missing).
    pub method: String,
    /// HTTP verb (`POST` when empty).
    pub verb: String,
    /// Query string, without `?`.
    pub query: String,
    pub content_type: String,
    pub data: Bytes,
    /// Headers to pass on (the caller's gRPC metadata or HTTP headers).
    pub metadata: Vec<(String, String)>,
    /// The caller's deadline (gRPC `grpc-timeout`), on top of the configured timeout.
    pub deadline: Option<Duration>,
}

/// The callee's answer, whatever its status.
#[derive(Debug, Clone, Default)]
pub struct InvokeResponse {
    pub status: u16,
    pub content_type: String,
    pub data: Bytes,
    /// Response headers (without hop-by-hop ones).
    pub headers: Vec<(String, String)>,
}

/// Why an invocation got no answer from the callee.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("unknown app id {app:?} (known: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    UnknownApp { app: String, known: Vec<String> },
    #[error("{0}")]
    InvalidArgument(String),
    /// The callee (or its sidecar) cannot be reached.
    #[error("invoking app {app:?} method {method:?}: {message}")]
    Unavailable {
        app: String,
        method: String,
        message: String,
    },
    #[error("invoking app {app:?} method {method:?}: {message}")]
    DeadlineExceeded {
        app: String,
        method: String,
        message: String,
    },
    /// A breaker is open or a body is too large.
    #[error("invoking app {app:?} method {method:?}: {message}")]
    ResourceExhausted {
        app: String,
        method: String,
        message: String,
    },
}

/// Invokes methods of other apps.
#[async_trait]
pub trait ServiceInvoker: Send + Sync {
    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse, InvokeError>;

    /// Whether `app_id` names an app this invoker reaches (for `Host: <app>` requests).
    fn knows(&self, app_id: &str) -> bool;
}

/// A caller's deadline as gRPC sends it, `grpc-timeout` (gRPC over HTTP/2: at most 8 digits
/// and a unit H, M, S, m, u, n); `None` when malformed.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
