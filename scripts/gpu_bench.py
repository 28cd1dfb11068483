#!/usr/bin/env python3
"""The CUDA backend's benchmarks against transformers on an H100, in one run.

Usage (on a GPU machine with torch and transformers; binaries from build-gpu-bundle.sh):
    python3 scripts/gpu_bench.py --bin gpu-bin/cuda_bench --out DIR [--shape 8b]

It makes a random-weight Llama (Llama-3-8B's config by default) in bf16, and 64 requests
with prompt and output lengths drawn from a fixed seed (prompts 32-512 tokens, outputs
32-256). transformers' `generate` serves them as one left-padded batch (greedy, no EOS).
Then `cuda_bench` (engine/examples) measures, in its own process:
- the copy bandwidth and the cuBLAS GEMM peak;
- batch-1 decode against the bandwidth roofline;
- prefill of 8 x 2,048 tokens against the GEMM peak;
- the same requests at 1, 16 and 64 at once.
Writes DIR/bench_<shape>.json and prints a summary.
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llama_shapes import SHAPES


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="8b", choices=SHAPES)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    model_dir = f"/tmp/agentbox-bench-{args.shape}"
    model.save_pretrained(model_dir, safe_serialization=True)

    rng = np.random.default_rng(1)
    requests = [
        {"prompt": rng.integers(0, config.vocab_size, int(rng.integers(32, 513))).tolist(),
         "max_new": int(rng.integers(32, 257))}
        for _ in range(args.requests)
    ]
    requests_path = os.path.join(args.out, "requests.json")
    json.dump(requests, open(requests_path, "w"))

    # transformers: one left-padded batch, as many steps as the longest output.
    longest = max(len(r["prompt"]) for r in requests)
    ids = torch.zeros((len(requests), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, longest - len(r["prompt"]):] = torch.tensor(r["prompt"])
        mask[i, longest - len(r["prompt"]):] = 1
    ids, mask = ids.cuda(), mask.cuda()
    steps = max(r["max_new"] for r in requests)
    with torch.no_grad():
        model.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=False,
                       eos_token_id=None, pad_token_id=0)
        torch.cuda.synchronize()
        started = time.time()
        model.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
        torch.cuda.synchronize()
        hf_secs = time.time() - started
    wanted = sum(r["max_new"] for r in requests)
    del model
    torch.cuda.empty_cache()

    ours_path = os.path.join(args.out, f"ours_bench_{args.shape}.json")
    subprocess.run([args.bin, model_dir, requests_path, ours_path], check=True)
    ours = json.load(open(ours_path))
    all_at_once = ours["runs"][-1]
    report = {
        "shape": args.shape,
        "transformers": {"secs": hf_secs, "requested_tokens": wanted,
                         "tokens_per_sec": wanted / hf_secs, "steps": steps},
        "agentbox": ours,
        "throughput_ratio_vs_transformers": all_at_once["tokens_per_sec"] / (wanted / hf_secs),
    }
    json.dump(report, open(os.path.join(args.out, f"bench_{args.shape}.json"), "w"), indent=2)
    print(f"copy bandwidth {ours['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s; "
          f"GEMM peak {ours['gemm_bf16_tflops']:.0f} TFLOP/s")
    print(f"batch-1 decode {ours['decode_batch1_tokens_per_sec']:.1f} tok/s = "
          f"{100 * ours['decode_batch1_roofline_fraction']:.1f}% of the roofline (target 85%)")
    print(f"prefill 8x2048: {ours['prefill_8x2048_secs']:.3f} s, {ours['prefill_tflops']:.0f} TFLOP/s = "
          f"{100 * ours['prefill_fraction_of_gemm_peak']:.1f}% of the GEMM peak (target 50%)")
    print(f"{len(requests)} requests: agentbox {all_at_once['tokens_per_sec']:.0f} tok/s, "
          f"transformers {wanted / hf_secs:.0f} tok/s: "
          f"{report['throughput_ratio_vs_transformers']:.1f}x (target 10x)")
    for run in ours["runs"]:
        print(f"  concurrency {run['concurrency']}: TTFT median {1000 * run['ttft_median_s']:.0f} ms, "
              f"TPOT median {1000 * run['tpot_median_s']:.1f} ms, {run['tokens_per_sec']:.0f} tok/s")


if __name__ == "__main__":
    main()
