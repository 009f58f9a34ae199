"""Sends a request plan and reports what it sent and how long each request took.

usage: client.py PORT keepalive|close < plan.json   (plan: [[method, path], ...])
prints: JSON list of {method, path, status, seconds}
"""
import http.client
import json
import sys
import time

port = int(sys.argv[1])
keepalive = sys.argv[2] == "keepalive"
plan = json.load(sys.stdin)
results = []
conn = None
for method, path in plan:
    if conn is None or not keepalive:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
    body = b"payload" if method in ("POST", "PUT") else None
    start = time.perf_counter()
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    seconds = time.perf_counter() - start
    results.append({"method": method, "path": path, "status": response.status, "seconds": seconds})
    if not keepalive:
        conn.close()
json.dump(results, sys.stdout)
