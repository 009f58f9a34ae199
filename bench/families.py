#!/usr/bin/env python3
"""Overhead of the TCP, syscall and uprobe families, each on a workload that stresses it, against
no tracing and against the equivalent reference tool, measured in the same run.

  tcp:     a Python client making short loopback connections to a Python server (connect,
           4 bytes each way, close); score: connections/s. Reference: libbpf-tools tcplife.
  syscall: dd copying /dev/zero to /dev/null 512 bytes at a time (a read and a write per block);
           score: syscalls/s. Periscope measures every process (no select), like the
           reference, libbpf-tools `syscount -L`.
  uprobe:  tests' function-target calling an empty-bodied function (sleep 0) in a loop; score:
           calls/s. Reference: bpftrace uprobe + uretprobe building a latency histogram.
Each configuration runs ROUNDS times, interleaved; medians. Also the in-kernel cost per
operation: run time of the tracer's own eBPF programs (kernel.bpf_stats_enabled) / operations,
and its user-space CPU (utime + stime) per operation.
Writes bench/out/families.md and bench/out/families.json (bench/report.py).
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time, urllib.request

from common import bpf_stats_on, bpf_stats_restore, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target/release/periscope")
TARGET = os.path.join(ROOT, "target/release/function-target")
PORT = free_port()  # fixed ports may be taken by other daemons on a shared machine

TCP_CLIENT = r"""
import socket, sys, threading, time
n = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1024); port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept(); c.recv(4); c.sendall(b"pong"); c.close()
threading.Thread(target=serve, daemon=True).start()
t = time.monotonic()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"ping"); s.recv(4); s.close()
print(n / (time.monotonic() - t))
"""


def prog_stats():
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"]: p.get("run_time_ns", 0) for p in json.loads(out or "[]")}


def periscope_config(family):
    off = {f: "    enabled: false\n" for f in ("block", "sched", "http", "tcp", "syscall")}
    body = "probes:\n" + "".join(f"  {f}:\n{v}" for f, v in off.items() if f != family)
    if family == "syscall":
        body += "  syscall:\n    enabled: true\n"
    if family == "uprobe":
        body += f"  uprobe:\n    functions:\n      - path: {TARGET}\n        symbol: process_order\n"
    return body


REFERENCE = {
    "tcp": (["stdbuf", "-oL", "/usr/sbin/tcplife"], "PID"),
    "syscall": (["stdbuf", "-oL", "/usr/sbin/syscount", "-L"], "Tracing"),
    "uprobe": (["bpftrace", "-e",
                f"uprobe:{TARGET}:process_order {{ @s[tid] = nsecs; }} "
                f"uretprobe:{TARGET}:process_order /@s[tid]/ "
                "{ @lat = hist(nsecs - @s[tid]); delete(@s[tid]); }"], "Attaching"),
}


class Tracer:
    def __init__(self, kind, family):
        self.kind, self.family, self.proc, self.ids = kind, family, None, set()

    def __enter__(self):
        before = set(prog_stats())
        if self.kind == "periscope":
            cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            cfg.write(periscope_config(self.family))
            cfg.close()
            env = dict(os.environ, PERISCOPE_PROMETHEUS_LISTEN=f"127.0.0.1:{PORT}", PERISCOPE_LOG="warn")
            self.proc = subprocess.Popen([PERISCOPE, "run", "--config", cfg.name], env=env)
            for _ in range(400):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            if self.proc.poll() is not None:
                sys.exit(f"bench: periscope exited with {self.proc.returncode}")
        elif self.kind == "reference":
            command, ready = REFERENCE[self.family]
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            while ready not in (self.proc.stdout.readline() or ready):
                pass
            # Keep reading its output so a per-event tool never blocks on a full pipe.
            import threading
            threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
            # bpftrace says "Attaching" before its programs are loaded: let them appear.
            time.sleep(1.0)
        self.ids = set(prog_stats()) - before
        return self

    def cpu_s(self):
        if not self.proc:
            return 0.0
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def ebpf_ns(self):
        stats = prog_stats()
        return sum(stats.get(i, 0) for i in self.ids)

    def __exit__(self, *exc):
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_tcp(n):
    out = subprocess.run([sys.executable, "-c", TCP_CLIENT, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout), n


def run_syscall(blocks):
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=512", f"count={blocks}"],
                   capture_output=True, check=True)
    return 2 * blocks / (time.monotonic() - t), 2 * blocks


def run_uprobe(calls):
    p = subprocess.Popen([TARGET, str(calls), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t = time.monotonic()
    p.stdin.write("go\n")
    p.stdin.flush()
    for line in p.stdout:
        if line.startswith("done"):
            break
    rate = calls / (time.monotonic() - t)
    p.stdin.close()
    p.wait()
    return rate, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tcp-connections", type=int, default=3000)
    ap.add_argument("--syscall-blocks", type=int, default=500000)
    ap.add_argument("--uprobe-calls", type=int, default=50000)
    ap.add_argument("--quick", action="store_true", help="1 round, small workloads (development only)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.tcp_connections, args.syscall_blocks, args.uprobe_calls = 1, 500, 100000, 10000
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    workloads = {
        "tcp": (lambda: run_tcp(args.tcp_connections), "connections/s", "tcplife"),
        "syscall": (lambda: run_syscall(args.syscall_blocks), "syscalls/s", "syscount -L"),
        "uprobe": (lambda: run_uprobe(args.uprobe_calls), "calls/s", "bpftrace uprobe+uretprobe"),
    }
    kinds = ["none", "periscope", "reference"]
    rates = {(w, k): [] for w in workloads for k in kinds}
    cost = {(w, k): [] for w in workloads for k in kinds[1:]}
    cpu = {(w, k): [] for w in workloads for k in kinds[1:]}
    stats_before = bpf_stats_on()
    try:
        for r in range(args.rounds):
            for family, (run, _, _) in workloads.items():
                for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                    print(f"[bench] round {r + 1}/{args.rounds}: {family} with {kind}", file=sys.stderr, flush=True)
                    with Tracer(kind, family) as t:
                        before, cpu0 = t.ebpf_ns(), t.cpu_s()
                        rate, ops = run()
                        rates[(family, kind)].append(rate)
                        if kind != "none":
                            cost[(family, kind)].append((t.ebpf_ns() - before) / ops)
                            cpu[(family, kind)].append((t.cpu_s() - cpu0) * 1e9 / ops)
    finally:
        bpf_stats_restore(stats_before)

    med = lambda xs: statistics.median(xs) if xs else float("nan")
    lines = ["# Periscope family overhead: TCP, syscall, uprobe", "",
             f"{args.rounds} interleaved rounds; medians. Machine: {os.cpu_count()} CPUs, kernel {os.uname().release}.", "",
             "| workload | no tracer | Periscope | reference | Periscope / none | reference / none | Periscope / reference | eBPF ns/op Periscope | eBPF ns/op reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for family, (_, unit, ref) in workloads.items():
        n, p, rf = (med(rates[(family, k)]) for k in kinds)
        cp, cr = med(cost[(family, "periscope")]), med(cost[(family, "reference")])
        lines.append(f"| {family} ({unit}; reference: {ref}) | {n:,.0f} | {p:,.0f} | {rf:,.0f} | "
                     f"{p / n:.3f} | {rf / n:.3f} | {p / rf:.3f} | {cp:,.0f} | {cr:,.0f} |")
    lines += ["", "User-space CPU of the tracer per operation (utime + stime; clock-tick resolution):", "",
              "| workload | Periscope CPU ns/op | reference CPU ns/op |", "|---|---|---|"]
    for family in workloads:
        lines.append(f"| {family} | {med(cpu[(family, 'periscope')]):,.1f} | {med(cpu[(family, 'reference')]):,.1f} |")
    report = "\n".join(lines) + "\n"
    data = {
        "rounds": args.rounds, "quick": args.quick, "cpus": os.cpu_count(), "kernel": os.uname().release,
        "workloads": {f: {"unit": unit, "reference": ref,
                          "rates": {k: rates[(f, k)] for k in kinds},
                          "ebpf_ns_per_op": {k: cost[(f, k)] for k in kinds[1:]},
                          "cpu_ns_per_op": {k: cpu[(f, k)] for k in kinds[1:]}}
                      for f, (_, unit, ref) in workloads.items()},
    }
    out = os.path.join(ROOT, "bench/out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "families.md"), "w") as f:
        f.write(report)
    with open(os.path.join(out, "families.json"), "w") as f:
        json.dump(data, f, indent=1)
    print(report)


if __name__ == "__main__":
    main()
