#!/usr/bin/env bash
# Every benchmark, then one report: bench/out/report.md with SVG plots in bench/out/plots/.
#   overhead.py       scheduler- and IO-heavy workloads: no tracer, Periscope, runqlat+biolatency
#   http_overhead.py  nginx under wrk: no tracer, Periscope (HTTP of all / with spans / nginx only / no HTTP)
#   families.py       TCP, syscall, uprobe families vs tcplife, syscount -L, bpftrace
#   export.py         OTLP export throughput into a real OTLP/gRPC receiver (tests' otlp-sink)
#   scrape.py         Prometheus scrape cost with 10,000 histogram series (text, protobuf; fixed vs sparse)
#   accuracy.py       counts and log2 histograms vs biolatency, runqlat, bpftrace, syscount
#   idle.py           daemon CPU per minute idle (default config), idle with scrapes, and busy
#   profile_overhead.py  `periscope profile` at 99/19 Hz and --off-cpu vs none, bpftrace, offcputime
#   report.py         reads their JSON (bench/out/*.json), writes report.md and the plots
# Each script also writes its own bench/out/NAME.md and NAME.json.
# usage: bench/run.sh [--quick]   (--quick: 1 round, short workloads; for development only)
# Run as root (make bench runs `make setup` first). Plotting needs matplotlib: installed here, pinned
# (bench/requirements.txt), into target/bench-venv; CI does not run the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
QUICK=()
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=(--quick) ;;
    *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
  esac
done

VENV=target/bench-venv
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  apt-get install -y python3-venv >/dev/null || { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; }
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s bench/requirements.txt "$VENV/requirements.txt"; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  cp bench/requirements.txt "$VENV/requirements.txt"
fi

build() { cargo build --release "$@" >/dev/null 2>&1 || cargo build --release "$@"; }
build -p periscope
build -p periscope-e2e --bin function-target --bin syscall-workload --bin otlp-sink

rm -rf bench/out
mkdir -p bench/out
# A benchmark that fails leaves no JSON: the report says so, the others still run, and the exit
# status is non-zero.
FAILED=()
for script in overhead http_overhead families export scrape accuracy idle profile_overhead; do
  echo "[bench] $(date -u +%H:%M:%S) $script.py" >&2
  python3 "bench/$script.py" "${QUICK[@]}" || FAILED+=("$script")
done
"$VENV/bin/python" bench/report.py
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "bench: failed: ${FAILED[*]}" >&2
  exit 1
fi
