#!/usr/bin/env bash
# Starts agentbox (2 threads) and runs bench/prefix_cache.py. Usage: bench/run_prefix_cache.sh AGENTBOX_BIN
set -euo pipefail
bin="$1"
cd "$(dirname "$0")/.."
cat /proc/loadavg
data="$(mktemp -d)"
"$bin" serve --listen 127.0.0.1:8183 --data-dir "$data" --threads 2 >"$data/log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:8183/health/ready >/dev/null && break; sleep 0.5; done
.venv-bench/bin/python bench/prefix_cache.py --base-url http://127.0.0.1:8183
