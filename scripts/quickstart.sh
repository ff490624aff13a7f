#!/usr/bin/env bash
# Builds Wasmill and the example plugins, then runs the host on its embedded default
# (in-memory pub/sub) with the example plugins in ./plugins live. Extra arguments go to
# `wasmill run` (e.g. --http 127.0.0.1:9090).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Go examples are built by the wasmill binary: the release one, which `cargo run` reuses.
if [ -x scripts/build-plugins.sh ]; then WASMILL_PROFILE=release scripts/build-plugins.sh; fi
exec cargo run --release -p wasmill -- run "$@"
