#!/usr/bin/env python3
"""Where the HTTP capture's eBPF time goes: a cost breakdown of the hot path.

nginx serves a small file to wrk (fixed keep-alive connections) while Periscope captures HTTP
of every process on its default mechanism (`socket_tracepoint`), the syscall family off. The
hot programs, `http_sock_send` and `http_sock_recv`, take these steps on every transfer:

  1 registers  the task, its user registers, the syscall's number and arguments
  2 socket     the socket's identity (a kernel read) and the (process, fd) -> socket lookup
  3 watched    the watched-connection lookup and the buffer arguments (iovecs for vectors)
  4 header     the clock, the per-CPU record and its header
  5 copy       up to 512 leading bytes copied from user memory
  6 tail       TLS recognition and the copy of the message's last bytes
  - ring       the record written to the ring buffer (and the wakeup bookkeeping)

Each configuration stops the programs after one step (`PERISCOPE_BENCH_HTTP_STAGE`, a load-time
constant: the verifier removes the branches it makes dead, so the product runs none of it), so
a step's cost is the difference in ns per run between two neighbouring configurations. One more
configuration runs every step but sends no record of the transfers that carry requests (a
server's reads, a client's writes): the most one record per exchange could save in the kernel.
Beside them, in the same rounds: no tracer, and the floor (bench/floor.py: empty programs on the same two
socket tracepoints). All configurations are interleaved over rounds so drift hits all alike.

Prints, per configuration: requests/s against untraced, runs per request and ns per run of each
HTTP program (bpf_stats), eBPF ns per request, daemon CPU ns per request; then the step table.
Writes bench/out/http_cost.md and .json. Run as root, after `cargo build --release`, on a quiet
machine (nothing else running: the per-run figures are tens of ns apart).
"""
import argparse, os, statistics, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Daemon, bpf_stats_on, bpf_stats_restore, spread, write  # noqa: E402
from floor import Floor  # noqa: E402
import http_overhead  # noqa: E402

STEPS = ["registers", "socket", "watched", "header", "copy", "tail"]
CONFIG = "probes:\n  http:\n    mechanism: socket_tracepoint\n  syscall:\n    enabled: false\n"
HOT = ("http_sock_send", "http_sock_recv")
# Every step runs, but the transfers carrying requests (a server's reads, a client's writes) send
# no record: the most one record per exchange (the request's bytes held in the kernel until its
# response) could save in the kernel, before pricing where it would hold them.
NO_REQUEST_RECORD = "no-request-record"


def programs(scrape):
    """{program: (run ns, runs)} of the HTTP programs so far."""
    out = {}
    for name, labels, value in scrape.samples:
        program = labels.get("program", "")
        if not program.startswith("http_"):
            continue
        ns, runs = out.get(program, (0.0, 0.0))
        if name == "periscope_bpf_program_run_time_seconds_total":
            out[program] = (ns + value * 1e9, runs)
        elif name == "periscope_bpf_program_run_count_total":
            out[program] = (ns, runs + value)
    return out


def measure(kind, seconds, connections):
    """One wrk run under configuration `kind`: requests/s, requests, {program: (ns, runs)} over
    the run, daemon CPU ns per request."""
    if kind == "none":
        rps, _, total, _ = http_overhead.wrk(seconds, connections)
        return rps, total, {}, None
    if kind == "floor":
        with Floor("sock") as floor:
            ns0, runs0 = floor.run_time_ns()
            rps, _, total, _ = http_overhead.wrk(seconds, connections)
            ns1, runs1 = floor.run_time_ns()
        return rps, total, {"floor (empty)": (ns1 - ns0, runs1 - runs0)}, None
    stage = {"full": None, NO_REQUEST_RECORD: 7}.get(kind, STEPS.index(kind) + 1 if kind in STEPS else None)
    env = {} if stage is None else {"PERISCOPE_BENCH_HTTP_STAGE": str(stage)}
    daemon = Daemon(CONFIG, env=env)
    try:
        before, cpu0 = programs(daemon.scrape()), daemon.cpu_s()
        rps, _, total, _ = http_overhead.wrk(seconds, connections)
        after, cpu1 = programs(daemon.scrape()), daemon.cpu_s()
    finally:
        daemon.stop()
    delta = {p: (ns - before.get(p, (0, 0))[0], runs - before.get(p, (0, 0))[1])
             for p, (ns, runs) in after.items()}
    return rps, total, delta, (cpu1 - cpu0) * 1e9 / total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s (development only)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    if os.geteuid() != 0:
        sys.exit("bench: run as root (eBPF)")
    kinds = ["none", "floor", *STEPS, "full", NO_REQUEST_RECORD]
    rps = {k: [] for k in kinds}
    per_request = {k: [] for k in kinds}     # eBPF ns per request, hot programs
    per_run = {k: [] for k in kinds}         # ns per run, hot programs
    daemon_cpu = {k: [] for k in kinds}
    table = {k: {} for k in kinds}           # program -> [(ns per run, runs per request)]
    tmp = tempfile.mkdtemp()
    server = http_overhead.nginx(tmp)
    stats_before = bpf_stats_on()
    try:
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                print(f"[bench http_cost] round {r + 1}/{args.rounds}: {kind}", file=sys.stderr, flush=True)
                a, total, progs, cpu = measure(kind, args.seconds, args.connections)
                rps[kind].append(a)
                if cpu is not None:
                    daemon_cpu[kind].append(cpu)
                hot = [(ns, runs) for p, (ns, runs) in progs.items() if p in HOT or p.startswith("floor")]
                if hot:
                    ns, runs = sum(h[0] for h in hot), sum(h[1] for h in hot)
                    per_request[kind].append(ns / total)
                    per_run[kind].append(ns / runs if runs else 0.0)
                for p, (ns, runs) in progs.items():
                    if runs:
                        table[kind].setdefault(p, []).append((ns / runs, runs / total))
    finally:
        bpf_stats_restore(stats_before)
        server.send_signal(http_overhead.signal.SIGQUIT)
        server.wait(timeout=10)

    base = statistics.median(rps["none"])
    med = lambda values: statistics.median(values) if values else float("nan")  # noqa: E731
    lines = ["# HTTP capture: where the eBPF time goes (nginx + wrk)", "",
             f"{args.rounds} interleaved rounds of {args.seconds} s, wrk -t1 -c{args.connections}, 550-byte file, "
             f"every process captured, mechanism socket_tracepoint; median (min - max). Machine: "
             f"{os.cpu_count()} CPUs, kernel {os.uname().release}. `stop after X`: the hot programs stop after step X.",
             "", "| configuration | requests/s | ratio | hot programs: ns per run | eBPF ns per request | daemon CPU ns per request |",
             "|---|---|---|---|---|---|"]
    for k in kinds:
        label = {"none": "no tracer", "floor": "floor: empty programs", "full": "Periscope (whole path)",
                 NO_REQUEST_RECORD: "whole path, no record of requests"}.get(k, f"stop after {k}")
        lines.append(f"| {label} | {spread(rps[k])} | {med(rps[k]) / base:.3f} | {spread(per_run[k])} | "
                     f"{spread(per_request[k])} | {spread(daemon_cpu[k])} |")
    lines += ["", "## Each step's cost", "",
              "ns per run of the hot programs above the previous configuration's (medians; the first step is "
              "measured against the floor's empty programs).", "",
              "| step | ns per run | share of the whole path above the floor |", "|---|---|---|"]
    chain = ["floor", *STEPS, "full"]
    floor_ns, full_ns = med(per_run["floor"]), med(per_run["full"])
    steps = {}
    for prev, k in zip(chain, chain[1:]):
        steps["ring" if k == "full" else k] = med(per_run[k]) - med(per_run[prev])
    for step, ns in steps.items():
        lines.append(f"| {step} | {ns:+,.0f} | {ns / (full_ns - floor_ns):.0%} |")
    saved = med(per_request["full"]) - med(per_request[NO_REQUEST_RECORD])
    lines += ["", f"One record per exchange, at most: the whole path without the requests' records costs {saved:,.0f} eBPF "
              f"ns per request less ({saved / med(per_request['full']):.0%}), before the cost of holding each request's "
              f"bytes in the kernel until its response (not priced here). Its daemon CPU is not comparable (it "
              f"matches nothing)."]
    lines += ["", "## Every HTTP program, whole path", "", "| program | runs per request | ns per run |", "|---|---|---|"]
    for p, values in sorted(table["full"].items()):
        lines.append(f"| {p} | {med([v[1] for v in values]):.2f} | {med([v[0] for v in values]):,.0f} |")
    lines.append("")
    data = {"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections, "quick": args.quick,
            "cpus": os.cpu_count(), "kernel": os.uname().release, "rps": rps,
            "hot_ns_per_run": per_run, "ebpf_ns_per_request": per_request, "daemon_cpu_ns_per_request": daemon_cpu,
            "steps_ns_per_run": steps, "no_request_record_saves_ns_per_request": saved,
            "programs": {k: {p: v for p, v in t.items()} for k, t in table.items()}}
    write("http_cost", "\n".join(lines) + "\n", data)


if __name__ == "__main__":
    main()
