//! The lean listener: for a listener whose chain is only the capability filter (the default
//! sidecar), each request goes straight from Pingora's HTTP server to the filter, skipping the
//! proxy's per-request phases (context, modules, upstream hooks) it would never use. Measured
//! in `benches/RESULTS.md`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use mecha_filters::Decision;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::proxy::ProcessState;
use crate::snapshot::{ListenerRef, Snapshot};

pub struct LeanListener {
    pub listener: ListenerRef,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub process: Arc<ProcessState>,
    pub options: HttpServerOptions,
}

#[async_trait]
impl HttpServerApp for LeanListener {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "malformed request");
                let _ = session.respond_error(400).await;
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let _inflight = self.process.enter();
        let mut snap = self.snapshot.load_full();
        let lean = self
            .listener
            .resolve(&mut snap)
            .and_then(|i| snap.lean.get(i));
        let served = match lean.and_then(Option::as_ref) {
            Some(cap) => cap.serve(&mut session).await,
            None => Ok(Decision::Continue),
        };
        match served {
            Ok(Decision::Responded) => {}
            Ok(Decision::Continue) => {
                let body = format!(
                    "no route: {} {} is not served by this listener\n",
                    session.req_header().method,
                    session.req_header().uri.path()
                );
                if session
                    .respond_error_with_body(404, Bytes::from(body))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                return None;
            }
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(_) => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}
