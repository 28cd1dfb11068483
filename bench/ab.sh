#!/usr/bin/env bash
# A/B of agentbox binaries on the concurrency ratio: for each round, each binary in turn gets
# a fresh server (2 threads, empty data dir) and one `bench_engine.py --skip-llama-cpp
# --concurrency 1,8 --runs 5`; prints the medians at 1 and 8 streams and their ratio.
# Alternating binaries within a round keeps a shared machine's drift out of the comparison.
# Usage: bench/ab.sh ROUNDS BIN [BIN ...]; AB_ARGS adds bench_engine.py flags (e.g.
# --unique-prompts).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="$1"; shift
port=8191
for _ in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    data="$(mktemp -d)"
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" --threads 2 >"$data/server.log" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
      curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
      sleep 0.5
    done
    raw="$(.venv-bench/bin/python bench/bench_engine.py --base-url "http://127.0.0.1:$port" \
      --skip-llama-cpp --concurrency 1,8 --runs 5 ${AB_ARGS:-} 2>/dev/null | grep -oE 'raw runs: .*' || true)"
    kill "$server"; wait "$server" 2>/dev/null || true
    rm -rf "$data"
    .venv-bench/bin/python - "$bin" "$raw" <<'PY'
import json, statistics, sys
bin_, raw = sys.argv[1], sys.argv[2]
if not raw:
    sys.exit(f"{bin_}: the benchmark printed no results")
runs = json.loads(raw[len("raw runs: "):].removesuffix(" -->"))
one, eight = statistics.median(runs["ab_conc_1"]), statistics.median(runs["ab_conc_8"])
d1, d8 = statistics.median(runs["ab_conc_decode_1"]), statistics.median(runs["ab_conc_decode_8"])
print(f"{bin_}  1 stream: {one:6.1f}  8 streams: {eight:6.1f}  ratio {eight / one:.3f}"
      f"  (decode-only {d1:6.1f} / {d8:6.1f}, ratio {d8 / d1:.3f})")
PY
  done
done
