# lookout — build, demo, test, bench.
#
# Everything a fresh Debian machine lacks is installed on demand: system packages (apt),
# Debian's kubectl (for kubesim fidelity tests and the kubectl benchmark) and the tansu
# Kafka-protocol broker (for the Kafka end-to-end tests). Tools are cached outside the
# checkout, in $(TOOLS), so repeated runs are fast.

SHELL := /bin/bash
TOOLS ?= $(HOME)/.cache/lookout/tools
SYSTEM_PACKAGES := gcc g++ make pkg-config libssl-dev zlib1g-dev cmake python3
KUBECTL_DEB_DIR := $(TOOLS)/kubectl-deb
export KUBECTL ?= $(KUBECTL_DEB_DIR)/root/usr/bin/kubectl
export TANSU ?= $(TOOLS)/bin/tansu
TANSU_VERSION ?= 0.6.0
CARGO_DENY ?= $(TOOLS)/bin/cargo-deny
CARGO_DENY_VERSION ?= 0.20.2
CARGO ?= cargo

.PHONY: all build demo test test-fast bench levers soak deps kubectl tansu tools deny fmt lint clean-tools

all: build

## System packages the build needs (Debian/Ubuntu); installs only what is missing.
deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## Debian's kubectl (client-go v1.20), unpacked into $(TOOLS) without touching /usr/bin.
kubectl: $(KUBECTL)
$(KUBECTL):
	@mkdir -p $(KUBECTL_DEB_DIR)
	@SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	cd $(KUBECTL_DEB_DIR) && { ls kubernetes-client_*.deb >/dev/null 2>&1 || { $$SUDO apt-get update -qq; apt-get download kubernetes-client; }; } \
	  && dpkg-deb -x kubernetes-client_*.deb root
	@$(KUBECTL) version --client

## The tansu broker (about 15 minutes to build once; cached in $(TOOLS)).
tansu: $(TANSU)
$(TANSU):
	@mkdir -p $(TOOLS)
	CARGO_TARGET_DIR=$(HOME)/.cache/lookout/tansu-target $(CARGO) install tansu --version $(TANSU_VERSION) \
	  --locked --features dynostore --root $(TOOLS)

## cargo-deny (a few minutes to build once; cached in $(TOOLS)).
$(CARGO_DENY):
	@mkdir -p $(TOOLS)
	CARGO_TARGET_DIR=$(HOME)/.cache/lookout/tools-target $(CARGO) install cargo-deny \
	  --version $(CARGO_DENY_VERSION) --locked --root $(TOOLS)

## Supply chain: licenses, banned crates, sources (deny.toml). Advisories are not checked:
## their database is fetched from GitHub, which these machines cannot reach.
deny: $(CARGO_DENY)
	$(CARGO_DENY) check licenses bans sources

tools: kubectl tansu

build: deps
	$(CARGO) build --release --locked

## The main job on the embedded simulator: a seeded, churning cluster, changes on stdout.
demo: deps
	$(CARGO) run --release --locked --bin lookout -- demo --duration 20s

## Every test: unit, kubesim fidelity (kube-rs + kubectl), pipeline end to end, Kafka (tansu).
test: deps tools deny
	$(CARGO) nextest run --workspace --locked --no-fail-fast

## Long fault-injection variants: a 60 s sink outage under churn, the crash/restart suite, and
## 200 seeds of the fault model (SOAK_SEEDS to change; a failing seed is printed with its replay).
SOAK_SEEDS ?= 1..200
soak: deps tools
	LOOKOUT_SOAK_SECS=60 $(CARGO) nextest run --profile soak --locked --no-capture --test faults --test durability --test leader --test spine
	LOOKOUT_FAULT_SEEDS=$(SOAK_SEEDS) $(CARGO) nextest run --profile soak --locked --no-capture --test fault_model

## The benchmark harness: every figure the median of 3 runs with min and max, targets from
## issue 16 with PASS/MISS, target/bench/report.json, and BENCHMARKS.md's tables regenerated
## from it (about 15 minutes). The floors (bench/floor) build outside the workspace, so
## serde_json has its default features there. BENCH_ARGS passes options, e.g. one section:
## BENCH_ARGS="--only kafka" (partial runs leave BENCHMARKS.md alone); see lookout-bench --help.
BENCH_FLOOR_TARGET = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/bench-floor
bench: deps tools
	$(CARGO) build --release --locked -p lookout -p lookout-bench
	CARGO_TARGET_DIR=$(BENCH_FLOOR_TARGET) $(CARGO) build --release --locked --manifest-path bench/floor/Cargo.toml
	BENCH_FLOOR=$(BENCH_FLOOR_TARGET)/release/lookout-bench-floor \
	  $(CARGO) run --release --locked -p lookout-bench -- --out target/bench --markdown BENCHMARKS.md $(BENCH_ARGS)

## The levers of issue 16, each against the commit before it (bench/levers.txt), into BENCHMARKS.md.
levers:
	bench/levers.sh $(LEVERS_ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
