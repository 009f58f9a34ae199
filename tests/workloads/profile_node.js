// Node.js workload for the perf-map test (run with --perf-basic-prof, so V8 writes
// /tmp/perf-PID.map naming its JIT-compiled functions). Protocol as the C workloads: waits for
// a line on stdin ("go"), burns CPU in periscopeHotLoop for argv[2] seconds, prints the
// iterations done, then waits for stdin to close.
"use strict";

function periscopeHotLoop(n) {
  let s = 0;
  for (let i = 0; i < n; i++) {
    s += Math.sqrt(i) * Math.sin(i);
  }
  return s;
}

const seconds = Number(process.argv[2] || "4");
let started = false;
process.stdin.on("data", () => {
  if (started) return;
  started = true;
  const end = Date.now() + seconds * 1000;
  let calls = 0;
  let sink = 0;
  while (Date.now() < end) {
    sink += periscopeHotLoop(100000);
    calls++;
  }
  process.stdout.write(`${calls} ${sink > 0 ? 1 : 0}\n`);
});
process.stdin.on("end", () => process.exit(0));
