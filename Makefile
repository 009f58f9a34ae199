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

# Each fuzz target, one process at a time within 512 MB (cargo-fuzz on the nightly toolchain):
# FUZZ_SECONDS each, the HTTP/2 ones FUZZ_H2_SECONDS each (inputs of up to 64 KiB from the
# start, so that header blocks pass their 16 KiB bound; corpora seeded with the recorded
# connections by fuzz/seed.py). A crash stops it; its input is in
# fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_H2_SECONDS ?= 300
FUZZ_FLAGS := -rss_limit_mb=512 -timeout=10 -print_final_stats=1
fuzz: setup
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	python3 fuzz/seed.py fuzz/corpus
	cd fuzz && for t in http_parse http_connection cgroup_path usdt_note; do \
		cargo +nightly fuzz run $$t -- $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
	cd fuzz && for t in h2_walked h2_connection h2_hpack; do \
		cargo +nightly fuzz run $$t -- $(FUZZ_FLAGS) -max_len=65536 -len_control=0 \
			-max_total_time=$(FUZZ_H2_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
