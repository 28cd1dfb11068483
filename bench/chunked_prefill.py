"""Chunked prefill, measured: the largest gap between two tokens of a running stream while
a long prompt arrives, for two scheduler settings of the same binary.

Run: bench/chunked_prefill.sh (starts agentbox once per setting). By hand:
    .venv/bin/python bench/chunked_prefill.py --base-url http://127.0.0.1:8181 --label chunked
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx

MODEL = "SmolLM2-135M-Instruct"


def stream_arrivals(base_url: str, arrivals: list[float], stop: threading.Event) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time, in a small village by the sea, there lived",
        "max_tokens": 4000,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(timeout=None) as client:
        with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic())
                if stop.is_set():
                    return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8181")
    ap.add_argument("--label", required=True)
    ap.add_argument("--long-prompt-tokens", type=int, default=4000)
    args = ap.parse_args()

    arrivals: list[float] = []
    stop = threading.Event()
    reader = threading.Thread(target=stream_arrivals, args=(args.base_url, arrivals, stop))
    reader.start()
    time.sleep(3.0)  # the stream is decoding steadily

    # A unique ~4,000-token prompt: numbers tokenize one digit per token here.
    words = " ".join(f"item {i} is {i * 7 % 1000}." for i in range(args.long_prompt_tokens))
    with httpx.Client(timeout=None) as client:
        ids = client.post(f"{args.base_url}/tokenize", json={"model": MODEL, "prompt": words}).json()["tokens"]
        prompt = ids[: args.long_prompt_tokens]
        started = time.monotonic()
        r = client.post(
            f"{args.base_url}/v1/completions",
            json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0},
        )
        r.raise_for_status()
        finished = time.monotonic()
    time.sleep(1.0)
    stop.set()
    reader.join()

    before = [b - a for a, b in zip(arrivals, arrivals[1:]) if b < started]
    during = [b - a for a, b in zip(arrivals, arrivals[1:]) if b >= started and a <= finished]
    print(json.dumps({
        "label": args.label,
        "long_prompt_tokens": len(prompt),
        "long_prompt_seconds": round(finished - started, 2),
        "gap_before_median_ms": round(statistics.median(before) * 1000, 1),
        "gap_during_max_ms": round(max(during) * 1000, 1) if during else None,
        "tokens_during": len(during),
    }))


if __name__ == "__main__":
    main()
