#!/usr/bin/env python3
"""Export throughput into a real OTLP receiver: tests' otlp-sink (tonic MetricsService and
TraceService from the official opentelemetry-proto definitions, decoding every request and
counting spans, data points and bytes) receives Periscope's OTLP/gRPC export.

Periscope runs its default families (without syscall) with OTEL_METRIC_EXPORT_INTERVAL=1000 and
HTTP capture selecting the benchmark's nginx only (by name and port), so that one SERVER span is made per request served:
  idle:   no HTTP load: the metrics export alone.
  loaded: nginx serving a small file under wrk (as bench/http_overhead.py): spans and metrics.
  idle-100ms: a new daemon exporting every 100 ms, no HTTP load: the export path's own rate.
Per phase: spans/s and data points/s the receiver decoded, bytes/s, the spans Periscope reports
exported and dropped (periscope_export_spans_total), the daemon's CPU (utime + stime) and RSS.
Loaded phases run ROUNDS times; medians.
Writes bench/out/export.md and bench/out/export.json (bench/report.py).
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

from common import Daemon, Sink, write
import http_overhead


def fnum(x):
    return "" if x != x else f"{x:,.1f}"

# nginx on the benchmark's own port only: other nginx servers on the machine make no spans here.
CONFIG = ("probes:\n  syscall:\n    enabled: false\n  http:\n    enabled: true\n    select:\n"
          f"      - process_name: nginx\n        port: {http_overhead.HTTP_PORT}\n")


def phase(daemon, sink, seconds, load, connections):
    time.sleep(1.5)  # let a first export of the new state land
    s0, c0, m0 = sink.stats(), daemon.cpu_s(), daemon.scrape()
    t0 = time.monotonic()
    served = None
    if load:
        rps, p99, served, _ = http_overhead.wrk(seconds, connections)
    else:
        time.sleep(seconds)
    wall = time.monotonic() - t0
    time.sleep(2.0)  # the spans of the last requests and one more metrics export
    s1, c1, m1 = sink.stats(), daemon.cpu_s(), daemon.scrape()
    span = "periscope_export_spans_total"
    d = lambda k: s1[k] - s0[k]
    window = s1["t"] - s0["t"]
    return {
        "seconds": wall, "window_s": window, "requests_served": served,
        "spans_per_s": d("spans") / wall, "spans": d("spans"),
        "data_points_per_s": d("data_points") / window, "data_points": d("data_points"),
        "metric_requests": d("metric_requests"), "trace_requests": d("trace_requests"),
        "metric_bytes_per_s": d("metric_bytes") / window, "trace_bytes_per_s": d("trace_bytes") / wall,
        "bytes_per_span": d("trace_bytes") / d("spans") if d("spans") else None,
        "bytes_per_data_point": d("metric_bytes") / d("data_points") if d("data_points") else None,
        "spans_exported": m1.total(span, outcome="exported") - m0.total(span, outcome="exported"),
        "spans_dropped": sum(m1.total(span, outcome=o) - m0.total(span, outcome=o)
                             for o in ("dropped_queue_full", "dropped_export_failed")),
        "daemon_cpu_share": (c1 - c0) / window,
        "cpu_us_per_data_point": (c1 - c0) * 1e6 / d("data_points") if d("data_points") and not load else None,
        "rss_kib": daemon.status_kib("VmRSS"), "peak_rss_kib": daemon.status_kib("VmHWM"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s (development only)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    tmp = tempfile.mkdtemp()
    server = http_overhead.nginx(tmp)
    sink = Sink()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    daemon = Daemon(CONFIG, env=env)
    phases = {"idle": [], "loaded": [], "idle-100ms": []}
    try:
        print("[bench export] idle", file=sys.stderr, flush=True)
        phases["idle"].append(phase(daemon, sink, args.seconds, False, args.connections))
        for r in range(args.rounds):
            print(f"[bench export] round {r + 1}/{args.rounds}: loaded", file=sys.stderr, flush=True)
            phases["loaded"].append(phase(daemon, sink, args.seconds, True, args.connections))
        # The export path alone at ten exports a second: data points/s and CPU per data point.
        daemon.stop()
        print("[bench export] idle, metrics every 100 ms", file=sys.stderr, flush=True)
        daemon = Daemon(CONFIG, env=dict(env, OTEL_METRIC_EXPORT_INTERVAL="100"))
        phases["idle-100ms"].append(phase(daemon, sink, args.seconds, False, args.connections))
    finally:
        daemon.stop()
        sink.stop()
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)

    def med(name, key):
        xs = [p[key] for p in phases[name] if p[key] is not None]
        return statistics.median(xs) if xs else float("nan")

    lines = ["# OTLP export throughput (Periscope -> otlp-sink over gRPC)", "",
             f"Metrics every 1 s (OTEL_METRIC_EXPORT_INTERVAL=1000; idle-100ms: 100), cumulative temporality (every export re-sends "
             f"every series); spans from nginx under wrk -t1 -c{args.connections}; {args.rounds} loaded round(s) of "
             f"{args.seconds} s, medians. Machine: {os.cpu_count()} CPUs, kernel {os.uname().release}.", "",
             "| phase | requests/s served | spans/s received | spans exported / dropped (self-metrics) | data points/s | "
             "export bytes/s (metrics + traces) | bytes/span | bytes/data point | daemon CPU | daemon CPU µs/data point (idle) | RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("idle", "loaded", "idle-100ms"):
        served = [p["requests_served"] / p["seconds"] for p in phases[name] if p["requests_served"]]
        exported = sum(p["spans_exported"] for p in phases[name])
        dropped = sum(p["spans_dropped"] for p in phases[name])
        bps = med(name, "metric_bytes_per_s") + med(name, "trace_bytes_per_s")
        bspan = med(name, "bytes_per_span")
        lines.append(f"| {name} | {statistics.median(served) if served else 0:,.0f} | {med(name, 'spans_per_s'):,.0f} | "
                     f"{exported:,.0f} / {dropped:,.0f} | {med(name, 'data_points_per_s'):,.0f} | {bps:,.0f} | "
                     f"{'' if bspan != bspan else f'{bspan:,.0f}'} | {med(name, 'bytes_per_data_point'):,.0f} | "
                     f"{med(name, 'daemon_cpu_share'):.1%} | {fnum(med(name, 'cpu_us_per_data_point'))} | {max(p['rss_kib'] for p in phases[name]) / 1024:.1f} MiB |")
    lines.append("")
    data = {"quick": args.quick, "rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
            "cpus": os.cpu_count(), "kernel": os.uname().release, "phases": phases}
    write("export", "\n".join(lines) + "\n", data)


if __name__ == "__main__":
    main()
