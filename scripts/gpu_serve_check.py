#!/usr/bin/env python3
"""The whole server on the CUDA backend: `agentbox serve --device cuda` with a random-weight
Llama, driven over HTTP, against transformers on the same weights.

Usage (on a GPU machine with torch and transformers; binaries from build-gpu-bundle.sh):
    python3 scripts/gpu_serve_check.py --bin gpu-bin/agentbox --out DIR [--shape 1b]
Without a GPU, `--device cpu --shape tiny --no-reference` runs the same HTTP checks on the
CPU backend (numpy, safetensors and tokenizers suffice), to try the script itself.

The model gets a word-level tokenizer whose tokens are `t0 .. t{vocab-1}`, so completions
name their token ids. Checks:
  - start-up logs the GPU and the KV cache's capacity in tokens;
  - greedy completions of four prompts equal transformers' `generate`, or first differ
    where transformers' own top-2 logits are within 0.02 (a bf16 near-tie);
  - the same prompts sent 16 at once give the same text as one at a time (reported: cuBLAS
    may pick other kernels for other batch sizes);
  - sampling on the GPU: the same seed gives the same text, other seeds other texts;
  - a request with log-probabilities (sampled on the host) answers with them;
  - afterwards every KV block is free (`vllm:kv_cache_usage_perc` is 0).
Writes DIR/serve_check_<shape>.txt and exits non-zero on failure.
"""

import argparse
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from llama_shapes import SHAPES as LLAMA_SHAPES

SHAPES = {
    # Small enough to try the script on the CPU.
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, vocab_size=4000),
    **LLAMA_SHAPES,
}
NEAR_TIE = 0.02
NEW_TOKENS = 32


def write_tokenizer(model_dir, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.save(os.path.join(model_dir, "tokenizer.json"))
    json.dump({
        "bos_token": None,
        "eos_token": "t1",
        "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
    }, open(os.path.join(model_dir, "tokenizer_config.json"), "w"))


def make_model(shape, model_dir, with_torch):
    config = dict(SHAPES[shape], max_position_embeddings=4096, rope_theta=500000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    if with_torch:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = LlamaForCausalLM(LlamaConfig(**config)).eval()
        model.save_pretrained(model_dir, safe_serialization=True)
    else:
        from safetensors.numpy import save_file
        rng = np.random.default_rng(0)
        h, ffn, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        head = h // config["num_attention_heads"]
        kv = head * config["num_key_value_heads"]
        w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)
        tensors = {"model.embed_tokens.weight": w(v, h), "lm_head.weight": w(v, h),
                   "model.norm.weight": np.ones(h, np.float32)}
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}"
            tensors.update({
                f"{p}.input_layernorm.weight": np.ones(h, np.float32),
                f"{p}.post_attention_layernorm.weight": np.ones(h, np.float32),
                f"{p}.self_attn.q_proj.weight": w(h, h),
                f"{p}.self_attn.k_proj.weight": w(kv, h),
                f"{p}.self_attn.v_proj.weight": w(kv, h),
                f"{p}.self_attn.o_proj.weight": w(h, h),
                f"{p}.mlp.gate_proj.weight": w(ffn, h),
                f"{p}.mlp.up_proj.weight": w(ffn, h),
                f"{p}.mlp.down_proj.weight": w(h, ffn),
            })
        save_file(tensors, os.path.join(model_dir, "model.safetensors"))
        json.dump(dict(config, model_type="llama", architectures=["LlamaForCausalLM"]),
                  open(os.path.join(model_dir, "config.json"), "w"))
        model = None
    write_tokenizer(model_dir, config["vocab_size"])
    return model


def reference_greedy(model, prompts):
    import torch
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
            gaps = [float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in gen.scores]
            out.append((gen.sequences[0, len(prompt):].tolist(), gaps))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base, path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def get_text(base, path):
    with urllib.request.urlopen(base + path, timeout=60) as response:
        return response.read().decode()


def ids_of(text):
    return [int(t[1:]) for t in text.split()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="1b", choices=SHAPES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip transformers (no GPU, no torch)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    report = open(os.path.join(args.out, f"serve_check_{args.shape}.txt"), "w")
    failures = 0

    def say(line):
        print(line, flush=True)
        report.write(line + "\n")

    def check(ok, line):
        nonlocal failures
        failures += not ok
        say(f"{line}: {'OK' if ok else 'FAIL'}")

    work = tempfile.mkdtemp(prefix="agentbox-serve-")
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir)
    model = make_model(args.shape, model_dir, with_torch=not args.no_reference)
    vocab = SHAPES[args.shape]["vocab_size"]
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, vocab, n).tolist() for n in (1, 7, 40, 130)]
    reference = None if args.no_reference else reference_greedy(model, prompts)
    if model is not None:
        import torch
        del model
        torch.cuda.empty_cache()

    config = os.path.join(work, "agentbox.yaml")
    with open(config, "w") as f:
        f.write(f"models:\n  - name: llama\n    path: {model_dir}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(args.out, f"serve_{args.shape}.log")
    log = open(log_path, "w")
    server = subprocess.Popen(
        [args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--config", config,
         "--data-dir", os.path.join(work, "data"), "--device", args.device],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        ready = False
        while time.time() < deadline and not ready:
            try:
                get_text(base, "/health/ready")  # 503 until the models are loaded
                ready = True
            except Exception:
                if server.poll() is not None:
                    break
                time.sleep(0.5)
        started = open(log_path).read()
        check(ready, "the server started and loaded the model")
        if not ready:
            say(started[-3000:])
            sys.exit(1)
        kv_line = next((l for l in started.splitlines() if "KV cache:" in l), "")
        say(kv_line.strip())
        check(f"device: {args.device}" in started, f"start-up names the device ({args.device})")

        def complete(prompt, **extra):
            body = dict(model="llama", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                        ignore_eos=True)
            body.update(extra)
            return post(base, "/v1/completions", body)

        singles = []
        for i, prompt in enumerate(prompts):
            t0 = time.time()
            answer = complete(prompt)
            got = ids_of(answer["choices"][0]["text"])
            singles.append(got)
            check(len(got) == NEW_TOKENS, f"prompt {i} ({len(prompt)} tokens): {len(got)} tokens "
                  f"in {time.time() - t0:.2f} s")
            if reference is not None:
                want, gaps = reference[i]
                same = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
                if same == len(want):
                    check(True, f"prompt {i}: greedy {same}/{len(want)} equal to transformers")
                else:
                    check(gaps[same] < NEAR_TIE,
                          f"prompt {i}: greedy equal for {same}/{len(want)} tokens; "
                          f"transformers' top-2 gap there is {gaps[same]:.4f}")

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            batch = list(pool.map(lambda k: ids_of(complete(prompts[k % 4])["choices"][0]["text"]),
                                  range(16)))
        equal = sum(batch[k] == singles[k % 4] for k in range(16))
        say(f"16 at once: {equal}/16 equal to the same prompt alone (reported, not checked)")

        sampled = lambda seed: complete(prompts[2], temperature=0.8, top_p=0.9, top_k=50,
                                        seed=seed)["choices"][0]["text"]
        first, again, other = sampled(1), sampled(1), sampled(2)
        check(first == again, "sampling with the same seed repeats")
        check(first != other, "sampling with another seed differs")

        answer = complete(prompts[1], max_tokens=4, logprobs=2)
        logprobs = answer["choices"][0].get("logprobs") or {}
        check(len(logprobs.get("token_logprobs") or []) == 4,
              "log-probabilities (sampled on the host) are returned")

        time.sleep(0.5)
        metrics = get_text(base, "/metrics")
        usage = [float(m) for m in re.findall(r'vllm:kv_cache_usage_perc\{[^}]*\} ([0-9.e+-]+)', metrics)]
        check(usage and max(usage) == 0.0, f"every KV block is free afterwards ({usage})")
    finally:
        server.terminate()
        server.wait(timeout=60)
    say(f"failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
