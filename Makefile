# Periscope: the two commands of the quick start, and the helpers they are made of.
#   make run    installs what is needed, builds, and runs the daemon on its embedded default
#   make test   installs what is needed and runs every test (unit, property, end-to-end)
# Both need root (eBPF, tracefs, loop devices) on Debian 12; see README.md.

CARGO ?= cargo
ARGS ?=

.PHONY: setup build run check test test-kernels lint bench fuzz clean

setup:
	@bash .ci/setup.sh

build: setup
	$(CARGO) build --release -p periscope

run: build
	./target/release/periscope run $(ARGS)

check: build
	./target/release/periscope check $(ARGS)

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

# Each HTTP fuzz target for a minute (cargo-fuzz on the nightly toolchain).
fuzz: setup
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && cargo +nightly fuzz run http_parse -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run http_connection -- -max_total_time=60

clean:
	$(CARGO) clean
