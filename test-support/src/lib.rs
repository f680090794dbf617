//! Test support shared by every Mecha test suite (`publish = false`; depends on no Mecha crate,
//! so any crate of the workspace can dev-depend on it).
//!
//! - [`process`]: the `mecha` binary ([`mecha_bin`], [`run_mecha`]) and one running
//!   `mecha run -c` ([`process::Mecha`]): config in a temp dir, the `MECHA_EXIT_ON_STDIN_EOF`
//!   orphan guard, stderr captured and printed when the test panics, readiness wait, retry on
//!   new ports when a start lost a race for its ports. `mecha-integration`'s `Sidecar`,
//!   `Mesh` and `BareSidecar` are thin layers over it.
//! - [`redis`]: a throw-away redis-server (free port, AOF) or `REDIS_URL`; stop, restart,
//!   freeze.
//! - [`control_plane`]: a scripted xDS control plane (`xds/tests/control_plane/ads_server.py`,
//!   Python grpcio + `xds-protos`) driven over JSON lines: SotW and delta responses, stream
//!   closes, and every request it saw; [`control_plane::unavailable`] says when it cannot run.
//! - [`http`]: one HTTP client: [`http::send`] (HTTP/1.1 or h2c through hyper, headers and
//!   body), [`http::http_get`], and [`http::http_raw`] (raw request bytes).
//! - Here: [`free_port`], [`free_addr`], [`TempDir`], [`unique`], [`within`], [`eventually`],
//!   [`metric_value`], [`listening`].

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

pub mod control_plane;
pub mod http;
pub mod process;
pub mod redis;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use process::{
    mecha_bin, mecha_run_command, run_mecha, run_with_timeout, workspace_root, READY_TIMEOUT,
};

/// A generous bound for any single await in a test that could otherwise hang.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

// === ports, names and temp dirs ===

/// A loopback port nobody listens on now, never handed out twice by this process.
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Mutex::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if taken.lock().map(|mut t| t.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

/// A loopback address with a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A name no other test (in this or a parallel run) uses: `<what>-<pid>-<n>-<nanos>`.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{what}-{}-{n}-{nanos}", std::process::id())
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("mecha-it-{tag}")));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the dir; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === waiting ===

/// `tokio::time::timeout(STEP_TIMEOUT, fut)` that panics naming `what` on timeout.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP_TIMEOUT:?}"))
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts TCP connections on `addr` now.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

// === metrics text ===

/// The value of one series in Prometheus/OpenMetrics text: `series` is the name with its
/// labels exactly as printed, e.g. `mecha_api_requests_total{api="layotto",method="SayHello"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_exact_series() {
        let text = "a_total{x=\"1\"} 3\na_total{x=\"12\"} 5\nb 1.5\n";
        assert_eq!(metric_value(text, "a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(metric_value(text, "a_total{x=\"12\"}"), Some(5.0));
        assert_eq!(metric_value(text, "b"), Some(1.5));
        assert_eq!(metric_value(text, "c"), None);
    }

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("a"), unique("a"));
    }
}
