#!/usr/bin/env bash
# Runs the GPU checks on a machine with an NVIDIA GPU, from binaries built elsewhere by
# scripts/build-gpu-bundle.sh: the CUDA kernel tests, the Llama forward pass against
# transformers (1B-class shape; SHAPES="1b 8b" adds Llama-3-8B's), the whole server with
# --device cuda against transformers, then the GPU monitor against nvidia-smi. Usage: bash scripts/gpu_tests.sh BIN_DIR OUT_DIR
set -uo pipefail
bin=$(realpath "$1"); out=$(realpath -m "$2"); mkdir -p "$out"
cd "$(dirname "$0")/.."
# The driver's libraries, and CUDA's from the toolkit or from PyPI wheels (nvidia-*).
py_libs=$(python3 -c 'import nvidia, os, glob; print(":".join(glob.glob(os.path.join(nvidia.__path__[0], "*", "lib"))))' 2>/dev/null || true)
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${py_libs}:${LD_LIBRARY_PATH:-}"
status=0
echo "== CUDA kernel tests" | tee "$out/cuda_kernels.txt"
AGENTBOX_GPU_TESTS=1 "$bin/cuda_kernels" --test-threads=1 2>&1 | tee -a "$out/cuda_kernels.txt" || status=1
for shape in ${SHAPES:-1b}; do
  echo "== Llama $shape vs transformers"
  python3 scripts/gpu_llama_check.py --bin "$bin/cuda_llama" --out "$out" --shape "$shape" || status=1
done
echo "== agentbox serve --device cuda vs transformers"
python3 scripts/gpu_serve_check.py --bin "$bin/agentbox" --out "$out" --shape 1b || status=1
echo "== GPU monitor vs nvidia-smi"
python3 scripts/gpu_monitor_check.py --bin "$bin/agentbox" --out "$out" || status=1
exit $status
