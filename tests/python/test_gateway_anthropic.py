"""The `openai` SDK reaching an Anthropic-format upstream through the gateway.

A scripted server speaks Anthropic's Messages API (it checks `x-api-key` and
`anthropic-version`, and keeps the requests); a gateway agentbox routes `claude-3`
(`anthropic/claude-3-opus`, as in LiteLLM's config) to it. The SDK must get OpenAI-shaped
answers (text, tool calls, streams, usage), and the upstream must get Anthropic-shaped
requests (system on top, `max_tokens`, tools with `input_schema`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import gateway_server

ANTHROPIC_KEY = "sk-ant-test"


class AnthropicUpstream(BaseHTTPRequestHandler):
    received: list = []

    def log_message(self, *args):
        pass

    def reply(self, status: int, content_type: str, payload: str):
        data = payload.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        AnthropicUpstream.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.headers.get("x-api-key") != ANTHROPIC_KEY:
            self.reply(401, "application/json", json.dumps(
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}))
            return
        wants_tool = bool(body.get("tools"))
        if body.get("stream"):
            events = [
                {"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant",
                                                      "content": [], "usage": {"input_tokens": 11, "output_tokens": 0}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " !"}},
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
                {"type": "message_stop"},
            ]
            payload = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
            self.reply(200, "text/event-stream", payload)
            return
        content = ([{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Lyon"}}]
                   if wants_tool else [{"type": "text", "text": "Bonjour !"}])
        self.reply(200, "application/json", json.dumps({
            "id": "msg_w", "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": "tool_use" if wants_tool else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 3}}))


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnthropicUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def litellm_config(upstream: str, api_key: str) -> str:
    return ("model_list:\n  - model_name: claude-3\n"
            f"    litellm_params: {{model: anthropic/claude-3-opus, api_base: {upstream}, api_key: {api_key}}}\n"
            "router_settings: {num_retries: 0}\n")


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    config = litellm_config(upstream, "os.environ/ANTHROPIC_API_KEY")
    with gateway_server(tmp_path_factory.mktemp("anthropic"), config, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY}) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_text_and_usage_come_back_in_openai_shape(gateway):
    AnthropicUpstream.received.clear()
    reply = gateway.chat.completions.create(
        model="claude-3",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
        stop=["END"],
    )
    assert reply.choices[0].message.content == "Bonjour !"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "claude-3"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 3)
    sent = AnthropicUpstream.received[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {k.lower() for k in sent["headers"]}
    assert sent["body"]["model"] == "claude-3-opus"
    assert sent["body"]["system"] == "Answer in French."
    assert sent["body"]["max_tokens"] == 4096
    assert sent["body"]["stop_sequences"] == ["END"]
    assert sent["body"]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]


def test_tool_calls_and_streams_translate(gateway):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    reply = gateway.chat.completions.create(
        model="claude-3", messages=[{"role": "user", "content": "Weather in Lyon?"}], tools=tools, max_tokens=100,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_9", "get_weather", {"city": "Lyon"})
    sent = AnthropicUpstream.received[-1]["body"]
    assert sent["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    assert sent["max_tokens"] == 100

    stream = gateway.chat.completions.create(
        model="claude-3", messages=[{"role": "user", "content": "Hello"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour !"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 3


def test_an_upstream_auth_failure_is_an_openai_error_without_the_key(upstream, tmp_path):
    with gateway_server(tmp_path, litellm_config(upstream, "sk-wrong-key")) as url:
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            sdk.chat.completions.create(model="claude-3", messages=[{"role": "user", "content": "hi"}])
    assert "invalid x-api-key" in str(raised.value.body)
    assert "sk-wrong-key" not in str(raised.value.body)
