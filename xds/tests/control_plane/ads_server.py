#!/usr/bin/env python3
"""A scripted ADS control plane for Mecha's tests.

Independent of Mecha's Rust code: it serves envoy.service.discovery.v3.AggregatedDiscoveryService
(StreamAggregatedResources and DeltaAggregatedResources) from the stubs of the PyPI `xds-protos`
package, and does nothing by itself: a test drives it over stdin/stdout with JSON lines
(the driver is test-support/src/control_plane.rs; the interface is described there).

Usage: ads_server.py [--port N] [--delta-unimplemented] [--import MODULE]...

stdout (one JSON object a line, flushed per line):
  {"event":"ready","port":N}                                   first line
  {"event":"stream_open","stream":ID,"api":"sotw"|"delta"}
  {"event":"request","stream":ID,"api":...,"type_url":...,"version_info":...,"response_nonce":...,
   "resource_names":[...],"resource_names_subscribe":[...],"resource_names_unsubscribe":[...],
   "initial_resource_versions":{...},"error_detail":null|{"code":N,"message":"..."},"node":null|{...}}
  {"event":"sent","stream":ID,"nonce":"nN","op":"send_sotw"|"send_delta","size":BYTES}  reply to a send
  {"event":"closing","stream":ID,"code":"...","op":"close_stream"}          reply to close_stream
  {"event":"stream_closed","stream":ID}
  {"event":"unimplemented","api":"delta"}       a delta call refused (--delta-unimplemented)
  {"event":"error","message":"...","op":...}    a command that failed ("op" set: the reply to it)
stdin commands (to the newest open stream unless "stream" is given); each gets one reply line:
  {"op":"send_sotw","type_url":T,"version":V,"resources":[<proto3 JSON with "@type">...]}
  {"op":"send_delta","type_url":T,"system_version_info":V,
   "resources":[{"name":N,"version":V,"resource":<JSON with "@type">}],"removed":[names]}
  {"op":"close_stream","code":"UNAVAILABLE"}   ends the stream with that gRPC status
A resource may also be {"@raw":{"type_url":T,"value_b64":B}}: an Any with exactly these bytes
(e.g. undecodable ones). EOF on stdin stops the server.
"""

import argparse
import base64
import importlib
import itertools
import json
import queue
import sys
import threading
import traceback
from concurrent import futures

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, message_factory

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

# Imported for their descriptors: json_format resolves an Any's "@type" in the default pool, so
# every type a test may put in a resource (top level or nested typed_config) must be loaded.
# Best effort: a module a given xds-protos release lacks is skipped.
RESOURCE_MODULES = [
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.core.v3.health_check_pb2",
    "envoy.config.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.network.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.network.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.filters.network.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.filters.network.connection_limit.v3.connection_limit_pb2",
    "envoy.extensions.filters.network.direct_response.v3.config_pb2",
    "envoy.extensions.filters.network.sni_cluster.v3.sni_cluster_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.health_check.v3.health_check_pb2",
    "envoy.extensions.filters.http.fault.v3.fault_pb2",
    "envoy.extensions.filters.http.grpc_stats.v3.config_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.config_pb2",
    "envoy.extensions.filters.http.cors.v3.cors_pb2",
    "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2",
    "envoy.extensions.filters.http.compressor.v3.compressor_pb2",
    "envoy.extensions.filters.http.grpc_web.v3.grpc_web_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.filters.http.wasm.v3.wasm_pb2",
    "envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.filters.http.header_to_metadata.v3.header_to_metadata_pb2",
    "envoy.extensions.filters.http.buffer.v3.buffer_pb2",
    "envoy.extensions.filters.http.set_metadata.v3.set_metadata_pb2",
    "envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2",
    "envoy.extensions.filters.http.stateful_session.v3.stateful_session_pb2",
    "envoy.extensions.filters.http.csrf.v3.csrf_pb2",
    "envoy.extensions.filters.http.original_src.v3.original_src_pb2",
    "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
    "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
    "envoy.extensions.filters.listener.http_inspector.v3.http_inspector_pb2",
    "envoy.extensions.filters.listener.proxy_protocol.v3.proxy_protocol_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.upstreams.tcp.v3.tcp_protocol_options_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    "envoy.extensions.transport_sockets.tcp_stats.v3.tcp_stats_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.compression.gzip.compressor.v3.gzip_pb2",
    "envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2",
    "envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2",
    "envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2",
    "envoy.extensions.load_balancing_policies.random.v3.random_pb2",
    "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin_pb2",
    "envoy.extensions.clusters.aggregate.v3.cluster_pb2",
    "envoy.extensions.internal_redirect.previous_routes.v3.previous_routes_config_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    "envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2",
    "envoy.extensions.filters.udp.udp_proxy.v3.udp_proxy_pb2",
    "udpa.type.v1.typed_struct_pb2",
    "xds.type.v3.typed_struct_pb2",
]

COMPONENT_TYPE = "type.googleapis.com/mecha.config.v1.Component"

MAX_MESSAGE = 64 * 1024 * 1024

_out_lock = threading.Lock()


def emit(**event):
    """One event line on stdout, flushed at once (the driver waits on these)."""
    line = json.dumps(event, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def import_modules(names):
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:  # an older/newer xds-protos without it: not fatal
            sys.stderr.write(f"ads_server: skipping {name}: {e}\n")


def register_component():
    """mecha.config.v1.Component (proto/proto/mecha/config/v1/component.proto), by hand."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("mecha.config.v1.Component")
        return
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(
        name="mecha/config/v1/component.proto", package="mecha.config.v1", syntax="proto3"
    )
    m = f.message_type.add(name="Component")
    fd = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="name", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL, json_name="name")
    m.field.add(name="type", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL, json_name="type")
    m.field.add(
        name="metadata",
        number=3,
        type=fd.TYPE_MESSAGE,
        label=fd.LABEL_REPEATED,
        type_name=".mecha.config.v1.Component.MetadataEntry",
        json_name="metadata",
    )
    entry = m.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL, json_name="key")
    entry.field.add(name="value", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL, json_name="value")
    pool.Add(f)
    # Make the class exist, as a generated module would.
    message_factory.GetMessageClass(pool.FindMessageTypeByName("mecha.config.v1.Component"))


class CommandError(Exception):
    pass


def to_any(resource):
    """A resource's proto3 JSON (with "@type") as an Any; {"@raw": ...} as those exact bytes."""
    if not isinstance(resource, dict):
        raise CommandError(f"a resource must be a JSON object, got {type(resource).__name__}")
    if "@raw" in resource:
        raw = resource["@raw"]
        try:
            return any_pb2.Any(type_url=raw["type_url"], value=base64.b64decode(raw.get("value_b64", ""), validate=True))
        except (KeyError, TypeError, ValueError) as e:
            raise CommandError(f"bad @raw resource {raw!r}: {e}")
    if "@type" not in resource:
        raise CommandError(f"resource without \"@type\": {json.dumps(resource)[:200]}")
    try:
        return json_format.ParseDict(resource, any_pb2.Any())
    except (json_format.ParseError, TypeError, ValueError, KeyError) as e:
        name = resource.get("name") or resource.get("cluster_name") or resource.get("clusterName")
        raise CommandError(f"resource {name!r} of type {resource['@type']}: {e}")


class Stream:
    def __init__(self, sid, api):
        self.id = sid
        self.api = api
        self.outbox = queue.Queue()
        self.open = True
        self._closed_reported = False
        self._lock = threading.Lock()

    def report_closed(self):
        with self._lock:
            if self._closed_reported:
                return
            self._closed_reported = True
            self.open = False
        emit(event="stream_closed", stream=self.id)


class ControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, delta_unimplemented):
        self.delta_unimplemented = delta_unimplemented
        self.streams = {}
        self.lock = threading.Lock()
        self.next_stream = itertools.count(1)
        self.next_nonce = itertools.count(1)

    # --- gRPC side ---

    def StreamAggregatedResources(self, request_iterator, context):
        return self._serve(request_iterator, context, "sotw")

    def DeltaAggregatedResources(self, request_iterator, context):
        if self.delta_unimplemented:
            emit(event="unimplemented", api="delta")
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "delta ADS is not served (--delta-unimplemented)")
        return self._serve(request_iterator, context, "delta")

    def _serve(self, request_iterator, context, api):
        with self.lock:
            stream = Stream(next(self.next_stream), api)
            self.streams[stream.id] = stream
        emit(event="stream_open", stream=stream.id, api=api)
        # Unblocks the response loop when the client goes away.
        context.add_callback(lambda: stream.outbox.put(None))
        reader = threading.Thread(
            target=self._read, args=(stream, request_iterator), name=f"ads-read-{stream.id}", daemon=True
        )
        reader.start()
        try:
            while True:
                item = stream.outbox.get()
                if item is None:
                    return
                if isinstance(item, tuple):  # ("close", StatusCode)
                    code = item[1]
                    if code != grpc.StatusCode.OK:
                        context.set_code(code)
                        context.set_details("stream closed by the test (close_stream)")
                    return
                yield item
        finally:
            stream.report_closed()

    def _read(self, stream, request_iterator):
        try:
            for request in request_iterator:
                try:
                    emit(**request_event(stream, request))
                except Exception as e:  # never lose the stream to a reporting bug
                    emit(event="error", message=f"stream {stream.id}: reporting a request: {e!r}")
        except grpc.RpcError:
            pass  # the call ended: reported by the response side
        except Exception as e:
            emit(event="error", message=f"stream {stream.id}: reading requests: {e!r}")
        finally:
            stream.outbox.put(None)

    # --- commands ---

    def target(self, cmd):
        with self.lock:
            if "stream" in cmd and cmd["stream"] is not None:
                s = self.streams.get(cmd["stream"])
                if s is None:
                    raise CommandError(f"no stream {cmd['stream']}")
                if not s.open:
                    raise CommandError(f"stream {s.id} is closed")
                return s
            open_streams = [s for s in self.streams.values() if s.open]
            if not open_streams:
                raise CommandError("no open stream")
            return max(open_streams, key=lambda s: s.id)

    def command(self, cmd):
        op = cmd.get("op")
        if op == "send_sotw":
            self.send_sotw(cmd)
        elif op == "send_delta":
            self.send_delta(cmd)
        elif op == "close_stream":
            self.close_stream(cmd)
        else:
            raise CommandError(f"unknown op {op!r} (expected send_sotw, send_delta, close_stream)")

    def _nonce(self):
        return f"n{next(self.next_nonce)}"

    def send_sotw(self, cmd):
        type_url = require(cmd, "type_url", str)
        version = require(cmd, "version", str)
        resources = [to_any(r) for r in require(cmd, "resources", list)]
        stream = self.target(cmd)
        if stream.api != "sotw":
            raise CommandError(f"stream {stream.id} is a {stream.api} stream, not sotw")
        nonce = self._nonce()
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=type_url, nonce=nonce
        )
        # Reported before it is queued: the client's answer cannot be seen before "sent".
        emit(event="sent", op="send_sotw", stream=stream.id, nonce=nonce, size=response.ByteSize())
        stream.outbox.put(response)

    def send_delta(self, cmd):
        type_url = require(cmd, "type_url", str)
        system_version = cmd.get("system_version_info", "")
        resources = []
        for r in require(cmd, "resources", list):
            if not isinstance(r, dict) or "resource" not in r:
                raise CommandError(f"a delta resource is {{name, version, resource}}, got {json.dumps(r)[:200]}")
            resources.append(
                discovery_pb2.Resource(
                    name=str(r.get("name", "")), version=str(r.get("version", "")), resource=to_any(r["resource"])
                )
            )
        removed = cmd.get("removed", [])
        if not isinstance(removed, list):
            raise CommandError("'removed' must be a list of names")
        removed = [str(n) for n in removed]
        stream = self.target(cmd)
        if stream.api != "delta":
            raise CommandError(f"stream {stream.id} is a {stream.api} stream, not delta")
        nonce = self._nonce()
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(system_version),
            resources=resources,
            type_url=type_url,
            removed_resources=removed,
            nonce=nonce,
        )
        emit(event="sent", op="send_delta", stream=stream.id, nonce=nonce, size=response.ByteSize())
        stream.outbox.put(response)

    def close_stream(self, cmd):
        name = cmd.get("code", "UNAVAILABLE")
        code = getattr(grpc.StatusCode, str(name), None)
        if not isinstance(code, grpc.StatusCode):
            raise CommandError(f"unknown gRPC status code {name!r}")
        stream = self.target(cmd)
        with self.lock:
            stream.open = False  # commands go to the newest open stream: not this one any more
        emit(event="closing", op="close_stream", stream=stream.id, code=code.name)
        stream.outbox.put(("close", code))


def require(cmd, key, ty):
    if key not in cmd:
        raise CommandError(f"missing {key!r}")
    value = cmd[key]
    if not isinstance(value, ty):
        raise CommandError(f"{key!r} must be a {ty.__name__}")
    return value


def request_event(stream, request):
    error = None
    if request.HasField("error_detail"):
        error = {"code": request.error_detail.code, "message": request.error_detail.message}
    node = None
    if request.HasField("node"):
        try:
            node = json_format.MessageToDict(request.node)
        except Exception as e:  # e.g. an extension type not loaded: still report id/cluster
            node = {"id": request.node.id, "cluster": request.node.cluster, "_error": repr(e)}
    event = {
        "event": "request",
        "stream": stream.id,
        "api": stream.api,
        "type_url": request.type_url,
        "response_nonce": request.response_nonce,
        "error_detail": error,
        "node": node,
        "version_info": "",
        "resource_names": [],
        "resource_names_subscribe": [],
        "resource_names_unsubscribe": [],
        "initial_resource_versions": {},
    }
    if stream.api == "sotw":
        event["version_info"] = request.version_info
        event["resource_names"] = list(request.resource_names)
    else:
        event["resource_names_subscribe"] = list(request.resource_names_subscribe)
        event["resource_names_unsubscribe"] = list(request.resource_names_unsubscribe)
        event["initial_resource_versions"] = dict(request.initial_resource_versions)
    return event


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--delta-unimplemented", action="store_true", help="DeltaAggregatedResources answers UNIMPLEMENTED")
    parser.add_argument("--import", dest="imports", action="append", default=[], help="another proto module to load")
    args = parser.parse_args()

    import_modules(RESOURCE_MODULES + args.imports)
    register_component()

    plane = ControlPlane(args.delta_unimplemented)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            # A restart on the same port must own it alone, not share it with a lingering one.
            ("grpc.so_reuseport", 0),
        ],
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(plane, server)
    try:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    except RuntimeError as e:
        port, why = 0, str(e)
    else:
        why = "add_insecure_port returned 0"
    if not port:
        emit(event="error", message=f"cannot listen on 127.0.0.1:{args.port}: {why}")
        sys.exit(2)
    server.start()
    emit(event="ready", port=port)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        op = None
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise CommandError("a command is a JSON object")
            op = cmd.get("op")
            plane.command(cmd)
        except (CommandError, ValueError) as e:
            emit(event="error", op=op, message=str(e))
        except Exception as e:  # keep serving whatever went wrong
            emit(event="error", op=op, message=f"{e!r}: {traceback.format_exc(limit=3)}")
    server.stop(grace=None)


if __name__ == "__main__":
    main()
