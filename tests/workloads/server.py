"""A Python http.server with the routes the HTTP tests use.

usage: server.py PORT keepalive|close [DOWNSTREAM_PORT]
  GET|PUT|DELETE|PURGE|PROPFIND|MKCOL /users/<id> -> 200, POST /items -> 201, /fail... -> 500,
  /empty -> 204 and /cached -> 304 (no body, no length), anything else -> 404; HEAD as GET,
  with the length and without the body
  /chain -> calls GET /users/1 on 127.0.0.1:DOWNSTREAM_PORT from the serving thread, then 200
"""
import http.client
import http.server
import sys

PORT = int(sys.argv[1])
KEEPALIVE = sys.argv[2] == "keepalive"
DOWNSTREAM = int(sys.argv[3]) if len(sys.argv) > 3 else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1" if KEEPALIVE else "HTTP/1.0"

    def log_message(self, *args):
        pass

    def status_for(self, path):
        if path.startswith("/users/"):
            return 200
        if path == "/items" and self.command == "POST":
            return 201
        if path.startswith("/fail"):
            return 500
        if path == "/chain" and DOWNSTREAM:
            conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM, timeout=10)
            conn.request("GET", "/users/1")
            conn.getresponse().read()
            conn.close()
            return 200
        return 404

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        status = {"/empty": 204, "/cached": 304}.get(path) or self.status_for(path)
        body = b"ok\n"
        self.send_response(status)
        if status in (204, 304):
            self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # Methods outside the nine OTel names (cache purges, WebDAV) are answered like the others.
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_any
    do_PURGE = do_PROPFIND = do_MKCOL = handle_any


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
