#!/usr/bin/env bash
# Installs everything Periscope needs to build, run and test on a fresh Debian 12 machine.
# Idempotent: each step checks first and does nothing when its part is already there.
set -euo pipefail

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# Build toolchain (LLVM 22 for bpf-linker) and the real peers the tests compare against.
APT_PACKAGES=(
  llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev   # bpf-linker against rustc's LLVM
  libbpf-tools bpftrace bpftool                         # reference tools (biolatency, runqlat)
  fio stress-ng util-linux iproute2 nftables curl openssl  # workloads and plumbing for tests
  libcap2-bin                                           # capsh: least-privilege tests
  prometheus                                            # real Prometheus + promtool
  nginx wrk wget                                        # HTTP tests: a real server, a load generator, a client that exits early
  tmux                                                  # triage tests: a real terminal (send-keys, capture-pane)
  strace systemd                                        # deploy tests: syscalls vs the unit's filter; systemd-analyze
  qemu-system-x86 busybox-static xz-utils               # kernel matrix VM (tests/kernels); busybox httpd: a forking HTTP server
  gcc libc6-dev binutils python3                        # profile tests: C workloads built by the test (cc, strip), SVG checked as XML
  nodejs                                                # profile tests: a JIT runtime named through its perf map; gRPC tests (npm)
  golang-go                                             # HTTPS tests: a Go net/http server on Go's own crypto/tls
  systemtap-sdt-dev                                     # usdt tests: <sys/sdt.h> for the C program with probes
)

install_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "apt packages: all present"; return; fi
  say "apt packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The prometheus package would start a system service on :9090; tests run their own.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  systemctl disable --now prometheus >/dev/null 2>&1 || true
  systemctl disable --now nginx >/dev/null 2>&1 || true
}

# The eBPF crate is built with -Z build-std=core by the toolchain whose LLVM matches
# bpf-linker's (stable here: see exporter/build.rs), which needs that toolchain's rust-src.
EBPF_TOOLCHAIN=${PERISCOPE_EBPF_TOOLCHAIN:-stable}
install_rust_src() {
  if rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "$EBPF_TOOLCHAIN rust-src: present"; return
  fi
  say "$EBPF_TOOLCHAIN rust-src: installing (needed to build core for bpfel-unknown-none)"
  rustup component add rust-src --toolchain "$EBPF_TOOLCHAIN"
}

install_bpf_linker() {
  if command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13'; then
    say "bpf-linker: $(bpf-linker --version)"; return
  fi
  say "bpf-linker: building 0.13 against LLVM 22 (about a minute)"
  PATH=/usr/lib/llvm-22/bin:$PATH LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo install --locked bpf-linker --version '~0.13' --no-default-features --features llvm-22
}

mount_tracefs() {
  if [ -d /sys/kernel/tracing/events ]; then say "tracefs: mounted"; return; fi
  say "tracefs: mounting at /sys/kernel/tracing"
  mount -t tracefs tracefs /sys/kernel/tracing
}

# Dashboard validation (tests/tests/dashboards.rs runs dashboards/validate.py): the Grafana
# Foundation SDK's dashboard models, pinned, in a directory of their own (PYTHONPATH), so no
# system or user site-packages are touched (and Debian's externally-managed Python is fine).
GRAFANA_SDK_VERSION='1769699379!11.6.0'   # the Grafana 11.6 schema
DASHBOARDS_PYTHON="$(cd "$(dirname "$0")/.." && pwd)/target/dashboards-python"
install_grafana_sdk() {
  if [ "$(PYTHONPATH="$DASHBOARDS_PYTHON" python3 -c 'import importlib.metadata as m; print(m.version("grafana-foundation-sdk"))' 2>/dev/null)" = "$GRAFANA_SDK_VERSION" ]; then
    say "grafana-foundation-sdk: $GRAFANA_SDK_VERSION"; return
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "python3-pip: installing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  say "grafana-foundation-sdk: installing $GRAFANA_SDK_VERSION into $DASHBOARDS_PYTHON"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade --target "$DASHBOARDS_PYTHON" \
    "grafana-foundation-sdk==$GRAFANA_SDK_VERSION"
}

# tests/tests/triage.rs validates `periscope triage --json` against exporter/triage.schema.json
# with PyPI jsonschema, pinned with its dependencies, in a directory of its own (PYTHONPATH).
TRIAGE_PYTHON="$(cd "$(dirname "$0")/.." && pwd)/target/triage-python"
TRIAGE_PACKAGES=(jsonschema==4.23.0 attrs==24.2.0 jsonschema-specifications==2023.12.1 referencing==0.35.1 rpds-py==0.20.0)
install_triage_python() {
  if [ "$(PYTHONPATH="$TRIAGE_PYTHON" python3 -c 'import importlib.metadata as m; print(m.version("jsonschema"))' 2>/dev/null)" = "4.23.0" ]; then
    say "jsonschema (triage tests): 4.23.0"; return
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "python3-pip: installing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  say "jsonschema (triage tests): installing into $TRIAGE_PYTHON"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade --target "$TRIAGE_PYTHON" "${TRIAGE_PACKAGES[@]}"
}

# gRPC tests (tests/tests/http.rs): the real Python peers of tests/workloads/grpc_*.py are
# PyPI grpcio (a compiled wheel), pinned with its one dependency, in a directory of their own
# (PYTHONPATH), like the triage tests' packages.
GRPC_PYTHON="$(cd "$(dirname "$0")/.." && pwd)/target/grpc-python"
GRPC_VERSION=1.85.4
GRPC_PACKAGES=("grpcio==$GRPC_VERSION" typing-extensions==4.15.0)
install_grpc_python() {
  # -S: without site-packages, so that a grpcio installed elsewhere does not count.
  if [ "$(PYTHONPATH="$GRPC_PYTHON" python3 -S -c 'import grpc; print(grpc.__version__)' 2>/dev/null)" = "$GRPC_VERSION" ]; then
    say "grpcio (gRPC tests): $GRPC_VERSION"; return
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "python3-pip: installing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  say "grpcio (gRPC tests): installing into $GRPC_PYTHON"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade --target "$GRPC_PYTHON" "${GRPC_PACKAGES[@]}"
}

# gRPC tests: the real Node.js peers of tests/workloads/grpc_*.js are npm @grpc/grpc-js (pure
# JavaScript), pinned, in a directory of their own (NODE_PATH), with the machine's Node.js and
# its npm (the nodejs package above brings npm along).
GRPC_NODE="$(cd "$(dirname "$0")/.." && pwd)/target/grpc-node"
GRPC_JS_VERSION=1.14.7
install_grpc_node() {
  if [ "$(node -p "require('$GRPC_NODE/node_modules/@grpc/grpc-js/package.json').version" 2>/dev/null)" = "$GRPC_JS_VERSION" ]; then
    say "@grpc/grpc-js (gRPC tests): $GRPC_JS_VERSION"; return
  fi
  if ! command -v npm >/dev/null; then
    say "npm: installing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  say "@grpc/grpc-js (gRPC tests): installing $GRPC_JS_VERSION into $GRPC_NODE"
  npm install --prefix "$GRPC_NODE" --no-save --no-audit --no-fund --loglevel=error "@grpc/grpc-js@$GRPC_JS_VERSION"
}

# deploy/validate/validate.py: Kubernetes schemas and Helm's Go SDK (PyPI), pinned, in a venv.
DEPLOY_VENV="$(cd "$(dirname "$0")/.." && pwd)/target/deploy-venv"
DEPLOY_REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/deploy/validate/requirements.txt"
install_deploy_python() {
  if [ -x "$DEPLOY_VENV/bin/python" ] && cmp -s "$DEPLOY_REQUIREMENTS" "$DEPLOY_VENV/requirements.txt"; then
    say "deploy validator packages: present"; return
  fi
  say "deploy validator packages: installing into $DEPLOY_VENV"
  python3 -m venv "$DEPLOY_VENV"
  "$DEPLOY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$DEPLOY_REQUIREMENTS"
  cp "$DEPLOY_REQUIREMENTS" "$DEPLOY_VENV/requirements.txt"
}

install_apt_packages
install_rust_src
install_bpf_linker
mount_tracefs
install_grafana_sdk
install_deploy_python
install_triage_python
install_grpc_python
install_grpc_node
say "ready"
