#!/usr/bin/env bash
# The whole test suite, as the README's quick start and CI run it: installs what the build
# needs, builds the example plugins once, makes sure the local servers run, then runs every
# test of the workspace (unit tests, the pub/sub conformance suite on every backend against
# the real servers, the WASM sandbox tests and the end-to-end tests of the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -x scripts/build-plugins.sh ]; then scripts/build-plugins.sh; fi
scripts/ensure-services.sh
# The library embeds without the binary's dependencies (the `cli` feature).
if cargo tree -p wasmill -e normal --no-default-features --prefix none 2>/dev/null \
    | grep -E '^(clap|reqwest|libmimalloc-sys|mimalloc|tracing-subscriber) '; then
  echo "test: the wasmill library without default features depends on the above" >&2
  exit 1
fi
cargo test --workspace "$@"
