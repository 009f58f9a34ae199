"""A gRPC server (Python grpcio, generic handlers: no generated code) for the gRPC tests.

usage: grpc_server.py PORT
Serves `demo.Greeter` in plaintext HTTP/2 (h2c) on 127.0.0.1:PORT. Requests and replies are
raw bytes (no protobuf). The request says how the call ends: `ok`, `not_found` or `internal`,
optionally followed by `:MS`, a delay before answering (so that concurrent calls overlap).
  SayHello      unary: one reply, or the status asked for
  ListFeatures  server streaming: three replies, then OK or the status asked for (in the
                trailers, after the messages)
Runs until killed.
"""
import sys
import time
from concurrent import futures

import grpc

PORT = int(sys.argv[1])
STATUSES = {"not_found": grpc.StatusCode.NOT_FOUND, "internal": grpc.StatusCode.INTERNAL}


def parse(request):
    outcome, _, delay = request.decode().partition(":")
    if delay:
        time.sleep(int(delay) / 1000)
    return outcome


def say_hello(request, context):
    outcome = parse(request)
    if outcome in STATUSES:
        context.abort(STATUSES[outcome], f"asked for {outcome}")
    return b"hello"


def list_features(request, context):
    outcome = parse(request)
    for i in range(3):
        yield f"feature {i}".encode()
    if outcome in STATUSES:
        context.abort(STATUSES[outcome], f"asked for {outcome}")


handler = grpc.method_handlers_generic_handler(
    "demo.Greeter",
    {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "ListFeatures": grpc.unary_stream_rpc_method_handler(list_features),
    },
)
# More workers than the concurrent mode's calls, so that all 100 are in flight at once.
server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{PORT}")
server.start()
server.wait_for_termination()
