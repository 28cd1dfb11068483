"""The official `anthropic` SDK against agentbox's `/v1/messages`.

- Against the local engine: a message and a stream give the same text as the OpenAI chat
  API for the same conversation, with stop reasons and usage; errors have Anthropic's shape.
- Tools, through the gateway: a scripted OpenAI-format upstream answers with tool calls
  (whole and streamed), and the SDK must see `tool_use` blocks with parsed input; the
  upstream must have received OpenAI-format tools and the `tool_result` as a `tool` message.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import httpx
import pytest

from conftest import gateway_server

MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def test_a_message_and_a_stream_match_the_openai_api(server, client):
    expected = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
    ).choices[0].message.content

    sdk = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    # This SDK version no longer takes `temperature` as an argument; the API still does.
    message = sdk.messages.create(
        model=MODEL, max_tokens=16, extra_body={"temperature": 0}, system="Answer briefly.",
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == expected
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    with sdk.messages.stream(
        model=MODEL, max_tokens=16, extra_body={"temperature": 0}, system="Answer briefly.",
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens


def test_errors_have_anthropics_shape(server):
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(server.base_url + "/v1/messages", json={"model": MODEL, "messages": []})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}


class ScriptedUpstream(BaseHTTPRequestHandler):
    """An OpenAI-format upstream that always calls the weather tool; keeps the requests."""

    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        ScriptedUpstream.received.append(body)
        if body.get("stream"):
            chunks = [
                {"id": "chatcmpl-t", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                    {"index": 0, "id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]},
                {"id": "chatcmpl-t", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}, "finish_reason": None}]},
                {"id": "chatcmpl-t", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}, "finish_reason": "tool_calls"}]},
                {"id": "chatcmpl-t", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}},
            ]
            payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
        else:
            payload = json.dumps({"id": "chatcmpl-t", "object": "chat.completion", "model": "up",
                                  "choices": [{"index": 0, "finish_reason": "tool_calls",
                                               "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}}],
                                  "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
        data = payload.encode()
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def tool_gateway(tmp_path_factory):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = (
        "model_list:\n  - model_name: claude-tools\n"
        f"    litellm_params: {{model: openai/up, api_base: http://127.0.0.1:{upstream.server_port}/v1}}\n"
    )
    with gateway_server(tmp_path_factory.mktemp("tools"), config) as url:
        yield url
    upstream.shutdown()


WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_tools_round_trip_through_the_gateway(tool_gateway):
    sdk = anthropic.Anthropic(base_url=tool_gateway, api_key="unused", max_retries=0)
    ScriptedUpstream.received.clear()
    message = sdk.messages.create(
        model="claude-tools", max_tokens=50, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    use = message.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.id == "call_7"
    assert use.input == {"city": "Paris"}
    sent = ScriptedUpstream.received[-1]
    assert sent["model"] == "up"
    assert sent["tools"][0]["function"]["parameters"]["required"] == ["city"]

    # The tool's answer goes back as a `tool` message after the assistant's tool call.
    sdk.messages.create(
        model="claude-tools", max_tokens=50, tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_7", "content": "18 C, sunny"}]},
        ],
    )
    sent = ScriptedUpstream.received[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\":\"Paris\"}"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_7", "content": "18 C, sunny"}

    with sdk.messages.stream(
        model="claude-tools", max_tokens=50, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"city": "Paris"}
    assert final.usage.output_tokens == 9
