#!/usr/bin/env bash
# Builds every plugin for wasm32-wasip2 and copies the components to
# plugins/dist/ (the executors) and plugins/testing/dist/ (the test plugins).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
# Where cargo puts the components: its CARGO_TARGET_DIR when one is set.
out="${CARGO_TARGET_DIR:-$here/target}/$target/release"

executors=(text-normalize text-stats keywords summarize llm-complete)
testing=(echo chaos other-world hostile describe-sleeps describe-loops describe-huge describe-oom blobs contract-0-1-0)

rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml"

built=()
# A plugin's manifest (NAME.toml in its crate: limits, hosts, secrets) goes
# beside its component.
copy() {
    local src="$1" dest="$2"
    shift 2
    mkdir -p "$dest"
    for name in "$@"; do
        # Cargo names the artifact after the crate, with '_' for '-'.
        cp "$out/${name//-/_}.wasm" "$dest/$name.wasm"
        built+=("$dest/$name.wasm")
        if [[ -f "$src/$name/$name.toml" ]]; then
            cp "$src/$name/$name.toml" "$dest/$name.toml"
        fi
    done
}
copy "$here/executors" "$here/dist" "${executors[@]}"
copy "$here/testing" "$here/testing/dist" "${testing[@]}"

for file in "${built[@]}"; do
    printf '%9d bytes  %s\n' "$(stat -c %s "$file")" "$file"
done
