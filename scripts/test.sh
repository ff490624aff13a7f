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
cargo test --workspace "$@"
