"""TCP workloads for Periscope's end-to-end tests; each measures what it did and prints it as
JSON on stdout, so the test compares Periscope with the workload's own numbers.

  tcp.py server PORT SEND           accept forever; per connection: read the request line,
                                    send SEND bytes, wait for the client to close, close
  tcp.py client PORT N HOLD_MS REQ  N connections one after another: connect, send REQ bytes
                                    ending in a newline, read the reply to EOF or until
                                    HOLD_MS passed, then close; prints per-connection bytes and
                                    durations (connect start to close end)
  tcp.py leak PORT                  on each line of stdin "open K": opens K more connections and
                                    never closes them; prints "opened TOTAL"
  tcp.py refused PORT N             N connects to a port nobody listens on
"""

import json
import socket
import sys
import threading
import time


def serve(port, send):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    print(json.dumps({"listening": port}), flush=True)

    def handle(conn):
        with conn:
            request = b""
            while not request.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            conn.sendall(b"x" * send)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def client(port, n, hold_ms, request_bytes):
    request = b"r" * (request_bytes - 1) + b"\n"
    done = []
    for _ in range(n):
        start = time.monotonic()
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(request)
        received = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        remaining = hold_ms / 1000 - (time.monotonic() - start)
        if remaining > 0:
            time.sleep(remaining)
        conn.close()
        done.append(
            {"sent": len(request), "received": received, "seconds": time.monotonic() - start}
        )
    print(json.dumps({"connections": done}), flush=True)


def leak(port):
    kept = []
    for line in sys.stdin:
        if line.startswith("open "):
            for _ in range(int(line.split()[1])):
                conn = socket.create_connection(("127.0.0.1", port))
                conn.sendall(b"leak\n")
                kept.append(conn)
            print(json.dumps({"opened": len(kept)}), flush=True)


def refused(port, n):
    failures = 0
    for _ in range(n):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
        except ConnectionRefusedError:
            failures += 1
    print(json.dumps({"refused": failures}), flush=True)


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "server":
        serve(port, int(sys.argv[3]))
    elif mode == "client":
        client(port, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "leak":
        leak(port)
    elif mode == "refused":
        refused(port, int(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")
