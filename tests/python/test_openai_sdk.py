"""OpenAI-compatibility tests: the official `openai` Python SDK (and raw httpx) against a running agentbox.

Owns the wire-level checks of /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings,
OpenAI-style error bodies, /health, /health/ready and the vLLM-named Prometheus metrics on /metrics,
plus client-disconnect cancellation. The server comes from the `server` fixture in conftest.py and
serves SmolLM2-135M-Instruct (chat, context 8192) and all-MiniLM-L6-v2 (embeddings, 384 dims).
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBED_MODEL = "all-MiniLM-L6-v2"
CONTEXT_LEN = 8192
EMBED_DIM = 384

STORY = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
POEM = [{"role": "user", "content": "Write a long poem about the sea."}]


# --------------------------------------------------------------------------- helpers


def chat(client, messages=STORY, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=CHAT_MODEL, messages=messages, **kw)


def stream_chat(client, messages=STORY, **kw):
    """Returns (chunks, concatenated content)."""
    kw.setdefault("temperature", 0)
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=messages, stream=True, **kw)
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    return chunks, text


def metric_samples(text: str, name: str) -> list[tuple[str, float]]:
    """All samples of exactly `name` in Prometheus text format, as (labels, value)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            metric, rest = line.split("{", 1)
            labels, tail = rest.rsplit("}", 1)
        else:
            metric, _, tail = line.partition(" ")
            labels = ""
        if metric != name:
            continue
        out.append((labels, float(tail.split()[0])))
    return out


def metric_sum(http: httpx.Client, name: str) -> float:
    r = http.get("/metrics")
    assert r.status_code == 200
    samples = metric_samples(r.text, name)
    assert samples, f"metric {name} missing from /metrics"
    return sum(v for _, v in samples)


def embedding_vector(item) -> list[float]:
    emb = item.embedding
    if isinstance(emb, str):
        return decode_b64(emb)
    return list(emb)


def decode_b64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    assert len(raw) % 4 == 0
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def cosine(a, b) -> float:
    return dot(a, b) / (norm(a) * norm(b))


def assert_error_shape(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    body = r.json()
    assert isinstance(body, dict) and "error" in body, body
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, f"error object lacks {key!r}: {err}"
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    return err


# --------------------------------------------------------------------------- models


def test_models_list(client, http):
    models = client.models.list().data
    ids = {m.id for m in models}
    assert CHAT_MODEL in ids and EMBED_MODEL in ids, ids

    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    chat_m, emb_m = by_id[CHAT_MODEL], by_id[EMBED_MODEL]
    assert chat_m["object"] == "model"
    assert chat_m["task"] == "generate"
    assert chat_m["max_model_len"] == CONTEXT_LEN
    assert emb_m["task"] == "embed"
    assert isinstance(emb_m["max_model_len"], int) and emb_m["max_model_len"] > 0
    # The SDK keeps the extra fields too.
    sdk_chat = next(m for m in models if m.id == CHAT_MODEL).to_dict()
    assert sdk_chat["max_model_len"] == CONTEXT_LEN and sdk_chat["task"] == "generate"


# --------------------------------------------------------------------------- chat


def test_chat_non_streamed(client):
    r = chat(client, max_tokens=32)
    assert r.object == "chat.completion"
    assert r.model == CHAT_MODEL
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert c.message.content and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.prompt_tokens + u.completion_tokens == u.total_tokens
    assert u.completion_tokens <= 32
    if c.finish_reason == "length":
        assert u.completion_tokens == 32


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_chat_length_limit(client, param):
    r = chat(client, messages=POEM, **{param: 3})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert r.choices[0].message.content


def test_chat_streamed_matches_non_streamed(client):
    ref = chat(client, max_tokens=24)
    chunks, text = stream_chat(client, max_tokens=24, stream_options={"include_usage": True})
    assert len(chunks) >= 3
    first = chunks[0]
    assert first.object == "chat.completion.chunk"
    assert first.choices and first.choices[0].delta.role == "assistant"
    assert text == ref.choices[0].message.content

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    for c in chunks[:-1]:
        assert c.usage is None
        assert len(c.choices) == 1
    finishes = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert finishes == [ref.choices[0].finish_reason]
    assert len({c.id for c in chunks}) == 1


def test_chat_streamed_without_usage(client):
    chunks, text = stream_chat(client, max_tokens=8)
    assert text
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_sse_wire_format(http):
    body = {
        "model": CHAT_MODEL,
        "messages": STORY,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data_lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert data_lines[-1].strip() == "data: [DONE]"
    for ln in data_lines[:-1]:
        json.loads(ln[len("data:") :])


# --------------------------------------------------------------------------- completions


def test_completions_non_streamed_and_streamed(client):
    prompt = "The three primary colors are"
    r = client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert r.object == "text_completion"
    c = r.choices[0]
    assert c.text
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert r.usage.prompt_tokens + r.usage.completion_tokens == r.usage.total_tokens
    assert r.usage.completion_tokens <= 16

    stream = client.completions.create(
        model=CHAT_MODEL,
        prompt=prompt,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == c.text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_length_limit(client):
    r = client.completions.create(
        model=CHAT_MODEL, prompt="Once upon a time", max_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


# --------------------------------------------------------------------------- determinism & sampling


def test_greedy_determinism(client):
    a = chat(client, max_tokens=24).choices[0].message.content
    b = chat(client, max_tokens=24).choices[0].message.content
    assert a == b


def test_seeded_sampling_determinism(client):
    def sample(seed):
        return chat(client, max_tokens=24, temperature=1.0, seed=seed).choices[0].message.content

    a, b = sample(1234), sample(1234)
    assert a == b
    others = [sample(s) for s in (1, 2, 3, 4)]
    assert len(set(others + [a])) > 1, "five different seeds all gave identical samples"


def test_sampling_params_accepted(client):
    r = chat(
        client,
        max_tokens=12,
        temperature=0.8,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=7,
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 12


def test_top_k_1_and_min_p_1_are_greedy(client):
    greedy = chat(client, max_tokens=16).choices[0].message.content
    k1 = chat(client, max_tokens=16, temperature=1.0, seed=99, extra_body={"top_k": 1})
    assert k1.choices[0].message.content == greedy
    p1 = chat(client, max_tokens=16, temperature=1.0, seed=99, extra_body={"min_p": 1.0})
    assert p1.choices[0].message.content == greedy


# --------------------------------------------------------------------------- stop strings


def _pick_stop(text: str) -> str:
    # A word whose first occurrence is well past the start, so the truncated output is non-empty.
    for m in re.finditer(r"[A-Za-z]{3,}", text):
        w = m.group(0)
        if text.index(w) >= 15:
            return w
    pytest.fail(f"greedy output too short to pick a stop string from: {text!r}")


def test_stop_strings(client):
    base = chat(client, max_tokens=40)
    text = base.choices[0].message.content
    stop = _pick_stop(text)
    expected = text[: text.index(stop)]

    r = chat(client, max_tokens=40, stop=[stop])
    got = r.choices[0].message.content
    assert stop not in got
    assert got == expected
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens <= base.usage.completion_tokens

    # Streaming must not leak a partial stop string across chunk boundaries either.
    chunks, streamed = stream_chat(client, max_tokens=40, stop=stop)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_match_single(client):
    single = chat(client, max_tokens=24).choices[0].message.content
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: chat(client, max_tokens=24).choices[0].message.content, range(8))
        )
    assert results == [single] * 8


# --------------------------------------------------------------------------- embeddings

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
STOCKS = "The stock market crashed today."


def test_embeddings_string_input(client):
    r = client.embeddings.create(model=EMBED_MODEL, input=FOOD)
    assert r.object == "list"
    assert len(r.data) == 1
    v = embedding_vector(r.data[0])
    assert len(v) == EMBED_DIM
    assert abs(norm(v) - 1.0) < 1e-3
    assert r.usage.prompt_tokens > 0


def test_embeddings_list_input_and_similarity(client):
    r = client.embeddings.create(model=EMBED_MODEL, input=[FOOD, BREAD, STOCKS])
    assert [d.index for d in r.data] == [0, 1, 2]
    food, bread, stocks = (embedding_vector(d) for d in r.data)
    for v in (food, bread, stocks):
        assert len(v) == EMBED_DIM
        assert abs(norm(v) - 1.0) < 1e-3
    assert abs(cosine(food, bread) - 0.7553) <= 0.002, cosine(food, bread)
    assert abs(cosine(food, stocks)) < 0.2, cosine(food, stocks)
    # Batched and single-input embeddings agree.
    single = embedding_vector(client.embeddings.create(model=EMBED_MODEL, input=BREAD).data[0])
    assert max(abs(x - y) for x, y in zip(single, bread, strict=True)) < 1e-4


def test_embeddings_base64_matches_float(client, http):
    body = {"model": EMBED_MODEL, "input": [FOOD, BREAD]}
    rf = http.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    assert rf.status_code == 200, rf.text
    floats = [d["embedding"] for d in rf.json()["data"]]
    assert all(isinstance(x, float) for x in floats[0])
    assert len(floats[0]) == EMBED_DIM

    rb = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert rb.status_code == 200, rb.text
    b64 = [d["embedding"] for d in rb.json()["data"]]
    assert all(isinstance(s, str) for s in b64)
    decoded = [decode_b64(s) for s in b64]
    for f, d in zip(floats, decoded, strict=True):
        assert len(d) == EMBED_DIM
        assert max(abs(x - y) for x, y in zip(f, d, strict=True)) <= 1e-6

    # The SDK asks for base64 by default and decodes it itself.
    sdk = client.embeddings.create(model=EMBED_MODEL, input=[FOOD, BREAD])
    for f, item in zip(floats, sdk.data, strict=True):
        v = embedding_vector(item)
        assert max(abs(x - y) for x, y in zip(f, v, strict=True)) <= 1e-6
    # Explicit base64 through the SDK: the SDK hands back the string untouched.
    sdk_b64 = client.embeddings.create(model=EMBED_MODEL, input=FOOD, encoding_format="base64")
    v = embedding_vector(sdk_b64.data[0])
    assert max(abs(x - y) for x, y in zip(floats[0], v, strict=True)) <= 1e-6


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert ei.value.status_code == 404
    assert ei.value.code == "model_not_found"

    r = http.post(
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    err = assert_error_shape(r, 404)
    assert err["code"] == "model_not_found"

    r = http.post("/v1/embeddings", json={"model": "no-such-model", "input": "hi"})
    assert assert_error_shape(r, 404)["code"] == "model_not_found"


def test_invalid_json_is_400(http):
    r = http.post(
        "/v1/chat/completions",
        content=b'{"model": "SmolLM2-135M-Instruct", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_error_shape(r, 400)


@pytest.mark.parametrize(
    "override, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_invalid_field_is_400_with_param(client, http, override, param):
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(override)
    r = http.post("/v1/chat/completions", json=body)
    err = assert_error_shape(r, 400)
    assert err["param"] == param, err

    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(**body)
    assert ei.value.status_code == 400
    assert ei.value.param == param


def test_missing_model_is_400(http):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    err = assert_error_shape(r, 400)
    assert err["param"] == "model", err


def test_context_length_exceeded(client, http):
    # Short prompt, but prompt + max_tokens exceeds the window.
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=CONTEXT_LEN
        )
    assert ei.value.code == "context_length_exceeded"
    assert str(CONTEXT_LEN) in ei.value.message

    # A prompt that alone is over the window must be rejected, never silently truncated.
    long_prompt = "hello " * (CONTEXT_LEN + 500)
    r = http.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 1},
    )
    err = assert_error_shape(r, 400)
    assert err["code"] == "context_length_exceeded"
    assert str(CONTEXT_LEN) in err["message"]

    r = http.post(
        "/v1/completions", json={"model": CHAT_MODEL, "prompt": long_prompt, "max_tokens": 1}
    )
    err = assert_error_shape(r, 400)
    assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize("empty", ["", []])
def test_embeddings_empty_input_is_400(client, http, empty):
    r = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": empty})
    assert_error_shape(r, 400)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBED_MODEL, input=empty, encoding_format="float")


# --------------------------------------------------------------------------- health & metrics


def test_health(http):
    assert http.get("/health").status_code == 200
    assert http.get("/health/ready").status_code == 200


def test_metrics(client, http):
    r = chat(client, max_tokens=5)
    generated = r.usage.completion_tokens
    assert generated > 0

    m = http.get("/metrics")
    assert m.status_code == 200
    text = m.text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert name in text, f"{name} missing from /metrics"

    gen = metric_samples(text, "vllm:generation_tokens_total")
    assert gen, "no vllm:generation_tokens_total sample"
    assert all('model_name="' in labels for labels, _ in gen), gen
    assert sum(v for _, v in gen) >= generated
    assert sum(v for _, v in metric_samples(text, "vllm:prompt_tokens_total")) >= r.usage.prompt_tokens
    e2e_count = metric_samples(text, "vllm:e2e_request_latency_seconds_count")
    assert e2e_count and sum(v for _, v in e2e_count) >= 1


# --------------------------------------------------------------------------- cancellation


def test_client_disconnect_frees_sequence(client, http):
    before = metric_sum(http, "vllm:generation_tokens_total")
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
        max_tokens=2000,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    next(it)
    next(it)
    assert metric_sum(http, "vllm:num_requests_running") >= 1
    stream.close()

    deadline = time.monotonic() + 20.0
    while True:
        running = metric_sum(http, "vllm:num_requests_running")
        if running == 0:
            break
        assert time.monotonic() < deadline, f"still {running} running 20s after the client disconnected"
        time.sleep(0.2)
    # The request was aborted, not run to completion.
    after = metric_sum(http, "vllm:generation_tokens_total")
    assert after - before < 2000


# --------------------------------------------------------------------------- batched prompts


def test_completions_with_a_list_of_prompts(client):
    prompts = ["The capital of France is", "1, 2, 3,"]
    r = client.completions.create(model=CHAT_MODEL, prompt=prompts, n=2, temperature=0, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    # Choice p * n + i answers prompt p, exactly as a lone request would.
    for p, prompt in enumerate(prompts):
        alone = client.completions.create(model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=6)
        assert r.choices[2 * p].text == r.choices[2 * p + 1].text == alone.choices[0].text
    single_prompt_tokens = sum(
        client.completions.create(model=CHAT_MODEL, prompt=p, max_tokens=1).usage.prompt_tokens for p in prompts
    )
    assert r.usage.prompt_tokens == single_prompt_tokens
    assert r.usage.completion_tokens == sum(1 for _ in r.choices) * 6


def test_completions_echo_with_a_list_of_prompts(client):
    prompts = ["Hello there", "Good morning"]
    r = client.completions.create(model=CHAT_MODEL, prompt=prompts, echo=True, temperature=0, max_tokens=3)
    assert r.choices[0].text.startswith("Hello there")
    assert r.choices[1].text.startswith("Good morning")
