//! Filter chains chosen by TLS criteria without terminating TLS, as Envoy's `tls_inspector`
//! and filter chain matching do: [`inspect`] reads a connection's ClientHello (SNI, ALPN)
//! without taking it from the chain that will serve the connection, and [`select`] picks one
//! of the chains for the connection's destination by their [`ChainMatch`]es.
//!
//! What the first bytes make of a connection (Envoy's `tls_inspector`):
//! - not a TLS handshake record (`0x16 0x03 …`): `raw_buffer`, no SNI, no ALPN;
//! - a complete ClientHello: `tls`, with its SNI and ALPN;
//! - a TLS record that does not parse as a ClientHello: `raw_buffer` (BoringSSL fails and the
//!   inspector reports `tls_not_found` and lets the connection through);
//! - an incomplete ClientHello: wait for more, up to [`MAX_CLIENT_HELLO`] bytes (beyond:
//!   closed, Envoy's `client_hello_too_large`) and the listener's `listener_filters_timeout`;
//!   the peer closing first closes the connection.

use tokio::net::TcpStream;

use crate::config::{ChainMatch, TransportProtocol};

/// The most bytes read while waiting for a complete ClientHello. A real one is a few hundred
/// bytes (post-quantum key shares: under 2 KiB); Envoy allows 64 KiB, which only very large
/// session tickets need.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What filter chain matching knows of a connection beyond its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub transport: TransportProtocol,
    /// SNI, lower-cased.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

impl Hello {
    /// A plain-text connection (or one given up on at `listener_filters_timeout` with
    /// `continue_on_listener_filters_timeout`).
    pub fn raw_buffer() -> Self {
        Self {
            transport: TransportProtocol::RawBuffer,
            server_name: None,
            alpn: Vec::new(),
        }
    }
}

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Done(Hello),
    /// A ClientHello has begun and is not complete (or nothing arrived yet).
    Incomplete,
}

/// Parses the first bytes of a connection (all of them so far).
pub fn parse_first_bytes(bytes: &[u8]) -> Parsed {
    match bytes {
        [] | [0x16] => return Parsed::Incomplete,
        [0x16, 0x03, ..] => {}
        _ => return Parsed::Done(Hello::raw_buffer()),
    }
    // rustls parses the ClientHello (records, fragments, extensions) without a certificate
    // or a handshake: `Acceptor` stops at the ClientHello.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // Its buffer is full: more than a ClientHello's worth of records.
            Err(_) => return Parsed::Done(Hello::raw_buffer()),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Parsed::Done(Hello {
                transport: TransportProtocol::Tls,
                server_name: hello.server_name().map(str::to_ascii_lowercase),
                // ALPN values are bytes; one that is not UTF-8 cannot equal a configured one.
                alpn: hello
                    .alpn()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| String::from_utf8(p.to_vec()).ok())
                    .collect(),
            })
        }
        Ok(None) => Parsed::Incomplete,
        Err(_) => Parsed::Done(Hello::raw_buffer()),
    }
}

/// Why [`inspect`] gave up on a connection (it is closed).
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// The peer closed (or the socket failed) before a decision.
    Closed,
    /// More than [`MAX_CLIENT_HELLO`] bytes without a complete ClientHello.
    TooLarge,
}

/// Reads the connection's ClientHello, if it starts with one. Bytes are only peeked while the
/// first segment holds all that is needed (the usual case); when it does not, `peek` cannot
/// wait for more (it is ready as soon as any byte is queued, so waiting would be polling), so
/// the bytes are read into `consumed` and the caller hands them back to the chain (Pingora's
/// stream `rewind`). Cancel-safe: `consumed` holds every byte taken off the socket.
pub async fn inspect(tcp: &TcpStream, consumed: &mut Vec<u8>) -> Result<Hello, GaveUp> {
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    if consumed.is_empty() {
        let n = tcp.peek(&mut buf).await.map_err(|_| GaveUp::Closed)?;
        if n == 0 {
            return Err(GaveUp::Closed);
        }
        match parse_first_bytes(&buf[..n]) {
            Parsed::Done(hello) => return Ok(hello),
            Parsed::Incomplete if n == MAX_CLIENT_HELLO => return Err(GaveUp::TooLarge),
            Parsed::Incomplete => {}
        }
    }
    loop {
        let room = MAX_CLIENT_HELLO - consumed.len();
        if room == 0 {
            return Err(GaveUp::TooLarge);
        }
        tcp.readable().await.map_err(|_| GaveUp::Closed)?;
        let n = match tcp.try_read(&mut buf[..room]) {
            Ok(0) => return Err(GaveUp::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(GaveUp::Closed),
        };
        consumed.extend_from_slice(&buf[..n]);
        if let Parsed::Done(hello) = parse_first_bytes(consumed) {
            return Ok(hello);
        }
    }
}

/// The length of the longest `*.suffix` in `names` that `sni` matches (the suffix with its
/// dot; `*.example.com` does not match `example.com`).
fn wildcard_len(names: &[String], sni: &str) -> Option<usize> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix('*'))
        .filter(|suffix| {
            sni.len() > suffix.len()
                && sni
                    .get(sni.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        })
        .map(str::len)
        .max()
}

/// Narrows `live` to the candidates `specific` accepts, else to those `unset` accepts.
fn narrow(live: &mut Vec<usize>, specific: impl Fn(usize) -> bool, unset: impl Fn(usize) -> bool) {
    if live.iter().any(|&i| specific(i)) {
        live.retain(|&i| specific(i));
    } else {
        live.retain(|&i| unset(i));
    }
}

/// The candidate (all for one destination) that serves a connection described by `hello`, by
/// Envoy's order: server name (exact, then the longest wildcard, then chains without
/// `server_names`), transport protocol (named, then unset), ALPN (the first protocol the
/// client offers that some chain names, then chains without `application_protocols`). `None`:
/// no chain matches (the listener's own filters serve).
pub fn select(candidates: &[&ChainMatch], hello: &Hello) -> Option<usize> {
    let mut live: Vec<usize> = (0..candidates.len()).collect();
    let names = |i: usize| &candidates[i].server_names;
    match hello.server_name.as_deref() {
        Some(sni) => {
            let exact = |i: usize| names(i).iter().any(|n| n.eq_ignore_ascii_case(sni));
            if live.iter().any(|&i| exact(i)) {
                live.retain(|&i| exact(i));
            } else {
                let best = live
                    .iter()
                    .filter_map(|&i| wildcard_len(names(i), sni))
                    .max();
                narrow(
                    &mut live,
                    |i| best.is_some() && wildcard_len(names(i), sni) == best,
                    |i| names(i).is_empty(),
                );
            }
        }
        None => live.retain(|&i| names(i).is_empty()),
    }
    narrow(
        &mut live,
        |i| candidates[i].transport_protocol == Some(hello.transport),
        |i| candidates[i].transport_protocol.is_none(),
    );
    let offered = |i: usize, p: &str| candidates[i].application_protocols.iter().any(|a| a == p);
    match hello
        .alpn
        .iter()
        .find(|p| live.iter().any(|&i| offered(i, p)))
    {
        Some(p) => live.retain(|&i| offered(i, p)),
        None => live.retain(|&i| candidates[i].application_protocols.is_empty()),
    }
    live.first().copied()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_rustls::rustls;

    use super::*;

    fn m(names: &[&str], transport: Option<TransportProtocol>, alpn: &[&str]) -> ChainMatch {
        ChainMatch {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            transport_protocol: transport,
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tls(sni: Option<&str>, alpn: &[&str]) -> Hello {
        Hello {
            transport: TransportProtocol::Tls,
            server_name: sni.map(str::to_owned),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    const TLS: Option<TransportProtocol> = Some(TransportProtocol::Tls);
    const RAW: Option<TransportProtocol> = Some(TransportProtocol::RawBuffer);

    #[test]
    fn server_names_exact_beats_the_longest_wildcard_beats_unset() {
        let exact = m(&["a.example.com"], None, &[]);
        let short = m(&["*.com"], None, &[]);
        let long = m(&["*.example.com"], None, &[]);
        let unset = m(&[], None, &[]);
        let all = [&short, &unset, &long, &exact];
        assert_eq!(select(&all, &tls(Some("a.example.com"), &[])), Some(3));
        assert_eq!(select(&all, &tls(Some("b.example.com"), &[])), Some(2));
        assert_eq!(select(&all, &tls(Some("x.y.example.com"), &[])), Some(2));
        assert_eq!(select(&all, &tls(Some("other.com"), &[])), Some(0));
        assert_eq!(select(&all, &tls(Some("example.org"), &[])), Some(1));
        assert_eq!(select(&all, &tls(None, &[])), Some(1), "no SNI: unset only");
        assert_eq!(select(&all, &Hello::raw_buffer()), Some(1));
        // A wildcard matches no bare suffix; names compare case-insensitively.
        assert_eq!(select(&[&long], &tls(Some("example.com"), &[])), None);
        assert_eq!(select(&[&exact], &tls(Some("A.Example.COM"), &[])), Some(0));
        assert_eq!(select(&[&long], &tls(Some("B.EXAMPLE.com"), &[])), Some(0));
    }

    #[test]
    fn a_matching_server_name_commits_even_when_later_criteria_fail() {
        // Envoy's tree: the SNI level keeps only the exact chain; its transport fails → none,
        // although the chain without server_names would match the rest.
        let exact_raw = m(&["a.example.com"], RAW, &[]);
        let unset = m(&[], None, &[]);
        assert_eq!(
            select(&[&unset, &exact_raw], &tls(Some("a.example.com"), &[])),
            None
        );
        assert_eq!(
            select(&[&unset, &exact_raw], &tls(Some("b.example.com"), &[])),
            Some(0)
        );
    }

    #[test]
    fn transport_named_beats_unset_and_a_mismatch_without_unset_matches_nothing() {
        let t = m(&[], TLS, &[]);
        let r = m(&[], RAW, &[]);
        let unset = m(&[], None, &[]);
        assert_eq!(select(&[&unset, &t, &r], &tls(None, &[])), Some(1));
        assert_eq!(select(&[&unset, &t, &r], &Hello::raw_buffer()), Some(2));
        assert_eq!(select(&[&unset, &t], &Hello::raw_buffer()), Some(0));
        assert_eq!(select(&[&t], &Hello::raw_buffer()), None);
        assert_eq!(select(&[&r], &tls(Some("a.example.com"), &[])), None);
    }

    #[test]
    fn alpn_follows_the_clients_order_and_beats_unset() {
        let h2 = m(&[], TLS, &["h2"]);
        let h1 = m(&[], TLS, &["http/1.1", "http/1.0"]);
        let unset = m(&[], TLS, &[]);
        let all = [&unset, &h1, &h2];
        assert_eq!(select(&all, &tls(None, &["h2", "http/1.1"])), Some(2));
        assert_eq!(select(&all, &tls(None, &["http/1.1", "h2"])), Some(1));
        assert_eq!(select(&all, &tls(None, &["spdy/3"])), Some(0));
        assert_eq!(select(&all, &tls(None, &[])), Some(0));
        assert_eq!(select(&[&h2], &tls(None, &["http/1.1"])), None);
        // A plain-text connection offers no ALPN.
        assert_eq!(
            select(&[&m(&[], None, &["h2"])], &Hello::raw_buffer()),
            None
        );
    }

    #[test]
    fn no_candidates_no_match() {
        assert_eq!(select(&[], &tls(Some("a.example.com"), &["h2"])), None);
    }

    #[test]
    fn overlapping_matches_are_duplicates() {
        let a = m(&["a.example.com", "b.example.com"], TLS, &[]);
        assert!(a.overlaps(&m(&["B.example.com"], TLS, &[])));
        assert!(!a.overlaps(&m(&["c.example.com"], TLS, &[])));
        assert!(!a.overlaps(&m(&["a.example.com"], None, &[])));
        assert!(!a.overlaps(&m(&["a.example.com"], TLS, &["h2"])));
        assert!(m(&[], None, &[]).overlaps(&ChainMatch::default()));
    }

    /// The bytes a rustls client sends first: its ClientHello for `sni` offering `alpn`.
    async fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tls_client(addr, sni, alpn);
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut consumed = Vec::new();
        // Read all of it (through `inspect`, which must see a complete ClientHello).
        let hello = inspect(&tcp, &mut consumed).await.expect("inspected");
        assert_eq!(hello.transport, TransportProtocol::Tls);
        let mut all = consumed;
        let mut buf = vec![0u8; MAX_CLIENT_HELLO];
        let n = tcp.try_read(&mut buf).unwrap_or(0);
        all.extend_from_slice(&buf[..n]);
        client.abort();
        all
    }

    fn tls_client(
        addr: std::net::SocketAddr,
        sni: &str,
        alpn: &[&str],
    ) -> tokio::task::JoinHandle<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // No server answers: the handshake waits until the test aborts it.
            let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await;
        })
    }

    #[tokio::test]
    async fn a_real_client_hello_gives_sni_and_alpn_without_consuming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tls_client(addr, "A.Example.com", &["h2", "http/1.1"]);
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut consumed = Vec::new();
        let hello = inspect(&tcp, &mut consumed).await.expect("inspected");
        assert_eq!(hello, tls(Some("a.example.com"), &["h2", "http/1.1"]));
        assert!(consumed.is_empty(), "a whole first segment is only peeked");
        let mut first = [0u8; 3];
        assert_eq!(tcp.try_read(&mut first).expect("still queued"), 3);
        assert_eq!(&first, b"\x16\x03\x01");
        client.abort();
    }

    #[tokio::test]
    async fn a_client_hello_in_two_segments_is_read_and_kept_whole() {
        let whole = client_hello("b.example.org", &["istio-peer-exchange"]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let half = whole.len() / 2;
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        let rest = whole[half..].to_vec();
        let head = whole[..half].to_vec();
        let client = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(&head).await.expect("write");
            let _ = gone.await;
            tcp.write_all(&rest).await.expect("write");
            // Held open until the test ends.
            std::future::pending::<()>().await;
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        // The first half is queued before inspection starts.
        let mut probe = vec![0u8; whole.len()];
        while tcp.peek(&mut probe).await.expect("peek") < half {}
        let mut consumed = Vec::new();
        let (hello, _) = tokio::join!(inspect(&tcp, &mut consumed), async {
            let _ = go.send(());
        });
        assert_eq!(
            hello.expect("inspected"),
            tls(Some("b.example.org"), &["istio-peer-exchange"])
        );
        assert_eq!(consumed, whole, "what was read is handed back whole");
        client.abort();
    }

    #[tokio::test]
    async fn plaintext_garbage_truncation_and_eof() {
        async fn first_bytes(bytes: &[u8], close: bool) -> (Result<Hello, GaveUp>, Vec<u8>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let bytes = bytes.to_vec();
            let client = tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.write_all(&bytes).await.expect("write");
                if !close {
                    std::future::pending::<()>().await;
                }
            });
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut consumed = Vec::new();
            let got = inspect(&tcp, &mut consumed).await;
            client.abort();
            (got, consumed)
        }
        // Plain-text HTTP: raw_buffer, nothing taken off the socket.
        let (got, consumed) = first_bytes(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", false).await;
        assert_eq!(got, Ok(Hello::raw_buffer()));
        assert!(consumed.is_empty());
        // A complete handshake record whose ClientHello does not parse: raw_buffer, as
        // Envoy's tls_inspector lets it through (`tls_not_found`).
        let (got, _) = first_bytes(
            b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff",
            false,
        )
        .await;
        assert_eq!(got, Ok(Hello::raw_buffer()));
        // A ClientHello cut short, then the peer closes: closed.
        let (got, consumed) =
            first_bytes(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03", true).await;
        assert_eq!(got, Err(GaveUp::Closed));
        assert_eq!(consumed.len(), 11);
        // Nothing at all, then EOF.
        assert_eq!(first_bytes(b"", true).await.0, Err(GaveUp::Closed));
        // A handshake record longer than the cap: given up on at MAX_CLIENT_HELLO bytes.
        let mut huge = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc".to_vec();
        huge.resize(MAX_CLIENT_HELLO + 2048, 0);
        let (got, consumed) = first_bytes(&huge, false).await;
        assert_eq!(got, Err(GaveUp::TooLarge));
        assert!(consumed.len() <= MAX_CLIENT_HELLO);
    }

    #[test]
    fn an_endless_client_hello_is_incomplete_until_the_cap() {
        // A record header promising 16 KiB of handshake: incomplete; `inspect` gives up at
        // MAX_CLIENT_HELLO (checked there), never waiting for more than that.
        let mut bytes = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc".to_vec();
        bytes.resize(4096, 0);
        assert_eq!(parse_first_bytes(&bytes), Parsed::Incomplete);
        assert_eq!(parse_first_bytes(b"\x16"), Parsed::Incomplete);
        assert_eq!(
            parse_first_bytes(b"\x16\x01"),
            Parsed::Done(Hello::raw_buffer())
        );
    }
}
