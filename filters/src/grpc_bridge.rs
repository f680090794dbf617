//! Pingora HTTP/2 session ↔ tower `Service` bridge, so tonic-generated services run inside a
//! Pingora filter chain with no second hop.
//!
//! tonic does the gRPC work (message framing, status trailers, trailers-only errors,
//! compression); this module moves bytes between the h2 stream Pingora accepted and the
//! `http::Request`/`http::Response` the service speaks, and adds what tonic leaves to its own
//! transport (which we do not use): `grpc-timeout` deadlines and the request message-size limit
//! answered with RESOURCE_EXHAUSTED (tonic's codec says OUT_OF_RANGE).
//!
//! Unary and server-streaming requests are read whole before the call (one allocation-free
//! `Bytes` in the common single-frame case). They carry exactly one message, so the body is
//! bounded by the message limit: a second message is refused (RESOURCE_EXHAUSTED when the
//! total then exceeds the limit, else INVALID_ARGUMENT) before it is buffered, and a body that
//! stalls longer than the body timeout ends the call with DEADLINE_EXCEEDED. Client- and bidi-streaming requests are fed to the
//! service through a bounded channel while responses flow back, so both directions stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::v2::write_body;
use tokio::sync::mpsc;
use tonic::Code;
use tower::{Service, ServiceExt};

/// Default request message limit, as gRPC implementations agree (4 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// What one exchange ended with, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The gRPC status sent (from headers or trailers); `Unknown` when the stream broke first.
    pub code: Code,
}

/// A failure of the exchange itself (the client went away, h2 error); already answered where
/// possible, reported so the caller can log it.
#[derive(Debug, thiserror::Error)]
#[error("grpc bridge: {0}")]
pub struct BridgeError(pub String);

// === request body ===

/// The request body handed to the service.
pub enum RequestBody {
    Full(Option<Bytes>),
    Streaming(mpsc::Receiver<Result<Bytes, BridgeError>>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BridgeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BridgeError>>> {
        match self.get_mut() {
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Streaming(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RequestBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Streaming(_) => SizeHint::default(),
        }
    }
}

// === message-size limit ===

/// Why the [`FrameLimiter`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A message declared this many bytes, more than the limit.
    TooLarge(usize),
    /// A single-message call's second message would bring the body to at least this many
    /// message bytes, more than the limit.
    TotalTooLarge(usize),
    /// A single-message call sent a second message.
    SecondMessage,
}

/// Tracks gRPC message boundaries (1-byte flag + 4-byte big-endian length + payload) across
/// DATA frames, so an oversize message is refused from its 5-byte prefix, before its payload
/// is buffered; for single-message calls, so is a second message.
#[derive(Debug)]
struct FrameLimiter {
    max: usize,
    /// Unary / server-streaming: the request holds exactly one message.
    single: bool,
    /// Messages whose prefix was seen, and their declared payload bytes.
    messages: usize,
    declared: usize,
    /// Bytes of the current message payload still to skip.
    remaining: usize,
    /// Partial 5-byte prefix collected so far.
    prefix: [u8; 5],
    have: usize,
}

impl FrameLimiter {
    fn new(max: usize, single: bool) -> Self {
        Self {
            max,
            single,
            messages: 0,
            declared: 0,
            remaining: 0,
            prefix: [0; 5],
            have: 0,
        }
    }

    /// Refuses the first message whose declared length exceeds the limit and, for a
    /// single-message call, any second message.
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Refusal> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (5 - self.have).min(chunk.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have == 5 {
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > self.max {
                    return Err(Refusal::TooLarge(len));
                }
                self.declared = self.declared.saturating_add(len);
                self.messages += 1;
                if self.single && self.messages > 1 {
                    return Err(if self.declared > self.max {
                        Refusal::TotalTooLarge(self.declared)
                    } else {
                        Refusal::SecondMessage
                    });
                }
                self.remaining = len;
                self.have = 0;
            }
        }
        Ok(())
    }
}

// === helpers ===

/// Parses `grpc-timeout` (the capability layer's parser, shared with invocations).
pub fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    mecha_capabilities::invoke::parse_grpc_timeout(v.as_bytes())
}

fn code_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(n))
}

/// A trailers-only gRPC error response: HTTP 200 with `grpc-status` and `grpc-message` in the
/// only HEADERS frame.
fn trailers_only(code: Code, message: &str) -> Result<Box<ResponseHeader>, BridgeError> {
    let mut resp = ResponseHeader::build(200, Some(3)).map_err(h2_err)?;
    resp.insert_header("content-type", "application/grpc")
        .map_err(h2_err)?;
    resp.insert_header("grpc-status", (code as i32).to_string())
        .map_err(h2_err)?;
    resp.insert_header("grpc-message", percent_encode(message))
        .map_err(h2_err)?;
    Ok(Box::new(resp))
}

fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(2);
    map.insert("grpc-status", HeaderValue::from((code as i32) as u16));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        map.insert("grpc-message", v);
    }
    map
}

/// grpc-message is percent-encoded (gRPC HTTP/2 spec): printable ASCII except '%' passes.
pub fn percent_encode(msg: &str) -> String {
    mecha_mesh::client::percent_encode(msg)
}

fn h2_err(e: impl std::fmt::Display) -> BridgeError {
    BridgeError(e.to_string())
}

// === the exchange ===

/// Limits and behaviour of one bridged call.
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    pub max_request_message: usize,
    /// The method streams requests (client- or bidi-streaming): feed the body incrementally.
    pub streaming_request: bool,
    /// Single-message requests: the longest wait for the next bytes of the body.
    pub body_timeout: Duration,
}

/// Serves one gRPC exchange on `h2` with `svc`; returns the status sent.
pub async fn serve<S, B>(
    h2: &mut H2Session,
    svc: S,
    opts: CallOptions,
) -> Result<Outcome, BridgeError>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    let deadline = h2
        .req_header()
        .headers
        .get("grpc-timeout")
        .and_then(parse_grpc_timeout)
        .map(|d| tokio::time::Instant::now() + d);

    // Phase 1: the request goes in, the response head comes out.
    let head = match within(deadline, respond(h2, svc, opts)).await {
        Some(Ok(head)) => head,
        Some(Err(Early::Status(code, msg))) => {
            send_trailers_only(h2, code, &msg)?;
            return Ok(Outcome { code });
        }
        Some(Err(Early::Broken(e))) => return Err(e),
        None => {
            send_trailers_only(
                h2,
                Code::DeadlineExceeded,
                "deadline exceeded (grpc-timeout)",
            )?;
            return Ok(Outcome {
                code: Code::DeadlineExceeded,
            });
        }
    };
    let Head { parts, body, feed } = head;

    // Trailers-only: the status travels in the one HEADERS frame.
    if body.is_end_stream() {
        let code = code_of(&parts.headers).unwrap_or(Code::Unknown);
        h2.write_response_header(Box::new(ResponseHeader::from(parts)), true)
            .map_err(h2_err)?;
        return Ok(Outcome { code });
    }

    let header_code = code_of(&parts.headers);
    h2.write_response_header(Box::new(ResponseHeader::from(parts)), false)
        .map_err(h2_err)?;
    let Some(mut writer) = h2.take_response_body_writer() else {
        return Err(BridgeError(
            "h2 response body writer missing after headers".into(),
        ));
    };

    // Phase 2: response frames go out; a streaming request keeps flowing in meanwhile.
    let pumped = match feed {
        None => within(deadline, pump(&mut writer, body)).await,
        Some(tx) => {
            within(deadline, async {
                tokio::select! {
                    r = pump(&mut writer, body) => r,
                    never = forward_rest(h2, tx) => match never {},
                }
            })
            .await
        }
    };
    match pumped {
        Some(Ok(code)) => Ok(Outcome {
            code: code.or(header_code).unwrap_or(Code::Unknown),
        }),
        Some(Err(e)) => {
            // The response body failed mid-stream: end the stream with a status so the client
            // sees an error, not a silent truncation.
            let _ = writer.send_trailers(status_trailers(Code::Internal, &e.0));
            Err(e)
        }
        None => {
            let _ = writer.send_trailers(status_trailers(
                Code::DeadlineExceeded,
                "deadline exceeded (grpc-timeout)",
            ));
            Ok(Outcome {
                code: Code::DeadlineExceeded,
            })
        }
    }
}

/// Awaits `fut` until `deadline` (if any); `None` when the deadline passed first.
async fn within<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    fut: F,
) -> Option<F::Output> {
    match deadline {
        None => Some(fut.await),
        Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
    }
}

enum Early {
    /// Answer with this status, trailers-only.
    Status(Code, String),
    Broken(BridgeError),
}

struct Head<B> {
    parts: http::response::Parts,
    body: B,
    /// For streaming requests still being read: where the rest of the request body goes.
    feed: Option<mpsc::Sender<Result<Bytes, BridgeError>>>,
}

/// Answers with a status alone (trailers-only), without calling any service.
pub fn send_trailers_only(h2: &mut H2Session, code: Code, msg: &str) -> Result<(), BridgeError> {
    h2.write_response_header(trailers_only(code, msg)?, true)
        .map_err(h2_err)
}

fn refused(r: Refusal, max: usize) -> Early {
    match r {
        Refusal::TooLarge(len) => Early::Status(
            Code::ResourceExhausted,
            format!("request message of {len} bytes exceeds the limit of {max} bytes"),
        ),
        Refusal::TotalTooLarge(total) => Early::Status(
            Code::ResourceExhausted,
            format!(
                "request of at least {total} message bytes exceeds the limit of {max} bytes \
                 (a unary call carries exactly one message)"
            ),
        ),
        Refusal::SecondMessage => Early::Status(
            Code::InvalidArgument,
            "a second request message on a call that takes exactly one (unary or \
             server-streaming)"
                .to_owned(),
        ),
    }
}

fn http_request(h2: &H2Session, body: RequestBody) -> http::Request<RequestBody> {
    let parts = h2.req_header().as_owned_parts();
    http::Request::from_parts(parts, body)
}

/// Phase 1: reads the request (whole, or streaming into a channel) and calls the service until
/// the response head is ready.
async fn respond<S, B>(h2: &mut H2Session, svc: S, opts: CallOptions) -> Result<Head<B>, Early>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + Send + Unpin,
{
    let mut limiter = FrameLimiter::new(opts.max_request_message, !opts.streaming_request);
    if !opts.streaming_request {
        let body = read_whole(h2, &mut limiter, opts.body_timeout).await?;
        let req = http_request(h2, RequestBody::Full(body));
        let resp = match svc.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        return Ok(Head {
            parts,
            body,
            feed: None,
        });
    }

    let (tx, rx) = mpsc::channel(16);
    let req = http_request(h2, RequestBody::Streaming(rx));
    let call = svc.oneshot(req);
    tokio::pin!(call);
    let mut feed = Some(tx);
    loop {
        // A clone per step keeps `feed` free to be moved out or cleared in the branches.
        let Some(tx) = feed.clone() else {
            let (parts, body) = match (&mut call).await {
                Ok(r) => r.into_parts(),
                Err(never) => match never {},
            };
            return Ok(Head {
                parts,
                body,
                feed: None,
            });
        };
        tokio::select! {
            resp = &mut call => {
                let (parts, body) = match resp {
                    Ok(r) => r.into_parts(),
                    Err(never) => match never {},
                };
                return Ok(Head { parts, body, feed });
            }
            // Reserve first so a full channel pauses reading (h2 flow control then pushes
            // back on the client) instead of buffering without bound. Both awaits are
            // cancel-safe: no request bytes are lost when the response wins the race.
            step = next_chunk(h2, Some(&tx)) => {
                match step {
                    Chunk::Data(permit, data) => {
                        if let Err(r) = limiter.feed(&data) {
                            return Err(refused(r, opts.max_request_message));
                        }
                        permit.send(Ok(data));
                    }
                    Chunk::End | Chunk::Closed => feed = None,
                    Chunk::Failed(permit, e) => {
                        permit.send(Err(BridgeError(e.clone())));
                        return Err(Early::Broken(BridgeError(e)));
                    }
                }
            }
        }
    }
}

enum Chunk<'a> {
    Data(mpsc::Permit<'a, Result<Bytes, BridgeError>>, Bytes),
    /// The client finished its request stream.
    End,
    /// The service dropped the request stream; stop reading.
    Closed,
    Failed(mpsc::Permit<'a, Result<Bytes, BridgeError>>, String),
}

async fn next_chunk<'a>(
    h2: &mut H2Session,
    tx: Option<&'a mpsc::Sender<Result<Bytes, BridgeError>>>,
) -> Chunk<'a> {
    let Some(tx) = tx else {
        return Chunk::Closed;
    };
    let Ok(permit) = tx.reserve().await else {
        return Chunk::Closed;
    };
    match h2.read_body_bytes().await {
        Ok(Some(data)) => Chunk::Data(permit, data),
        Ok(None) => Chunk::End,
        Err(e) => Chunk::Failed(permit, format!("reading request stream: {e}")),
    }
}

/// Phase 2 companion for streaming requests: keeps feeding the request stream until it ends,
/// then waits forever (the response side decides when the exchange is over).
async fn forward_rest(
    h2: &mut H2Session,
    tx: mpsc::Sender<Result<Bytes, BridgeError>>,
) -> Infallible {
    loop {
        match next_chunk(h2, Some(&tx)).await {
            Chunk::Data(permit, data) => permit.send(Ok(data)),
            Chunk::Failed(permit, e) => {
                permit.send(Err(BridgeError(e)));
                break;
            }
            Chunk::End | Chunk::Closed => break,
        }
    }
    drop(tx);
    std::future::pending().await
}

/// Reads a unary/server-streaming request body whole, refusing an oversize or second message
/// from its prefix, and a body that stalls for `body_timeout`. One DATA frame (the common
/// case) is passed on without a copy.
async fn read_whole(
    h2: &mut H2Session,
    limiter: &mut FrameLimiter,
    body_timeout: Duration,
) -> Result<Option<Bytes>, Early> {
    let max = limiter.max;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    loop {
        let Ok(read) = tokio::time::timeout(body_timeout, h2.read_body_bytes()).await else {
            return Err(Early::Status(
                Code::DeadlineExceeded,
                format!(
                    "request body stalled for longer than the listener's request_body_timeout \
                     ({body_timeout:?})"
                ),
            ));
        };
        match read {
            Ok(Some(data)) => {
                if let Err(r) = limiter.feed(&data) {
                    return Err(refused(r, max));
                }
                match (&mut first, &mut rest) {
                    (None, _) => first = Some(data),
                    (Some(f), None) => {
                        let mut buf = BytesMut::with_capacity(f.len() + data.len());
                        buf.extend_from_slice(f);
                        buf.extend_from_slice(&data);
                        rest = Some(buf);
                    }
                    (Some(_), Some(buf)) => buf.extend_from_slice(&data),
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Early::Broken(BridgeError(format!(
                    "reading request body: {e}"
                ))))
            }
        }
    }
    Ok(match rest {
        Some(buf) => Some(buf.freeze()),
        None => first,
    })
}

/// Writes response DATA frames and the trailers; returns the `grpc-status` seen in trailers.
async fn pump<B>(
    writer: &mut h2::SendStream<Bytes>,
    mut body: B,
) -> Result<Option<Code>, BridgeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if data.has_remaining() {
                            let data = data.copy_to_bytes(data.remaining());
                            write_body(writer, data, false, None)
                                .await
                                .map_err(h2_err)?;
                        }
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(trailers) = frame.into_trailers() {
                    let code = code_of(&trailers);
                    writer.send_trailers(trailers).map_err(h2_err)?;
                    return Ok(code);
                }
            }
            Some(Err(e)) => return Err(BridgeError(format!("response body: {e}"))),
            None => {
                writer.send_data(Bytes::new(), true).map_err(h2_err)?;
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_from_the_prefix_across_chunks() {
        let mut l = FrameLimiter::new(10, false);
        // one 3-byte message split across chunks, then a prefix announcing 11 bytes
        assert_eq!(l.feed(&[0, 0, 0]), Ok(()));
        assert_eq!(l.feed(&[0, 3, b'a']), Ok(()));
        assert_eq!(l.feed(&[b'b', b'c', 0, 0, 0]), Ok(()));
        assert_eq!(l.feed(&[0, 11]), Err(Refusal::TooLarge(11)));
    }

    #[test]
    fn limiter_accepts_exactly_the_limit() {
        let mut l = FrameLimiter::new(4, true);
        assert_eq!(l.feed(&[0, 0, 0, 0, 4, 1, 2, 3, 4]), Ok(()));
    }

    #[test]
    fn single_message_calls_refuse_a_second_message_from_its_prefix() {
        // two 3-byte messages under a 4-byte limit: the total (6) is over it
        let mut l = FrameLimiter::new(4, true);
        assert_eq!(l.feed(&[0, 0, 0, 0, 3, 1, 2, 3]), Ok(()));
        assert_eq!(l.feed(&[0, 0, 0, 0, 3]), Err(Refusal::TotalTooLarge(6)));
        // a small second message: refused as a second message
        let mut l = FrameLimiter::new(10, true);
        assert_eq!(l.feed(&[0, 0, 0, 0, 1, 9]), Ok(()));
        assert_eq!(l.feed(&[0, 0, 0, 0, 1]), Err(Refusal::SecondMessage));
        // streaming requests take any number of messages within the per-message limit
        let mut l = FrameLimiter::new(4, false);
        for _ in 0..3 {
            assert_eq!(l.feed(&[0, 0, 0, 0, 3, 1, 2, 3]), Ok(()));
        }
    }

    #[test]
    fn grpc_timeout_units() {
        let p = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("100m"), Some(Duration::from_millis(100)));
        assert_eq!(p("2S"), Some(Duration::from_secs(2)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("5x"), None);
        assert_eq!(p("m"), None);
        assert_eq!(p("1234567890S"), None);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%ü"), "a b%25%C3%BC");
    }
}
