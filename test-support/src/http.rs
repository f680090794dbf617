//! The one HTTP client of the tests: [`send`] (a [`Req`] over HTTP/1.1 or h2c prior knowledge,
//! through hyper's client connections) and [`http_raw`] (a request written as raw bytes, for what
//! a well-behaved client will not send, read back with a small HTTP/1.1 parser).
//! [`http_get`] is `send` of a `GET` with `Connection: close`, answered as an [`HttpResponse`].

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::STEP_TIMEOUT;

/// How the test client talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

/// A request for [`send`]: the host goes into `Host` (HTTP/1.1) or `:authority` (h2c).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    /// `GET path` for host `svc.test`.
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            host: "svc.test".to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }

    pub fn host(mut self, h: &str) -> Self {
        self.host = h.to_owned();
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn body(mut self, b: impl Into<Bytes>) -> Self {
        self.body = b.into();
        self
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req` to `addr` over a new connection and reads the whole response (bounded by
/// [`STEP_TIMEOUT`]). An error means the exchange broke (connection closed, body shorter than
/// announced, stream reset) or nothing complete came in time.
pub async fn send(addr: SocketAddr, proto: Proto, req: Req) -> anyhow::Result<Resp> {
    tokio::time::timeout(STEP_TIMEOUT, send_inner(addr, proto, req))
        .await
        .map_err(|_| anyhow!("no complete answer from {addr} within {STEP_TIMEOUT:?}"))?
}

async fn send_inner(addr: SocketAddr, proto: Proto, req: Req) -> anyhow::Result<Resp> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let io = TokioIo::new(tcp);
    let mut builder = Request::builder().method(req.method.clone());
    builder = match proto {
        Proto::H1 => builder
            .uri(req.path.as_str())
            .header(http::header::HOST, req.host.as_str()),
        Proto::H2c => builder
            .uri(format!("http://{}{}", req.host, req.path))
            .version(Version::HTTP_2),
    };
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let request = builder.body(Full::new(req.body.clone()))?;
    let resp = match proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(request).await?
        }
        Proto::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(request).await?
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .with_context(|| format!("reading the response body from {addr}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// A response with its header names lower-cased and its body as text.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl From<Resp> for HttpResponse {
    fn from(r: Resp) -> Self {
        let headers = r
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        Self {
            status: r.status,
            headers,
            body: lossy(&r.body),
        }
    }
}

/// `GET path` over HTTP/1.1 with `Host: <addr>` and `Connection: close` ([`send`]).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let req = Req::get(path)
        .host(&addr.to_string())
        .header("connection", "close");
    send(addr, Proto::H1, req)
        .await
        .map(HttpResponse::from)
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// Sends `request` (complete HTTP/1.1 request bytes, written as they are) and reads one
/// response.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_http_response(&buf, false)? {
            return Ok(resp);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return parse_http_response(&buf, true)?.ok_or_else(|| {
                anyhow!(
                    "{addr} closed the connection mid-response: {:?}",
                    lossy(&buf)
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `Ok(None)` while more bytes are needed; `eof` means no more will come.
pub fn parse_http_response(buf: &[u8], eof: bool) -> anyhow::Result<Option<HttpResponse>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = &buf[head_end + 4..];
    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match dechunk(body) {
            Some(b) => b,
            None if eof => bail!("truncated chunked body: {:?}", lossy(body)),
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            if eof {
                bail!("body shorter than content-length {len}: {:?}", lossy(body));
            }
            return Ok(None);
        }
        body[..len].to_vec()
    } else if eof || status == 204 || status == 304 {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body: lossy(&body),
    }))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .expect("parse")
            .expect("complete");
        assert_eq!((r.status, r.body.as_str()), (200, "abc"));
        let partial = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", false)
            .expect("parse");
        assert!(partial.is_none());
        let r = parse_http_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .expect("parse")
        .expect("complete");
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
    }

    /// `http_get` and `http_raw` read the same answer from a server that writes it by hand.
    #[tokio::test]
    async fn get_and_raw_read_the_same_response() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let got = http_get(addr, "/x").await.expect("get");
        assert_eq!(
            (got.status, got.header("x-a"), got.body.as_str()),
            (201, Some("1"), "ok")
        );
        let raw = http_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("raw");
        assert_eq!(
            (raw.status, raw.header("X-A"), raw.body.as_str()),
            (201, Some("1"), "ok")
        );
    }
}
