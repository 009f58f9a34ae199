// Sends a request plan (JSON on stdin: [[method, path], ...]) one request at a time and prints
// JSON [{method, path, status, seconds}].
// usage: node client.js PORT keepalive|close [length|chunked|fetch]
//   length (default): POST/PUT bodies with Content-Length; chunked: bodies written with
//   req.write() and no length (Transfer-Encoding: chunked); fetch: the global fetch (one
//   keep-alive pool), POST/PUT bodies as a stream (chunked).
const http = require("http");
const port = Number(process.argv[2]);
const keepAlive = process.argv[3] === "keepalive";
const bodies = process.argv[4] || "length";
const agent = new http.Agent({ keepAlive, maxSockets: 1 });

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", async () => {
  const plan = JSON.parse(input);
  const results = [];
  for (const [method, path] of plan) {
    const body = method === "POST" || method === "PUT" ? "payload" : null;
    const start = process.hrtime.bigint();
    const status = bodies === "fetch" ? await viaFetch(method, path, body) : await new Promise((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, method, path, agent }, (res) => {
        res.on("data", () => {});
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("error", reject);
      if (body && bodies === "chunked") {
        req.write(body.slice(0, 3));
        req.write(body.slice(3));
        return req.end();
      }
      if (body) req.setHeader("Content-Length", body.length);
      req.end(body || undefined);
    });
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    results.push({ method, path, status, seconds });
  }
  agent.destroy();
  process.stdout.write(JSON.stringify(results));
});

// One request with fetch; a body goes as a two-chunk stream.
async function viaFetch(method, path, body) {
  const init = { method };
  if (body) {
    init.body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(body.slice(0, 3)));
        controller.enqueue(new TextEncoder().encode(body.slice(3)));
        controller.close();
      },
    });
    init.duplex = "half";
  }
  const res = await fetch(`http://127.0.0.1:${port}${path}`, init);
  await res.arrayBuffer();
  return res.status;
}
