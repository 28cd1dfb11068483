#!/usr/bin/env bash
# Builds what a GPU machine without a Rust toolchain runs, stripped, into gpu-bin/:
# the agentbox binary, the engine's CUDA test binary and the Llama check runner
# (engine/examples/cuda_llama.rs) and benchmark (cuda_bench.rs). Then, on the GPU machine:
#   bash scripts/gpu_tests.sh gpu-bin OUT_DIR
#   python3 scripts/gpu_bench.py --bin gpu-bin/cuda_bench --out OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentbox-target}"
mkdir -p gpu-bin
cargo build --release --locked -p agentbox
cp "$CARGO_TARGET_DIR/release/agentbox" gpu-bin/agentbox
test_bin=$(cargo test --release --locked -p engine --test cuda_kernels --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_kernels":
        print(m["executable"])')
cp "$test_bin" gpu-bin/cuda_kernels
cargo build --release --locked -p engine --example cuda_llama --example cuda_bench
cp "$CARGO_TARGET_DIR/release/examples/cuda_llama" "$CARGO_TARGET_DIR/release/examples/cuda_bench" gpu-bin/
strip gpu-bin/agentbox gpu-bin/cuda_kernels gpu-bin/cuda_llama gpu-bin/cuda_bench
ls -la gpu-bin
