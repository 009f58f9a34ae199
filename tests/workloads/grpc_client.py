"""A gRPC client (Python grpcio, no generated code) for grpc_server.py.

usage: grpc_client.py PORT mixed|concurrent|midway [SECONDS]
  mixed       on one channel, one call after another: SayHello OK x3, NOT_FOUND x2,
              INTERNAL x1; ListFeatures (server streaming) OK x2, NOT_FOUND x1, INTERNAL x1;
              with SECONDS, again and again on that channel until they have passed (a
              long-lived client, whose series a scraper sees grow)
  midway      SayHello OK x2 and NOT_FOUND x1, then prints `ready` and waits for a line on
              stdin; then on the same connection the calls of `mixed` once (only these are
              in the JSON)
  concurrent  100 SayHello calls started together on one channel (one HTTP/2 connection,
              100 streams in flight), each held 200 ms by the server: 60 OK, 25 NOT_FOUND,
              15 INTERNAL
With GRPC_TRACEPARENT set, every call sends it as `traceparent` metadata (W3C trace context,
as an instrumented client would).
Prints one JSON object: `calls`, the calls that ended, per (service, method, status) with the
numeric status the client received; `messages`, the streamed replies received; `elapsed_s`;
and `connections`, the TCP connections the channel opened (from /proc, by the server port).
"""
import json
import os
import sys
import time
from collections import Counter

import grpc

PORT = int(sys.argv[1])
MODE = sys.argv[2]
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
SERVICE = "demo.Greeter"
CODES = {code: code.value[0] for code in grpc.StatusCode}

# One connection for the whole run: no proxy lookup, no second subchannel.
channel = grpc.insecure_channel(
    f"127.0.0.1:{PORT}", options=[("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
)
grpc.channel_ready_future(channel).result(timeout=10)
say_hello = channel.unary_unary(f"/{SERVICE}/SayHello")
list_features = channel.unary_stream(f"/{SERVICE}/ListFeatures")
calls = Counter()
messages = 0
TRACEPARENT = os.environ.get("GRPC_TRACEPARENT")
METADATA = (("traceparent", TRACEPARENT),) if TRACEPARENT else None


def server_port_connections():
    """This process's TCP connections to 127.0.0.1:PORT (both /proc/net tables)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == PORT and fields[9] in inodes and fields[3] == "01":
                    count += 1
    return count


def unary(outcome):
    try:
        say_hello(outcome.encode(), timeout=30, metadata=METADATA)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    calls[("SayHello", CODES[code])] += 1


def streaming(outcome):
    global messages
    code = grpc.StatusCode.OK
    try:
        for _ in list_features(outcome.encode(), timeout=30, metadata=METADATA):
            messages += 1
    except grpc.RpcError as e:
        code = e.code()
    calls[("ListFeatures", CODES[code])] += 1


start = time.monotonic()
connections = 0
if MODE == "mixed":
    while True:
        for outcome in ["ok"] * 3 + ["not_found"] * 2 + ["internal"]:
            unary(outcome)
        for outcome in ["ok"] * 2 + ["not_found", "internal"]:
            streaming(outcome)
        connections = server_port_connections()
        if time.monotonic() - start >= SECONDS:
            break
        time.sleep(0.2)
elif MODE == "concurrent":
    outcomes = ["ok"] * 60 + ["not_found"] * 25 + ["internal"] * 15
    started = [say_hello.future(f"{o}:200".encode(), timeout=30, metadata=METADATA) for o in outcomes]
    # All 100 are in flight now (each is held 200 ms): count the connections carrying them.
    connections = server_port_connections()
    for future in started:
        try:
            future.result()
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        calls[("SayHello", CODES[code])] += 1
elif MODE == "midway":
    # Calls whose fields enter the connection's HPACK tables before the observer starts,
    # then, on the same connection once a line arrives on stdin, the calls that count.
    for outcome in ["ok", "ok", "not_found"]:
        unary(outcome)
    calls.clear()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    for outcome in ["ok"] * 3 + ["not_found"] * 2 + ["internal"]:
        unary(outcome)
    for outcome in ["ok"] * 2 + ["not_found", "internal"]:
        streaming(outcome)
    connections = server_port_connections()
else:
    sys.exit(f"unknown mode {MODE}")
elapsed = time.monotonic() - start
channel.close()
print(
    json.dumps(
        {
            "calls": [
                {"service": SERVICE, "method": m, "status": s, "count": n}
                for (m, s), n in sorted(calls.items())
            ],
            "messages": messages,
            "elapsed_s": round(elapsed, 3),
            "connections": connections,
        }
    )
)
