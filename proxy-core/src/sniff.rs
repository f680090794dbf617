//! Protocol detection for listeners that take HTTP/1.1 and h2c (prior knowledge) on one port.
//!
//! Pingora decides by reading exactly the 24-byte h2 preface before anything else, with no
//! bound: a complete HTTP/1.0 request shorter than that (`GET / HTTP/1.0\r\n\r\n` is 18
//! bytes) or a few bytes of garbage would wait forever and never get an answer. Here the first
//! bytes are read as they come and compared with the preface so far: the first byte that
//! differs means HTTP/1 (whose parser answers malformed input with 400), a full preface means
//! h2c, and a connection that sends nothing decisive within [`FIRST_BYTES_TIMEOUT`] is closed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to show which protocol it speaks (Pingora's HTTP/1
/// keep-alive idle time).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq, Eq)]
enum Detected {
    Http1,
    H2c,
    /// EOF, a read error or the timeout before the protocol was known.
    Gone,
}

/// Reads until the bytes so far either leave the h2 preface or complete it, then puts them back.
async fn detect(stream: &mut L4Stream, timeout: Duration) -> Detected {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let verdict = tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return Detected::Gone,
                Ok(read) => n += read,
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Detected::Http1;
            }
            if n == H2_PREFACE.len() {
                return Detected::H2c;
            }
        }
    })
    .await
    .unwrap_or(Detected::Gone);
    stream.rewind(&buf[..n]);
    verdict
}

/// Wraps an HTTP app (with `h2c` on) so protocol detection never waits for bytes that a
/// short HTTP/1 request will not send.
pub struct H2cSniff<A> {
    inner: Arc<A>,
}

impl<A> H2cSniff<A> {
    pub fn new(inner: A) -> Self {
        Self {
            inner: Arc::new(inner),
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
        let detected = detect(&mut l4, FIRST_BYTES_TIMEOUT).await;
        let stream: Stream = l4;
        match detected {
            // The preface is buffered now, so Pingora's own 24-byte check returns at once.
            Detected::H2c => self.inner.process_new(stream, shutdown).await,
            Detected::Gone => None,
            Detected::Http1 => {
                // Pingora's HTTP/1 keep-alive loop (apps::ServerApp for HttpServerApp).
                let options = self.inner.server_options();
                let mut session = ServerSession::new_http1(stream);
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
                let mut result = self.inner.process_new_http(session, shutdown).await;
                while let Some((stream, persistent)) = result.map(|r| r.consume()) {
                    let mut session = ServerSession::new_http1(stream);
                    if let Some(p) = persistent {
                        p.apply_to_session(&mut session);
                    }
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
        let verdict = detect(&mut stream, Duration::from_millis(200)).await;
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

    #[tokio::test]
    async fn eof_before_anything_is_gone() {
        let (v, _) = detect_after_sending(b"", true).await;
        assert_eq!(v, Detected::Gone);
    }
}
