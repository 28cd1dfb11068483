"""Prefix caching, measured: time to first token of a chat request whose ~1,000-token
system prompt is cold, then warm (a different question after the same system prompt).

Run: bench/run_prefix_cache.sh (starts agentbox). By hand:
    .venv/bin/python bench/prefix_cache.py --base-url http://127.0.0.1:8183
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

MODEL = "SmolLM2-135M-Instruct"


def ttft(client: httpx.Client, system: str, question: str) -> float:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 8, "temperature": 0, "stream": True,
    }
    started = time.monotonic()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                return time.monotonic() - started
    raise RuntimeError("no token")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8183")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cold, warm = [], []
    with httpx.Client(base_url=args.base_url, timeout=None) as client:
        for run in range(args.runs):
            # A new system prompt per run, so the first request is really cold.
            system = f"Session {run}. " + "".join(
                f"Rule {i}: answer politely, briefly and truthfully. " for i in range(85)
            )
            tokens = client.post("/tokenize", json={"model": MODEL, "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": "Hi"}]}).json()["count"]
            cold.append(ttft(client, system, "What is the capital of France?"))
            warm.append(ttft(client, system, "Name a colour."))
    print(json.dumps({
        "prompt_tokens": tokens,
        "cold_ttft_median_s": round(statistics.median(cold), 3),
        "warm_ttft_median_s": round(statistics.median(warm), 3),
        "speedup": round(statistics.median(cold) / statistics.median(warm), 2),
        "cold_runs": [round(x, 3) for x in cold],
        "warm_runs": [round(x, 3) for x in warm],
    }))


if __name__ == "__main__":
    main()
