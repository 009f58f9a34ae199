"""Sends a request plan and reports what it sent and how long each request took.

usage: client.py PORT keepalive|close [length|chunked] < plan.json   (plan: [[method, path], ...])
  chunked: POST/PUT bodies sent with Transfer-Encoding: chunked (encode_chunked), in two chunks
prints: JSON list of {method, path, status, seconds}
"""
import http.client
import json
import sys
import time

port = int(sys.argv[1])
keepalive = sys.argv[2] == "keepalive"
chunked = len(sys.argv) > 3 and sys.argv[3] == "chunked"
plan = json.load(sys.stdin)
results = []
conn = None
for method, path in plan:
    if conn is None or not keepalive:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
    body = b"payload" if method in ("POST", "PUT") else None
    start = time.perf_counter()
    if body and chunked:
        conn.request(method, path, body=iter([body[:3], body[3:]]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
    else:
        conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    seconds = time.perf_counter() - start
    results.append({"method": method, "path": path, "status": response.status, "seconds": seconds})
    if not keepalive:
        conn.close()
json.dump(results, sys.stdout)
