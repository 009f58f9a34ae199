#!/usr/bin/env bash
# Overhead benchmarks: a scheduler-heavy and an IO-heavy workload, each run with no tracer, with
# Periscope, and with libbpf-tools runqlat+biolatency (bench/out/report.md); then nginx under wrk
# with no tracer, Periscope capturing HTTP, and Periscope without HTTP (bench/out/http.md); then
# the TCP, syscall and uprobe families against tcplife, syscount -L and bpftrace
# (bench/out/families.md).
# Prints overhead ratios, per-event eBPF cost and Periscope's peak RSS.
# Run as root after `make build` (make bench does both).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p periscope >/dev/null 2>&1 || cargo build --release -p periscope
cargo build --release -p periscope-e2e --bin function-target >/dev/null 2>&1 \
  || cargo build --release -p periscope-e2e --bin function-target
python3 bench/overhead.py "$@"
python3 bench/http_overhead.py
python3 bench/families.py
