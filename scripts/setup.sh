#!/usr/bin/env bash
# Installs what building Wasmill and its example plugins needs on a fresh machine,
# idempotently, saying what it does:
#   - the wasm32-wasip2 Rust target (Rust plugins compile to components directly with it);
#   - componentize-py (PyPI), which builds Python plugins (bundles CPython into the component);
#   - componentize-js (npm), which builds JavaScript plugins (bundles StarlingMonkey).
# Python and npm tools go to the user's ~/.local (no root needed); `wasmill build` looks there
# as well as on PATH. Set WASMILL_SKIP_GUESTS=1 to install the Rust target only.
set -euo pipefail

COMPONENTIZE_PY=0.25.1
COMPONENTIZE_JS=0.23.0

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

[ "${WASMILL_SKIP_GUESTS:-0}" = 1 ] && exit 0
export PATH="$HOME/.local/bin:$PATH"

if ! componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY"; then
  echo "setup: pip install componentize-py==$COMPONENTIZE_PY (builds Python plugins)"
  python3 -m pip install --quiet --user "componentize-py==$COMPONENTIZE_PY" 2>/dev/null \
    || python3 -m pip install --quiet "componentize-py==$COMPONENTIZE_PY"
fi

if ! componentize-js --version 2>/dev/null | grep -q "$COMPONENTIZE_JS"; then
  echo "setup: npm install -g --prefix ~/.local @bytecodealliance/componentize-js@$COMPONENTIZE_JS (builds JavaScript plugins)"
  npm install --silent -g --prefix "$HOME/.local" "@bytecodealliance/componentize-js@$COMPONENTIZE_JS"
fi
