"""An HTTPS server on Python's ssl module (OpenSSL's SSL_read_ex/SSL_write_ex):
https_server.py PORT CERT KEY. Answers GETs 404 for paths containing "missing", else 200;
POSTs 201 once their body (Content-Length or chunked) is read."""

import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(404 if "missing" in self.path else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)  # the chunk and its CRLF
                if size == 0:  # no trailers are sent: that was the final CRLF
                    break
        else:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b"created\n"
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
