#!/usr/bin/env python3
"""Records one TCP connection through a loopback proxy, as the h2 tests' fixtures.

usage: record.py LISTEN_PORT TARGET_PORT OUT_FILE
Accepts one connection on 127.0.0.1:LISTEN_PORT, relays it to 127.0.0.1:TARGET_PORT, and
writes each chunk one side's recv() returned as a line: `c HEX` (client to server) or
`s HEX` (server to client), in the order they were relayed. Stops when both sides close.
"""
import select
import socket
import sys

listen_port, target_port, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
listener = socket.create_server(("127.0.0.1", listen_port))
client, _ = listener.accept()
server = socket.create_connection(("127.0.0.1", target_port))
peers = {client: (server, "c"), server: (client, "s")}
lines = []
open_socks = [client, server]
while open_socks:
    ready, _, _ = select.select(open_socks, [], [], 10)
    if not ready:
        break
    for sock in ready:
        data = sock.recv(65536)
        other, tag = peers[sock]
        if not data:
            open_socks.remove(sock)
            try:
                other.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            continue
        lines.append(f"{tag} {data.hex()}")
        other.sendall(data)
with open(out_file, "w") as f:
    f.write("\n".join(lines) + "\n")
