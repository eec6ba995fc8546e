#!/usr/bin/env bash
# Sets up (wasm target, redis-server, prometheus, docker-compose, plugins) and
# runs every test: unit tests, the StateStore contract suite, and the
# end-to-end suites against real processes (redis-server, the flowhost binary,
# Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-tools
cargo fmt --all --check
cargo test --workspace "$@"
