//! Protocol detection for listeners that take HTTP/1.1 and h2c (prior knowledge) on one port.
//!
//! Pingora decides by reading exactly the 24-byte h2 preface before anything else, with no
//! bound: a complete HTTP/1.0 request shorter than that (`GET / HTTP/1.0\r\n\r\n` is 18
//! bytes) or a few bytes of garbage would wait forever and never get an answer. Here the first
//! bytes are read as they come and compared with the preface so far: the first byte that
//! differs means HTTP/1 (whose parser answers malformed input with 400), a full preface means
//! h2c, and a connection that sends nothing decisive within [`FIRST_BYTES_TIMEOUT`] is closed.
//!
//! Every HTTP listener is wrapped here, so this is also where a listener's connection-level
//! bounds live ([`ListenerLimits`]): the connection cap, the request-head timeout (a slowloris
//! client trickling its request head, or an h2c preface, is cut off), the HTTP/1 body-read
//! timeout and the h2 idle timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first byte of a TLS handshake record; no HTTP/1 request starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a new connection may stay silent before its first byte (Pingora's HTTP/1
/// keep-alive idle time); from the first byte on, the listener's header timeout applies.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle time between requests on a kept-alive connection: HTTP/1 keep-alive (Pingora's
/// default), and an h2c connection with no open stream (without it, a client that completes
/// the preface and then never sends a request would hold the connection forever).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Request-head bytes read here before handing the connection to Pingora: its own limit
/// (`MAX_HEADER_SIZE`, 1 MiB − 1). A longer head is refused by Pingora's parser as soon as it
/// sees these bytes, so reading further would only buffer more.
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// A listener's connection-level bounds (`listeners[].max_connections`,
/// `request_header_timeout`, `request_body_timeout`).
pub struct ListenerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// HTTP/1 body reads: the longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
    /// Connections refused because `max_connections` were open.
    pub refused: Counter,
}

/// One accepted connection counted against the cap, for as long as it is held.
struct ConnectionSlot<'a>(&'a AtomicUsize);

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Detected {
    Http1,
    H2c,
    /// A TLS ClientHello (record type 22): this listener has no TLS, so no answer it could
    /// read is possible.
    Tls,
    /// EOF, a read error or the timeout before the protocol was known.
    Gone,
}

/// Reads until the bytes so far either leave the h2 preface or complete it, then puts them
/// back. The first byte may take `idle`; the rest of the preface must follow within `timeout`.
async fn detect(stream: &mut L4Stream, idle: Duration, timeout: Duration) -> Detected {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let mut deadline = tokio::time::Instant::now() + idle;
    let verdict = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break Detected::Gone,
            Ok(Ok(read)) => {
                if n == 0 {
                    deadline = tokio::time::Instant::now() + timeout;
                }
                n += read;
            }
        }
        if buf[0] == TLS_HANDSHAKE {
            break Detected::Tls;
        }
        if buf[..n] != H2_PREFACE[..n] {
            break Detected::Http1;
        }
        if n == H2_PREFACE.len() {
            break Detected::H2c;
        }
    };
    stream.rewind(&buf[..n]);
    verdict
}

#[derive(Debug, PartialEq, Eq)]
enum HeadWait {
    /// The head is complete (or longer than Pingora accepts): its bytes are put back.
    Ready,
    /// EOF, a read error, or no first byte within the idle time: close quietly.
    Gone,
    /// The head did not complete within the header timeout.
    TimedOut,
}

/// Where an HTTP/1 request head ends in `buf` (after its empty line), scanning from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    (start..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

/// Reads an HTTP/1 request head before Pingora parses it, so the whole head — not each read,
/// as Pingora's own timeouts go — is bounded by `timeout` from its first byte. The first
/// byte may take `idle` (keep-alive). Everything read is put back for Pingora's parser.
async fn await_head(stream: &mut L4Stream, idle: Duration, timeout: Duration) -> HeadWait {
    let mut buf: Vec<u8> = Vec::new();
    let mut deadline = tokio::time::Instant::now() + idle;
    let verdict = loop {
        let scanned = buf.len();
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break HeadWait::Gone,
            Err(_) if buf.is_empty() => break HeadWait::Gone,
            Err(_) => break HeadWait::TimedOut,
            Ok(Ok(_)) => {}
        }
        if scanned == 0 {
            deadline = tokio::time::Instant::now() + timeout;
        }
        if head_end(&buf, scanned).is_some() || buf.len() > MAX_HEAD_BYTES {
            break HeadWait::Ready;
        }
    };
    if verdict == HeadWait::Ready {
        stream.rewind(&buf);
    }
    verdict
}

/// How long the 408 to a too-slow client may take to write: a client that does not read must
/// not hold the connection either.
const CUT_OFF_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a client whose request head was too slow gets before the connection closes.
const HEAD_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n\
    content-length: 56\r\nconnection: close\r\n\r\n\
    request head not received within request_header_timeout\n";

/// Wraps an HTTP app (with `h2c` on) so protocol detection never waits for bytes that a
/// short HTTP/1 request will not send, and enforces the listener's [`ListenerLimits`].
pub struct H2cSniff<A> {
    inner: Arc<A>,
    limits: ListenerLimits,
    open: AtomicUsize,
}

impl<A> H2cSniff<A> {
    pub fn new(inner: A, limits: ListenerLimits) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
            open: AtomicUsize::new(0),
        }
    }

    pub fn inner_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.inner)
    }
}

#[async_trait]
impl<A> ServerApp for H2cSniff<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.limits.refused.inc();
            // Dropping the stream closes it: the client sees the connection end at once.
            return None;
        }
        let _slot = ConnectionSlot(&self.open);
        // TLS listeners negotiate by ALPN; nothing to detect.
        if stream.get_ssl_digest().is_some() {
            return self.inner.process_new(stream, shutdown).await;
        }
        // Bytes can be put back only on a plain socket stream (what a TCP listener accepts).
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => l4,
            Err(_) => {
                tracing::error!("listener stream is not a socket stream; connection dropped");
                return None;
            }
        };
        let limits = &self.limits;
        let detected = detect(&mut l4, FIRST_BYTES_TIMEOUT, limits.header_timeout).await;
        match detected {
            // The preface is buffered now, so Pingora's own 24-byte check returns at once.
            Detected::H2c => self.inner.process_new(l4, shutdown).await,
            Detected::Gone => None,
            Detected::Tls => {
                tracing::debug!(
                    "TLS ClientHello on a plaintext listener (it has no TLS settings); closing"
                );
                None
            }
            Detected::Http1 => {
                // Pingora's HTTP/1 keep-alive loop (apps::ServerApp for HttpServerApp), each
                // request head first awaited here under the header timeout.
                let options = self.inner.server_options();
                if !head_or_cut_off(&mut l4, FIRST_BYTES_TIMEOUT, limits.header_timeout).await {
                    return None;
                }
                let mut session = ServerSession::new_http1(l4);
                session.set_read_timeout(Some(limits.body_timeout));
                session.set_keepalive(if *shutdown.borrow() {
                    None
                } else {
                    Some(IDLE_TIMEOUT.as_secs())
                });
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
                let mut result = self.inner.process_new_http(session, shutdown).await;
                while let Some((stream, persistent)) = result.map(|r| r.consume()) {
                    let mut l4 = match stream.into_any().downcast::<L4Stream>() {
                        Ok(l4) => l4,
                        Err(_) => return None,
                    };
                    if !head_or_cut_off(&mut l4, IDLE_TIMEOUT, limits.header_timeout).await {
                        return None;
                    }
                    let mut session = ServerSession::new_http1(l4);
                    if let Some(p) = persistent {
                        p.apply_to_session(&mut session);
                    }
                    session.set_read_timeout(Some(limits.body_timeout));
                    result = self.inner.process_new_http(session, shutdown).await;
                }
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Awaits the next request head; `false` when the connection is done (gone, or too slow: then
/// it is answered 408 first).
async fn head_or_cut_off(l4: &mut L4Stream, idle: Duration, header_timeout: Duration) -> bool {
    match await_head(l4, idle, header_timeout).await {
        HeadWait::Ready => true,
        HeadWait::Gone => false,
        HeadWait::TimedOut => {
            tracing::debug!(
                timeout = ?header_timeout,
                "request head not complete within request_header_timeout; closing"
            );
            // Best effort: the client may be gone, and it must not hold this task either.
            let _ = tokio::time::timeout(CUT_OFF_WRITE_TIMEOUT, async {
                let _ = l4.write_all(HEAD_TIMEOUT_RESPONSE).await;
                let _ = l4.shutdown().await;
            })
            .await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn detect_after_sending(bytes: &'static [u8], close: bool) -> (Detected, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(bytes).await.expect("write");
            if close {
                c.shutdown().await.expect("shutdown");
            }
            c
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream: L4Stream = tcp.into();
        let verdict = detect(
            &mut stream,
            Duration::from_millis(200),
            Duration::from_millis(200),
        )
        .await;
        let _client = client.await.expect("client");
        let mut replay = vec![0u8; bytes.len()];
        if verdict != Detected::Gone || !bytes.is_empty() {
            stream.read_exact(&mut replay).await.expect("rewound bytes");
        }
        (verdict, replay)
    }

    #[tokio::test]
    async fn short_http1_request_is_detected_without_waiting_for_24_bytes() {
        let req: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
        let (v, replay) = detect_after_sending(req, false).await;
        assert_eq!(v, Detected::Http1);
        assert_eq!(replay, req, "the bytes read are put back for the parser");
    }

    #[tokio::test]
    async fn control_bytes_are_http1_so_the_parser_answers_400() {
        let (v, _) = detect_after_sending(b"\x01\x02", false).await;
        assert_eq!(v, Detected::Http1);
    }

    #[tokio::test]
    async fn a_tls_client_hello_is_told_apart() {
        // The first bytes of a TLS 1.2/1.3 ClientHello record.
        let (v, _) = detect_after_sending(b"\x16\x03\x01\x02\x00\x01", false).await;
        assert_eq!(v, Detected::Tls);
    }

    #[tokio::test]
    async fn full_preface_is_h2c_and_kept() {
        let (v, replay) = detect_after_sending(H2_PREFACE, false).await;
        assert_eq!(v, Detected::H2c);
        assert_eq!(replay, H2_PREFACE);
    }

    #[tokio::test]
    async fn partial_preface_then_silence_times_out() {
        let (v, replay) = detect_after_sending(b"PRI * HT", false).await;
        assert_eq!(v, Detected::Gone);
        assert_eq!(replay, b"PRI * HT");
    }

    #[test]
    fn head_end_finds_the_empty_line_across_reads() {
        let head = b"GET / HTTP/1.1\r\nhost: x\r\n\r\nbody";
        assert_eq!(head_end(head, 0), Some(head.len() - 4));
        // the scan resumes two bytes back, so an end split across reads is found
        assert_eq!(head_end(head, head.len() - 5), Some(head.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: x\r\n", 0), None);
    }

    #[tokio::test]
    async fn a_trickled_head_times_out_and_a_complete_one_is_put_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
            // Holds the connection open with the head incomplete.
            let mut buf = [0u8; 1];
            let _ = c.read(&mut buf).await;
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream: L4Stream = tcp.into();
        let verdict = await_head(
            &mut stream,
            Duration::from_secs(5),
            Duration::from_millis(100),
        )
        .await;
        assert_eq!(verdict, HeadWait::TimedOut);
        drop(stream);
        client.await.expect("client");

        let req: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(req).await.expect("write");
            c
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream: L4Stream = tcp.into();
        let verdict = await_head(&mut stream, Duration::from_secs(5), Duration::from_secs(5)).await;
        assert_eq!(verdict, HeadWait::Ready);
        let mut replay = vec![0u8; req.len()];
        stream.read_exact(&mut replay).await.expect("rewound head");
        assert_eq!(replay, req);
        let _client = client.await.expect("client");
    }

    #[test]
    fn the_408_response_declares_its_body_length() {
        let text = std::str::from_utf8(HEAD_TIMEOUT_RESPONSE).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    #[tokio::test]
    async fn eof_before_anything_is_gone() {
        let (v, _) = detect_after_sending(b"", true).await;
        assert_eq!(v, Detected::Gone);
    }
}
