#!/usr/bin/env bash
# Sets up (wasm target, redis-server, plugins) and runs every test: unit
# tests, the StateStore contract suite and the end-to-end tests against a real
# redis-server and the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --redis
cargo fmt --all --check
cargo test --workspace "$@"
