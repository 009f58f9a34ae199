#!/usr/bin/env bash
# Overhead benchmark (issue: foundation): a scheduler-heavy and an IO-heavy workload, each run
# with no tracer, with Periscope, and with libbpf-tools runqlat+biolatency, in one invocation.
# Prints overhead ratios, per-event eBPF cost and Periscope's peak RSS; writes bench/out/report.md.
# Run as root after `make build` (make bench does both).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p periscope >/dev/null 2>&1 || cargo build --release -p periscope
exec python3 bench/overhead.py "$@"
