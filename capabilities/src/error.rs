//! The one error type of the capabilities crate.
//!
//! Variants are *kinds* (what an API adapter maps to a gRPC code or HTTP status, in one place per
//! API); the message always names what failed: the component, the key, the backend address.

/// Result of every building-block call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something that does not exist in config
    /// (unknown component, bad metadata value, empty key). gRPC: INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidArgument(String),
    /// The addressed item does not exist where absence is an error. gRPC: NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// An optimistic-concurrency check failed: stale ETag, or first-write on an existing key.
    /// Nothing was changed. gRPC: ABORTED.
    #[error("{0}")]
    EtagMismatch(String),
    /// An ETag that cannot be a version this store issued. gRPC: INVALID_ARGUMENT.
    #[error("{0}")]
    EtagInvalid(String),
    /// The backend cannot be reached (connection refused, timed out). gRPC: UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// The component does not support the requested feature. gRPC: UNIMPLEMENTED.
    #[error("{0}")]
    Unimplemented(String),
    /// A limit was hit (queue full, value too large, a memory component over its `maxKeys` or
    /// `maxBytes`; the message names the component and the limit). gRPC: RESOURCE_EXHAUSTED.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The component is not in a state to serve the call (e.g. closed). gRPC: FAILED_PRECONDITION.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The backend answered with an error we cannot attribute to the caller. gRPC: INTERNAL.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// `Unknown component` error that names the missing one and lists those configured.
    pub fn unknown_component(kind: &str, name: &str, configured: &[&str]) -> Self {
        let list = if configured.is_empty() {
            "none are configured".to_owned()
        } else {
            format!("configured: {}", configured.join(", "))
        };
        Error::InvalidArgument(format!("{kind} store {name:?} is not found ({list})"))
    }
}
