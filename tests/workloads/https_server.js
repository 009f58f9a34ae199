// An HTTPS server on Node's https module (OpenSSL linked into the node executable):
// node https_server.js PORT CERT KEY. Answers 404 for paths containing "missing", else 200.
const https = require("https");
const fs = require("fs");
const [port, cert, key] = process.argv.slice(2);
https
  .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    const body = "hello over tls\n";
    res.writeHead(req.url.includes("missing") ? 404 : 200, {
      "Content-Length": Buffer.byteLength(body),
    });
    res.end(body);
  })
  .listen(Number(port), "127.0.0.1");
