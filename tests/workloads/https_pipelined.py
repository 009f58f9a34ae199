"""Chunked POSTs pipelined with GETs over one TLS keep-alive connection:
https_pipelined.py PORT ROUNDS. Each round is one write holding a POST /items whose body is sent
chunked (two chunks, then the last chunk) followed by GET /users/<n>, so the body's end and the
next request arrive together; then both responses are read. Prints one JSON line per response:
{"method": ..., "path": ..., "status": ...}."""

import json
import socket
import ssl
import sys

port, rounds = int(sys.argv[1]), int(sys.argv[2])
context = ssl._create_unverified_context()
tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)))
responses = tls.makefile("rb")


def read_response():
    status = int(responses.readline().split()[1])
    length = 0
    while (line := responses.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    responses.read(length)
    return status


for i in range(rounds):
    get = f"/users/{200 + i}"
    tls.sendall(
        b"POST /items HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\npay\r\n4\r\nload\r\n0\r\n\r\n"
        + f"GET {get} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    )
    for method, path in (("POST", "/items"), ("GET", get)):
        print(json.dumps({"method": method, "path": path, "status": read_response()}), flush=True)
tls.close()
