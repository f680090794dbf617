//! The filter chain: an ordered list of HTTP filters run over Pingora's request phases.
//!
//! A listener's chain is built from config into the Snapshot. For each request the proxy runs
//! [`FilterChain::on_request`] in Pingora's `request_filter` phase; the first filter that answers
//! ends the walk ([`Decision::Responded`]). A request no filter answers goes on to the router
//! (or, on a listener without one, a 404).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::proxy::Session;

/// Per-request state carried through the phases.
pub struct RequestCtx {
    pub started: Instant,
    /// The filter that answered, for logs and metrics.
    pub responded_by: Option<&'static str>,
    /// Set by the router when the request goes upstream.
    pub routed: Option<crate::router::Routed>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            responded_by: None,
            routed: None,
        }
    }
}

/// What a filter decided about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not mine: the next filter sees it.
    Continue,
    /// Answered in full; stop the chain.
    Responded,
}

/// One filter of a chain.
#[async_trait]
pub trait HttpFilter: Send + Sync {
    /// Stable name, used in config (`type:`), logs and metrics.
    fn name(&self) -> &'static str;

    /// Pingora's `request_filter` phase: inspect, rewrite, or answer the request.
    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Decision>;
}

/// The ordered filters of one listener.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn HttpFilter>>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|x| x.name()))
            .finish()
    }
}

// === impl FilterChain ===

impl FilterChain {
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> Self {
        Self { filters }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    /// Runs the request phase; stops at the first filter that answers.
    pub async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Decision> {
        for f in &self.filters {
            if f.on_request(session, ctx).await? == Decision::Responded {
                ctx.responded_by = Some(f.name());
                return Ok(Decision::Responded);
            }
        }
        Ok(Decision::Continue)
    }
}
