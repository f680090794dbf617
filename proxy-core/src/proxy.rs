//! The Pingora `ProxyHttp` of a listener: loads the current Snapshot once per request and runs
//! the listener's filter chain in the `request_filter` phase.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use mecha_filters::router::Router;
use mecha_filters::{Decision, RequestCtx};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::proxy::{ProxyHttp, Session};
use tokio::sync::Notify;

use crate::snapshot::{ListenerRef, Snapshot};

/// Process-wide state the admin endpoints and shutdown share with the listeners.
#[derive(Debug, Default)]
pub struct ProcessState {
    /// Set on SIGTERM: readiness fails so traffic moves away while requests finish.
    pub draining: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

impl ProcessState {
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn enter(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }
}

/// Counts one request in flight until dropped (with the request's context).
#[derive(Debug)]
pub struct InflightGuard(Arc<ProcessState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One listener's proxy logic.
pub struct ListenerProxy {
    pub listener: ListenerRef,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub process: Arc<ProcessState>,
}

pub struct Ctx {
    snapshot: Arc<Snapshot>,
    req: RequestCtx,
    _inflight: Option<InflightGuard>,
}

#[async_trait]
impl ProxyHttp for ListenerProxy {
    type CTX = Ctx;

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No response compression: Pingora's default adds a (disabled) compression module
        // whose per-request context costs time on every proxied request.
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snapshot: self.snapshot.load_full(),
            req: RequestCtx::default(),
            _inflight: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx._inflight = Some(self.process.enter());
        let chain = self
            .listener
            .resolve(&mut ctx.snapshot)
            .and_then(|i| ctx.snapshot.chains.get(i));
        let Some(chain) = chain else {
            session.respond_error(503).await?;
            return Ok(true);
        };
        match chain.on_request(session, &mut ctx.req).await? {
            Decision::Responded => Ok(true),
            // The router chose a cluster: Pingora proxies upstream.
            Decision::Continue if ctx.req.routed.is_some() => Ok(false),
            Decision::Continue => {
                // No filter answered and this listener has no router: a clear 404.
                let body = format!(
                    "no route: {} {} is not served by this listener\n",
                    session.req_header().method,
                    session.req_header().uri.path()
                );
                session
                    .respond_error_with_body(404, Bytes::from(body))
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        match ctx.req.routed.as_mut() {
            Some(routed) => Router::upstream_peer(routed).await,
            // request_filter answers every unrouted request; reaching here is a bug.
            None => Err(Error::explain(
                ErrorType::InternalError,
                "listener has no upstream",
            )),
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !reused {
            if let Some(routed) = ctx.req.routed.as_ref() {
                routed.cluster().metrics.connections_opened.inc();
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        match ctx.req.routed.as_mut() {
            Some(routed) => Router::fail_to_connect(routed, session, e),
            None => e,
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        match ctx.req.routed.as_mut() {
            // Decides every retry, Pingora's reused-connection safety included.
            Some(routed) => Router::error_while_proxy(routed, session, e, client_reused),
            None => {
                // Pingora leaves some errors undecided (`ReusedOnly`); deciding is ours here.
                e.set_retry(false);
                e
            }
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(routed) = ctx.req.routed.as_ref() {
            Router::upstream_body(routed)?;
        }
        Ok(None)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.req.routed.as_ref() {
            Some(routed) => Router::upstream_request(routed, upstream_request),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.req.routed.as_mut() {
            Some(routed) => Router::upstream_response(routed, session, upstream_response),
            None => Ok(()),
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.req.routed.as_ref() {
            Some(routed) => Router::response_headers(routed, upstream_response),
            None => Ok(()),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        Router::fail_to_proxy(ctx.req.routed.as_mut(), session, e).await
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(routed) = ctx.req.routed.as_mut() {
            Router::logging(routed, session, ctx.req.started);
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // Failures are answered, counted in metrics and (when on) in the access log; Pingora's
        // own error line per failed request would flood the log under a failing upstream.
        true
    }
}
