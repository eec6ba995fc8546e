#!/usr/bin/env bash
# Builds every plugin for wasm32-wasip2 and copies the components to
# plugins/dist/ (the executors) and plugins/testing/dist/ (the test plugins).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
out="$here/target/$target/release"

executors=(text-normalize text-stats keywords summarize)
testing=(echo chaos other-world)

rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml"

built=()
copy() {
    local dest="$1"
    shift
    mkdir -p "$dest"
    for name in "$@"; do
        # Cargo names the artifact after the crate, with '_' for '-'.
        cp "$out/${name//-/_}.wasm" "$dest/$name.wasm"
        built+=("$dest/$name.wasm")
    done
}
copy "$here/dist" "${executors[@]}"
copy "$here/testing/dist" "${testing[@]}"

for file in "${built[@]}"; do
    printf '%9d bytes  %s\n' "$(stat -c %s "$file")" "$file"
done
