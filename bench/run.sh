#!/usr/bin/env bash
# Starts agentbox (2 threads, fresh data dir) and runs bench/bench_engine.py against it,
# side by side with llama.cpp in the same run. Usage: bench/run.sh AGENTBOX_BIN [bench args]
set -euo pipefail
bin="$1"; shift
cd "$(dirname "$0")/.."
port=8181
data="$(mktemp -d)"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
  sleep 0.5
done
.venv-bench/bin/python bench/bench_engine.py --base-url "http://127.0.0.1:$port" "$@"
