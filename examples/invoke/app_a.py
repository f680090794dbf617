"""App A of the invocation demo (examples/invoke/README.md): invokes app B through its own
sidecar (127.0.0.1:34904) by gRPC InvokeService and by plain HTTP, then publishes an event
app B receives. Run with PYTHONPATH naming the stubs made by grpc_tools.protoc.
"""
import json
import sys
import urllib.request

import grpc
from google.protobuf import any_pb2
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

SIDECAR = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:34904"


def main():
    stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(SIDECAR))
    order = json.dumps({"item": "coffee", "qty": 2}).encode()

    # 1. gRPC: InvokeService(id, method, data, content_type, http_extension).
    resp = stub.InvokeService(runtime_pb2.InvokeServiceRequest(
        id="app-b",
        message=runtime_pb2.CommonInvokeRequest(
            method="orders",
            data=any_pb2.Any(value=order),
            content_type="application/json",
            http_extension=runtime_pb2.HTTPExtension(
                verb=runtime_pb2.HTTPExtension.POST, querystring="priority=high"),
        ),
    ), timeout=5)
    print(f"grpc InvokeService -> {resp.content_type}: {resp.data.value.decode()}")

    # 2. Plain HTTP to the same sidecar port, the target named by `dapr-app-id`.
    req = urllib.request.Request(
        f"http://{SIDECAR}/orders?priority=low", data=order, method="PUT",
        headers={"dapr-app-id": "app-b", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        print(f"http dapr-app-id -> {r.status}: {r.read().decode()}")

    # 3. An unknown app id: NOT_FOUND, naming the known ones.
    try:
        stub.InvokeService(runtime_pb2.InvokeServiceRequest(
            id="app-c", message=runtime_pb2.CommonInvokeRequest(method="orders")), timeout=5)
    except grpc.RpcError as e:
        print(f"grpc unknown app -> {e.code().name}: {e.details()}")

    # 4. Publish on pubsub/orders: app B's AppCallback gets it through B's sidecar.
    stub.PublishEvent(runtime_pb2.PublishEventRequest(
        pubsub_name="pubsub", topic="orders", data=order,
        data_content_type="application/json"), timeout=5)
    print("published pubsub/orders")


if __name__ == "__main__":
    main()
