#!/usr/bin/env bash
# Runs bench/chunked_prefill.py against agentbox with chunked prefill (the default
# 128-token budget per step) and without (a budget larger than the whole prompt).
# Usage: bench/chunked_prefill.sh AGENTBOX_BIN
set -euo pipefail
bin="$1"
cd "$(dirname "$0")/.."
cat /proc/loadavg
for setting in "chunked 128" "unchunked 8192"; do
  set -- $setting
  data="$(mktemp -d)"
  printf 'engine:\n  max_batched_tokens: %s\n' "$2" > "$data/agentbox.yaml"
  "$bin" serve --listen 127.0.0.1:8182 --data-dir "$data" --threads 2 --config "$data/agentbox.yaml" >"$data/log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:8182/health/ready >/dev/null && break; sleep 0.5; done
  .venv-bench/bin/python bench/chunked_prefill.py --base-url http://127.0.0.1:8182 --label "$1 (max_batched_tokens $2)"
  kill "$server"; wait "$server" || true; rm -rf "$data"
done
