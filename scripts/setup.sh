#!/usr/bin/env bash
# Installs what flowhost needs to build and test on a fresh Debian machine:
# the wasm32-wasip2 Rust target and, with --redis, redis-server. Then builds
# the plugins into plugins/dist (and the test plugins into plugins/testing/dist).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null

if [[ "${1:-}" == "--redis" ]] && ! command -v redis-server >/dev/null; then
  echo "installing redis-server"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

plugins/build.sh
