// A gRPC client (Node.js @grpc/grpc-js, raw method paths: no .proto, no generated code) for
// grpc_server.py and grpc_server.js: the same modes and output as grpc_client.py.
//
// usage: node grpc_client.js PORT mixed|concurrent [SECONDS]   (with @grpc/grpc-js on NODE_PATH)
//   mixed       on one channel, one call after another: SayHello OK x3, NOT_FOUND x2,
//               INTERNAL x1; ListFeatures (server streaming) OK x2, NOT_FOUND x1, INTERNAL x1;
//               with SECONDS, again and again on that channel until they have passed
//   concurrent  100 SayHello calls started together on one channel (one HTTP/2 connection,
//               100 streams in flight), each held 200 ms by the server: 60 OK, 25 NOT_FOUND,
//               15 INTERNAL
// Prints one JSON object: `calls`, the calls that ended, per (service, method, status) with the
// numeric status the client received; `messages`, the streamed replies received; `elapsed_s`;
// and `connections`, the TCP connections the channel opened (from /proc, by the server port).
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const port = Number(process.argv[2]);
const mode = process.argv[3];
const seconds = process.argv.length > 4 ? Number(process.argv[4]) : 0;
const SERVICE = "demo.Greeter";
const bytes = (b) => b;

// One connection for the whole run: no proxy lookup, no subchannel shared with another client.
const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
  "grpc.enable_http_proxy": 0,
  "grpc.use_local_subchannel_pool": 1,
});
const calls = new Map(); // "method status" -> count
let messages = 0;

function count(method, code) {
  const key = `${method} ${code}`;
  calls.set(key, (calls.get(key) || 0) + 1);
}

const deadline = () => ({ deadline: Date.now() + 30000 });

// Resolves with the status code of one SayHello call.
function unary(outcome) {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      `/${SERVICE}/SayHello`, bytes, bytes, Buffer.from(outcome), new grpc.Metadata(), deadline(),
      (err) => resolve(err ? err.code : grpc.status.OK),
    );
  });
}

// Resolves with the status code of one ListFeatures call, counting its replies.
function streaming(outcome) {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(
      `/${SERVICE}/ListFeatures`, bytes, bytes, Buffer.from(outcome), new grpc.Metadata(), deadline(),
    );
    call.on("data", () => messages++);
    call.on("error", () => {}); // the status event below says how it ended
    call.on("status", (status) => resolve(status.code));
  });
}

// This process's TCP connections to 127.0.0.1:PORT (both /proc/net tables).
function serverPortConnections() {
  const inodes = new Set();
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    let target;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target.startsWith("socket:[")) inodes.add(target.slice(8, -1));
  }
  let n = 0;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of fs.readFileSync(table, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10) continue;
      const remotePort = parseInt(fields[2].split(":").pop(), 16);
      if (remotePort === port && inodes.has(fields[9]) && fields[3] === "01") n++;
    }
  }
  return n;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 10000, (err) => (err ? reject(err) : resolve())),
  );
  const start = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - start) / 1e9;
  let connections = 0;
  if (mode === "mixed") {
    for (;;) {
      for (const outcome of [...Array(3).fill("ok"), "not_found", "not_found", "internal"]) {
        count("SayHello", await unary(outcome));
      }
      for (const outcome of ["ok", "ok", "not_found", "internal"]) {
        count("ListFeatures", await streaming(outcome));
      }
      connections = serverPortConnections();
      if (elapsed() >= seconds) break;
      await sleep(200);
    }
  } else if (mode === "concurrent") {
    const outcomes = [
      ...Array(60).fill("ok"), ...Array(25).fill("not_found"), ...Array(15).fill("internal"),
    ];
    const started = outcomes.map((o) => unary(`${o}:200`));
    // All 100 are in flight now (each is held 200 ms): count the connections carrying them.
    connections = serverPortConnections();
    for (const code of await Promise.all(started)) count("SayHello", code);
  } else {
    console.error(`unknown mode ${mode}`);
    process.exit(1);
  }
  const took = elapsed();
  client.close();
  const sorted = [...calls.entries()]
    .map(([key, n]) => {
      const [method, status] = key.split(" ");
      return { service: SERVICE, method, status: Number(status), count: n };
    })
    .sort((a, b) => (a.method === b.method ? a.status - b.status : a.method < b.method ? -1 : 1));
  console.log(JSON.stringify({
    calls: sorted, messages, elapsed_s: Math.round(took * 1000) / 1000, connections,
  }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
