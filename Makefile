# plangate — every command a developer or CI needs. Nothing here downloads anything
# except from package registries (crates.io, npm): worker-build is pointed at the
# wasm-bindgen, esbuild and wasm-opt installed below instead of fetching its own.

SHELL := /bin/bash
.DEFAULT_GOAL := help

WORKER_BUILD_VERSION := 0.8.7
# Must equal the `wasm-bindgen = "=…"` pin in Cargo.toml (checked by `tools`).
WASM_BINDGEN_VERSION := 0.2.130
CARGO_BIN := $(HOME)/.cargo/bin
NODE_BIN := $(CURDIR)/node_modules/.bin

export PATH := $(CARGO_BIN):$(NODE_BIN):$(PATH)
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(NODE_BIN)/esbuild
export WASM_OPT_BIN := $(NODE_BIN)/wasm-opt
export WRANGLER_SEND_METRICS := false

PORT ?= 8787
STANDIN_PORT ?= 12111
USER ?= alice
WORKER_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock build.rs plans.toml

.PHONY: help tools check-prereqs rust-tools node-tools worker standin dev migrate-local dev-vars token \
        test unit client-test e2e browser-tools browser-test bench lint fmt clean

help:
	@echo "make dev    - install what is missing, migrate local D1, serve on http://127.0.0.1:$(PORT) (+ the Stripe stand-in)"
	@echo "make test   - native unit tests, the JS client's tests, end-to-end tests against wrangler dev"
	@echo "make bench  - bundle size, latency/throughput and D1 rows per request"
	@echo "make token USER=alice - a development bearer token (HS256, from .dev.vars)"
	@echo "make token SERVICE=x  - a service token for /api/entitlements/check (SERVICE_JWT_SECRET)"
	@echo "make lint   - cargo fmt --check and clippy (native and wasm32)"

# ---------------------------------------------------------------------------------
# Tools. Each step is skipped when what it installs is already there.

check-prereqs:
	@missing=""; for t in cargo rustup node npm python3; do \
	  command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "error: missing required tool(s):$$missing. Install Rust (rustup), Node.js >= 20 with npm, and Python 3." >&2; \
	  exit 1; fi
	@lock=$$(grep -A1 '^name = "wasm-bindgen"$$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p'); \
	if [ "$$lock" != "$(WASM_BINDGEN_VERSION)" ]; then \
	  echo "error: Cargo.lock has wasm-bindgen $$lock but the Makefile installs wasm-bindgen-cli $(WASM_BINDGEN_VERSION); keep them equal." >&2; \
	  exit 1; fi

rust-tools: check-prereqs
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@if [ "$$($(CARGO_BIN)/worker-build --version 2>/dev/null)" != "$(WORKER_BUILD_VERSION)" ]; then \
	  echo "installing worker-build $(WORKER_BUILD_VERSION) (takes a few minutes once)"; \
	  cargo install --locked --force worker-build --version "=$(WORKER_BUILD_VERSION)"; fi
	@if [ "$$($(CARGO_BIN)/wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $(WASM_BINDGEN_VERSION)" ]; then \
	  echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (takes a few minutes once)"; \
	  cargo install --locked --force wasm-bindgen-cli --version "=$(WASM_BINDGEN_VERSION)" || { \
	    echo "note: its lockfile pins a crate version the registry no longer serves; retrying with fresh resolution"; \
	    cargo install --force wasm-bindgen-cli --version "=$(WASM_BINDGEN_VERSION)"; }; fi

node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is missing: install Node.js >= 20" >&2; exit 1; }
	npm ci --no-audit --no-fund
	@touch $@

node-tools: node_modules/.package-lock.json

tools: rust-tools node-tools

# ---------------------------------------------------------------------------------
# Build

# worker-build keeps the Wasm `name` section (wasm-opt --debuginfo) for readable panic
# stacks; plangate maps every error itself and never panics on request input, so the
# section is stripped: it was ~15% of the gzipped bundle (see BENCHMARKS.md).
WASM_FEATURES := --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
                 --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling
# Beyond -Oz, measured on the gzipped Wasm: --low-memory-unused saves ~1.6 KB (wasm-opt
# may fold constant offsets into loads and stores; valid because nothing lives in the
# low 1 KiB: Rust's shadow stack fills 0..1 MiB growing down from 1 MiB, data sits
# above it), --gufa (whole-program constant flow) and a second -Oz round ~0.2 KB more.
# -tnh/-iit (assume traps, i.e. panics, never happen) are not used.
WASM_OPT_FLAGS := --low-memory-unused --gufa -Oz -Oz --strip-debug --strip-producers

build/index.js: $(WORKER_SOURCES)
	worker-build --release
	@test -f $@ || { echo "error: worker-build did not produce $@" >&2; exit 1; }
	$(WASM_OPT_BIN) build/index_bg.wasm $(WASM_FEATURES) $(WASM_OPT_FLAGS) -o build/index_bg.wasm
	@touch $@

worker: tools build/index.js

# ---------------------------------------------------------------------------------
# Local development

.dev.vars:
	cp .dev.vars.example .dev.vars
	@echo "created .dev.vars from .dev.vars.example"

dev-vars: .dev.vars

migrate-local: node-tools
	CI=1 wrangler d1 migrations apply DB --local

token: dev-vars
	@if [ -n "$(SERVICE)" ]; then \
		python3 scripts/token.py --secret-file .dev.vars --service "$(SERVICE)" --ttl 86400; \
	else \
		python3 scripts/token.py --secret-file .dev.vars --sub "$(USER)" --email "$(USER)@example.com"; \
	fi

# The Stripe stand-in of `make dev` and the browser tests (dev/stripe_standin.rs), native.
standin: check-prereqs
	cargo build --example stripe-standin

dev: worker standin dev-vars migrate-local
	@PORT=$(PORT) STANDIN_PORT=$(STANDIN_PORT) bash scripts/dev.sh

# ---------------------------------------------------------------------------------
# Tests and benchmarks

unit: check-prereqs
	cargo test --lib --bins

e2e: worker
	cargo test --test api -- --test-threads=4

# The browser client (public/client/plangate.js) with Node's test runner and a stubbed fetch.
client-test: check-prereqs
	node --test tests/client/

# Debian's Chromium for the browser tests (installed as root with apt-get; nothing
# downloads a browser build). CHROMIUM=/path overrides it.
browser-tools:
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests (once)"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "error: chromium is missing: install Debian's chromium package (or set CHROMIUM=/path)" >&2; exit 1; fi; fi

# The account page in headless Chromium against the make dev stack; screenshots in target/browser/.
browser-test: worker standin node-tools browser-tools
	node --test tests/browser/

test: unit client-test e2e browser-test

bench: worker
	cargo bench --bench load

lint: rust-tools
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

fmt:
	cargo fmt --all

clean:
	rm -rf build target .wrangler
