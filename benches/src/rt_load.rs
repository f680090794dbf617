//! `rt-load`: a closed-loop or fixed-rate load generator for the two comparisons h2load cannot
//! make fairly on its own:
//!
//! - **Redis, direct vs through Mecha** (`benches/run.sh`, scenario `redis-rs`): the same Rust
//!   client code drives Mecha's Runtime API over gRPC (`grpc-get`, `grpc-save`,
//!   `grpc-publish`: tonic, as an app would) and Redis directly (`redis-get`, `redis-save`,
//!   `redis-publish`) with the `redis` crate Mecha's components use, on one shared
//!   `redis::aio::ConnectionManager` (RESP3, 1 s response timeout, as `state.redis` opens it),
//!   sending the commands Mecha sends: GetState = one pipeline `HMGET <prefix>key data version` plus
//!   `PTTL <prefix>key`; SaveState = `EVALSHA` of Mecha's own `state_set.lua` (the script's
//!   source is included from `capabilities/`); PublishEvent = `XADD topic MAXLEN ~ 10000 * data …
//!   contentType text/plain`. So the difference between the two is what Mecha adds (the app's
//!   gRPC hop, the capability filter, the component), not a cheaper C client.
//! - **gRPC streaming through a proxy** (`benches/proxy.sh`, scenarios `grpc-bidi`,
//!   `grpc-sstream`): `bench.Echo` (`src/echo.rs`, served by `grpc-echo`) bidi ping-pong on one
//!   long-lived stream per worker (`echo-bidi`: latency per message), server streaming
//!   (`echo-server-stream`: one call = `--messages` answers; latency = until the last one), and
//!   unary (`echo-unary`).
//!
//! ```text
//! rt-load --op OP --addr HOST:PORT [--concurrency 16] [--rate 0] [--conns 0] [--duration 10]
//!         [--warmup 2] [--threads 1] [--payload 1024] [--messages 10] [--check]
//! rt-load --write-request FILE [--payload 1024]   # h2load -d body: a framed bench.Echo Msg
//! ```
//! `--concurrency N` workers, each with one call in flight. `--rate 0` (saturation): each
//! worker sends its next call as soon as the last one is answered. `--rate R`: R calls/s in
//! total, each worker on a fixed schedule of R/N per second (as `h2load --rps`: a call falling
//! due while the worker's previous one is out is sent when that one is answered, and its
//! latency is counted from when it is sent). gRPC ops spread the workers over `--conns`
//! connections (0: one per worker, as `h2load -c N -m 1`); the direct Redis ops share one
//! connection, as Mecha's component does. Calls answered within the `--duration` window after
//! `--warmup` seconds count. Prints one line:
//! `summary op=… rps=… ok=… errors=… p50_ms=… p90_ms=… p99_ms=… p999_ms=… mean_ms=… max_ms=…`
//! (`rps` = calls answered OK per second of the window; for `echo-server-stream` a call is
//! `--messages` messages); the first error goes to stderr. `--check`: one call per op,
//! answers checked (GetState and HMGET must return `bench-value`, the echo ops their payload),
//! exit status 1 when it fails.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mecha_proto::layotto as pb;
use pb::runtime_client::RuntimeClient;
use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, Script, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use tonic_prost::ProstCodec;

#[path = "echo.rs"]
#[allow(dead_code)]
mod echo;
use echo::Msg;

/// Mecha's own SaveState script, so the direct reference does the same Redis work.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(include_str!(
        "../../capabilities/src/redis/scripts/state_set.lua"
    ))
});

const STORE: &str = "statestore";
const GET_KEY: &str = "bench-key";
const GET_VALUE: &[u8] = b"bench-value";
const SAVE_KEY: &str = "bench-save";
const SAVE_VALUE: &[u8] = b"0123456789abcdef";
const PUBSUB: &str = "pubsub";
const TOPIC: &str = "bench-topic";
/// Mecha's `pubsub.redis` in `benches/mecha-bench-redis.yaml`: `maxLenApprox: "10000"`.
const MAX_LEN: u64 = 10_000;
/// Every call's deadline (the Redis components' default `timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    RedisGet,
    RedisSave,
    RedisPublish,
    GrpcGet,
    GrpcSave,
    GrpcPublish,
    EchoUnary,
    EchoServerStream,
    EchoBidi,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator: Mecha's Runtime API vs Redis directly, gRPC echo streams")]
struct Args {
    #[arg(long, value_enum)]
    op: Option<Op>,
    /// HOST:PORT of Redis (redis-* ops) or of the gRPC server / proxy
    #[arg(long)]
    addr: Option<String>,
    /// workers, each with one call in flight
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// calls per second in total; 0 = as fast as answers come (saturation)
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// gRPC connections (0 = one per worker); direct Redis always shares one
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// seconds measured, after the warm-up
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// seconds of load before the measured window
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// runtime threads: 1 = a current-thread runtime
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// echo ops: payload bytes per message
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// echo-server-stream: messages answered per call
    #[arg(long, default_value_t = 10)]
    messages: u32,
    /// Redis key prefix of Mecha's state store (`keyPrefix: appid`, app id `app`)
    #[arg(long, default_value = "app||")]
    key_prefix: String,
    /// one call, answer checked, then exit
    #[arg(long)]
    check: bool,
    /// write the h2load request body of echo-unary (5-byte gRPC prefix + Msg) and exit
    #[arg(long)]
    write_request: Option<PathBuf>,
}

/// What every worker shares.
enum Target {
    Redis(ConnectionManager),
    Runtime(Vec<Channel>),
    Echo(Vec<Channel>),
}

/// One worker's connection (and, for bidi, its open stream).
enum Conn {
    Redis(ConnectionManager),
    Runtime(RuntimeClient<Channel>),
    Echo(tonic::client::Grpc<Channel>),
    Bidi {
        tx: mpsc::Sender<Msg>,
        rx: Streaming<Msg>,
    },
}

struct Worker {
    op: Op,
    conn: Conn,
    prefix: String,
    payload: Vec<u8>,
    messages: u32,
    check: bool,
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

impl Worker {
    async fn new(op: Op, target: &Target, i: usize, args: &Args) -> Result<Self, String> {
        let conn = match target {
            Target::Redis(c) => Conn::Redis(c.clone()),
            Target::Runtime(ch) => Conn::Runtime(RuntimeClient::new(ch[i % ch.len()].clone())),
            Target::Echo(ch) => {
                let mut g = tonic::client::Grpc::new(ch[i % ch.len()].clone());
                if op == Op::EchoBidi {
                    // One long-lived stream per worker. The first message goes out with the
                    // request, so a proxy that waits for body data before it forwards the
                    // headers still opens the stream; its answer is read here, unmeasured.
                    let (tx, rx) = mpsc::channel(1);
                    let first = Msg {
                        payload: payload(args.payload),
                        count: 1,
                    };
                    tx.send(first)
                        .await
                        .map_err(|_| "bidi: channel closed".to_owned())?;
                    g.ready()
                        .await
                        .map_err(|e| format!("bidi: not ready: {e}"))?;
                    let resp = tokio::time::timeout(
                        CALL_TIMEOUT * 5,
                        g.streaming(
                            tonic::Request::new(ReceiverStream::new(rx)),
                            PathAndQuery::from_static(echo::BIDI),
                            ProstCodec::<Msg, Msg>::default(),
                        ),
                    )
                    .await
                    .map_err(|_| "bidi: no response headers within 5 s".to_owned())?
                    .map_err(|s| format!("bidi: {s}"))?;
                    let mut rx = resp.into_inner();
                    match tokio::time::timeout(CALL_TIMEOUT * 5, rx.message()).await {
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None)) => return Err("bidi: stream ended at once".into()),
                        Ok(Err(s)) => return Err(format!("bidi: first message: {s}")),
                        Err(_) => return Err("bidi: no first answer within 5 s".into()),
                    }
                    Conn::Bidi { tx, rx }
                } else {
                    Conn::Echo(g)
                }
            }
        };
        Ok(Self {
            op,
            conn,
            prefix: args.key_prefix.clone(),
            payload: payload(args.payload),
            messages: args.messages,
            check: args.check,
        })
    }

    /// One call, within [`CALL_TIMEOUT`].
    async fn call(&mut self) -> Result<(), String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("{:?}: no answer within {CALL_TIMEOUT:?}", self.op)),
        }
    }

    async fn call_inner(&mut self) -> Result<(), String> {
        let op = self.op;
        match &mut self.conn {
            Conn::Redis(c) => match op {
                Op::RedisGet => {
                    // what `state.redis` sends for GetState: one pipeline, one round trip
                    let k = format!("{}{GET_KEY}", self.prefix);
                    let mut pipe = redis::pipe();
                    pipe.cmd("HMGET").arg(&k).arg("data").arg("version");
                    pipe.cmd("PTTL").arg(&k);
                    let (fields, _pttl): (Value, Value) = pipe
                        .query_async(c)
                        .await
                        .map_err(|e| format!("HMGET+PTTL: {e}"))?;
                    if self.check {
                        let data = match fields {
                            Value::Array(mut v) if !v.is_empty() => v.swap_remove(0),
                            other => other,
                        };
                        match data {
                            Value::BulkString(b) if b == GET_VALUE => {}
                            other => {
                                return Err(format!(
                                    "HMGET {k} data: expected bench-value, got {other:?}"
                                ))
                            }
                        }
                    }
                    Ok(())
                }
                Op::RedisSave => {
                    // what `state.redis` sends for SaveState without ETag or TTL
                    let mut inv = SET.prepare_invoke();
                    inv.key(format!("{}{SAVE_KEY}", self.prefix))
                        .key(format!("mecha-state-version||{}", self.prefix))
                        .arg(SAVE_VALUE)
                        .arg("")
                        .arg("0")
                        .arg("");
                    let v: i64 = inv
                        .invoke_async(c)
                        .await
                        .map_err(|e| format!("EVALSHA state_set.lua: {e}"))?;
                    if v < 0 {
                        return Err(format!("state_set.lua answered {v}"));
                    }
                    Ok(())
                }
                Op::RedisPublish => {
                    // what `pubsub.redis` sends for PublishEvent
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(TOPIC).arg("MAXLEN").arg("~").arg(MAX_LEN).arg("*");
                    cmd.arg("data").arg(SAVE_VALUE);
                    cmd.arg("contentType").arg("text/plain");
                    let _id: Value = cmd.query_async(c).await.map_err(|e| format!("XADD: {e}"))?;
                    Ok(())
                }
                _ => unreachable!("redis connection for {op:?}"),
            },
            Conn::Runtime(client) => match op {
                Op::GrpcGet => {
                    let r = client
                        .get_state(pb::GetStateRequest {
                            store_name: STORE.into(),
                            key: GET_KEY.into(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|s| format!("GetState: {s}"))?;
                    if self.check && r.get_ref().data != GET_VALUE {
                        return Err(format!(
                            "GetState: expected bench-value, got {:?}",
                            String::from_utf8_lossy(&r.get_ref().data)
                        ));
                    }
                    Ok(())
                }
                Op::GrpcSave => {
                    client
                        .save_state(pb::SaveStateRequest {
                            store_name: STORE.into(),
                            states: vec![pb::StateItem {
                                key: SAVE_KEY.into(),
                                value: SAVE_VALUE.to_vec(),
                                ..Default::default()
                            }],
                        })
                        .await
                        .map_err(|s| format!("SaveState: {s}"))?;
                    Ok(())
                }
                Op::GrpcPublish => {
                    client
                        .publish_event(pb::PublishEventRequest {
                            pubsub_name: PUBSUB.into(),
                            topic: TOPIC.into(),
                            data: SAVE_VALUE.to_vec(),
                            data_content_type: "text/plain".into(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|s| format!("PublishEvent: {s}"))?;
                    Ok(())
                }
                _ => unreachable!("gRPC runtime client for {op:?}"),
            },
            Conn::Echo(g) => {
                g.ready().await.map_err(|e| format!("not ready: {e}"))?;
                let msg = Msg {
                    payload: self.payload.clone(),
                    count: self.messages,
                };
                match op {
                    Op::EchoUnary => {
                        let r = g
                            .unary(
                                tonic::Request::new(msg),
                                PathAndQuery::from_static(echo::UNARY),
                                ProstCodec::<Msg, Msg>::default(),
                            )
                            .await
                            .map_err(|s| format!("Unary: {s}"))?;
                        if r.get_ref().payload.len() != self.payload.len() {
                            return Err("Unary: wrong payload length".into());
                        }
                        Ok(())
                    }
                    Op::EchoServerStream => {
                        let mut s = g
                            .server_streaming(
                                tonic::Request::new(msg),
                                PathAndQuery::from_static(echo::SERVER_STREAM),
                                ProstCodec::<Msg, Msg>::default(),
                            )
                            .await
                            .map_err(|s| format!("ServerStream: {s}"))?
                            .into_inner();
                        let mut n = 0u32;
                        while let Some(m) = s
                            .message()
                            .await
                            .map_err(|s| format!("ServerStream: {s}"))?
                        {
                            if m.payload.len() != self.payload.len() {
                                return Err("ServerStream: wrong payload length".into());
                            }
                            n += 1;
                        }
                        if n != self.messages.max(1) {
                            return Err(format!(
                                "ServerStream: {n} messages, want {}",
                                self.messages.max(1)
                            ));
                        }
                        Ok(())
                    }
                    _ => unreachable!("echo client for {op:?}"),
                }
            }
            Conn::Bidi { tx, rx } => {
                tx.send(Msg {
                    payload: self.payload.clone(),
                    count: 1,
                })
                .await
                .map_err(|_| "Bidi: request stream closed".to_owned())?;
                match rx.message().await {
                    Ok(Some(m)) if m.payload.len() == self.payload.len() => Ok(()),
                    Ok(Some(_)) => Err("Bidi: wrong payload length".into()),
                    Ok(None) => Err("Bidi: stream ended".into()),
                    Err(s) => Err(format!("Bidi: {s}")),
                }
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    lat_ns: Vec<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// One worker's loop; `period` is its interval between calls (`None`: back to back).
async fn run_worker(
    mut w: Worker,
    start: Instant,
    from: Instant,
    end: Instant,
    period: Option<Duration>,
) -> Tally {
    let mut t = Tally::default();
    let mut due = start;
    loop {
        if let Some(p) = period {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            due += p;
        }
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let r = w.call().await;
        let t1 = Instant::now();
        if t0 < from || t1 > end {
            if r.is_err() && t0 >= from {
                t.errors += 1;
            }
            continue;
        }
        match r {
            Ok(()) => {
                t.ok += 1;
                t.lat_ns
                    .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(e);
                }
                // a broken bidi stream stays broken: do not spin on it
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    if let Conn::Bidi { tx, .. } = w.conn {
        drop(tx); // ends the request stream
    }
    t
}

async fn channels(addr: &str, n: usize) -> Result<Vec<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // one HTTP/2 connection per Channel
        out.push(
            ep.connect()
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?,
        );
    }
    Ok(out)
}

/// The connection `state.redis` opens (`capabilities/src/redis/{settings,backend}.rs`):
/// RESP3, a `ConnectionManager` with a 1 s connection and response timeout, no retries.
fn redis_manager(addr: &str) -> Result<ConnectionManager, String> {
    let info = format!("redis://{addr}")
        .into_connection_info()
        .map_err(|e| format!("{addr}: {e}"))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| format!("{addr}: {e}"))?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| format!("{addr}: {e}"))
}

fn pctl(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // the smallest value with at least p of the samples at or below it
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1] as f64 / 1e6
}

async fn run(args: Args) -> Result<(), String> {
    let op = args.op.ok_or("--op is required (see --help)")?;
    let addr = args.addr.clone().ok_or("--addr is required")?;
    let workers = if args.check {
        1
    } else {
        args.concurrency.max(1)
    };
    let conns = if args.conns == 0 {
        workers
    } else {
        args.conns.min(workers)
    };
    let target = match op {
        Op::RedisGet | Op::RedisSave | Op::RedisPublish => Target::Redis(redis_manager(&addr)?),
        Op::GrpcGet | Op::GrpcSave | Op::GrpcPublish => {
            Target::Runtime(channels(&addr, conns).await?)
        }
        Op::EchoUnary | Op::EchoServerStream | Op::EchoBidi => {
            Target::Echo(channels(&addr, conns).await?)
        }
    };
    let mut ws = Vec::with_capacity(workers);
    for i in 0..workers {
        ws.push(Worker::new(op, &target, i, &args).await?);
    }
    if args.check {
        let mut w = ws.pop().expect("one worker");
        w.call().await?;
        w.call().await?;
        println!("check {op:?} against {addr}: ok");
        return Ok(());
    }
    let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(workers as f64 / args.rate));
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(args.warmup);
    let end = from + Duration::from_secs_f64(args.duration);
    let n = ws.len();
    let handles: Vec<_> = ws
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            // fixed rate: the workers' schedules spread over one period
            let s = period.map_or(start, |p| start + p.mul_f64(i as f64 / n as f64));
            tokio::spawn(run_worker(w, s, from, end, period))
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h.await.map_err(|e| format!("worker: {e}"))?;
        all.lat_ns.extend(t.lat_ns);
        all.ok += t.ok;
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all.lat_ns.sort_unstable();
    let mean = if all.lat_ns.is_empty() {
        f64::NAN
    } else {
        all.lat_ns.iter().map(|&v| v as f64).sum::<f64>() / all.lat_ns.len() as f64 / 1e6
    };
    println!(
        "summary\top={}\tconcurrency={workers}\tconns={}\trate={}\trps={:.1}\tok={}\terrors={}\tp50_ms={:.3}\tp90_ms={:.3}\tp99_ms={:.3}\tp999_ms={:.3}\tmean_ms={:.3}\tmax_ms={:.3}",
        op.to_possible_value().map_or_else(|| format!("{op:?}"), |v| v.get_name().to_owned()),
        if matches!(target, Target::Redis(_)) { 1 } else { conns },
        args.rate,
        all.ok as f64 / args.duration,
        all.ok,
        all.errors,
        pctl(&all.lat_ns, 0.50),
        pctl(&all.lat_ns, 0.90),
        pctl(&all.lat_ns, 0.99),
        pctl(&all.lat_ns, 0.999),
        mean,
        all.lat_ns.last().map_or(f64::NAN, |&v| v as f64 / 1e6),
    );
    if let Some(e) = all.first_error {
        eprintln!("rt-load: {} errors; the first: {e}", all.errors);
    }
    if all.ok == 0 {
        return Err("no call answered OK".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.write_request {
        let m = Msg {
            payload: payload(args.payload),
            count: 1,
        };
        let body = m.encode_to_vec();
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(&body);
        return match std::fs::write(path, framed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rt-load: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rt-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt-load: {e}");
            ExitCode::FAILURE
        }
    }
}
