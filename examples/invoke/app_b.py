"""App B of the invocation demo (examples/invoke/README.md).

HTTP on 127.0.0.1:9002: echoes every request (method, path, body, dapr-caller-app-id) as JSON
(`/status/<code>` answers with that status).
gRPC AppCallback on 127.0.0.1:9003: subscribes to pubsub "pubsub" topic "orders" and prints
each event it gets. Run with PYTHONPATH naming the stubs made by grpc_tools.protoc.
"""
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from runtime.v1 import appcallback_pb2, appcallback_pb2_grpc


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar pools its connections

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        print(f"app-b http: {self.command} {self.path} caller="
              f"{self.headers.get('dapr-caller-app-id')} body={body!r}", flush=True)
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "body": body,
            "caller": self.headers.get("dapr-caller-app-id"),
            "callee": self.headers.get("dapr-callee-app-id"),
            "traceparent": self.headers.get("traceparent"),
        }).encode()
        # /status/<code> answers with that status (to see how errors come back to app A).
        code = int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass


class Callback(appcallback_pb2_grpc.AppCallbackServicer):
    def ListTopicSubscriptions(self, request, context):
        sub = appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic="orders")
        return appcallback_pb2.ListTopicSubscriptionsResponse(subscriptions=[sub])

    def OnTopicEvent(self, request, context):
        print(f"app-b event: {request.pubsub_name}/{request.topic} id={request.id} "
              f"source={request.source} data={request.data.decode()!r}", flush=True)
        return appcallback_pb2.TopicEventResponse(
            status=appcallback_pb2.TopicEventResponse.SUCCESS)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(Callback(), server)
    server.add_insecure_port("127.0.0.1:9003")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 9002), Echo)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("app-b: HTTP on 127.0.0.1:9002, AppCallback on 127.0.0.1:9003", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        http.shutdown()


if __name__ == "__main__":
    main()
