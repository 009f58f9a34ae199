"""An HTTPS client on Python's ssl module: https_client.py PORT PATH... GETs each path over one
keep-alive connection (certificate not verified: the test's own self-signed one) and prints one
JSON line per response: {"path": ..., "status": ...}."""

import http.client
import json
import ssl
import sys

port = int(sys.argv[1])
connection = http.client.HTTPSConnection(
    "127.0.0.1", port, context=ssl._create_unverified_context()
)
for path in sys.argv[2:]:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    print(json.dumps({"path": path, "status": response.status}), flush=True)
connection.close()
