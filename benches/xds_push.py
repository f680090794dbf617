#!/usr/bin/env python3
"""The ADS control plane of benches/xds.sh: times one proxy taking an xDS push.

Serves envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources (state
of the world) from the PyPI `xds-protos` stubs, starts the proxy given after `--` (its
bootstrap points at --ads-port), and runs one scenario against it:

  push N   the proxy starts on an empty config (v0: no clusters, no listeners, answered to
           every wildcard request) and, once it has ACKed v0 and sat 1 s, gets v1 in one go:
           N EDS clusters c0…c<N-1>, N ClusterLoadAssignments (one endpoint each, the upstream
           --upstream-a), one listener on --listen-port (HTTP connection manager, RDS over ADS,
           route configuration "routes") and the route configuration "routes": one virtual
           host "*" with N routes, prefix "/c<i>/" → cluster c<i>, in order.
           CDS and LDS are written back to back; EDS and RDS are answered the moment the proxy
           asks for them (no pacing by the control plane).
           t0      = the CDS response handed to grpc for writing (HTTP/2 flow control paces the
                     write by the proxy's reading: that time counts as the proxy's)
           ack     = each type's ACK of v1 received, from t0
           first   = the first 200 to GET /c<N-1>/ (the last cluster), from t0; also /c0/.
                     Poll: a new connection per try, one try every --poll-ms (a try taking
                     longer is followed at once by the next)
           RSS     = VmRSS of the proxy before v1 (after v0 + 1 s) and after (all ACKs, the
                     first 200, then 1 s), and after one GET of every route (keep-alive)
  churn N  the same v1 (N clusters), then under `wrk -t1 -c16 -d<D>s` on /c0/, a new
           ClusterLoadAssignment for c0 every --interval-ms, alternating --upstream-b and
           --upstream-a (the EDS response carries only c0, as SotW allows for EDS); a probe
           (one keep-alive connection, one GET /c0/ every --poll-ms) reads which upstream
           answered (the body: "a" or "b"); per push: the push handed to grpc → the probe's first
           answer from the new endpoint (before the next push). wrk's non-2xx and socket
           errors are the failures (wrk -s xds_wrk_status.lua names the statuses).

Prints one JSON object (the figures) on stdout; raw events go to --out/<label>.events.jsonl,
the proxy's output to --out/<label>.proxy.{out,err}.

Usage: xds_push.py --scenario push|churn --n N --ads-port P --listen-port L
                   --upstream-a PORT --upstream-b PORT --out DIR --label NAME
                   [--poll-ms 1] [--interval-ms 100] [--duration 30] -- PROXY COMMAND…
"""

import argparse
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import any_pb2, duration_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
COMPONENT = "type.googleapis.com/mecha.config.v1.Component"
WILDCARD = {CDS, LDS, COMPONENT}
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds", COMPONENT: "component"}
PUSH_ORDER = [CDS, EDS, LDS, RDS]
MAX_MESSAGE = 64 * 1024 * 1024

now = time.perf_counter


# --- resources ------------------------------------------------------------------------------
def ads_source():
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def sock(port):
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
    )


def packed(msg):
    """The bytes of `resources: Any(msg)` as one DiscoveryResponse field (concatenable)."""
    a = any_pb2.Any()
    a.Pack(msg)
    return discovery_pb2.DiscoveryResponse(resources=[a]).SerializeToString()


def cluster(i):
    return cluster_pb2.Cluster(
        name=f"c{i}",
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_pb2.Duration(seconds=1),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )


def cla(name, port):
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=sock(port))
                    )
                ]
            )
        ],
    )


def listener(port):
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="bench",
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name="routes"),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=router)],
    )
    hcm_any = any_pb2.Any()
    hcm_any.Pack(hcm)
    return listener_pb2.Listener(
        name="bench",
        address=sock(port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=hcm_any
                    )
                ]
            )
        ],
    )


def route_config(n):
    routes = [
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix=f"/c{i}/"),
            route=route_components_pb2.RouteAction(cluster=f"c{i}"),
        )
        for i in range(n)
    ]
    return route_pb2.RouteConfiguration(
        name="routes",
        virtual_hosts=[route_components_pb2.VirtualHost(name="all", domains=["*"], routes=routes)],
    )


# --- the control plane ----------------------------------------------------------------------
class Events:
    def __init__(self, path):
        self.f = open(path, "w")
        self.lock = threading.Lock()
        self.t_base = now()

    def add(self, **e):
        e["t"] = round(now() - self.t_base, 6)
        with self.lock:
            self.f.write(json.dumps(e) + "\n")
            self.f.flush()
        return e["t"]


class TypeState:
    def __init__(self):
        self.requested = False
        self.names = set()  # the last subscription (named types)
        self.sent_version = None
        self.sent_names = set()
        self.nonce = ""  # the last nonce sent
        self.acks = {}  # version → perf_counter time of its ACK
        self.nacks = []  # (version, nonce, message)
        self.requests = 0
        self.first_request_after = {}  # version sent → time of the first request after it


class Plane:
    """One snapshot (type → version, {name: packed Any field}) served to one stream at a time."""

    def __init__(self, events):
        self.ev = events
        self.cv = threading.Condition()
        self.snap = {CDS: ("v0", {}), LDS: ("v0", {}), COMPONENT: ("v0", {})}
        self.types = {}
        self.outbox = None
        self.streams = 0
        self.nonce = 0
        self.sent_at = {}  # nonce → (type, version, queued time, written time, bytes)
        self.proc = None  # the proxy (a wait ends when it exits)

    def ts(self, t):
        return self.types.setdefault(t, TypeState())

    # called with self.cv held
    def _send(self, t, names=None):
        version, res = self.snap[t]
        if names is None:
            names = sorted(res) if t in WILDCARD else sorted(self.ts(t).names & set(res))
        body = b"".join(res[n] for n in names)
        self.nonce += 1
        nonce = f"n{self.nonce}"
        head = discovery_pb2.DiscoveryResponse(version_info=version, type_url=t, nonce=nonce)
        data = head.SerializeToString() + body
        st = self.ts(t)
        st.sent_version, st.nonce = version, nonce
        st.sent_names |= set(names)
        self.sent_at[nonce] = {"type": t, "version": version, "queued": now(), "bytes": len(data), "n": len(names)}
        self.outbox.put((nonce, data))
        return nonce

    def on_request(self, req):
        t_arrived = now()
        t = req.type_url
        with self.cv:
            st = self.ts(t)
            st.requests += 1
            kind = "request"
            detail = None
            if req.response_nonce and req.response_nonce == st.nonce:
                if req.HasField("error_detail"):
                    kind = "nack"
                    detail = req.error_detail.message
                    st.nacks.append((req.version_info, req.response_nonce, detail))
                elif req.version_info == st.sent_version:
                    kind = "ack"
                    st.acks.setdefault(req.version_info, t_arrived)
            self.ev.add(ev=kind, type=SHORT.get(t, t), version=req.version_info, nonce=req.response_nonce,
                        names=len(req.resource_names), error=detail)
            st.requested = True
            names = set(req.resource_names)
            if t in self.snap:
                version, res = self.snap[t]
                if t in WILDCARD:
                    if st.sent_version != version:
                        self._send(t)
                else:
                    st.names = names
                    if st.sent_version != version or (names & set(res)) - st.sent_names:
                        self._send(t)
            self.cv.notify_all()

    def push(self, updates, only=None):
        """updates: type → (version, {name: packed}); sends each subscribed type in PUSH_ORDER.
        only: type → names to send (named types; default: every subscribed name)."""
        sent = []
        with self.cv:
            for t, (version, res) in updates.items():
                if t in WILDCARD or t not in self.snap:
                    self.snap[t] = (version, res)
                else:  # RDS/EDS: a response names what changed; the rest stays as it was
                    self.snap[t] = (version, {**self.snap[t][1], **res})
            for t in PUSH_ORDER:
                if t not in updates or self.outbox is None:
                    continue
                st = self.ts(t)
                if not st.requested:
                    continue
                if t in WILDCARD:
                    sent.append(self._send(t))
                else:
                    names = sorted(set((only or {}).get(t, st.names)) & st.names & set(updates[t][1]))
                    if names:
                        sent.append(self._send(t, names))
        return sent

    def wait(self, pred, timeout):
        """Waits for pred (under the lock); False on timeout or when the proxy has exited."""
        end = now() + timeout
        with self.cv:
            while not pred():
                left = end - now()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    return False
                self.cv.wait(min(left, 0.2))
            return True

    # the gRPC method
    def stream(self, request_iterator, context):
        with self.cv:
            self.streams += 1
            sid = self.streams
            box = queue.Queue()
            self.outbox = box
            # a new stream starts from nothing sent (what the proxy holds arrives in its requests)
            for st in self.types.values():
                st.sent_version, st.sent_names, st.nonce = None, set(), ""
        self.ev.add(ev="stream_open", stream=sid)

        def reader():
            try:
                for req in request_iterator:
                    self.on_request(req)
            except Exception as e:  # the stream ended under us
                self.ev.add(ev="reader_end", stream=sid, error=str(e)[:300])
            finally:
                box.put(None)

        threading.Thread(target=reader, daemon=True).start()
        while True:
            item = box.get()
            if item is None:
                break
            nonce, data = item
            yield data
            # grpc resumes the generator once the previous message's send op completed
            t_written = now()
            with self.cv:
                s = self.sent_at[nonce]
                s["written"] = t_written
                self.cv.notify_all()
            self.ev.add(ev="sent", type=SHORT.get(s["type"]), version=s["version"], nonce=nonce,
                        bytes=s["bytes"], resources=s["n"], queued_to_written_ms=round((t_written - s["queued"]) * 1e3, 3))
        self.ev.add(ev="stream_closed", stream=sid)


def serve(plane, port):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)],
    )
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                plane.stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=lambda b: b,  # pre-serialized DiscoveryResponse bytes
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    return server


# --- HTTP clients ---------------------------------------------------------------------------
def get_once(port, path, timeout=1.0):
    """A new connection, one GET, Connection: close → (status, body) or (None, error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        line, _, rest = buf.partition(b"\r\n")
        parts = line.split()
        if len(parts) < 2:
            return None, "short answer"
        return int(parts[1]), rest.partition(b"\r\n\r\n")[2]
    except OSError as e:
        return None, type(e).__name__


class KeepAlive:
    """One keep-alive HTTP/1.1 connection (Content-Length bodies), reconnecting on errors."""

    def __init__(self, port):
        self.port = port
        self.s = None
        self.buf = b""

    def get(self, path):
        for _ in range(2):
            try:
                if self.s is None:
                    self.s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                    self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.buf = b""
                self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                while b"\r\n\r\n" not in self.buf:
                    c = self.s.recv(65536)
                    if not c:
                        raise OSError("closed")
                    self.buf += c
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split()[1])
                length, close = 0, False
                for h in lines[1:]:
                    k, _, v = h.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v.strip())
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                while len(self.buf) < length:
                    c = self.s.recv(65536)
                    if not c:
                        raise OSError("closed")
                    self.buf += c
                body, self.buf = self.buf[:length], self.buf[length:]
                if close:
                    self.close()
                return status, body
            except (OSError, ValueError, IndexError):
                self.close()
        return None, b""

    def close(self):
        if self.s is not None:
            try:
                self.s.close()
            except OSError:
                pass
        self.s = None


def poll_until_200(port, path, t_start, interval, stop, out):
    """Tries GET path on a new connection every `interval` s from t_start until a 200."""
    tries, statuses = 0, {}
    k = 0
    while not stop.is_set():
        status, _ = get_once(port, path)
        tries += 1
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            out.update(t=now(), tries=tries, statuses=statuses)
            return
        k += 1
        wait = t_start + k * interval - now()
        if wait > 0:
            time.sleep(wait)
        else:
            k = int((now() - t_start) / interval)  # late: go on at once, stay on the grid
    out.update(t=None, tries=tries, statuses=statuses)


def vmrss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pctl(values, p):
    if not values:
        return None
    v = sorted(values)
    i = max(0, min(len(v) - 1, int(len(v) * p + 0.999999) - 1))
    return v[i]


# --- scenarios ------------------------------------------------------------------------------
def build_v1(n, listen_port, up_port):
    t = now()
    snap = {
        CDS: ("v1", {f"c{i}": packed(cluster(i)) for i in range(n)}),
        EDS: ("v1", {f"c{i}": packed(cla(f"c{i}", up_port)) for i in range(n)}),
        LDS: ("v1", {"bench": packed(listener(listen_port))}),
        RDS: ("v1", {"routes": packed(route_config(n))}),
    }
    return snap, now() - t


def ms(t, t0):
    return None if t is None or t0 is None else round((t - t0) * 1e3, 2)


def push_v1(plane, args, res, proc):
    """Waits for v0 to be ACKed, pushes v1; fills res; returns t0 (None on failure)."""
    ok = plane.wait(lambda: all(v0_acked(plane, t) for t in (CDS, LDS)), 30)
    if not ok:
        if proc.poll() is not None:
            with open(os.path.join(args.out, f"{args.label}.proxy.err"), errors="replace") as f:
                tail = [l.strip() for l in f.readlines()[-3:]]
            res["error"] = f"the proxy exited ({proc.poll()}) before ACKing v0: {' | '.join(tail)[:400]}"
        else:
            res["error"] = "v0 (the empty config) was not ACKed for CDS and LDS within 30 s"
        return None
    time.sleep(1.0)
    res["rss_before_kib"] = vmrss_kib(proc.pid)
    snap, build_s = build_v1(args.n, args.listen_port, args.upstream_a)
    res["build_resources_s"] = round(build_s, 3)
    res["bytes"] = {SHORT[t]: sum(len(b) for b in v[1].values()) for t, v in snap.items()}
    stop = threading.Event()
    polls = {}
    threads = []
    interval = args.poll_ms / 1e3
    t_start = now()
    plane.push(snap)
    for name, path in (("last", f"/c{args.n - 1}/"), ("first", "/c0/")):
        polls[name] = {}
        th = threading.Thread(target=poll_until_200, args=(args.listen_port, path, t_start, interval, stop, polls[name]), daemon=True)
        th.start()
        threads.append(th)
    plane.wait(lambda: any(s["type"] == CDS and s["version"] == "v1" and "written" in s for s in plane.sent_at.values()), 30)
    with plane.cv:
        cds_sent = [s for s in plane.sent_at.values() if s["type"] == CDS and s["version"] == "v1"]
    # t0 = the CDS response handed to grpc (queued): its writing, which HTTP/2 flow control
    # paces by the proxy's reading, counts as the proxy's time
    t0 = cds_sent[0]["queued"] if cds_sent else None
    res["cds_queued_to_written_ms"] = ms(cds_sent[0].get("written"), t0) if cds_sent else None

    def done():
        return all(plane.ts(t).acks.get("v1") for t in PUSH_ORDER) or any(plane.ts(t).nacks for t in PUSH_ORDER)

    plane.wait(done, args.timeout)
    for th in threads:
        th.join(timeout=max(0.1, args.timeout - (now() - t_start)))
    stop.set()
    for th in threads:
        th.join(timeout=2)
    with plane.cv:
        res["ack_ms"] = {SHORT[t]: ms(plane.ts(t).acks.get("v1"), t0) for t in PUSH_ORDER}
        res["nacks"] = {SHORT[t]: plane.ts(t).nacks for t in PUSH_ORDER if plane.ts(t).nacks}
        res["sent_ms"] = {  # each v1 response's write complete
            f"{SHORT[s['type']]}:{nonce}": ms(s.get("written"), t0)
            for nonce, s in plane.sent_at.items()
            if s["version"] == "v1"
        }
        res["streams"] = plane.streams
    res["first_200_last_cluster_ms"] = ms(polls["last"].get("t"), t0)
    res["first_200_c0_ms"] = ms(polls["first"].get("t"), t0)
    res["poll"] = {k: {"tries": v.get("tries"), "statuses": v.get("statuses")} for k, v in polls.items()}
    return t0


def v0_acked(plane, t):
    return bool(plane.ts(t).acks.get("v0"))


def scenario_push(plane, args, res, proc):
    t0 = push_v1(plane, args, res, proc)
    if t0 is None or res["first_200_last_cluster_ms"] is None:
        return
    time.sleep(1.0)
    res["rss_after_kib"] = vmrss_kib(proc.pid)
    # every route, once, on one keep-alive connection
    c = KeepAlive(args.listen_port)
    bad = []
    t = now()
    for i in range(args.n):
        status, _ = c.get(f"/c{i}/")
        if status != 200:
            bad.append((i, status))
    res["all_routes_pass_s"] = round(now() - t, 2)
    res["all_routes_non_200"] = len(bad)
    res["all_routes_non_200_first"] = bad[:5]
    c.close()
    time.sleep(0.5)
    res["rss_after_traffic_kib"] = vmrss_kib(proc.pid)


def parse_wrk(text):
    r = {"requests": None, "non_2xx": 0, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    r["statuses"] = {k: int(v) for k, v in re.findall(r"^status (\d+): (\d+)$", text, re.M)}
    m = re.search(r"^first non-200 body: (.*)$", text, re.M)
    if m:
        r["first_non_200_body"] = m.group(1)[:200]
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    return r


def save_metrics(args, when):
    """The proxy's metrics (--metrics-url: Mecha's /metrics, Envoy's /stats) into --out."""
    if not args.metrics_url:
        return
    import urllib.request
    try:
        with urllib.request.urlopen(args.metrics_url, timeout=5) as r:
            data = r.read()
    except OSError as e:
        data = f"error: {e}".encode()
    with open(os.path.join(args.out, f"{args.label}.metrics-{when}.txt"), "wb") as f:
        f.write(data)


def scenario_churn(plane, args, res, proc):
    t0 = push_v1(plane, args, res, proc)
    if t0 is None or res["first_200_c0_ms"] is None:
        return
    ups = {args.upstream_a: b"a", args.upstream_b: b"b"}
    save_metrics(args, "before")
    path = "/c0/"
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c16", f"-d{args.duration}s", "-s", os.path.join(os.path.dirname(os.path.abspath(__file__)), "xds_wrk_status.lua"),
         f"http://127.0.0.1:{args.listen_port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.5)  # wrk's connections up
    probe_log = []  # (t, body)
    stop = threading.Event()
    interval = args.poll_ms / 1e3

    def probe():
        c = KeepAlive(args.listen_port)
        t_start, k = now(), 0
        while not stop.is_set():
            status, body = c.get(path)
            probe_log.append((now(), status, body.strip()))
            k += 1
            wait = t_start + k * interval - now()
            if wait > 0:
                time.sleep(wait)
            else:
                k = int((now() - t_start) / interval)
        c.close()

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    pushes = []  # (version, upstream body, nonce)
    step = args.interval_ms / 1e3
    t_first_push = now()
    i = 0
    end = t_first_push + args.duration - 1.0
    while now() < end:
        i += 1
        port = args.upstream_b if i % 2 else args.upstream_a
        version = f"e{i}"
        sent = plane.push({EDS: (version, {"c0": packed(cla("c0", port))})}, only={EDS: ["c0"]})
        pushes.append((version, ups[port], sent[0] if sent else None))
        wait = t_first_push + i * step - now()
        if wait > 0:
            time.sleep(wait)
    time.sleep(0.3)
    stop.set()
    th.join(timeout=3)
    out, _ = wrk.communicate(timeout=args.duration + 30)
    with open(os.path.join(args.out, f"{args.label}.wrk.txt"), "w") as f:
        f.write(out)
    res["wrk"] = parse_wrk(out)
    save_metrics(args, "after")
    # per push: written → first probe answer from the new endpoint (before the next push)
    lat, unseen, acks = [], 0, []
    with plane.cv:
        sent = dict(plane.sent_at)
        eds = plane.ts(EDS)
        eds_acks = dict(eds.acks)
        res["nacks"] = {"eds": eds.nacks} if eds.nacks else {}
    for j, (version, body, nonce) in enumerate(pushes):
        s = sent.get(nonce)
        tw = s.get("queued") if s else None
        if tw is None:
            unseen += 1
            continue
        t_next = None
        if j + 1 < len(pushes):
            n2 = sent.get(pushes[j + 1][2])
            t_next = n2.get("queued") if n2 else None
        seen = next((t for t, st, b in probe_log if t >= tw and st == 200 and b == body and (t_next is None or t < t_next)), None)
        if seen is None:
            unseen += 1
        else:
            lat.append((seen - tw) * 1e3)
        if version in eds_acks:
            acks.append((eds_acks[version] - tw) * 1e3)
    gaps = [(b[0] - a[0]) * 1e3 for a, b in zip(probe_log, probe_log[1:])]
    statuses = {}
    for _, st, _b in probe_log:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    pushed_at = sorted(x["queued"] for x in sent.values() if x["type"] == EDS and x["version"].startswith("e"))
    bad = []
    for t, st, b in probe_log:
        if st != 200 and len(bad) < 5:
            last = max((p for p in pushed_at if p <= t), default=None)
            bad.append({"status": st, "body": b[:200].decode(errors="replace"), "ms_after_push": ms(t, last)})
    res["churn"] = {
        "probe_non_200_samples": bad,
        "pushes": len(pushes),
        "visible_ms_p50": round(pctl(lat, 0.5), 2) if lat else None,
        "visible_ms_p90": round(pctl(lat, 0.9), 2) if lat else None,
        "visible_ms_max": round(max(lat), 2) if lat else None,
        "visible_over_50ms": sum(1 for x in lat if x > 50),
        "not_seen_before_next_push": unseen,
        "ack_ms_p50": round(pctl(acks, 0.5), 2) if acks else None,
        "ack_ms_max": round(max(acks), 2) if acks else None,
        "probe_requests": len(probe_log),
        "probe_statuses": statuses,
        "probe_gap_ms_p50": round(pctl(gaps, 0.5), 3) if gaps else None,
        "probe_gap_ms_p99": round(pctl(gaps, 0.99), 3) if gaps else None,
    }
    res["rss_after_kib"] = vmrss_kib(proc.pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=["push", "churn"], required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ads-port", type=int, required=True)
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--upstream-a", type=int, required=True)
    ap.add_argument("--upstream-b", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--proxy", default="proxy", help="the name in the report (mecha, envoy)")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--metrics-url", default="", help="churn: saved before and after the load")
    ap.add_argument("--poll-ms", type=float, default=1.0)
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ACKs and the first 200")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("the proxy command goes after --")
    os.makedirs(args.out, exist_ok=True)
    events = Events(os.path.join(args.out, f"{args.label}.events.jsonl"))
    plane = Plane(events)
    server = serve(plane, args.ads_port)
    res = {"label": args.label, "proxy": args.proxy, "round": args.round, "scenario": args.scenario, "n": args.n,
           "poll_ms": args.poll_ms, "interval_ms": args.interval_ms, "duration": args.duration}
    pout = open(os.path.join(args.out, f"{args.label}.proxy.out"), "w")
    perr = open(os.path.join(args.out, f"{args.label}.proxy.err"), "w")
    proc = subprocess.Popen(cmd, stdout=pout, stderr=perr, start_new_session=True)
    res["pid"] = proc.pid
    plane.proc = proc
    try:
        if args.scenario == "push":
            scenario_push(plane, args, res, proc)
        else:
            scenario_churn(plane, args, res, proc)
    except Exception as e:  # report what broke with the figures so far
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        res["proxy_exit"] = proc.poll()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop(0)
        with plane.cv:
            res["requests_by_type"] = {SHORT.get(t, t): st.requests for t, st in plane.types.items()}
            res["streams"] = plane.streams
    print(json.dumps(res), flush=True)


# --- the RESULTS.md tables (xds_push.py --report results.jsonl) -----------------------------
def report(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    proxies = []
    for r in rows:
        if r["proxy"] not in proxies:
            proxies.append(r["proxy"])
    order = [p for p in ("envoy", "mecha") if p in proxies] + [p for p in proxies if p not in ("envoy", "mecha")]

    def fmt(v, unit=""):
        if v is None:
            return "—"
        if isinstance(v, float):
            v = f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return f"{v}{unit}"

    def cell(runs, get, unit=" ms", agg="mean"):
        vals = [get(r) for r in runs]
        ok = [v for v in vals if v is not None]
        if not runs:
            return "not run"
        if not ok:
            return "none"
        if len(vals) == 1:
            return fmt(vals[0], unit)
        m = statistics.mean(ok) if agg == "mean" else (sum(ok) if agg == "sum" else max(ok))
        m = int(m) if all(isinstance(v, int) for v in ok) and m == int(m) else float(m)
        return f"{fmt(m, unit)} ({' / '.join(fmt(v) for v in vals)})"

    def mib(k):
        return lambda r: None if r.get(k) is None else round(r[k] / 1024, 1)

    def growth(r):
        a, b = r.get("rss_before_kib"), r.get("rss_after_kib")
        return None if a is None or b is None else round((b - a) / 1024, 1)

    def verdict(runs, get, limit):
        vals = [get(r) for r in runs]
        if not runs:
            return "—"
        if any(v is None for v in vals):
            return "**no**"
        return "yes" if max(vals) <= limit else "**no**"

    out = []
    for n in sorted({r["n"] for r in rows if r["scenario"] == "push"}):
        target = 50 if n <= 1000 else 500
        by = {p: [r for r in rows if r["scenario"] == "push" and r["n"] == n and r["proxy"] == p] for p in order}
        nrun = max(len(v) for v in by.values())
        out.append(f"### Push of {n:,} clusters + {n:,} routes (one RDS route configuration), {nrun} run{'s' if nrun > 1 else ''} per proxy")
        out.append("")
        out.append("| figure (from t0 = the CDS response handed to grpc) | " + " | ".join(order) + " | target | met? (mecha) |")
        out.append("| --- |" + " --- |" * len(order) + " --- | --- |")
        specs = [
            ("CDS ACK", lambda r: (r.get("ack_ms") or {}).get("cds"), " ms", f"≤ {target} ms", target),
            (f"EDS ACK (all {n:,} CLAs)", lambda r: (r.get("ack_ms") or {}).get("eds"), " ms", f"≤ {target} ms", target),
            ("LDS ACK", lambda r: (r.get("ack_ms") or {}).get("lds"), " ms", f"≤ {target} ms", target),
            ("RDS ACK", lambda r: (r.get("ack_ms") or {}).get("rds"), " ms", f"≤ {target} ms", target),
            ("EDS response written (follows the proxy's EDS request)", lambda r: next((v for k, v in (r.get("sent_ms") or {}).items() if k.startswith("eds:")), None), " ms", "—", None),
            ("first 200 on /c0/ (first cluster)", lambda r: r.get("first_200_c0_ms"), " ms", "—", None),
            (f"**first 200 on /c{n - 1}/ (last cluster)**", lambda r: r.get("first_200_last_cluster_ms"), " ms", f"≤ {target} ms", target),
            ("RSS before the push (empty config)", mib("rss_before_kib"), " MiB", "—", None),
            ("RSS after (ACKed, routed, +1 s)", mib("rss_after_kib"), " MiB", "—", None),
            ("RSS growth", growth, " MiB", "recorded", None),
            (f"RSS after one GET of each of the {n:,} routes", mib("rss_after_traffic_kib"), " MiB", "—", None),
            (f"non-200 in one GET of each route (after the first 200)", lambda r: r.get("all_routes_non_200"), "", "0", 0),
        ]
        for label, get, unit, tgt, limit in specs:
            cells = [cell(by[p], get, unit) for p in order]
            met = verdict(by.get("mecha", []), get, limit) if limit is not None else "—"
            out.append(f"| {label} | " + " | ".join(cells) + f" | {tgt} | {met} |")
        out.append("")
    churn = [r for r in rows if r["scenario"] == "churn"]
    if churn:
        by = {p: [r for r in churn if r["proxy"] == p] for p in order}
        r0 = churn[0]
        out.append(f"### Endpoint churn: a new CLA for c0 every {r0.get('interval_ms', 100):g} ms under `wrk -t1 -c16 -d{r0.get('duration', 30)}s` on /c0/ ({r0['n']:,} clusters held)")
        out.append("")
        out.append("| figure | " + " | ".join(order) + " | target | met? (mecha) |")
        out.append("| --- |" + " --- |" * len(order) + " --- | --- |")
        c = lambda k: (lambda r: (r.get("churn") or {}).get(k))
        w = lambda k: (lambda r: (r.get("wrk") or {}).get(k))
        serr = lambda r: None if not r.get("wrk") else sum(r["wrk"]["socket_errors"].values())
        specs = [
            ("EDS pushes", c("pushes"), "", "—", None),
            ("wrk requests (req/s)", lambda r: None if not r.get("wrk") else f"{r['wrk']['requests']} ({r['wrk'].get('rps', 0):.0f}/s)", "", "—", None),
            ("wrk non-2xx", w("non_2xx"), "", "0", 0),
            ("wrk non-200 statuses (first body)", lambda r: None if not r.get("wrk") else (", ".join(f"{k}: {v}" for k, v in r["wrk"].get("statuses", {}).items()) or "none") + (f" (\"{r['wrk']['first_non_200_body'][:80]}\")" if r["wrk"].get("first_non_200_body") else ""), "", "—", None),
            ("wrk socket errors (connect/read/write/timeout)", lambda r: None if not r.get("wrk") else "/".join(str(v) for v in r["wrk"]["socket_errors"].values()), "", "0", None),
            ("push → EDS ACK, p50 / max", lambda r: None if not r.get("churn") else f"{fmt(r['churn']['ack_ms_p50'])} / {fmt(r['churn']['ack_ms_max'])} ms", "", "—", None),
            ("push → probe sees the new endpoint, p50", c("visible_ms_p50"), " ms", "—", None),
            ("… p90", c("visible_ms_p90"), " ms", "—", None),
            ("… **max** (of the pushes seen)", c("visible_ms_max"), " ms", "≤ 50 ms", 50),
            ("pushes seen later than 50 ms", c("visible_over_50ms"), "", "0", 0),
            ("pushes never seen before the next push", c("not_seen_before_next_push"), "", "0", 0),
            ("probe requests (non-200 among them)", lambda r: None if not r.get("churn") else f"{r['churn']['probe_requests']} ({sum(v for k, v in r['churn']['probe_statuses'].items() if k != '200')})", "", "—", None),
            ("probe gap between answers, p50 / p99", lambda r: None if not r.get("churn") else f"{fmt(r['churn']['probe_gap_ms_p50'])} / {fmt(r['churn'].get('probe_gap_ms_p99'))} ms", "", "—", None),
        ]
        for label, get, unit, tgt, limit in specs:
            cells = [cell(by[p], get, unit) for p in order]
            met = verdict(by.get("mecha", []), get, limit) if limit is not None else "—"
            if label.startswith("wrk socket"):
                met = verdict(by.get("mecha", []), serr, 0)
            out.append(f"| {label} | " + " | ".join(cells) + f" | {tgt} | {met} |")
        out.append("")
    errs = [r for r in rows if r.get("error") or r.get("nacks") or r.get("streams", 1) != 1 or r.get("proxy_exit") is not None]
    for r in errs:
        out.append(f"- {r['proxy']} {r['scenario']} N={r['n']} (round {r.get('round')}): "
                   + "; ".join(x for x in [
                       f"error: {r['error']}" if r.get("error") else "",
                       f"NACKs: {json.dumps(r['nacks'])[:600]}" if r.get("nacks") else "",
                       f"{r.get('streams')} ADS streams" if r.get("streams", 1) != 1 else "",
                       f"the proxy exited ({r.get('proxy_exit')}) before the end" if r.get("proxy_exit") is not None else "",
                   ] if x))
    print("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        report(sys.argv[2])
    else:
        main()
