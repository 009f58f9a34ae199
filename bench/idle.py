#!/usr/bin/env python3
"""What the daemon costs when the node is quiet, beside what it costs when it is not.

The release daemon on its embedded default configuration (every default family on: block, sched,
http with HTTPS, tcp; Prometheus on a private port), started and left to settle, then:
  idle:        nothing scrapes it and this script does nothing (the ROUNDS windows alternate
               with the other phases so that drift hits all alike);
  idle+scrape: a Prometheus-like scrape of /metrics every 15 s, nothing else;
  busy:        nginx under wrk (1 thread, 16 connections), the HTTP family's work.
Per phase: the daemon's CPU time (`usage_usec` of a cgroup v2 the daemon is moved into: every
thread, exited ones too, in microseconds; /proc/PID/stat clock ticks as a cross-check), as ms
per minute and as a share of one core, the context switches of its threads per second (each is a
wakeup), and, busy, requests/s and daemon CPU per request. Peak RSS (VmHWM) at the end.
Median (min - max) over the rounds. Other work on the machine wakes the daemon too (every
process exit is an HTTP record): run it on a quiet machine.
Writes bench/out/idle.md and bench/out/idle.json (bench/report.py reads the JSON).
"""
import argparse, os, re, statistics, sys, tempfile, time, urllib.request

from common import Daemon, write
from http_overhead import nginx, wrk

TARGET_SHARE = 0.001  # issue 23: at most 0.1% of a core, idle, every default family on


class CpuAccount:
    """The daemon in a cgroup v2 of its own: `cpu.stat` `usage_usec` counts the CPU time of all
    its threads, those that exited too (the blocking pool's come and go), in microseconds."""

    def __init__(self, pid):
        root = next(p for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
                    if os.path.exists(os.path.join(p, "cgroup.procs")))
        self.pid, self.dir = pid, os.path.join(root, f"periscope-idle-bench-{os.getpid()}")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def cpu_ns(self):
        with open(os.path.join(self.dir, "cpu.stat")) as f:
            return int(re.search(r"usage_usec (\d+)", f.read()).group(1)) * 1000

    def switches(self):
        """Context switches of the live threads (each is a wakeup)."""
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                text = open(f"/proc/{self.pid}/task/{tid}/status").read()
            except OSError:
                continue
            total += sum(int(v) for v in re.findall(r"ctxt_switches:\s+(\d+)", text))
        return total

    def remove(self):
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def ticks_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scraping(port, seconds, every=15.0):
    def run():
        end = time.monotonic() + seconds - 0.5
        while True:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            if time.monotonic() + every > end:
                return
            time.sleep(every)
    return run


def phase(daemon, account, name, seconds, connections):
    ticks0, ns0, sw0, t0 = ticks_s(daemon.proc.pid), account.cpu_ns(), account.switches(), time.monotonic()
    result = None
    if name == "idle+scrape":
        scraping(daemon.port, seconds)()
    elif name == "busy":
        result = wrk(seconds, connections)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    ns = account.cpu_ns() - ns0
    out = {"seconds": elapsed, "cpu_ns": ns, "cpu_ms_per_minute": ns / 1e6 * 60 / elapsed,
           "core_share": ns / 1e9 / elapsed, "tick_cpu_s": ticks_s(daemon.proc.pid) - ticks0,
           "wakeups_per_s": (account.switches() - sw0) / elapsed}
    if result:
        rps, _, total, _ = result
        out.update(requests_per_s=rps, requests=total, cpu_ns_per_request=ns / total)
    return out


def spread(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return {"min": values[0], "median": statistics.median(values), "max": values[-1]}


def fmt(s, f):
    return "" if s is None else f"{f(s['median'])} ({f(s['min'])} - {f(s['max'])})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 15 s windows (checks the script)")
    ap.add_argument("--seconds", type=int, default=60, help="window per phase and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 15, 1
    tmp = tempfile.mkdtemp(prefix="periscope-idle-")
    server = nginx(tmp)
    daemon = Daemon("{}\n", env={"PERISCOPE_LOG": "warn"})  # the embedded defaults
    account = CpuAccount(daemon.proc.pid)
    time.sleep(10)  # startup (attach, first TLS scan) is not idle cost
    phases = {"idle": [], "idle+scrape": [], "busy": []}
    try:
        for r in range(args.rounds):
            for name in phases:
                print(f"[bench idle] round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                phases[name].append(phase(daemon, account, name, args.seconds, args.connections))
                time.sleep(5)  # the busy phase's last records drained, the reader parked again
        rss = {"VmHWM_kib": daemon.status_kib("VmHWM"), "VmRSS_kib": daemon.status_kib("VmRSS")}
    finally:
        daemon.stop()
        account.remove()
        server.terminate()
        server.wait()
    summary = {name: {key: spread(p.get(key) for p in runs)
                      for key in ("cpu_ms_per_minute", "core_share", "wakeups_per_s", "tick_cpu_s",
                                  "requests_per_s", "cpu_ns_per_request")}
               for name, runs in phases.items()}
    idle_share = summary["idle"]["core_share"]["median"]
    lines = ["# Idle cost (default config, every default family on)", "",
             f"{args.rounds} round(s) of {args.seconds} s per phase; median (min - max). Daemon CPU from "
             f"its cgroup's `cpu.stat`. Machine: {os.cpu_count()} CPUs, kernel "
             f"{os.uname().release}. Target: idle at most {TARGET_SHARE:.1%} of a core "
             f"({'met' if idle_share <= TARGET_SHARE else 'missed'}: {idle_share:.3%}).", "",
             "| phase | daemon CPU, ms per minute | share of a core | wakeups/s | requests/s | daemon CPU ns/request |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {fmt(s['cpu_ms_per_minute'], lambda v: f'{v:.1f}')} | "
                     f"{fmt(s['core_share'], lambda v: f'{v:.3%}')} | {fmt(s['wakeups_per_s'], lambda v: f'{v:.1f}')} | "
                     f"{fmt(s['requests_per_s'], lambda v: f'{v:,.0f}')} | {fmt(s['cpu_ns_per_request'], lambda v: f'{v:,.0f}')} |")
    lines += ["", f"Peak RSS (VmHWM) {rss['VmHWM_kib'] / 1024:.1f} MiB, RSS at the end {rss['VmRSS_kib'] / 1024:.1f} MiB."]
    write("idle", "\n".join(lines) + "\n",
          {"quick": args.quick, "seconds": args.seconds, "rounds": args.rounds, "target_share": TARGET_SHARE,
           "cpus": os.cpu_count(), "kernel": os.uname().release, "phases": phases, "summary": summary,
           "rss": rss})


if __name__ == "__main__":
    main()
