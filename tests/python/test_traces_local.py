"""Automatic traces of local-model calls carry the engine's own account: queue, prefill
and decode times, and prompt tokens found in the prefix cache. Two calls share a long
system prompt; the second's generation must show the cache hit (as `usageDetails` and in
its metadata), read back through Langfuse's read API on the session server."""

from __future__ import annotations

import time

import httpx

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(80))


def generation_of(server, trace_id: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(f"{server.base_url}/api/public/traces/{trace_id}", timeout=10)
        if r.status_code == 200 and r.json()["observations"]:
            return r.json()["observations"][0]
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def test_local_generations_carry_engine_timings_and_prefix_cache_hits(server, client):
    ids = []
    for i in range(2):
        trace_id = f"local-engine-{time.time_ns()}-{i}"
        client.chat.completions.create(
            model=MODEL, max_tokens=4, temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Say hi {i}."}],
            extra_body={"metadata": {"trace_id": trace_id}})
        ids.append(trace_id)
    first, second = (generation_of(server, t) for t in ids)
    for generation in (first, second):
        engine = generation["metadata"]["engine"]
        assert engine["queue_ms"] >= 0 and engine["prefill_ms"] > 0 and engine["decode_ms"] >= 0, engine
        assert generation["model"] == MODEL and generation["usage"]["input"] > 256
    assert second["metadata"]["engine"]["prefix_cache_hit_tokens"] >= 128, second["metadata"]
    assert second["usageDetails"]["input_cached_tokens"] == second["metadata"]["engine"]["prefix_cache_hit_tokens"]
    assert second["usageDetails"]["input_cached_tokens"] < second["usage"]["input"]
