#!/usr/bin/env bash
# Installs what flowhost needs to build and test on a fresh Debian machine:
# the wasm32-wasip2 Rust target and, with --test-tools, the programs the tests
# run for real (redis-server, prometheus and promtool, docker-compose, and
# schemathesis in the virtualenv .flowhost/venv). Then builds the plugins into
# plugins/dist (and test plugins into plugins/testing/dist).
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
  # The OpenAPI fuzzer, pinned with every dependency by hash, in a git-ignored
  # virtualenv of its own.
  venv=.flowhost/venv
  wanted=$(sed -n 's/^schemathesis==\([^ ]*\).*/\1/p' scripts/schemathesis-requirements.txt)
  if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"version $wanted" ]]; then
    echo "installing schemathesis $wanted into $venv"
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
      SUDO=""
      if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes \
      -r scripts/schemathesis-requirements.txt
  fi
fi

plugins/build.sh
