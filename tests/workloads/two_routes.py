#!/usr/bin/env python3
"""Two-route HTTP/1.1 keep-alive server for tests/tests/histograms.rs: `/fast/{id}` answers at
once, `/slow/{id}` after a uniform 10-50 ms sleep (seeded by the path), `/once/{id}` at once.

Each request's own time is measured from the return of the recv that brought its first bytes
to just before the sendall of its response: inside the window Periscope measures (the exit of
that read to the entry of that write), so Periscope's duration is never shorter, and longer
only by the few interpreter steps between the clock reads and the syscalls.

usage: two_routes.py PORT OUT.json; on SIGTERM writes {path: seconds} to OUT.json and exits.
"""
import json
import random
import signal
import socket
import sys
import threading
import time

PORT, OUT = int(sys.argv[1]), sys.argv[2]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
timings = {}


def dump(*_):
    with open(OUT, "w") as f:
        json.dump(dict(timings), f)
    sys.exit(0)


def serve(conn):
    pending = b""
    with conn:
        while True:
            start = None
            while b"\r\n\r\n" not in pending:
                chunk = conn.recv(4096)
                if start is None:
                    start = time.perf_counter_ns()
                if not chunk:
                    return
                pending += chunk
            head, _, pending = pending.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path.startswith("/slow/"):
                time.sleep(random.Random(path).uniform(0.010, 0.050))
            end = time.perf_counter_ns()
            conn.sendall(RESPONSE)
            timings[path] = (end - start) / 1e9


def main():
    signal.signal(signal.SIGTERM, dump)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORT))
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
