// Sends a request plan (JSON on stdin: [[method, path], ...]) one request at a time and prints
// JSON [{method, path, status, seconds}]. usage: node client.js PORT keepalive|close
const http = require("http");
const port = Number(process.argv[2]);
const keepAlive = process.argv[3] === "keepalive";
const agent = new http.Agent({ keepAlive, maxSockets: 1 });

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", async () => {
  const plan = JSON.parse(input);
  const results = [];
  for (const [method, path] of plan) {
    const body = method === "POST" || method === "PUT" ? "payload" : null;
    const start = process.hrtime.bigint();
    const status = await new Promise((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, method, path, agent }, (res) => {
        res.on("data", () => {});
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("error", reject);
      if (body) req.setHeader("Content-Length", body.length);
      req.end(body || undefined);
    });
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    results.push({ method, path, status, seconds });
  }
  agent.destroy();
  process.stdout.write(JSON.stringify(results));
});
