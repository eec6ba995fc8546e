#!/usr/bin/env bash
# Installs what flowhost needs to build and test on a fresh Debian machine:
# the wasm32-wasip2 Rust target and, with --test-tools, the programs the tests
# run for real (redis-server, prometheus and promtool, docker-compose). Then
# builds the plugins into plugins/dist (and test plugins into plugins/testing/dist).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null

if [[ "${1:-}" == "--test-tools" ]]; then
  missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

plugins/build.sh
