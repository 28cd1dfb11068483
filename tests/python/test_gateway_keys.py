"""Virtual keys, limits, spend and routing strategies, through the real `openai` SDK.

A scripted OpenAI-format upstream serves several named deployments (`/NAME/v1`): it
counts hits and requests in flight per name, answers with known usage (10 prompt + 5
completion tokens), can be slow, and can stall a stream after its first chunk. A gateway
agentbox with a master key routes to it. The tests generate keys with LiteLLM's
`/key/generate`, call with them, and read `/key/info`, `/spend/logs` and `/metrics`.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from conftest import gateway_server, lock_store, query_store

MASTER = "sk-master-keys-test"
# model_info prices: 10 * 0.001 + 5 * 0.002 = 0.02 per call.
PRICED = "model_info: {input_cost_per_token: 0.001, output_cost_per_token: 0.002}"


class Upstream(BaseHTTPRequestHandler):
    lock = threading.Lock()
    hits: dict = {}
    in_flight: dict = {}
    max_in_flight: dict = {}
    bodies: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        name = self.path.split("/")[1]
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with Upstream.lock:
            Upstream.hits[name] = Upstream.hits.get(name, 0) + 1
            Upstream.in_flight[name] = Upstream.in_flight.get(name, 0) + 1
            Upstream.max_in_flight[name] = max(Upstream.max_in_flight.get(name, 0), Upstream.in_flight[name])
            Upstream.bodies.append((name, body))
        try:
            if name.startswith("slow"):
                time.sleep(0.4)
            if name.startswith("stuck"):
                time.sleep(3)
            if name.startswith("cut"):
                self.cut_stream()
                return
            self.answer(name, body)
        finally:
            with Upstream.lock:
                Upstream.in_flight[name] -= 1

    def cut_stream(self):
        """Promises a long stream, sends one chunk, and drops the connection."""
        chunk = json.dumps({"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}]})
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", "100000")
        self.end_headers()
        self.wfile.write(f"data: {chunk}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True

    def answer(self, name: str, body: dict):
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            data = json.dumps({"id": f"chatcmpl-{name}", "object": "chat.completion", "created": 1,
                               "model": body["model"], "usage": usage,
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": f"from {name}"}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        with_usage = (body.get("stream_options") or {}).get("include_usage")

        def chunk(choices, extra=None):
            payload = {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk", "created": 1,
                       "model": body["model"], "choices": choices, **(extra or {})}
            if with_usage and extra is None:
                payload["usage"] = None
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

        chunk([{"index": 0, "delta": {"role": "assistant", "content": "from "}, "finish_reason": None}])
        if name.startswith("hang"):
            time.sleep(6)
            return
        chunk([{"index": 0, "delta": {"content": name}, "finish_reason": "stop"}])
        if with_usage:
            chunk([], {"usage": usage})
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


def deployment(model_name: str, upstream: str, name: str, extra: str = "", info: str = PRICED) -> str:
    return (f"  - model_name: {model_name}\n"
            f"    litellm_params: {{model: openai/{name}, api_base: {upstream}/{name}/v1{extra}}}\n"
            f"    {info}\n")


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    config = (
        "model_list:\n"
        + deployment("gpt-4", upstream, "fast")
        + deployment("slow-model", upstream, "slow")
        + deployment("hang-model", upstream, "hang", ", stream_timeout: 1")
        + "router_settings: {num_retries: 0}\n"
        f"general_settings: {{master_key: {MASTER}}}\n"
    )
    with gateway_server(tmp, config) as url:
        yield url, tmp


def admin(url: str, path: str, body: dict | None = None, key: str = MASTER) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if body is None:
        return httpx.get(url + path, headers=headers, timeout=10)
    return httpx.post(url + path, json=body, headers=headers, timeout=10)


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def ask(client: openai.OpenAI, model: str = "gpt-4", **extra):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **extra)


def spend_rows(url: str, key: str, expected: int) -> list:
    """The key's spend rows, once the batched writer has stored `expected` of them."""
    deadline = time.monotonic() + 10
    while True:
        rows = admin(url, f"/spend/logs?api_key={key}").json()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_key_is_shown_once_stored_hashed_and_its_spend_is_counted(gateway):
    url, data_dir = gateway
    made = admin(url, "/key/generate", {"models": ["gpt-4"], "key_alias": "team-a", "metadata": {"team": "a"}})
    assert made.status_code == 200, made.text
    key = made.json()["key"]
    assert key.startswith("sk-") and made.json()["key_name"].endswith(key[-4:])

    answer = ask(sdk(url, key))
    assert answer.choices[0].message.content == "from fast"
    with pytest.raises(openai.AuthenticationError) as denied:
        ask(sdk(url, key), "slow-model")
    assert "not allowed" in str(denied.value)

    rows = spend_rows(url, key, 1)
    ok = [r for r in rows if r["status"] == "success"]
    assert len(ok) == 1, rows
    assert (ok[0]["prompt_tokens"], ok[0]["completion_tokens"]) == (10, 5)
    assert ok[0]["spend"] == pytest.approx(0.02)
    assert ok[0]["model_group"] == "gpt-4" and ok[0]["request_id"] == "chatcmpl-fast"
    assert ok[0]["metadata"]["user_api_key_alias"] == "team-a"

    info = admin(url, "/key/info", key=key).json()["info"]
    assert info["spend"] == pytest.approx(0.02) and info["models"] == ["gpt-4"]
    assert info["key_alias"] == "team-a"
    # A virtual key may not manage keys, nor read another key.
    assert admin(url, "/key/generate", {}, key=key).status_code == 403

    # Only the key's hash is stored.
    stored = query_store(data_dir, "SELECT token, spend FROM virtual_keys")
    assert key not in json.dumps(stored)
    assert any(len(token) == 64 for token, _ in stored)

    deleted = admin(url, "/key/delete", {"keys": [key]})
    assert deleted.status_code == 200, deleted.text
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(url, key))


def test_a_budget_refuses_once_spent_and_an_update_raises_it(gateway):
    url, _ = gateway
    key = admin(url, "/key/generate", {"max_budget": 0.03, "budget_duration": "30d"}).json()["key"]
    client = sdk(url, key)
    ask(client)
    ask(client)  # 0.04 spent: over the budget from now on
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client)
    assert "budget" in str(refused.value)
    assert int(refused.value.response.headers["retry-after"]) > 29 * 86400
    updated = admin(url, "/key/update", {"key": key, "max_budget": 1.0})
    assert updated.status_code == 200 and updated.json()["max_budget"] == 1.0
    ask(client)
    bad = admin(url, "/key/update", {"key": key, "rpm_limit": "many"})
    assert bad.status_code == 400 and "rpm_limit" in bad.json()["error"]["message"]


def test_parallel_and_rpm_limits_hold_under_concurrency(gateway):
    url, _ = gateway
    key = admin(url, "/key/generate", {"max_parallel_requests": 2}).json()["key"]
    client = sdk(url, key)
    Upstream.max_in_flight["slow"] = 0

    def one(_):
        try:
            ask(client, "slow-model")
            return "ok"
        except openai.RateLimitError as e:
            assert e.response.headers.get("retry-after")
            return "429"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert outcomes.count("ok") >= 2 and "429" in outcomes, outcomes
    assert Upstream.max_in_flight["slow"] <= 2

    key = admin(url, "/key/generate", {"rpm_limit": 3}).json()["key"]
    client = sdk(url, key)

    def quick(_):
        try:
            ask(client)
            return "ok"
        except openai.RateLimitError:
            return "429"

    away_from_a_minute_boundary()
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(quick, range(6)))
    assert sorted(outcomes) == ["429"] * 3 + ["ok"] * 3, outcomes


def away_from_a_minute_boundary():
    """Rate windows are calendar minutes: start a rate test well inside one."""
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)


def test_a_stream_is_metered_without_showing_the_usage_chunk_it_did_not_ask_for(gateway):
    url, _ = gateway
    key = admin(url, "/key/generate", {"tpm_limit": 20}).json()["key"]
    client = sdk(url, key)
    away_from_a_minute_boundary()
    chunks = list(ask(client, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from fast"
    assert all(c.choices for c in chunks), "the usage-only chunk reached the client"
    name, body = Upstream.bodies[-1]
    assert body["stream_options"] == {"include_usage": True}
    # 15 tokens counted: one more call fits under tpm 20, the next does not.
    rows = spend_rows(url, key, 1)
    assert rows[0]["total_tokens"] == 15 and rows[0]["spend"] == pytest.approx(0.02)
    asked = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert asked[-1].usage.total_tokens == 15 and asked[-1].choices == []
    time.sleep(0.2)
    with pytest.raises(openai.RateLimitError):
        ask(client)
    metrics = httpx.get(url + "/metrics").text
    spent = [line for line in metrics.splitlines() if line.startswith("litellm_spend_metric{")]
    assert spent and sum(float(line.rsplit(" ", 1)[1]) for line in spent) > 0.05


def test_a_stalled_stream_is_ended_with_an_error_and_not_retried(gateway):
    url, _ = gateway
    before = Upstream.hits.get("hang", 0)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as stalled:
        for _ in ask(sdk(url, MASTER), "hang-model", stream=True):
            pass
    assert "sent nothing" in str(stalled.value)
    assert time.monotonic() - started < 5
    assert Upstream.hits["hang"] == before + 1


def routed_hits(upstream, tmp_path_factory, strategy: str, deployments: str, calls: int, parallel: int = 1):
    """Serves `calls` requests for `m` through a gateway with this strategy."""
    config = deployments + f"router_settings: {{routing_strategy: {strategy}, num_retries: 0}}\n"
    with gateway_server(tmp_path_factory.mktemp("routing"), "model_list:\n" + config) as url:
        client = sdk(url, "unused")
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda _: ask(client, "m"), range(calls)))


@pytest.mark.parametrize("strategy", ["cost-based-routing", "usage-based-routing",
                                      "latency-based-routing", "simple-shuffle"])
def test_routing_strategies_choose_as_litellm_does(upstream, tmp_path_factory, strategy):
    """Two deployments of `m`: `cheap-*` costs less; `slow-*` answers in 0.4 s and has an
    rpm of 2. Each strategy must show its preference in the upstream's hit counts."""
    tag = strategy.split("-")[0]
    cheap, slow = f"cheap{tag}", f"slow{tag}"
    away_from_a_minute_boundary()
    routed_hits(upstream, tmp_path_factory, strategy,
                deployment("m", upstream, slow, ", rpm: 2", "model_info: {input_cost_per_token: 0.01, output_cost_per_token: 0.01}")
                + deployment("m", upstream, cheap, "", "model_info: {input_cost_per_token: 0.001, output_cost_per_token: 0.001}"),
                calls=8)
    hits = (Upstream.hits.get(cheap, 0), Upstream.hits.get(slow, 0))
    assert sum(hits) == 8, hits
    if strategy == "cost-based-routing":
        assert hits == (8, 0)
    elif strategy == "latency-based-routing":
        assert hits[1] <= 1, hits  # tried at most once, then the faster one wins
    elif strategy == "usage-based-routing":
        assert hits[1] == 2, hits  # fewest tokens first, until its rpm of 2
    else:
        assert hits[1] <= 2, hits  # random, but never past the deployment's rpm


def test_least_busy_sends_to_the_deployment_with_fewer_calls_in_flight(upstream, tmp_path_factory):
    routed_hits(upstream, tmp_path_factory, "least-busy",
                deployment("m", upstream, "slowbusya") + deployment("m", upstream, "slowbusyb"),
                calls=6, parallel=6)
    hits = (Upstream.hits.get("slowbusya", 0), Upstream.hits.get("slowbusyb", 0))
    assert sum(hits) == 6 and min(hits) >= 2, hits


def test_a_locked_database_never_stalls_requests_and_the_rows_arrive_later(gateway):
    """The spend log's store is unavailable (another process holds the write lock, SQLite's
    or every Postgres table's) for 3 s: calls must still answer at once, and their rows
    must be written afterwards."""
    url, data_dir = gateway
    key = admin(url, "/key/generate", {}).json()["key"]
    client = sdk(url, key)
    with lock_store(data_dir):
        timings = []
        for _ in range(10):
            started = time.monotonic()
            ask(client)
            timings.append(time.monotonic() - started)
        assert max(timings) < 1.0, timings
        time.sleep(1.0)
    rows = spend_rows(url, key, 10)
    assert len(rows) == 10, rows
    dropped = [line for line in httpx.get(url + "/metrics").text.splitlines()
               if line.startswith("agentbox_spend_log_dropped_total")]
    assert dropped == ["agentbox_spend_log_dropped_total 0"], dropped


def test_a_hanging_upstream_times_out_and_is_retried_then_a_cut_stream_is_not(upstream, tmp_path_factory):
    config = ("model_list:\n"
              + deployment("stuck", upstream, "stuck", ", timeout: 0.5")
              + deployment("cut", upstream, "cut")
              + "router_settings: {num_retries: 2}\n")
    with gateway_server(tmp_path_factory.mktemp("faults"), config) as url:
        client = sdk(url, "unused")
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as timed_out:
            ask(client, "stuck")
        assert timed_out.value.status_code == 504 and "timed out" in str(timed_out.value)
        assert time.monotonic() - started < 2.5
        assert Upstream.hits["stuck"] == 3  # the first try and num_retries more

        received = []
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for chunk in ask(client, "cut", stream=True):
                received.append(chunk.choices[0].delta.content if chunk.choices else None)
        assert received == ["partial"]
        assert Upstream.hits["cut"] == 1  # a started stream is never retried
