//! TCP proxy listeners: L4 pass-through of opaque protocols to a cluster's endpoints, with the
//! cluster's load balancing, circuit breaker and outlier detection (connect failures).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use mecha_mesh::AttemptResult;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use crate::snapshot::{ListenerRef, Snapshot};

pub struct TcpProxy {
    /// The listener (its cluster is resolved in each connection's Snapshot).
    pub listener: ListenerRef,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut downstream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let snap = self.snapshot.load_full();
        let cluster = self.listener.index(&snap).and_then(|i| snap.tcp.get(i));
        let Some(cluster) = cluster.cloned().flatten() else {
            tracing::error!(listener = %self.listener.name, "tcp proxy: listener has no cluster");
            return None;
        };
        let Ok(_slot) = cluster.admit() else {
            tracing::warn!(cluster = %cluster.name, "tcp proxy: circuit breaker open; closing");
            return None;
        };
        let key = downstream
            .get_socket_digest()
            .and_then(|d| {
                d.peer_addr()
                    .and_then(|a| a.as_inet().map(|i| i.ip().to_string()))
            })
            .unwrap_or_default();
        // One retry on another endpoint when the first refuses.
        let mut avoid = None;
        for _ in 0..2 {
            let ep = match cluster.pick(key.as_bytes(), avoid) {
                Ok(ep) => ep,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp proxy: no endpoint");
                    return None;
                }
            };
            cluster.metrics.upstream_requests.inc();
            let connect =
                tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(ep.addr)).await;
            match connect {
                Ok(Ok(mut upstream)) => {
                    cluster.report(&ep, AttemptResult::Success);
                    let _ = upstream.set_nodelay(true);
                    if let Err(e) =
                        tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
                    {
                        tracing::debug!(error = %e, upstream = %ep.addr, "tcp proxy: connection ended with error");
                    }
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, upstream = %ep.addr, cluster = %cluster.name, "tcp proxy: connect failed");
                }
                Err(_) => {
                    tracing::warn!(upstream = %ep.addr, cluster = %cluster.name, "tcp proxy: connect timed out");
                }
            }
            cluster.metrics.upstream_failures.inc();
            cluster.report(&ep, AttemptResult::ConnectFailure);
            avoid = Some(ep.addr);
        }
        None
    }
}
