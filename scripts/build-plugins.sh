#!/usr/bin/env bash
# Builds the plugins workspace (plugins/) into WebAssembly components and copies each one to
# plugins/<name>.wasm, where <name> is the crate's (dashed) name: plugins/json-enrich.wasm.
#
# Idempotent and quick when nothing changed: cargo skips the build, and a component is only
# copied when its bytes differ, so a host watching plugins/ sees no spurious change. Each copy
# is written beside its destination and renamed, so a watcher never reads half a file.
#
# Usage: scripts/build-plugins.sh [extra cargo build arguments]   (from any directory)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
plugins="$root/plugins"
target=wasm32-wasip2

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
fi

# WebAssembly SIMD (standard since wasm 2.0, on in wasmtime by default): byte loops such as
# uppercase's `make_ascii_uppercase` vectorise (16 KiB: 349,370 -> 23,704 fuel per call).
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="${CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS:--C target-feature=+simd128}"

# The host's target dir (Go plugins are built by the `wasmill` binary itself).
host_target="${CARGO_TARGET_DIR:-$root/target}"
# Always the workspace's own target dir, whatever CARGO_TARGET_DIR the caller has set.
export CARGO_TARGET_DIR="$plugins/target"
cargo build --release --target "$target" --manifest-path "$plugins/Cargo.toml" "$@"

out="$CARGO_TARGET_DIR/$target/release"
built=0
copied=0
for manifest in "$plugins"/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    artifact="$out/${name//-/_}.wasm"
    dest="$plugins/$name.wasm"
    if [[ ! -f "$artifact" ]]; then
        echo "build-plugins: $artifact was not built (is $name a cdylib named after its folder?)" >&2
        exit 1
    fi
    built=$((built + 1))
    if ! cmp -s "$artifact" "$dest"; then
        cp "$artifact" "$dest.tmp"
        mv -f "$dest.tmp" "$dest"
        copied=$((copied + 1))
    fi
done
# The Python, JavaScript, C and Go examples (plugins/*-py, *-js, *-c, *-go), with the toolchains
# that scripts/setup.sh installs; each is rebuilt only when one of its files is newer than its
# .wasm. Go ones are built by `wasmill build` (the host's binary, built here if needed: debug,
# or the profile WASMILL_PROFILE names).
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
wit="$root/wit/v0.2.0"
for dir in "$plugins"/*/; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    dest="$plugins/$name.wasm"
    sdks="$root/host/src/cli/scaffold/templates"
    if [[ -f "$dir/pyproject.toml" ]]; then tool=componentize-py; sdk="$sdks/python/wasmill.py"
    elif [[ -f "$dir/package.json" ]]; then tool=componentize-js; sdk="$sdks/js/wasmill.js"
    elif [[ -f "$dir/go.mod" ]]; then tool=go; sdk="$sdks/go/wasmill.go"
    elif compgen -G "$dir/*.c" >/dev/null; then tool=wasm-tools; sdk="$sdks/c/wasmill.h"
        # The Makefile as `wasmill new` writes it (from the template, not committed twice).
        sed -e "s/{name}/$name/" -e "s/{world}/handler/" "$sdks/c/Makefile" > "$dir/.Makefile.new"
        if cmp -s "$dir/.Makefile.new" "$dir/Makefile"; then rm -f "$dir/.Makefile.new"
        else mv -f "$dir/.Makefile.new" "$dir/Makefile"; fi
    else continue
    fi
    # The thin SDK, as `wasmill new` writes it into a project (one source, not committed twice).
    if ! cmp -s "$sdk" "$dir/$(basename "$sdk")"; then cp "$sdk" "$dir/"; fi
    built=$((built + 1))
    if [[ -f "$dest" && -z "$(find -L "$dir" -newer "$dest" -type f -not -path '*/node_modules/*' -not -path '*/build/*' -not -name '*.pyc' | head -1)" ]]; then
        continue
    fi
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build-plugins: $name skipped: $tool is missing (scripts/setup.sh installs it)" >&2
        continue
    fi
    tmp="$plugins/.$name.tmp.wasm"
    if [[ "$tool" == componentize-py ]]; then
        (cd "$dir" && componentize-py -d "$wit" -w wasmill:plugin/handler@0.2.0 componentize app -p . -o "$tmp" >/dev/null)
    elif [[ "$tool" == go ]]; then
        # The binary the caller builds anyway, with the same features, so nothing is compiled
        # twice: the tests' (`cargo test --workspace --no-run`, as scripts/test.sh then runs
        # them), or the release one for the quick start (WASMILL_PROFILE=release).
        profile="${WASMILL_PROFILE:-debug}"
        wasmill="$host_target/$profile/wasmill"
        if [[ "$profile" == release ]]; then
            (cd "$root" && CARGO_TARGET_DIR="$host_target" cargo build --quiet --release -p wasmill --bin wasmill)
        else
            (cd "$root" && CARGO_TARGET_DIR="$host_target" cargo test --quiet --workspace --no-run)
        fi
        "$wasmill" build "$dir" --out "$plugins/.go-out" >/dev/null
        mv -f "$plugins/.go-out/$name.wasm" "$tmp"
        rmdir "$plugins/.go-out" 2>/dev/null || true
    elif [[ "$tool" == wasm-tools ]]; then
        make --no-print-directory -s -C "$dir" WIT="$wit" "$name.wasm" >/dev/null
        mv -f "$dir/$name.wasm" "$tmp"
    else
        (cd "$dir" && componentize-js app.js --wit "$wit" -n wasmill:plugin/handler@0.2.0 -d http fetch-event -o "$tmp" >/dev/null)
    fi
    mv -f "$tmp" "$dest"
    copied=$((copied + 1))
done
echo "build-plugins: $built components in $plugins ($copied updated)"
