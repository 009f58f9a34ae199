#!/usr/bin/env python3
"""HTTP capture overhead: nginx serving a small file under wrk (fixed connections), with no
tracer; with Periscope capturing HTTP of every process (so wrk's client side too); with
Periscope selecting nginx only (`select: [{process_name: nginx}]`, as one instruments the
service under test); with Periscope capturing every process and sending spans to a real OTLP
receiver (`otlp-sink`), every request sampled (`periscope-spans-100`) or one in ten
(`periscope-spans-10`); and with Periscope running only its other probes.

Beside them, the floor (bench/floor.py): empty programs on the hooks HTTP capture needs, the
socket tracepoints `sock_send_length`/`sock_recv_length` (`floor-sock`, what Periscope's default
mechanism attaches to), raw syscall tracepoints (`floor-raw`) and the per-syscall tracepoints
(`floor-tracepoint`) of its fallbacks, measured in the same rounds: what seeing the sends and
receives at all costs on this machine, whatever a tracer then does.

Prints throughput and p99 ratios against the uninstrumented run, the eBPF cost per request
(bpf_stats: run time of the HTTP programs divided by requests served) and Periscope's memory:
peak RSS (VmHWM), RSS under load (VmRSS at the end of each wrk run), and the kernel memory of its
eBPF maps (`memlock`, outside the RSS). Configurations are interleaved over rounds so drift hits
all alike; figures are median (min - max) over the rounds, targets are judged on the median.
Targets (issue 18): throughput >= 0.95 of uninstrumented, p99 <= 1.10x, eBPF <= 600 ns per request
and <= 2.5x the floor, daemon CPU <= 400 ns per request with spans off (printed with spans on),
RSS < 30 MB. Beyla's published figures: ~500 ns per request, ~75 MB.
Writes bench/out/http.md and bench/out/http.json (bench/report.py).

With `--protocol h2` (issue 19's benchmark): the same configurations against nginx speaking
HTTP/2 in cleartext (h2c, prior knowledge), driven by `h2load -c N -m 16` (16 streams in flight
per connection); p99 from h2load's per-request log. Writes bench/out/http2.md and http2.json.
"""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

from common import Sink, bpf_stats_on, bpf_stats_restore, free_port, map_memory_kib, spread
from floor import Floor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target/release/periscope")
# Fixed ports may be taken by other daemons on a shared machine.
PROM = free_port()
HTTP_PORT = free_port()


PROTOCOL = "h1"


def nginx(tmp):
    root = os.path.join(tmp, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<html><body>" + "x" * 500 + "</body></html>\n")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid;
error_log {tmp}/error.log; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {tmp};
  proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{HTTP_PORT}{" http2" if PROTOCOL == "h2" else ""}; root {root}; }} }}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    sys.exit("bench: nginx did not start")


def busy_ns():
    """CPU time the whole machine spent not idle so far (every CPU, /proc/stat), in ns."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) * 1e9 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid):
    """User + system CPU time of process `pid` so far, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(seconds, connections):
    """The load generator of the protocol under test: see wrk and h2load."""
    return h2load(seconds, connections) if PROTOCOL == "h2" else wrk(seconds, connections)


def h2load(seconds, connections):
    """As wrk, over HTTP/2: h2load with 16 streams in flight per connection; the p99 from its
    per-request log (h2load prints only mean and deviation)."""
    busy0 = busy_ns()
    with tempfile.NamedTemporaryFile("r", suffix=".tsv") as log:
        out = subprocess.run(["h2load", f"-c{connections}", "-m16", f"-D{seconds}", f"--log-file={log.name}",
                              f"http://127.0.0.1:{HTTP_PORT}/index.html"],
                             capture_output=True, text=True, check=True).stdout
        micros = sorted(int(line.split("\t")[2]) for line in log if line.count("\t") >= 2)
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    total = int(re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out).group(1))
    p99 = micros[int(0.99 * (len(micros) - 1))] * 1e-6 if micros else float("nan")
    return rps, p99, total, (busy_ns() - busy0) / total


def wrk(seconds, connections):
    """Requests/s, p99 (s), requests completed, and the machine's busy CPU ns per request: with
    CPUs to spare the loop is latency-bound, so throughput alone hides what tracing costs."""
    busy0 = busy_ns()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{HTTP_PORT}/index.html"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    return rps, p99, total, (busy_ns() - busy0) / total


# The syscall family (on by default, every process) runs on every syscall of the node: off here so
# that these numbers are the HTTP family's cost.
NO_SYSCALL = "  syscall:\n    enabled: false\n"

CONFIGS = {
    "periscope-all": "probes:\n  http:\n    enabled: true\n" + NO_SYSCALL,
    "periscope-nginx": "probes:\n  http:\n    select:\n      - process_name: nginx\n" + NO_SYSCALL,
    "periscope-raw": "probes:\n  http:\n    mechanism: raw_tracepoint\n" + NO_SYSCALL,
    "periscope-tracepoint": "probes:\n  http:\n    mechanism: tracepoint\n" + NO_SYSCALL,
    "periscope-no-http": "probes:\n  http:\n    enabled: false\n" + NO_SYSCALL,
    # Spans to a real OTLP receiver (otlp-sink): every request sampled, or one in ten.
    "periscope-spans-100": "probes:\n  http:\n    sampler: always_on\n" + NO_SYSCALL,
    "periscope-spans-10": "probes:\n  http:\n    sampler: traceidratio\n    sampler_arg: 0.1\n" + NO_SYSCALL,
}


PERISCOPE_KINDS = ["periscope-all", "periscope-spans-100", "periscope-spans-10", "periscope-nginx", "periscope-raw",
                   "periscope-tracepoint", "periscope-no-http"]
TRACED_KINDS = PERISCOPE_KINDS[:-1]  # HTTP capture on
FLOOR_HOOKS = {
    "floor-raw": "raw sys_enter/sys_exit, Periscope's raw_tracepoint mechanism",
    "floor-tracepoint": "the per-syscall tracepoints of Periscope's tracepoint mechanism",
    "floor-sock": "raw sock_send_length/sock_recv_length, Periscope's default (socket_tracepoint)",
}


class Periscope:
    def __init__(self, kind):
        self.kind, self.proc, self.peak_rss_kb, self.cpu_s = kind, None, None, None
        self.map_kib = None

    def cpu(self):
        return process_cpu_s(self.proc.pid)

    def __enter__(self):
        cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        cfg.write(CONFIGS[self.kind])
        cfg.close()
        env = dict(os.environ, PERISCOPE_PROMETHEUS_LISTEN=f"127.0.0.1:{PROM}", PERISCOPE_LOG="warn")
        self.sink = None
        if self.kind.startswith("periscope-spans"):
            self.sink = Sink()
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{self.sink.port}",
                       OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
        self.proc = subprocess.Popen([PERISCOPE, "run", "--config", cfg.name], env=env)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PROM}/healthz", timeout=1)
                if self.proc.poll() is None:
                    return self
            except OSError:
                time.sleep(0.05)
        sys.exit("bench: periscope did not start")

    def metrics(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{PROM}/metrics", timeout=10).read().decode()

    def http_ebpf(self):
        """Run time (ns) and runs of the HTTP programs so far."""
        text = self.metrics()
        ns = sum(float(v) * 1e9 for v in re.findall(
            r'periscope_bpf_program_run_time_seconds_total\{program="http_\w+"\} (\S+)', text))
        runs = sum(float(v) for v in re.findall(
            r'periscope_bpf_program_run_count_total\{program="http_\w+"\} (\S+)', text))
        return ns, runs

    def served(self):
        text = self.metrics()
        return sum(float(v) for v in re.findall(
            rf'http_server_request_duration_seconds_count\{{[^}}]*server_port="{HTTP_PORT}"[^}}]*\}} (\S+)', text))

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def __exit__(self, *exc):
        self.cpu_s = self.cpu()
        self.map_kib = map_memory_kib(self.proc.pid)
        with open(f"/proc/{self.proc.pid}/status") as f:
            self.peak_rss_kb = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        if self.sink:
            self.sink.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--connections", type=int, help="wrk connections (default 16), or h2load's (default 4)")
    ap.add_argument("--protocol", choices=["h1", "h2"], default="h1",
                    help="h1: nginx + wrk (default); h2: nginx h2c + h2load, 16 streams per connection")
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s (development only)")
    ap.add_argument("--kinds", help="comma-separated configurations to run (besides none), e.g. "
                    "floor-raw,floor-sock; the report then covers only those")
    args = ap.parse_args()
    global PROTOCOL
    PROTOCOL = args.protocol
    if args.connections is None:
        args.connections = 4 if PROTOCOL == "h2" else 16
    if args.quick:
        args.rounds, args.seconds = 1, 3
    if os.geteuid() != 0:
        sys.exit("bench: run as root (eBPF)")
    tmp = tempfile.mkdtemp()
    server = nginx(tmp)
    kinds = ["none", "floor-raw", "floor-tracepoint", "floor-sock", *PERISCOPE_KINDS]
    if args.kinds:
        kinds = ["none"] + [k for k in args.kinds.split(",") if k in kinds and k != "none"]
    rps = {k: [] for k in kinds}
    p99 = {k: [] for k in kinds}
    ns_per_req = {k: [] for k in kinds}
    cpu_per_req = {k: [] for k in kinds}
    runs_per_req = {k: [] for k in kinds}
    busy_per_req = {k: [] for k in kinds}
    # The instrumented application's own cost: what its users measure first.
    nginx_per_req = {k: [] for k in kinds}
    rss, steady_rss, maps_kib, exact = [], [], [], {k: [] for k in kinds}
    stats_before = bpf_stats_on()
    try:
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                print(f"[bench http] round {r + 1}/{args.rounds}: {kind}", file=sys.stderr, flush=True)
                nginx0 = process_cpu_s(server.pid)
                if kind == "none":
                    a, b, total, busy = load(args.seconds, args.connections)
                elif kind.startswith("floor-"):
                    with Floor(kind.removeprefix("floor-")) as floor:
                        before = floor.run_time_ns()
                        a, b, total, busy = load(args.seconds, args.connections)
                        after = floor.run_time_ns()
                        ns_per_req[kind].append((after[0] - before[0]) / total)
                        runs_per_req[kind].append((after[1] - before[1]) / total)
                else:
                    with Periscope(kind) as p:
                        (before, runs0), cpu0 = p.http_ebpf(), p.cpu()
                        a, b, total, busy = load(args.seconds, args.connections)
                        steady_rss.append((kind, p.rss_kb()))
                        time.sleep(1)
                        if kind != "periscope-no-http":
                            after, runs1 = p.http_ebpf()
                            ns_per_req[kind].append((after - before) / total)
                            runs_per_req[kind].append((runs1 - runs0) / total)
                            cpu_per_req[kind].append((p.cpu() - cpu0) * 1e9 / total)
                            exact[kind].append((p.served(), total))
                    rss.append((kind, p.peak_rss_kb))
                    maps_kib.append((kind, p.map_kib))
                rps[kind].append(a)
                p99[kind].append(b)
                busy_per_req[kind].append(busy)
                nginx_per_req[kind].append((process_cpu_s(server.pid) - nginx0) * 1e9 / total)
    finally:
        bpf_stats_restore(stats_before)
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)

    med = {k: (statistics.median(rps[k]), statistics.median(p99[k])) for k in kinds}
    base_rps, base_p99 = med["none"]
    loader = f"h2load -c{args.connections} -m16 (h2c)" if PROTOCOL == "h2" else f"wrk -t1 -c{args.connections}"
    lines = [f"# HTTP capture overhead (nginx + {loader.split()[0]}{', HTTP/2' if PROTOCOL == 'h2' else ''})", "",
             f"{args.rounds} interleaved rounds of {args.seconds}s, {loader}, 550-byte file; median (min - max). "
             f"Machine: {os.cpu_count()} CPUs, kernel {os.uname().release}.", "",
             "Machine CPU per request: busy CPU time of the whole machine (/proc/stat, both CPUs: wrk, nginx, the "
             "kernel, the tracer) over the requests completed; the extra over `none` is what tracing cost each request.", "",
             "nginx CPU per request: the nginx worker's own user and system time (/proc/PID/stat) over the requests "
             "completed: the instrumented application's cost, with the eBPF programs that run in its syscalls.", "",
             "| configuration | requests/s | ratio | p99 | ratio | machine CPU ns per request | extra over none "
             "| nginx CPU ns per request | extra over none |",
             "|---|---|---|---|---|---|---|---|---|"]
    base_busy = statistics.median(busy_per_req["none"])
    base_nginx = statistics.median(nginx_per_req["none"])
    for k in kinds:
        r, p = med[k]
        busy = statistics.median(busy_per_req[k])
        ms = lambda v: f"{v * 1e3:.3f} ms"  # noqa: E731
        lines.append(f"| {k} | {spread(rps[k])} | {r / base_rps:.3f} | {spread(p99[k], ms)} | {p / base_p99:.3f} | "
                     f"{spread(busy_per_req[k])} | {busy - base_busy:+,.0f} | {spread(nginx_per_req[k])} | "
                     f"{statistics.median(nginx_per_req[k]) - base_nginx:+,.0f} |")
    lines += ["", "eBPF ns and program runs per request: `kernel.bpf_stats_enabled` run time of the HTTP programs "
              "(Periscope) or of the floor's empty programs, over the requests wrk completed. RSS under load: VmRSS at "
              "the end of each wrk run; peak RSS: VmHWM at the end of the round (usually the startup peak: loading the "
              "eBPF object, whose memory is returned before serving); eBPF maps: the kernel memory of the maps the "
              "daemon holds (memlock), outside its RSS. MiB.", "",
              "| configuration | eBPF ns per request | program runs per request | daemon CPU ns per request | RSS under load | peak RSS | eBPF maps | counted / completed by the load generator |",
              "|---|---|---|---|---|---|---|---|"]
    floors = [k for k in kinds if k.startswith("floor-")]
    traced = [k for k in TRACED_KINDS if k in kinds]
    for k in floors:
        lines.append(f"| {k} | {spread(ns_per_req[k])} | {statistics.median(runs_per_req[k]):.1f} | | | | | |")
    for k in traced:
        mib = lambda v: f"{v / 1024:.1f}"  # noqa: E731
        of = lambda pairs: [kb for kk, kb in pairs if kk == k]  # noqa: E731
        lines.append(f"| {k} | {spread(ns_per_req[k])} | {statistics.median(runs_per_req[k]):.1f} | "
                     f"{spread(cpu_per_req[k])} | {spread(of(steady_rss), mib)} | {spread(of(rss), mib)} | "
                     f"{spread(of(maps_kib), mib)} | " + ", ".join(f"{int(a)}/{b}" for a, b in exact[k]) + " |")
    lines.append("")
    for k in floors:
        lines += [f"- {k} (empty programs on {FLOOR_HOOKS[k]}): {statistics.median(ns_per_req[k]):,.0f} eBPF ns per "
                  f"request, throughput {med[k][0] / base_rps:.1%} of uninstrumented: no capture on these hooks can cost "
                  f"less on this machine"]
    # Periscope's default mechanism is socket_tracepoint: its floor is the socket one.
    floor_ns = statistics.median(ns_per_req["floor-sock"]) if "floor-sock" in kinds else float("nan")
    floor_rps = med["floor-sock"][0] if "floor-sock" in kinds else float("nan")
    verdict = lambda ok: "meets" if ok else "misses"  # noqa: E731
    for k in traced:
        r, p = med[k]
        ns, cpu = statistics.median(ns_per_req[k]), statistics.median(cpu_per_req[k])
        peak = max(kb for kk, kb in steady_rss if kk == k) / 1024
        spans_on = k.startswith("periscope-spans")
        lines += [f"- {k}: throughput {r / base_rps:.3f} of uninstrumented, {r / floor_rps:.3f} of the floor's "
                  f"({verdict(r >= 0.95 * base_rps)} target >= 0.95); "
                  f"p99 {p / base_p99:.2f}x ({verdict(p <= 1.10 * base_p99)} target <= 1.10x); "
                  f"eBPF {ns:,.0f} ns per request, {ns / floor_ns:.1f}x the floor, {ns - floor_ns:,.0f} ns above it "
                  f"({verdict(ns <= 600 and ns <= 2.5 * floor_ns)} target <= 600 ns and <= 2.5x the floor; "
                  f"Beyla publishes ~500 ns); daemon CPU {cpu:,.0f} ns per request "
                  + ("(spans on: for information); " if spans_on else f"({verdict(cpu <= 400)} target <= 400 ns); ")
                  + f"RSS under load {peak:.1f} MiB ({verdict(peak * 1.048576 < 30)} target < 30 MB; Beyla publishes ~75 MB)"]
    lines.append("")
    report = "\n".join(lines) + "\n"
    data = {
        "protocol": PROTOCOL, "rounds": args.rounds, "quick": args.quick, "seconds": args.seconds, "connections": args.connections,
        "cpus": os.cpu_count(), "kernel": os.uname().release,
        "rps": rps, "p99_s": p99, "ebpf_ns_per_request": ns_per_req, "cpu_ns_per_request": cpu_per_req,
        "program_runs_per_request": runs_per_req, "machine_cpu_ns_per_request": busy_per_req,
        "nginx_cpu_ns_per_request": nginx_per_req,
        "peak_rss_kib": {k: [kb for kk, kb in rss if kk == k] for k in PERISCOPE_KINDS if k in kinds},
        "rss_under_load_kib": {k: [kb for kk, kb in steady_rss if kk == k] for k in PERISCOPE_KINDS if k in kinds},
        "map_memory_kib": {k: [kb for kk, kb in maps_kib if kk == k] for k in PERISCOPE_KINDS if k in kinds},
        "counted_vs_completed": {k: exact[k] for k in traced},
    }
    out = os.path.join(ROOT, "bench/out")
    os.makedirs(out, exist_ok=True)
    name = "http2" if PROTOCOL == "h2" else "http"
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(report)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1)
    print(report)


if __name__ == "__main__":
    main()
