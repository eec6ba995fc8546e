#!/usr/bin/env bash
# Sets up, builds and serves the example flows on http://127.0.0.1:8080 with
# the in-memory store (set FLOWHOST_REDIS_URL to persist in Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release -p flowhost -- serve "$@"
