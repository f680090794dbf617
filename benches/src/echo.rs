//! `bench.Echo`, the gRPC service of `benches/proxy.sh`'s gRPC scenarios, written against
//! tonic's low-level server and client API (no `.proto`, no code generation):
//!
//! - `/bench.Echo/Unary`: a [`Msg`] back with the request's payload;
//! - `/bench.Echo/ServerStream`: `count` messages back, each with the request's payload;
//! - `/bench.Echo/Bidi`: every message of the request stream echoed as it arrives.
//!
//! Shared by `grpc-echo` (the upstream server) and `rt-load` (the load generator), through
//! `#[path]` modules.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::tokio_stream::{self, Stream, StreamExt};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

pub const UNARY: &str = "/bench.Echo/Unary";
pub const SERVER_STREAM: &str = "/bench.Echo/ServerStream";
pub const BIDI: &str = "/bench.Echo/Bidi";

/// Request and response of every method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// `ServerStream`: how many messages to answer with (0 counts as 1).
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send + 'static>>;

/// The service; `Clone` and `NamedService` as `tonic::transport::Server::add_service` wants.
#[derive(Clone, Default)]
pub struct EchoServer {
    _p: Arc<()>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "bench.Echo";
}

struct UnarySvc;
impl tonic::server::UnaryService<Msg> for UnarySvc {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let m = request.into_inner();
        Box::pin(async move {
            Ok(Response::new(Msg {
                payload: m.payload,
                count: 1,
            }))
        })
    }
}

struct ServerStreamSvc;
impl tonic::server::ServerStreamingService<Msg> for ServerStreamSvc {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let m = request.into_inner();
        let n = m.count.max(1);
        let s = tokio_stream::iter((0..n).map(move |_| {
            Ok(Msg {
                payload: m.payload.clone(),
                count: n,
            })
        }));
        Box::pin(async move { Ok(Response::new(Box::pin(s) as MsgStream)) })
    }
}

struct BidiSvc;
impl tonic::server::StreamingService<Msg> for BidiSvc {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        let s = request.into_inner().map(|m| {
            m.map(|m| Msg {
                payload: m.payload,
                count: 1,
            })
        });
        Box::pin(async move { Ok(Response::new(Box::pin(s) as MsgStream)) })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            UNARY => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                Ok(g.unary(UnarySvc, req).await)
            }),
            SERVER_STREAM => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                Ok(g.server_streaming(ServerStreamSvc, req).await)
            }),
            BIDI => Box::pin(async move {
                let mut g = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                Ok(g.streaming(BidiSvc, req).await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("no such method in bench.Echo").into_http())
            }),
        }
    }
}
