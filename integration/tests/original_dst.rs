//! Original-destination dispatch as a Kubernetes pod sees it: the real `mecha` binary runs
//! inside its own network namespace (the pod), reached over a veth pair from the root
//! namespace (the node), with an iptables `REDIRECT` in the pod's `nat` table sending TCP to
//! `<pod ip>:8001-8003` to Mecha's capture port, as Istio's init container does for inbound
//! traffic. The capture listener (`use_original_dst: true`) reads each connection's
//! `SO_ORIGINAL_DST` and hands it to the virtual listener (`bind_to_port: false`) for it —
//! `0.0.0.0:8001` (HTTP router) by port, `<pod ip>:8002` (tcp_proxy) exactly — or serves it
//! itself (its router's `fallback` upstream) when none matches (8003, or a connection made to
//! the capture port directly). Then the config file is rewritten: a virtual listener for 8003
//! (with a filter chain for the pod's address, which is what serves) is added and the one for
//! 8001 removed, without a restart. Last, an `original_dst` cluster: what was redirected
//! for 8005 is routed on to where it was going (the pod's app listener at `<pod ip>:8005`),
//! and a listener routing there without a redirect (8006) answers 503 naming the cluster.
//!
//! Needs root, `ip` (iproute2) and `iptables`; skips itself, saying why, without them. The
//! upstreams run in this test process, in the root namespace, on the host side of the veth.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use mecha_integration::mesh_support::{send, EchoServer, HttpUpstream, Proto, Req};
use mecha_integration::{metric_value, run_with_timeout, STEP_TIMEOUT};
use mecha_test_support::eventually;
use mecha_test_support::process::{Launch, Mecha, Wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The capture port the REDIRECT rule sends to (the namespace is private: fixed ports are
/// fine). Istio's inbound capture port.
const CAPTURE_PORT: u16 = 15006;
/// The admin listener, on the pod address so the harness reaches it from the root namespace.
const ADMIN_PORT: u16 = 15000;
/// The redirected ports: 8001 (virtual HTTP listener by port), 8002 (virtual tcp_proxy
/// listener by exact address), 8003 (none at first: the capture listener serves it).
/// 8005: a virtual listener routing to an `original_dst` cluster, i.e. back to where the
/// client was going — the pod's own app listener at `<pod ip>:8005` (Istio's inbound
/// passthrough).
const REDIRECTED: &str = "8001:8005";

const APPLIED: &str = r#"mecha_config_updates_total{source="file",result="applied"}"#;
const REJECTED: &str = r#"mecha_config_updates_total{source="file",result="rejected"}"#;

fn accepted(listener: &str) -> String {
    format!(r#"mecha_listener_connections_accepted_total{{listener="{listener}"}}"#)
}

fn open_connections(listener: &str) -> String {
    format!(r#"mecha_downstream_connections{{listener="{listener}"}}"#)
}

// === the pod: a network namespace behind a veth pair ===

/// Why this test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // `Uid:	real	effective	saved	fs`
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned);
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "not running as root (effective uid {}): creating a network namespace and iptables \
             rules needs root",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("iptables", "--version", "iptables"),
    ] {
        let works = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !works {
            return Some(format!(
                "`{tool}` is missing (install {package}; scripts/ensure-deps.sh test does it as root)"
            ));
        }
    }
    None
}

/// Runs `args` to completion; panics with its stderr when it fails.
fn run(args: &[&str]) {
    let out = run_with_timeout(Command::new(args[0]).args(&args[1..]), STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e:#}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args`, ignoring whether it worked (clean-up of what may not exist).
fn run_quietly(args: &[&str]) {
    let _ = run_with_timeout(Command::new(args[0]).args(&args[1..]), STEP_TIMEOUT);
}

/// A network namespace `mecha-od-<pid>` joined to the root namespace by a veth pair: the
/// host side `10.213.N.1/30`, the pod side `10.213.N.2/30` (N from the pid). Dropping it
/// deletes the veth pair (both ends, at once) and the namespace, also when the test panicked.
struct Pod {
    netns: String,
    host_veth: String,
    /// The root namespace's end of the veth: where the upstreams listen.
    host_ip: Ipv4Addr,
    /// The namespace's end: the pod address clients connect to.
    pod_ip: Ipv4Addr,
}

impl Pod {
    fn create() -> Pod {
        let pid = std::process::id();
        let n = u8::try_from(pid % 200 + 20).expect("fits u8");
        let pod = Pod {
            netns: format!("mecha-od-{pid}"),
            // At most 15 characters (IFNAMSIZ - 1): "mod" + up to 7 digits + 1.
            host_veth: format!("mod{pid}h"),
            host_ip: Ipv4Addr::new(10, 213, n, 1),
            pod_ip: Ipv4Addr::new(10, 213, n, 2),
        };
        let pod_veth = format!("mod{pid}p");
        // Leftovers of an earlier run with the same pid that was killed before its clean-up.
        pod.remove();
        run(&["ip", "netns", "add", &pod.netns]);
        run(&[
            "ip",
            "link",
            "add",
            &pod.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &pod_veth,
        ]);
        run(&["ip", "link", "set", &pod_veth, "netns", &pod.netns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", pod.host_ip),
            "dev",
            &pod.host_veth,
        ]);
        run(&["ip", "link", "set", &pod.host_veth, "up"]);
        pod.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", pod.pod_ip),
            "dev",
            &pod_veth,
        ]);
        pod.exec(&["ip", "link", "set", &pod_veth, "up"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        pod
    }

    /// Runs `args` inside the namespace; panics when it fails.
    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", self.netns.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    /// The command prefix that runs a program inside the namespace.
    fn wrap(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.netns]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn host(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.host_ip), port)
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod_ip), port)
    }

    fn remove(&self) {
        // Deleting the host end removes the pair now; the namespace's deletion would remove
        // it too, but asynchronously (the kernel's netns clean-up runs later).
        run_quietly(&["ip", "link", "del", &self.host_veth]);
        run_quietly(&["ip", "netns", "del", &self.netns]);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.remove();
    }
}

// === the config ===

/// The upstreams, in the root namespace.
struct Upstreams {
    fallback: HttpUpstream,
    a: HttpUpstream,
    c: HttpUpstream,
    echo: EchoServer,
}

/// A router listener sending everything to `cluster`.
fn router(cluster: &str) -> String {
    format!(
        r#"    filters:
      - type: router
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: all
                match: {{ prefix: / }}
                cluster: {cluster}
"#
    )
}

/// The whole config: the capture listener, the virtual tcp_proxy listener at
/// `<pod ip>:8002`, and (as asked) the virtual HTTP listeners for port 8001 (upstream `a`)
/// and port 8003 (upstream `c`, through its filter chain for the pod's address).
fn config(pod: &Pod, ups: &Upstreams, with_8001: bool, with_8003: bool) -> String {
    let mut out = format!(
        "threads: 2\nadmin:\n  address: {admin}\nlisteners:\n  - name: capture\n    address: \
         0.0.0.0:{CAPTURE_PORT}\n    use_original_dst: true\n{capture}",
        admin = pod.addr(ADMIN_PORT),
        capture = router("fallback"),
    );
    if with_8001 {
        out.push_str(
            "  - name: virtual-8001\n    address: 0.0.0.0:8001\n    bind_to_port: false\n",
        );
        out.push_str(&router("a"));
    }
    out.push_str(&format!(
        "  - name: virtual-tcp\n    address: {}\n    bind_to_port: false\n    tcp_proxy: {{ cluster: echo }}\n",
        pod.addr(8002)
    ));
    if with_8003 {
        // Port 8003 is the virtual listener's; the pod's own address at that port is one of
        // its filter chains (as Istio's outbound listeners choose a service by address). Its
        // own router would answer `fallback`: only the chain answers `c`.
        out.push_str(
            "  - name: virtual-8003\n    address: 0.0.0.0:8003\n    bind_to_port: false\n",
        );
        out.push_str(&router("fallback"));
        out.push_str(&format!(
            "  - name: virtual-8003-pod\n    address: {}\n    bind_to_port: false\n    chain_of: virtual-8003\n",
            pod.addr(8003)
        ));
        out.push_str(&router("c"));
    }
    // The pod's "app" on 8005 (a bound listener: reached by the passthrough, as an app in a
    // pod is), what was redirected for 8005 (routed to the original destination), and a
    // listener that routes there without having been redirected to (8006: nothing to send
    // to).
    out.push_str(&format!(
        "  - name: app-8005\n    address: {}\n{}",
        pod.addr(8005),
        router("c")
    ));
    out.push_str("  - name: virtual-8005\n    address: 0.0.0.0:8005\n    bind_to_port: false\n");
    out.push_str(&router("passthrough"));
    out.push_str(&format!(
        "  - name: direct-8006\n    address: {}\n{}",
        pod.addr(8006),
        router("passthrough")
    ));
    out.push_str("clusters:\n  - name: passthrough\n    original_dst: true\n");
    for (name, addr) in [
        ("fallback", ups.fallback.addr),
        ("a", ups.a.addr),
        ("c", ups.c.addr),
        ("echo", ups.echo.addr),
    ] {
        out.push_str(&format!(
            "  - name: {name}\n    endpoints: [{{ address: \"{addr}\" }}]\n"
        ));
    }
    out
}

// === clients ===

/// `GET path` to `addr` over `proto`; returns the name of the upstream that answered.
async fn answered_by(addr: SocketAddr, proto: Proto, path: &str) -> String {
    let r = send(addr, proto, Req::get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} to {addr} ({proto:?}): {e:#}"));
    assert_eq!(r.status, 200, "GET {path} to {addr} ({proto:?}): {r:?}");
    let name = r.header("x-upstream").unwrap_or_default().to_owned();
    assert_eq!(r.text(), name, "the body names the upstream too: {r:?}");
    assert_eq!(
        r.header("x-seen-path"),
        Some(path),
        "the upstream saw the path"
    );
    name
}

async fn metric(mecha: &Mecha, series: &str) -> f64 {
    metric_value(&mecha.metrics().await, series).unwrap_or(0.0)
}

/// Rewrites the watched config file and waits until mecha has applied it (panics when it was
/// rejected or not taken in time).
async fn rewrite(mecha: &mut Mecha, config: String) {
    let text = mecha.metrics().await;
    let applied = metric_value(&text, APPLIED).unwrap_or(0.0);
    let rejected = metric_value(&text, REJECTED).unwrap_or(0.0);
    mecha.write_config(config);
    let m = &*mecha;
    eventually(
        "mecha applies the rewritten config",
        STEP_TIMEOUT,
        || async move {
            let text = m.metrics().await;
            assert_eq!(
                metric_value(&text, REJECTED).unwrap_or(0.0),
                rejected,
                "mecha rejected the rewritten config; /config_dump:\n{}",
                m.config_dump().await
            );
            metric_value(&text, APPLIED).unwrap_or(0.0) > applied
        },
    )
    .await;
}

#[tokio::test]
async fn redirected_connections_are_dispatched_by_original_destination_in_a_pod_netns() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the original-destination test: {why}");
        return;
    }
    // Declared first, so it is dropped last: after mecha (inside it) has been killed.
    let pod = Pod::create();
    pod.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-d",
        &pod.pod_ip.to_string(),
        "--dport",
        REDIRECTED,
        "-j",
        "REDIRECT",
        "--to-ports",
        &CAPTURE_PORT.to_string(),
    ]);

    let ups = Upstreams {
        fallback: HttpUpstream::start_on("fallback", pod.host(0)).await,
        a: HttpUpstream::start_on("a", pod.host(0)).await,
        c: HttpUpstream::start_on("c", pod.host(0)).await,
        echo: EchoServer::start_on(pod.host(0)).await,
    };
    let wrap = pod.wrap();
    let mut mecha = Mecha::start_wrapped(Wait::Ready, &wrap, || {
        Launch::new(
            "original-dst",
            config(&pod, &ups, true, false),
            pod.addr(ADMIN_PORT),
        )
    })
    .await;
    mecha.label = format!("in netns {}", pod.netns);
    // mecha's `/ready` connects to each bound listener to see it accepting, and each of those
    // connections counts on it: the capture listener's counts are taken relative to now.
    let capture_base = metric(&mecha, &accepted("capture")).await;

    // Port 8001 matches the virtual listener at 0.0.0.0:8001 (by port): upstream a, over
    // HTTP/1.1 and h2c (the virtual listener's own protocol sniffing).
    for proto in [Proto::H1, Proto::H2c] {
        assert_eq!(answered_by(pod.addr(8001), proto, "/to-8001").await, "a");
    }
    assert_eq!((ups.a.hits(), ups.fallback.hits()), (2, 0));

    // Port 8002 matches the virtual tcp_proxy listener at <pod ip>:8002 exactly: the bytes
    // come back through the echo server, and the connection is counted open on it.
    let mut tcp = TcpStream::connect(pod.addr(8002))
        .await
        .expect("connect to 8002");
    let ping = b"ping through the original destination";
    tcp.write_all(ping).await.expect("write");
    let mut echoed = vec![0u8; ping.len()];
    tokio::time::timeout(STEP_TIMEOUT, tcp.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed[..], &ping[..]);
    mecha
        .wait_metric(&open_connections("virtual-tcp"), |v| v == 1.0)
        .await;
    drop(tcp);
    mecha
        .wait_metric(&open_connections("virtual-tcp"), |v| v == 0.0)
        .await;

    // Port 8003 is redirected but no virtual listener matches: the capture listener's own
    // router serves it, as it does a connection made to the capture port itself.
    assert_eq!(
        answered_by(pod.addr(8003), Proto::H1, "/to-8003").await,
        "fallback"
    );
    assert_eq!(
        answered_by(pod.addr(CAPTURE_PORT), Proto::H1, "/direct").await,
        "fallback"
    );
    assert_eq!(ups.fallback.hits(), 2);
    assert_eq!(ups.a.hits(), 2, "a saw nothing more");

    // Each connection is counted by the listener that served it.
    let text = mecha.metrics().await;
    for (listener, want) in [
        ("virtual-8001", 2.0),
        ("virtual-tcp", 1.0),
        ("capture", capture_base + 2.0),
    ] {
        assert_eq!(
            metric_value(&text, &accepted(listener)),
            Some(want),
            "{}; /metrics:\n{text}",
            accepted(listener)
        );
    }

    // A virtual listener for 8003 is added, without a restart: 8003 is now upstream c's,
    // and 8001 still a's.
    let pid = mecha.pid();
    rewrite(&mut mecha, config(&pod, &ups, true, true)).await;
    assert_eq!(
        answered_by(pod.addr(8003), Proto::H1, "/to-8003-again").await,
        "c"
    );
    assert_eq!(
        answered_by(pod.addr(8001), Proto::H1, "/to-8001-again").await,
        "a"
    );
    assert_eq!((ups.c.hits(), ups.a.hits(), ups.fallback.hits()), (1, 3, 2));
    assert_eq!(metric(&mecha, &accepted("virtual-8003-pod")).await, 1.0);
    assert_eq!(metric(&mecha, &accepted("virtual-8003")).await, 0.0);

    // The virtual listener for 8001 is removed: 8001 falls back to the capture listener.
    rewrite(&mut mecha, config(&pod, &ups, false, true)).await;
    assert_eq!(
        answered_by(pod.addr(8001), Proto::H1, "/to-8001-after-removal").await,
        "fallback"
    );
    assert_eq!(
        answered_by(pod.addr(8003), Proto::H1, "/to-8003-still").await,
        "c"
    );
    assert_eq!((ups.c.hits(), ups.a.hits(), ups.fallback.hits()), (2, 3, 3));
    let text = mecha.metrics().await;
    assert_eq!(
        metric_value(&text, &accepted("virtual-8001")).unwrap_or(0.0),
        3.0,
        "the removed listener counted nothing more; /metrics:\n{text}"
    );
    assert_eq!(
        metric_value(&text, &accepted("capture")),
        Some(capture_base + 3.0),
        "/metrics:\n{text}"
    );

    // An original_dst cluster: 8005 was redirected, so the route sends it on to where it was
    // going, the pod's app listener (which answers from c).
    let c_before = ups.c.hits();
    assert_eq!(
        answered_by(pod.addr(8005), Proto::H1, "/passthrough").await,
        "c"
    );
    assert_eq!(ups.c.hits(), c_before + 1);
    let text = mecha.metrics().await;
    for listener in ["virtual-8005", "app-8005"] {
        assert_eq!(
            metric_value(&text, &accepted(listener)),
            Some(1.0),
            "{listener}; /metrics:\n{text}"
        );
    }
    // Reached directly, a route to it has nowhere to go: 503 naming the cluster, never a
    // connection back into Mecha.
    let r = send(pod.addr(8006), Proto::H1, Req::get("/nowhere"))
        .await
        .expect("GET to 8006");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.text()
            .contains("cluster \"passthrough\" sends to the original destination"),
        "{r:?}"
    );
    assert!(mecha.is_running(), "mecha kept running");
    assert_eq!(mecha.pid(), pid, "no restart");
}
