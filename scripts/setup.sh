#!/usr/bin/env bash
# Installs what building Wasmill needs on a fresh machine, idempotently: the wasm32-wasip2
# target (guest plugins compile to components directly with it).
set -euo pipefail
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi
