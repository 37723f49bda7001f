# Billing service: build, run and test on a development machine.
# `make` or `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Configuration the services are started with (passed as -conf).
CONFIG ?= configs/config.yaml
export CONFIG
# Extra arguments for the test runner, e.g. make test TEST_ARGS='deduct'
TEST_ARGS ?=

# The tests talk to real servers; deploy/dev-deps.sh makes these reachable.
export BILLING_TEST_DATABASE_URL ?= mysql://billing:billing@127.0.0.1:3306
export BILLING_TEST_REDIS_URL ?= redis://127.0.0.1:6379
export BILLING_TEST_NATS_URL ?= nats://127.0.0.1:4222

SERVICES := command-svc query-svc scheduler-svc
RELEASE_PACKAGES := $(foreach s,$(SERVICES) billing-tools,-p $(s))

# Cargo's target directory (CARGO_TARGET_DIR, a cargo config, or ./target), evaluated only by
# the recipes that need it.
target_dir = $(or $(CARGO_TARGET_DIR),$(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'))

.PHONY: help deps build build-release run run-all stop-all build-cron run-cron test soak bench lint fmt clean

help: ## List the targets
	@echo "Usage: make <target>"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

deps: ## Make MariaDB, Redis and NATS reachable on loopback (installs/starts them if needed)
	deploy/dev-deps.sh

build: ## Debug build of the whole workspace
	$(CARGO) build --workspace

build-release: ## Release build of the three services, billingctl, loadgen and the other tools
	$(CARGO) build --release --bins $(RELEASE_PACKAGES)

run: deps ## Run the three services in the foreground; Ctrl-C stops them
	deploy/run-all.sh --foreground

run-all: deps ## Start the three services in the background (logs/), return once ready
	deploy/run-all.sh

stop-all: ## Stop the services started by run-all
	deploy/stop-all.sh

build-cron: ## Release build of the scheduler as bin/cron
	$(CARGO) build --release --bin scheduler-svc -p scheduler-svc
	mkdir -p bin
	cp -f "$(target_dir)/release/scheduler-svc" bin/cron

run-cron: deps build-cron ## Run the scheduler alone in the foreground (bin/cron)
	./bin/cron -conf $(CONFIG)

# Uses cargo-nextest when installed (a process per test, clearer output), else cargo test. nextest
# does not run doctests, so they follow separately, unless the run is filtered with TEST_ARGS.
# While the tests run, the dependency script watches the three servers: one that stops answering
# is reported and started again (deploy/dev-deps.sh --watch).
test: ## Run the whole test suite against real MariaDB, Redis and NATS
	deploy/dev-deps.sh --clean-test-databases --test-tools --browser
	# The multi-process tests run the services' own binaries.
	$(CARGO) build --bins -p command-svc -p query-svc -p scheduler-svc
	deploy/dev-deps.sh --watch $$$$ >/dev/null & \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast $(TEST_ARGS); \
		if [[ -z "$(TEST_ARGS)" ]]; then \
			$(CARGO) test --workspace --doc --no-fail-fast; \
			$(CARGO) nextest run -p shared --features otel --lib --no-fail-fast otel; \
		fi; \
	else \
		$(CARGO) test --workspace --no-fail-fast $(TEST_ARGS); \
		$(CARGO) test -p shared --features otel --lib --no-fail-fast otel; \
	fi

soak: ## The fault-injection scenarios at length: 10 kills per replica kind, NATS down for 30 s
	deploy/dev-deps.sh
	$(CARGO) build --bins -p command-svc -p query-svc
	BILLING_FAULTS_SOAK=1 $(CARGO) test -p billing-tools --test faults -- --nocapture --test-threads 1

bench: ## The hot-path benchmark suite: one table of rates, latencies, ratios and invariant checks
	deploy/bench.sh

lint: ## Check formatting and run clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# Span export is a cargo feature: its code is checked too.
	$(CARGO) clippy -p shared --features otel --lib --tests -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output, bin/ and logs/
	$(CARGO) clean
	rm -rf bin logs
