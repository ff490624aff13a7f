#!/usr/bin/env bash
# Start-up time of `wasmill run` with N plugins (default 100), cold (empty compile cache) and
# warm (cache filled by the previous start). Each plugin is a distinct component (the
# passthrough plugin with a custom section naming it), bound by a sidecar. Prints seconds
# from process start until every handler reports `running` in GET /handlers.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
BIN=${WASMILL_BIN:-target/release/wasmill}
[ -x "$BIN" ] || cargo build --release -p wasmill
scripts/build-plugins.sh >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export XDG_CACHE_HOME="$work/cache"  # a compile cache of its own: the first start is cold
python3 - "$N" "$work/plugins" plugins/passthrough.wasm <<'PY'
import os, sys
n, out, src = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
base = open(src, 'rb').read()
def leb(v):
    b = bytearray()
    while True:
        x = v & 0x7f; v >>= 7
        b.append(x | (0x80 if v else 0))
        if not v: return bytes(b)
for i in range(n):
    name = b"wasmill-bench"; data = f"plugin {i}".encode()
    body = leb(len(name)) + name + data
    open(f"{out}/p{i}.wasm", 'wb').write(base + b"\x00" + leb(len(body)) + body)
    open(f"{out}/p{i}.toml", 'w').write(f'subscribe = "in{i}"\npublish = "out{i}"\n')
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
measure() {
  local start end
  start=$(date +%s.%N)
  "$BIN" run --plugins "$work/plugins" --http "127.0.0.1:$port" >"$work/log" 2>&1 &
  local pid=$!
  until [ "$(curl -s "127.0.0.1:$port/handlers" 2>/dev/null | grep -o '"state":"running"' | wc -l)" -ge "$N" ]; do
    sleep 0.05
    kill -0 $pid 2>/dev/null || { cat "$work/log"; exit 1; }
  done
  end=$(date +%s.%N)
  kill -TERM $pid; wait $pid || true
  python3 -c "print(f'{$end-$start:.2f}')"
}
echo "start-up with $N plugins, cold cache: $(measure) s"
echo "start-up with $N plugins, warm cache: $(measure) s"
