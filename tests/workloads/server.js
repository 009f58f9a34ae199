// A Node.js http server with the routes the HTTP tests use (see server.py); /stream answers
// with a chunked body written in several pieces.
// usage: node server.js PORT keepalive|close
const http = require("http");
const port = Number(process.argv[2]);
const keepalive = process.argv[3] === "keepalive";

function statusFor(method, path) {
  if (path.startsWith("/users/")) return 200;
  if (path === "/items" && method === "POST") return 201;
  if (path.startsWith("/fail")) return 500;
  return 404;
}

const server = http.createServer((req, res) => {
  req.on("data", () => {});
  req.on("end", () => {
    const path = req.url.split("?")[0];
    if (!keepalive) res.setHeader("Connection", "close");
    if (path === "/stream") {
      res.writeHead(200, { "Content-Type": "text/plain" });
      let n = 0;
      const tick = () => {
        if (n++ < 3) { res.write("chunk " + n + "\n"); setTimeout(tick, 5); } else res.end();
      };
      return tick();
    }
    const body = "ok\n";
    res.writeHead(statusFor(req.method, path), { "Content-Length": body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, "127.0.0.1");
