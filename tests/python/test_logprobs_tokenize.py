"""Log-probabilities on chat and completions (the official `openai` SDK), and vLLM's
`/tokenize` and `/detokenize` endpoints, against the running agentbox binary."""

from __future__ import annotations

import math

import pytest

CHAT_MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_chat_logprobs_describe_the_greedy_tokens(client):
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=12,
        logprobs=True, top_logprobs=3,
    )
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0.0
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-6)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token


def test_streamed_chat_logprobs_cover_the_streamed_text(client):
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=12,
        logprobs=True, stream=True,
    )
    text, tokens = "", []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += [t.token for t in chunk.choices[0].logprobs.content]
    assert text and "".join(tokens) == text


def test_completion_logprobs_and_offsets(client):
    prompt = "The capital of France is"
    r = client.completions.create(
        model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2, echo=True,
    )
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == r.usage.completion_tokens
    assert prompt + "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == len(prompt)
    assert lp.text_offset == sorted(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0.0 and 1 <= len(top) <= 2
        assert max(top.values()) == pytest.approx(logprob, abs=1e-6)
        assert token in top


def test_logprobs_validation(http):
    base = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 2}
    r = http.post("/v1/chat/completions", json={**base, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = http.post("/v1/chat/completions", json={**base, "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = http.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "x", "logprobs": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_tokenize_round_trips_and_matches_usage(client, http):
    text = "Hello, world! 12345 — agentbox"
    r = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": text, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"])
    assert body["max_model_len"] == 8192
    back = http.post("/detokenize", json={"model": CHAT_MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json()["prompt"] == text

    # The chat form applies the model's template: its count is what generation bills.
    chat = http.post("/tokenize", json={"model": CHAT_MODEL, "messages": MESSAGES}).json()
    usage = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=1).usage
    assert chat["count"] == usage.prompt_tokens


def test_detokenize_rejects_unknown_ids(http):
    r = http.post("/detokenize", json={"model": CHAT_MODEL, "tokens": [1, 10_000_000]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tokens[1]"
    r = http.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
