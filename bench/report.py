#!/usr/bin/env python3
"""The benchmark report: reads the JSON every benchmark wrote into bench/out/ (overhead.json,
http.json, http2.json, families.json, profile.json, export.json, accuracy.json, idle.json), writes
bench/out/report.md with summary
tables, SVG plots in bench/out/plots/ (matplotlib), and each benchmark's own Markdown as an
appendix. A benchmark whose JSON is missing is reported as not run. Needs matplotlib (bench/run.sh
installs the pinned bench/requirements.txt into target/bench-venv and runs this with it)."""
import datetime, json, os, statistics, sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench/out")
PLOTS = os.path.join(OUT, "plots")
plt.rcParams["svg.hashsalt"] = "periscope"  # stable ids in the SVG files


def load(name):
    path = os.path.join(OUT, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def med(xs):
    xs = [x for x in (xs or []) if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fnum(x, digits=0):
    return "" if x != x else f"{x:,.{digits}f}"


def save(fig, name):
    os.makedirs(PLOTS, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(PLOTS, name), format="svg", metadata={"Date": None})
    plt.close(fig)
    return f"plots/{name}"


def bars(ax, groups, series, values, ylabel, log=False):
    """Grouped bars: values[s][g] for each series s over groups g (nan: no bar)."""
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [values[s][g] for g in range(len(groups))], width, label=s)
    ax.set_xticks(range(len(groups)))
    many = len(groups) > 8
    ax.set_xticklabels(groups, rotation=90 if many else 15, fontsize="small" if many else None)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small")


def overhead_rows(overhead, families, http):
    """(workload, unit, none, periscope, reference name, reference score, ebpf ns Periscope, ebpf ns reference,
    cpu ns Periscope, cpu ns reference)."""
    rows = []
    if overhead:
        for w in ("sched", "io"):
            s, e, c = overhead["scores"][w], overhead["ebpf_ns_per_op"][w], overhead["cpu_ns_per_op"][w]
            rows.append((w, overhead["units"][w], med(s["none"]), med(s["periscope"]), "runqlat + biolatency",
                         med(s["libbpf-tools"]), med(e["periscope"]), med(e["libbpf-tools"]),
                         med(c["periscope"]), med(c["libbpf-tools"])))
    if families:
        for f, d in families["workloads"].items():
            r, e, c = d["rates"], d["ebpf_ns_per_op"], d["cpu_ns_per_op"]
            rows.append((f, d["unit"], med(r["none"]), med(r["periscope"]), d["reference"], med(r["reference"]),
                         med(e["periscope"]), med(e["reference"]), med(c["periscope"]), med(c["reference"])))
    if http:
        for k in (k for k in ("periscope-all", "periscope-nginx") if k in http["rps"]):
            rows.append((f"http ({k})", "requests/s", med(http["rps"]["none"]), med(http["rps"][k]), "", float("nan"),
                         med(http["ebpf_ns_per_request"][k]), float("nan"), med(http["cpu_ns_per_request"][k]),
                         float("nan")))
    return rows


def http_targets(label, data, verdict):
    """Issue 18's targets (and issue 19's benchmark, measured against the same) for one
    `http_overhead.py` output: `label` HTTP (wrk) or HTTP/2 (h2load)."""
    targets = []
    base_rps, base_p99 = med(data["rps"]["none"]), med(data["p99_s"]["none"])
    for k in (k for k in ("periscope-all", "periscope-nginx") if k in data["rps"]):
        r, p, ns = med(data["rps"][k]), med(data["p99_s"][k]), med(data["ebpf_ns_per_request"][k])
        cpu = med(data["cpu_ns_per_request"][k])
        rss = max(data.get("rss_under_load_kib", {}).get(k) or [float("nan")]) / 1024
        # The default mechanism's hooks: the socket tracepoints' empty programs.
        floor = med(data["ebpf_ns_per_request"].get("floor-sock") or [float("nan")])
        targets += [(f"{label} {k}: throughput >= 0.95 of uninstrumented (issue 18)", f"{r / base_rps:.3f}",
                     verdict(r >= 0.95 * base_rps)),
                    (f"{label} {k}: p99 <= 1.10x uninstrumented", f"{p / base_p99:.2f}x", verdict(p <= 1.10 * base_p99)),
                    (f"{label} {k}: eBPF <= 600 ns per request", f"{ns:,.0f} ns", verdict(ns <= 600)),
                    (f"{label} {k}: eBPF <= 2.5x the socket floor (empty programs on the same hooks)",
                     f"{ns:,.0f} vs {floor:,.0f} ns ({ns / floor:.1f}x)", verdict(ns <= 2.5 * floor)),
                    (f"{label} {k}: daemon CPU <= 400 ns per request, spans off", f"{cpu:,.0f} ns", verdict(cpu <= 400)),
                    (f"{label} {k}: RSS under load < 30 MB (at {r:,.0f} requests/s)", f"{rss:.1f} MiB",
                     verdict(rss * 1.048576 < 30))]
    return targets


def profile_targets(profile, verdict):
    """Issue 20's targets from `profile_overhead.py`'s direct costs."""
    cpu = profile.get("summary", {}).get("cpu", {})
    targets = []
    if "daemon-19" in cpu:
        d = cpu["daemon-19"]["direct"]
        targets.append(("profile: the daemon at its default 19 Hz costs under 1% (eBPF + process, CPU workload)",
                        f"{d:.3%} of the CPU", verdict(d < 0.01)))
    if "periscope-99" in cpu and "bpftrace-99" in cpu:
        ours, theirs = cpu["periscope-99"]["direct"], cpu["bpftrace-99"]["direct"]
        targets.append(("profile: 99 Hz at or below bpftrace's profile:hz:99 (direct cost, CPU workload)",
                        f"{ours:.3%} vs {theirs:.3%}", verdict(ours <= theirs)))
    return targets


def main():
    overhead, http, families = load("overhead"), load("http"), load("families")
    export, accuracy, idle = load("export"), load("accuracy"), load("idle")
    http2, profile = load("http2"), load("profile")
    present = {n: d for n, d in (("overhead", overhead), ("http", http), ("families", families),
                                 ("export", export), ("accuracy", accuracy), ("idle", idle)) if d}
    quick = sorted(n for n, d in present.items() if d.get("quick"))
    any_data = next(iter(present.values()), {})
    lines = ["# Periscope benchmark report", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench` "
             f"(bench/run.sh). Machine: {any_data.get('cpus', os.cpu_count())} CPUs, kernel "
             f"{any_data.get('kernel', os.uname().release)}.", ""]
    if quick:
        lines += [f"**Quick run** ({', '.join(quick)} ran with `--quick`: 1 round, short workloads). These numbers "
                  "check that the benchmarks work; they are not results.", ""]
    missing = [n for n in ("overhead", "http", "families", "export", "accuracy", "idle") if n not in present]
    if missing:
        lines += [f"No output (no JSON in bench/out/: not run, or failed; see the run's log): {', '.join(missing)}.", ""]

    # Targets of the issues, each with the measured value.
    targets = []
    verdict = lambda ok: "met" if ok else "**missed**"
    if overhead:
        for w in ("sched", "io"):
            s, e = overhead["scores"][w], overhead["ebpf_ns_per_op"][w]
            ours, ref = med(s["periscope"]), med(s["libbpf-tools"])
            targets.append((f"{w}: Periscope's throughput overhead no greater than libbpf-tools' (1% noise allowance)",
                            f"Periscope/libbpf-tools throughput {ours / ref:.3f}", verdict(ours >= 0.99 * ref)))
            eo, er = med(e["periscope"]), med(e["libbpf-tools"])
            targets.append((f"{w}: in-kernel cost no greater than libbpf-tools' (5% allowance)",
                            f"{eo:,.0f} vs {er:,.0f} ns/op", verdict(eo <= 1.05 * er)))
        if overhead.get("peak_rss_kib"):
            peak = max(overhead["peak_rss_kib"]) / 1024
            targets.append(("daemon peak RSS < 30 MB (issue 2)", f"{peak:.1f} MiB (VmHWM)", verdict(peak * 1.048576 < 30)))
    for label, data in (("HTTP", http), ("HTTP/2", http2)):
        if data:
            targets += http_targets(label, data, verdict)
    if http:
        for k in (k for k in ("periscope-spans-100", "periscope-spans-10") if k in http["rps"]):
            targets.append((f"HTTP {k}: daemon CPU per request, spans on", f"{med(http['cpu_ns_per_request'][k]):,.0f} ns",
                            "for information"))
    if profile:
        targets += profile_targets(profile, verdict)
    if idle:
        share = idle["summary"]["idle"]["core_share"]
        targets.append((f"idle daemon CPU <= {idle['target_share']:.1%} of a core, every default family on (issue 23)",
                        f"{share['median']:.3%} (min {share['min']:.3%}, max {share['max']:.3%})",
                        verdict(share["median"] <= idle["target_share"])))
    if targets:
        lines += ["## Targets of the issues", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in targets]
        lines.append("")

    # Overhead.
    rows = overhead_rows(overhead, families, http)
    if rows:
        lines += ["## Overhead vs no tracing and vs the reference tools", "",
                  "Throughput with each tracer as a ratio of the untraced run (1.000 = no cost), medians over "
                  "interleaved rounds; eBPF ns/op is the run time of the tracer's own programs "
                  "(kernel.bpf_stats_enabled) per workload operation; CPU ns/op is the tracer's user-space CPU "
                  "(utime + stime, in clock ticks of 10 ms: short runs read 0) per operation.", "",
                  "| workload | unit | no tracer | Periscope / none | reference | reference / none | Periscope / reference "
                  "| eBPF ns/op Periscope | eBPF ns/op reference | CPU ns/op Periscope | CPU ns/op reference |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (w, unit, none, ours, refname, ref, eo, er, co, cr) in rows:
            lines.append(f"| {w} | {unit} | {fnum(none)} | {ours / none:.3f} | {refname} | "
                         f"{'' if ref != ref else f'{ref / none:.3f}'} | {'' if ref != ref else f'{ours / ref:.3f}'} | "
                         f"{fnum(eo)} | {fnum(er)} | {fnum(co, 1)} | {fnum(cr, 1)} |")
        groups = [r[0] for r in rows]
        fig, ax = plt.subplots(figsize=(9, 4))
        bars(ax, groups, ["Periscope", "reference"],
             {"Periscope": [r[3] / r[2] for r in rows], "reference": [r[5] / r[2] for r in rows]},
             "throughput / untraced")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title("Throughput under tracing (1.0 = no overhead)")
        lines += ["", f"![throughput ratios]({save(fig, 'overhead.svg')})", ""]
        fig, ax = plt.subplots(figsize=(9, 4))
        bars(ax, groups, ["Periscope", "reference"],
             {"Periscope": [r[6] for r in rows], "reference": [r[7] for r in rows]}, "eBPF ns per operation", log=True)
        ax.set_title("In-kernel cost per workload operation (bpf_stats)")
        lines += [f"![eBPF cost per operation]({save(fig, 'ebpf_cost.svg')})", ""]

    # HTTP per request.
    if http:
        base_rps, base_p99 = med(http["rps"]["none"]), med(http["p99_s"]["none"])
        lines += ["## HTTP: per-request eBPF cost, p99, daemon CPU and RSS (nginx + wrk)", "",
                  f"wrk -t1 -c{http['connections']}, {http['rounds']} round(s) of {http['seconds']} s. Targets (issue 18): "
                  "throughput >= 0.95 of uninstrumented, p99 <= 1.10x, eBPF <= 600 ns per request and <= 2.5x the "
                  "socket floor, daemon CPU <= 400 ns per request with spans off, RSS < 30 MB.", "",
                  "| configuration | requests/s | vs none | p99 | vs none | eBPF ns/request | daemon CPU ns/request | "
                  "RSS under load | startup peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
        kinds = ("none", "floor-raw", "floor-tracepoint", "floor-sock", "periscope-all", "periscope-spans-100",
                 "periscope-spans-10", "periscope-nginx",
                 "periscope-raw", "periscope-tracepoint", "periscope-no-http")
        for k in (k for k in kinds if k in http["rps"]):
            r, p = med(http["rps"][k]), med(http["p99_s"][k])
            rss = http.get("rss_under_load_kib", {}).get(k)
            peak = http.get("peak_rss_kib", {}).get(k)
            lines.append(f"| {k} | {fnum(r)} | {r / base_rps:.3f} | {p * 1e3:.3f} ms | {p / base_p99:.2f} | "
                         f"{fnum(med(http['ebpf_ns_per_request'].get(k)))} | {fnum(med(http['cpu_ns_per_request'].get(k)))} | "
                         f"{'' if not rss else f'{max(rss) / 1024:.1f} MiB'} | {'' if not peak else f'{max(peak) / 1024:.1f} MiB'} |")
        lines.append("")
        if "floor-raw" in http["rps"]:
            lines += ["`floor-raw` and `floor-tracepoint` (bench/floor.py) are empty programs (`r0 = 0; exit`) on the hooks "
                      "HTTP capture needs: raw `sys_enter`/`sys_exit`, or the entry and exit tracepoints of the syscalls "
                      "Periscope's tracepoint mechanism watches. No capture on those hooks can cost less on this machine. "
                      "`floor-sock`: the same on the raw tracepoints `sock_send_length`/`sock_recv_length` (Linux 6.3+), "
                      "the hooks of Periscope's default mechanism (socket_tracepoint).", ""]

    # Daemon resources: the same three measures for the kernel families and for HTTP.
    res = []  # (run, peak RSS values, RSS at the end / under load values, map memory values), KiB
    if overhead and overhead.get("memory_kib", {}).get("periscope"):
        m = overhead["memory_kib"]["periscope"]
        res.append(("kernel families (sched+io bench)", m["peak_rss_kib"], m["end_rss_kib"], m["map_kib"]))
    if http:
        for k in ("periscope-all", "periscope-nginx", "periscope-no-http"):
            peak = http.get("peak_rss_kib", {}).get(k)
            if peak:
                res.append((f"http bench, {k}", peak, http.get("rss_under_load_kib", {}).get(k) or [],
                            http.get("map_memory_kib", {}).get(k) or []))
    if idle:
        res.append(("idle bench (default config)", [idle["rss"]["VmHWM_kib"]], [idle["rss"]["VmRSS_kib"]], []))
    if res:
        mib = lambda xs: "" if not xs else (
            f"{med(xs) / 1024:.1f}" + ("" if len(xs) < 2 else f" ({min(xs) / 1024:.1f} - {max(xs) / 1024:.1f})"))
        lines += ["## Daemon memory", "",
                  "Target (issues 2, 3): < 30 MB. MiB, median (min - max) over rounds: peak RSS (VmHWM at the end of the "
                  "run: usually the startup peak of loading the eBPF object), RSS at the end of the workload (VmRSS, "
                  "under load for HTTP), and the kernel memory of the eBPF maps the daemon holds (memlock from "
                  "/proc/PID/fdinfo), which is outside the RSS.", "",
                  "| run | peak RSS | RSS at the end | eBPF map memory |", "|---|---|---|---|"]
        lines += [f"| {n} | {mib(p)} | {mib(e)} | {mib(m)} |" for n, p, e, m in res]
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.barh([r[0] for r in res], [max(r[1]) / 1024 for r in res], label="peak RSS (highest round)")
        ax.axvline(30 / 1.048576, color="red", linewidth=0.8, label="30 MB target")
        ax.set_xlabel("MiB")
        ax.legend(fontsize="small")
        ax.set_title("Periscope peak RSS")
        lines += ["", f"![daemon RSS]({save(fig, 'rss.svg')})", ""]

    # Idle beside busy.
    if idle:
        lines += ["## Daemon CPU: idle beside busy (bench/idle.py)", "",
                  f"Default configuration; {idle['rounds']} round(s) of {idle['seconds']} s per phase; median (min - max).", "",
                  "| phase | daemon CPU, ms per minute | share of a core | wakeups/s | daemon CPU ns/request |", "|---|---|---|---|---|"]
        for name, s in idle["summary"].items():
            cell = lambda key, f: "" if not s.get(key) else f"{f(s[key]['median'])} ({f(s[key]['min'])} - {f(s[key]['max'])})"
            lines.append(f"| {name} | {cell('cpu_ms_per_minute', lambda v: f'{v:.1f}')} | {cell('core_share', lambda v: f'{v:.3%}')} | "
                         f"{cell('wakeups_per_s', lambda v: f'{v:.1f}')} | {cell('cpu_ns_per_request', lambda v: f'{v:,.0f}')} |")
        lines.append("")

    # Export.
    if export:
        lines += ["## OTLP export throughput (into a real OTLP/gRPC receiver)", "",
                  "Receiver: tests/src/bin/otlp-sink.rs (opentelemetry-proto tonic services; decodes and counts). "
                  "Metrics exported every 1 s (idle-100ms: every 100 ms), cumulative. Spans: one SERVER span per "
                  "request of the benchmark's nginx.", "",
                  "| phase | spans/s | data points/s | spans exported / dropped | bytes/s | daemon CPU | "
                  "daemon CPU µs/data point (idle) | RSS |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in ("idle", "loaded", "idle-100ms"):
            ps = export["phases"].get(name) or []
            if not ps:
                continue
            lines.append(f"| {name} | {fnum(med([p['spans_per_s'] for p in ps]))} | "
                         f"{fnum(med([p['data_points_per_s'] for p in ps]))} | "
                         f"{sum(p['spans_exported'] for p in ps):,.0f} / {sum(p['spans_dropped'] for p in ps):,.0f} | "
                         f"{fnum(med([p['metric_bytes_per_s'] + p['trace_bytes_per_s'] for p in ps]))} | "
                         f"{med([p['daemon_cpu_share'] for p in ps]):.1%} | "
                         f"{fnum(med([p.get('cpu_us_per_data_point') for p in ps]), 1)} | {max(p['rss_kib'] for p in ps) / 1024:.1f} MiB |")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        names = [n for n in ("idle", "loaded", "idle-100ms") if export["phases"].get(n)]
        for ax, key, title in ((axes[0], "spans_per_s", "spans/s received"),
                               (axes[1], "data_points_per_s", "data points/s received")):
            ax.bar(names, [med([p[key] for p in export["phases"][n]]) for n in names])
            ax.set_title(title)
        lines += ["", f"![export throughput]({save(fig, 'export.svg')})", ""]

    # Accuracy.
    if accuracy:
        r = accuracy["results"]
        lines += ["## Accuracy vs the reference tools", "",
                  "Each family alone beside its reference over one workload (bench/accuracy.py).", "",
                  "| family | counted | workload's own count | Periscope | reference | tool | Periscope / reference | "
                  "Periscope runs skipped by the kernel (recursion misses) |",
                  "|---|---|---|---|---|---|---|---|"]
        what = {"block": "completions", "sched": "run-queue waits", "tcp": "retransmits"}
        ratio = lambda a, b: f"{a / b:.3f}" if b else ""
        for fam in ("block", "sched", "tcp"):
            if fam in r:
                x = r[fam]
                expected = "" if x["expected"] is None else f"{x['expected']:,}"
                lines.append(f"| {fam} | {what[fam]} | {expected} | "
                             f"{x['periscope']:,.0f} | {x['reference_count']:,.0f} | {x['reference']} | "
                             f"{ratio(x['periscope'], x['reference_count'])} | {x.get('recursion_misses', 0):,.0f} |")
        if "syscall" in r:
            for row in r["syscall"]["rows"]:
                ref = row["reference_count"]
                fmt = (lambda v: f"{v:.4f}") if "seconds" in row["what"] else (lambda v: f"{v:,.0f}")
                lines.append(f"| syscall | {row['what']} | {fmt(row['expected'])} | {fmt(row['periscope'])} | "
                             f"{'' if ref is None else fmt(ref)} | {r['syscall']['reference'] if ref is not None else ''} | "
                             f"{'' if ref is None else ratio(row['periscope'], ref)} | |")
        if http:
            for k, pairs in http.get("counted_vs_completed", {}).items():
                for counted, completed in pairs:
                    lines.append(f"| http ({k}, bench/http_overhead.py) | nginx requests | {completed:,} (wrk: completed) | "
                                 f"{counted:,.0f} |  |  |  | |")
        hists = [f for f in ("block", "sched") if f in r]
        if hists:
            fig, axes = plt.subplots(1, len(hists), figsize=(4.5 * len(hists), 3.5), squeeze=False)
            for ax, fam in zip(axes[0], hists):
                ours = {int(k): v for k, v in r[fam]["periscope_slots"].items()}
                theirs = {int(k): v for k, v in r[fam]["reference_slots"].items()}
                slots = sorted(set(ours) | set(theirs))
                labels = [str(0 if s == 0 else 1 << s) for s in slots]
                bars(ax, labels, ["Periscope", r[fam]["reference"]],
                     {"Periscope": [ours.get(s, 0) for s in slots],
                      r[fam]["reference"]: [theirs.get(s, 0) for s in slots]}, "count")
                ax.set_xlabel(f"log2 slot lower bound ({r[fam]['unit']})")
                ax.set_title(fam)
            lines += ["", f"![log2 histograms side by side]({save(fig, 'accuracy.svg')})", ""]

    # Appendix: each benchmark's own Markdown.
    lines += ["## Details (each benchmark's own output)", ""]
    for name in ("overhead", "http", "http2", "families", "profile", "export", "accuracy", "idle"):
        path = os.path.join(OUT, f"{name}.md")
        if os.path.exists(path):
            text = open(path).read().strip().splitlines()
            lines += [("##" + l) if l.startswith("#") else l for l in text] + [""]
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"bench: wrote {os.path.relpath(os.path.join(OUT, 'report.md'), ROOT)}"
          + (f" and {len(os.listdir(PLOTS))} plots in bench/out/plots/" if os.path.isdir(PLOTS) else ""))


if __name__ == "__main__":
    sys.exit(main())
