"""Automatic traces: every inference call through agentbox is traced, with no client code.

A scripted OpenAI-format upstream answers with known usage (1000 prompt + 200 completion
tokens). A gateway agentbox (no local models, a master key) routes `gpt-4o` to it, and the
`openai` SDK calls it with `user`, `metadata.session_id` and `metadata.tags`, streamed and
not. Langfuse's read API (project `default`, the master key as secret) must show one trace
per call with a priced generation; the upstream must never see `metadata`. A second
gateway with `traces: {record_bodies: false}` keeps usage and cost but no bodies.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from conftest import eventually, gateway_server

MASTER = "sk-traces-auto-test"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
# gpt-4o in the built-in price table: $2.50 / M input, $10 / M output.
COST = 1000 * 2.5e-6 + 200 * 10e-6
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Upstream(BaseHTTPRequestHandler):
    """Answers "Paris." whole or as three SSE chunks plus a usage chunk; keeps each body."""
    lock = threading.Lock()
    bodies: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with Upstream.lock:
            Upstream.bodies.append(body)
        if not body.get("stream"):
            data = json.dumps({"id": "chatcmpl-auto", "object": "chat.completion", "created": 1,
                               "model": body["model"], "usage": USAGE,
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "Paris."}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()

        def send(choices, usage=None):
            chunk = {"id": "chatcmpl-auto", "object": "chat.completion.chunk", "created": 1,
                     "model": body["model"], "choices": choices}
            if usage:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        send([{"index": 0, "delta": {"role": "assistant", "content": "Par"}, "finish_reason": None}])
        send([{"index": 0, "delta": {"content": "is."}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], USAGE)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def upstream():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def litellm_config(upstream: str) -> str:
    return ("model_list:\n"
            "  - model_name: gpt-4o\n"
            f"    litellm_params: {{model: openai/gpt-4o, api_base: {upstream}/v1, api_key: sk-upstream}}\n"
            "router_settings: {num_retries: 0}\n"
            f"general_settings: {{master_key: {MASTER}}}\n")


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    with gateway_server(tmp_path_factory.mktemp("traces-auto"), litellm_config(upstream)) as url:
        yield url


@pytest.fixture(scope="module")
def quiet_gateway(upstream, tmp_path_factory):
    with gateway_server(tmp_path_factory.mktemp("traces-auto-quiet"), litellm_config(upstream),
                        agentbox_yaml="traces: {record_bodies: false}\n") as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0, timeout=30)


def traces_of(url: str, user: str, count: int) -> list[dict]:
    """The full traces of `user`, once there are `count` of them, oldest first."""
    def fetch():
        r = httpx.get(url + "/api/public/traces", params={"userId": user}, auth=("pk-auto", MASTER), timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    listed = eventually(fetch, lambda data: len(data) >= count, what=f"{count} automatic traces of {user}")
    assert len(listed) == count, listed
    full = [httpx.get(f"{url}/api/public/traces/{t['id']}", auth=("pk-auto", MASTER), timeout=10).json()
            for t in listed]
    return sorted(full, key=lambda t: t["timestamp"])


@pytest.fixture(scope="module")
def two_calls(gateway):
    """One whole and one streamed call of `auto-user`; their traces, oldest first."""
    client = sdk(gateway)
    whole = client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, user="auto-user", temperature=0.3,
        metadata={"session_id": "auto-session", "tags": ["auto", "geo"]})
    assert whole.choices[0].message.content == "Paris."
    with Upstream.lock:
        Upstream.bodies.clear()
    stream = client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, user="auto-user", stream=True,
        metadata={"tags": ["auto", "streamed"]}, extra_headers={"x-agentbox-session-id": "auto-session"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Paris."
    with Upstream.lock:
        (streamed_body,) = Upstream.bodies
    assert "metadata" not in streamed_body, streamed_body
    return traces_of(gateway, "auto-user", 2)


def test_each_call_becomes_a_trace_with_a_priced_generation(gateway, two_calls):
    plain, streamed = two_calls
    for trace, tags in [(plain, ["auto", "geo"]), (streamed, ["auto", "streamed"])]:
        assert (trace["name"], trace["userId"], trace["sessionId"]) == ("chat.completions", "auto-user", "auto-session")
        assert sorted(trace["tags"]) == tags
        assert trace["totalCost"] == pytest.approx(COST, rel=1e-9)
        (generation,) = trace["observations"]
        assert (generation["type"], generation["model"], generation["level"]) == ("GENERATION", "gpt-4o", "DEFAULT")
        assert generation["usage"] == {"input": 1000, "output": 200, "total": 1200, "unit": "TOKENS"}
        assert generation["calculatedTotalCost"] == pytest.approx(COST, rel=1e-9)
        assert generation["input"] == QUESTION and trace["input"] == QUESTION
        assert "Paris." in json.dumps(generation["output"]), generation["output"]
        assert generation["endTime"] >= generation["startTime"]
    assert plain["observations"][0]["output"] == {"role": "assistant", "content": "Paris."}
    assert plain["observations"][0]["modelParameters"]["temperature"] == 0.3
    assert streamed["observations"][0]["modelParameters"]["stream"] is True
    first_token = streamed["observations"][0]
    assert first_token["startTime"] <= first_token["completionStartTime"] <= first_token["endTime"]

    session = httpx.get(gateway + "/api/public/sessions/auto-session", auth=("pk-auto", MASTER), timeout=10).json()
    assert sorted(t["id"] for t in session["traces"]) == sorted([plain["id"], streamed["id"]])


def test_a_streamed_answer_is_recorded_like_a_whole_one(two_calls):
    """The same answer, streamed or not, is the same assistant message in its trace."""
    plain, streamed = two_calls
    assert streamed["observations"][0]["output"] == plain["observations"][0]["output"]
    assert streamed["output"] == plain["output"]


def test_the_upstream_never_sees_metadata(gateway):
    with Upstream.lock:
        Upstream.bodies.clear()
    sdk(gateway).chat.completions.create(model="gpt-4o", messages=QUESTION, user="auto-meta-user",
                                         metadata={"session_id": "s-meta", "trace_name": "named", "team": "geo"})
    with Upstream.lock:
        (body,) = Upstream.bodies
    assert "metadata" not in body and body["user"] == "auto-meta-user", body
    (trace,) = traces_of(gateway, "auto-meta-user", 1)
    assert (trace["name"], trace["sessionId"]) == ("named", "s-meta")
    assert trace["metadata"]["team"] == "geo"


def test_record_bodies_false_keeps_usage_and_cost_but_no_bodies(quiet_gateway):
    client = sdk(quiet_gateway)
    client.chat.completions.create(model="gpt-4o", messages=QUESTION, user="quiet-user")
    stream = client.chat.completions.create(model="gpt-4o", messages=QUESTION, user="quiet-user", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Paris."

    for trace in traces_of(quiet_gateway, "quiet-user", 2):
        assert (trace["input"], trace["output"]) == (None, None)
        (generation,) = trace["observations"]
        assert (generation["input"], generation["output"]) == (None, None)
        assert generation["usage"]["total"] == 1200
        assert generation["calculatedTotalCost"] == pytest.approx(COST, rel=1e-9)
        assert "Paris" not in json.dumps(trace) and "capital" not in json.dumps(trace)
