"""Scheduler stress through the HTTP API: 64 concurrent greedy streams of mixed lengths,
some cancelled by their client part-way. Every stream that is not cancelled must finish
with exactly the text the same request produces alone, and afterwards the engine must be
idle (nothing running or waiting, per /metrics)."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx

CHAT_MODEL = "SmolLM2-135M-Instruct"
PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def add(a, b):\n",
    "List the planets of the solar system:",
    "Water boils at",
    "In 1492, Columbus",
    " ".join(["The lighthouse keeper wrote in the log."] * 30),
    "1, 2, 3,",
]


def body(prompt: str, max_tokens: int, stream: bool) -> dict:
    return {
        "model": CHAT_MODEL, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "stream": stream,
    }


def metric(http: httpx.Client, name: str) -> float:
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_64_concurrent_streams_with_cancellations(server, http):
    rng = random.Random(1234)
    jobs = [
        {"prompt": rng.choice(PROMPTS), "max_tokens": rng.choice([1, 8, 40, 120]),
         "cancel_after": rng.choice([None, None, None, 2, 10])}
        for _ in range(64)
    ]
    # What each distinct request produces when it runs alone.
    expected = {}
    for job in jobs:
        key = (job["prompt"], job["max_tokens"])
        if key not in expected:
            r = http.post("/v1/completions", json=body(*key, stream=False))
            assert r.status_code == 200, r.text
            expected[key] = r.json()["choices"][0]["text"]

    results: list[dict | None] = [None] * len(jobs)

    def run(i: int, job: dict) -> None:
        text, chunks, finish, done = "", 0, None, False
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            with client.stream("POST", "/v1/completions",
                               json=body(job["prompt"], job["max_tokens"], stream=True)) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[len("data: "):]
                    if payload == "[DONE]":
                        done = True
                        break
                    choice = json.loads(payload)["choices"][0]
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
                    chunks += 1
                    if job["cancel_after"] is not None and chunks >= job["cancel_after"]:
                        break  # the client walks away mid-stream
        results[i] = {"text": text, "finish": finish, "done": done}

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(not t.is_alive() for t in threads), "a stream never ended"

    completed = 0
    for job, result in zip(jobs, results):
        assert result is not None
        if result["done"]:
            completed += 1
            assert result["finish"] in ("stop", "length")
            assert result["text"] == expected[(job["prompt"], job["max_tokens"])]
        else:
            assert job["cancel_after"] is not None, f"stream ended without [DONE]: {job}"
    assert completed >= 32

    deadline = time.monotonic() + 30
    while metric(http, "vllm:num_requests_running") or metric(http, "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "the engine is still busy after every client left"
        time.sleep(0.2)
