//! Upstream connections of the mesh client: HTTP/1.1 connections are pooled **per worker
//! thread** (each worker runs a current-thread runtime, so a connection is reused by the
//! thread that made it, with no lock and no hand-off), HTTP/2 connections (multiplexed, shared
//! across threads) stay in Pingora's connector.
//!
//! Pingora's HTTP/1 pool spawns a task per released connection that watches it while idle
//! (so a connection the upstream closed is dropped at once). Here an idle connection is
//! checked when it is taken instead — one non-blocking read poll: end of stream, an error or
//! unexpected bytes discard it — so a request never goes out on a connection already known
//! closed, and what is still racy (the upstream closing it at the same moment) is the
//! keep-alive race the mesh client retries ([`crate::client::Attempts::reuse_race`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora::connectors::http::Connector;
use pingora::connectors::TransportConnector;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::AsyncReadExt;

/// Idle connections kept per upstream (pool key) and thread; more are closed on release.
pub const MAX_IDLE_PER_UPSTREAM: usize = 128;

/// Every this many releases, a thread's pool drops expired connections of every upstream
/// (an upstream no longer called keeps nothing open past its idle timeout for long).
const SWEEP_EVERY: u32 = 1024;

#[derive(Default)]
struct Idle {
    by_key: HashMap<u64, Vec<(Stream, Instant)>, foldhash::fast::RandomState>,
    releases: u32,
}

impl Idle {
    /// The most recently released live connection for `key` (LIFO keeps few connections warm).
    fn take(&mut self, key: u64, now: Instant) -> Option<Stream> {
        let list = self.by_key.get_mut(&key)?;
        while let Some((mut stream, expires)) = list.pop() {
            if expires > now && still_open(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    fn put(&mut self, key: u64, stream: Stream, expires: Instant) {
        self.releases = self.releases.wrapping_add(1);
        if self.releases.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            self.by_key.retain(|_, list| {
                list.retain(|(_, e)| *e > now);
                !list.is_empty()
            });
        }
        let list = self.by_key.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((stream, expires));
        }
    }
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// Whether an idle connection can still carry a request: nothing to read yet. Polls one read
/// without waiting (a pending read consumes nothing, so dropping it is safe).
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    stream.read(&mut byte).now_or_never().is_none()
}

/// Opens, pools and reuses upstream connections (one per process, shared by the router's
/// mesh client, invocation and AppCallback).
pub struct Upstream {
    transport: TransportConnector,
    h2: Connector,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        Self {
            transport: TransportConnector::new(None),
            h2: Connector::new(None),
        }
    }

    /// A session to `peer` and whether its connection was reused.
    pub async fn session(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        if peer.options.alpn.get_max_http_version() != 1 {
            return self.h2.get_http_session(peer).await;
        }
        let key = peer.reuse_hash();
        let now = Instant::now();
        if let Some(stream) = IDLE.with(|idle| idle.borrow_mut().take(key, now)) {
            return Ok((
                HttpSession::H1(Http1Session::new_with_options(stream, peer)),
                true,
            ));
        }
        let stream = self.transport.new_stream(peer).await?;
        Ok((
            HttpSession::H1(Http1Session::new_with_options(stream, peer)),
            false,
        ))
    }

    /// Gives a finished session back: its connection idles up to `idle_timeout` in this
    /// thread's pool (HTTP/1.1, when the exchange leaves it reusable) or in the connector's.
    pub async fn release(&self, session: HttpSession, peer: &HttpPeer, idle_timeout: Duration) {
        match session {
            HttpSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    let key = peer.reuse_hash();
                    let expires = Instant::now() + idle_timeout;
                    IDLE.with(|idle| idle.borrow_mut().put(key, stream, expires));
                }
            }
            other => {
                self.h2
                    .release_http_session(other, peer, Some(idle_timeout))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = l.accept().await.expect("accept");
        (client, server)
    }

    fn boxed(s: TcpStream) -> Stream {
        Box::new(pingora::protocols::l4::stream::Stream::from(s))
    }

    #[tokio::test]
    async fn idle_connections_closed_or_talking_are_not_reused() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut idle = Idle::default();

        let (open, _keep) = pair().await;
        idle.put(1, boxed(open), later);
        assert!(
            idle.take(1, now).is_some(),
            "a quiet open connection is reused"
        );
        assert!(idle.take(1, now).is_none(), "taken once");

        let (closed, server) = pair().await;
        drop(server);
        // The FIN has arrived once a peek reads end of stream.
        let mut b = [0u8; 1];
        assert_eq!(closed.peek(&mut b).await.expect("peek"), 0);
        idle.put(2, boxed(closed), later);
        assert!(idle.take(2, now).is_none(), "closed by the upstream");

        let (talking, mut server) = pair().await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        assert_eq!(talking.peek(&mut b).await.expect("peek"), 1);
        idle.put(3, boxed(talking), later);
        assert!(
            idle.take(3, now).is_none(),
            "unexpected bytes: not a clean connection"
        );

        let (old, _keep2) = pair().await;
        idle.put(4, boxed(old), now);
        assert!(idle.take(4, now).is_none(), "past its idle timeout");
    }
}
