# Periscope: the two commands of the quick start, and the helpers they are made of.
#   make run    installs what is needed, builds, and runs the daemon on its embedded default
#   make test   installs what is needed and runs every test (unit, property, end-to-end)
# Both need root (eBPF, tracefs, loop devices) on Debian 12; see README.md.

CARGO ?= cargo
ARGS ?=

.PHONY: setup build run check test test-kernels lint bench fuzz clean

setup:
	@bash .ci/setup.sh

# A short log: one line per step, cargo's own only for errors and warnings (the eBPF build's
# output shows only when it fails; PERISCOPE_BUILD_VERBOSE=1 shows it all).
CARGO_QUIET := $(if $(filter 1,$(PERISCOPE_BUILD_VERBOSE)),,--quiet)

build: setup
	@printf '\033[1m[build]\033[0m %s\n' "cargo build --release -p periscope (the first build takes several minutes)" >&2
	@$(CARGO) build --release -p periscope $(CARGO_QUIET)
	@printf '\033[1m[build]\033[0m %s\n' "target/release/periscope ready" >&2

run: build
	@printf '\033[1m[run]\033[0m %s\n' "periscope run $(ARGS) (Ctrl-C stops it)" >&2
	@./target/release/periscope run $(ARGS)

check: build
	@./target/release/periscope check $(ARGS)

# End-to-end tests run the debug binary built here against the real kernel; the kernel
# matrix then boots it on Debian's 5.10, 6.1 and 6.12 kernels under qemu (tests/kernels).
test: setup
	$(CARGO) build -p periscope
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) test-kernels

# Every family on other kernels: one VM at a time, about a minute each (see tests/kernels).
test-kernels: setup
	$(CARGO) build -p periscope -p periscope-e2e --bin periscope --bin kernel-workload
	bash tests/kernels/run.sh $(KERNELS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	bash bench/run.sh $(ARGS)

# Each fuzz target for a minute (cargo-fuzz on the nightly toolchain).
fuzz: setup
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && cargo +nightly fuzz run http_parse -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run http_connection -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run cgroup_path -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run usdt_note -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run h2_connection -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run h2_hpack -- -max_total_time=60

clean:
	$(CARGO) clean
