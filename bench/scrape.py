#!/usr/bin/env python3
"""Scrape cost with 10,000 histogram series: one HTTP server (tests/workloads/two_routes.py) gets
3 requests on each of 5,000 distinct routes from one Python client, so Periscope holds 5,000
`http.server.request.duration` and 5,000 `http.client.request.duration` series (both ends are
on this machine), then the Prometheus endpoint is scraped ROUNDS times in each format:
  text:     OpenMetrics (the default): classic buckets of the fixed layout (14 bounds + Inf)
  protobuf: native histograms (schema 4) with the classic buckets alongside
Each phase runs against the current output and, in a second daemon started with
PERISCOPE_SPARSE_CLASSIC=1, against the sparse classic output of earlier versions (only the
non-empty kernel buckets and their lower edges: fewer lines per series, but different `le` sets
per series). Per scrape: wall time as the client sees it, bytes, and the daemon's CPU (utime +
stime over the scrapes, minus its idle CPU over as long). Writes bench/out/scrape.md and .json.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, urllib.request

from common import ROOT, Daemon, free_port, write

PROTOBUF = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
WORDS = [c + v + e for c in "bcdfghklmnprstvz" for v in "aeiou" for e in "bdgkmnprst"][:100]


def config(port, series):
    disabled = "".join(f"  {f}:\n    enabled: false\n" for f in ("block", "sched", "tcp", "syscall"))
    return (f"probes:\n{disabled}  http:\n    select:\n      - port: {port}\n"
            f"    max_routes_per_service: {series * 2}\n    max_series: {series * 2}\n")


def load(port, routes, per_route):
    """`per_route` GETs on each of `routes` routes (/word/word), over one keep-alive connection."""
    paths = [f"/{WORDS[i // 100]}/{WORDS[i % 100]}" for i in range(routes)]
    script = (
        "import http.client, sys\n"
        f"c = http.client.HTTPConnection('127.0.0.1', {port})\n"
        "for line in sys.stdin:\n"
        "    c.request('GET', line.strip()); r = c.getresponse(); r.read()\n"
    )
    body = "\n".join(p for p in paths for _ in range(per_route)) + "\n"
    subprocess.run([sys.executable, "-c", script], input=body, text=True, check=True)


def scrape(port, accept):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        kind = response.headers.get("content-type", "")
    return time.perf_counter() - t0, body, kind


def measure(daemon, accept, rounds):
    """(wall seconds per scrape, bytes per scrape, daemon CPU seconds per scrape)."""
    scrape(daemon.port, accept)  # warm: first-touch allocations
    walls, sizes = [], []
    cpu0 = daemon.cpu_s()
    t0 = time.monotonic()
    for _ in range(rounds):
        wall, body, _ = scrape(daemon.port, accept)
        walls.append(wall)
        sizes.append(len(body))
    elapsed = time.monotonic() - t0
    busy = daemon.cpu_s() - cpu0
    idle0 = daemon.cpu_s()
    time.sleep(elapsed)
    idle = daemon.cpu_s() - idle0
    return statistics.median(walls), statistics.median(sizes), max(0.0, busy - idle) / rounds


def run(mode, env, args):
    server_port = free_port()
    timings = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/workloads/two_routes.py"),
                               str(server_port), timings.name])
    try:
        time.sleep(0.5)
        daemon = Daemon(config(server_port, args.series), env=env)
        try:
            print(f"[bench scrape] {mode}: {args.series} series x {args.per_route} requests", file=sys.stderr,
                  flush=True)
            load(server_port, args.series // 2, args.per_route)
            deadline = time.monotonic() + 60
            while True:
                held = sum(1 for line in scrape(daemon.port, None)[1].decode().splitlines()
                           if line.startswith(("http_server_request_duration_seconds_count",
                                               "http_client_request_duration_seconds_count")))
                if held >= args.series or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            out = {"series": held}
            for name, accept in (("text", None), ("protobuf", PROTOBUF)):
                wall, size, cpu = measure(daemon, accept, args.rounds)
                out[name] = {"wall_ms": wall * 1e3, "bytes": int(size), "cpu_ms": cpu * 1e3}
            return out
        finally:
            daemon.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
        os.unlink(timings.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 series, 5 scrapes")
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--per-route", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.series, args.rounds = 1000, 5
    results = {"fixed layouts (current)": run("fixed", {}, args),
               "sparse (earlier output)": run("sparse", {"PERISCOPE_SPARSE_CLASSIC": "1"}, args)}
    lines = ["# Scrape cost with many histogram series", "",
             f"{args.series:,} HTTP duration histogram series (server and client side of {args.series // 2:,} routes, "
             f"{args.per_route} requests each, answered at once), {args.rounds} scrapes per format, medians; daemon CPU is its utime + stime "
             f"during the scrapes minus its idle CPU over as long. Release build. Machine: {os.cpu_count()} CPUs, "
             f"kernel {os.uname().release}.", "",
             "| output | series | format | time per scrape | bytes per scrape | daemon CPU per scrape |",
             "|---|---|---|---|---|---|"]
    for output, r in results.items():
        for fmt in ("text", "protobuf"):
            m = r[fmt]
            lines.append(f"| {output} | {r['series']:,} | {fmt} | {m['wall_ms']:,.1f} ms | {m['bytes']:,} | "
                         f"{m['cpu_ms']:,.1f} ms |")
    lines.append("")
    data = {"quick": args.quick, "series": args.series, "rounds": args.rounds, "cpus": os.cpu_count(),
            "kernel": os.uname().release, "results": results}
    write("scrape", "\n".join(lines) + "\n", data)


if __name__ == "__main__":
    main()
