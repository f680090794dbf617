//! TCP proxy listeners: L4 pass-through of opaque protocols to a cluster's endpoints, with the
//! cluster's load balancing, circuit breaker and outlier detection (connect failures).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use mecha_mesh::cluster::PickError;
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
        let mut snap = self.snapshot.load_full();
        let cluster = self
            .listener
            .resolve(&mut snap)
            .and_then(|i| snap.tcp.get(i));
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
        // An original_dst cluster sends where the connection was going before the REDIRECT;
        // one that came here directly has no such place (sending it to our own address would
        // loop).
        let original = if cluster.original_dst {
            let dst = downstream.get_socket_digest().and_then(|d| {
                let dst = *d.original_dst()?.as_inet()?;
                let local = d.local_addr().and_then(|a| a.as_inet().copied());
                (Some(dst) != local).then_some(dst)
            });
            if dst.is_none() {
                tracing::warn!(listener = %self.listener.name, error = %PickError::NoOriginalDst(cluster.name.clone()), "tcp proxy: closing");
                return None;
            }
            dst
        } else {
            None
        };
        // One retry on another endpoint when the first refuses (none for an original
        // destination: there is only one).
        let mut avoid = None;
        for _ in 0..if original.is_some() { 1 } else { 2 } {
            let picked = match original {
                Some(dst) => Ok(cluster.pick_original(dst)),
                None => cluster.pick(key.as_bytes(), avoid),
            };
            let ep = match picked {
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
