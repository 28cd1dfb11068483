"""The `openai` SDK reaching AWS Bedrock's Converse API through the gateway.

`fake_bedrock` plays the Bedrock runtime: it checks every request's SigV4 signature with
botocore and keeps the requests; a gateway agentbox routes `claude-bedrock`
(`bedrock/anthropic.claude-3-sonnet-20240229-v1:0`, keys from `os.environ/...` as in
LiteLLM's config) to it. The SDK must get OpenAI-shaped answers (text, tool calls with
string arguments, streams decoded from binary event-stream frames, usage, errors), and
the fake must get signed Converse requests (model id in the path, system on top,
`inferenceConfig`, `toolConfig`, `toolUse` / `toolResult` blocks).
"""

from __future__ import annotations

import json

import openai
import pytest

import fake_bedrock
from conftest import gateway_server
from fake_bedrock import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SIGNATURE_MISMATCH, BedrockUpstream

MODEL_ID = "anthropic.claude-3-sonnet-20240229-v1:0"
CONVERSE_PATH = "/model/anthropic.claude-3-sonnet-20240229-v1%3A0/converse"
SESSION_TOKEN = "bedrock-session-token-test"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def upstream():
    server, url = fake_bedrock.start()
    yield url
    server.shutdown()


def litellm_config(upstream: str) -> str:
    deployment = (
        "    litellm_params:\n"
        f"      model: bedrock/{MODEL_ID}\n"
        "      aws_access_key_id: os.environ/AWS_ACCESS_KEY_ID\n"
        "      aws_secret_access_key: os.environ/AWS_SECRET_ACCESS_KEY\n"
        "      aws_region_name: us-east-1\n"
        f"      api_base: {upstream}\n"
    )
    return (
        "model_list:\n"
        "  - model_name: claude-bedrock\n" + deployment
        + "  - model_name: claude-bedrock-session\n" + deployment
        + "      aws_session_token: os.environ/AWS_SESSION_TOKEN\n"
        "router_settings: {num_retries: 0}\n"
    )


def aws_env(secret: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": SESSION_TOKEN}


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    with gateway_server(tmp_path_factory.mktemp("bedrock"), litellm_config(upstream), aws_env(SECRET_ACCESS_KEY)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def last_request(stream: bool = False) -> dict:
    sent = BedrockUpstream.received[-1]
    assert sent["signature_problem"] is None, sent["signature_problem"]
    assert sent["model_id"] == MODEL_ID
    assert sent["path"] == CONVERSE_PATH + ("-stream" if stream else "")
    assert sent["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/")
    return sent


def test_text_and_usage_come_back_in_openai_shape(gateway):
    reply = gateway.chat.completions.create(
        model="claude-bedrock",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
        max_tokens=64, temperature=0.2, stop=["END"],
    )
    assert reply.choices[0].message.content == "Bonjour !"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "claude-bedrock"
    assert reply.id.startswith("chatcmpl-")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 3, 14)
    sent = last_request()
    assert "x-amz-security-token" not in sent["headers"]
    body = sent["body"]
    assert "model" not in body
    assert body["system"] == [{"text": "Answer in French."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "Hello"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 64, "temperature": 0.2, "stopSequences": ["END"]}
    assert "toolConfig" not in body


def test_a_tool_call_and_its_result_make_the_round_trip(gateway):
    question = {"role": "user", "content": "Weather in Lyon?"}
    reply = gateway.chat.completions.create(model="claude-bedrock", messages=[question], tools=TOOLS,
                                            tool_choice="auto")
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("tooluse_w1", "function", "get_weather")
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == {"city": "Lyon"}
    config = last_request()["body"]["toolConfig"]
    assert config["toolChoice"] == {"auto": {}}
    spec = config["tools"][0]["toolSpec"]
    assert (spec["name"], spec["description"]) == ("get_weather", "Current weather in a city")
    assert spec["inputSchema"]["json"]["properties"]["city"] == {"type": "string"}

    follow_up = gateway.chat.completions.create(model="claude-bedrock", tools=TOOLS, tool_choice="required", messages=[
        question,
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12°C, sunny"},
    ])
    assert follow_up.choices[0].message.content == "Bonjour !"
    body = last_request()["body"]
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "tooluse_w1", "name": "get_weather", "input": {"city": "Lyon"}}}]
    result = body["messages"][2]["content"][0]["toolResult"]
    assert result["toolUseId"] == "tooluse_w1"
    assert result["content"] == [{"text": "12°C, sunny"}]


def test_streamed_text_ends_with_finish_reason_then_usage(gateway):
    stream = gateway.chat.completions.create(
        model="claude-bedrock", messages=[{"role": "user", "content": "Hello"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour !"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 3)
    assert {c.model for c in chunks} == {"claude-bedrock"}
    assert "stream" not in last_request(stream=True)["body"]


def test_a_streamed_tool_call_arrives_in_pieces(gateway):
    stream = gateway.chat.completions.create(
        model="claude-bedrock", messages=[{"role": "user", "content": "Weather in Lyon?"}], tools=TOOLS, stream=True,
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "tooluse_s1" and calls[0].function.name == "get_weather"
    assert {tc.index for tc in calls} == {0}
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Lyon"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert "toolConfig" in last_request(stream=True)["body"]


def test_an_exception_mid_stream_reaches_the_sdk_as_an_error(gateway):
    stream = gateway.chat.completions.create(
        model="claude-bedrock", messages=[{"role": "user", "content": "THROTTLE me"}], stream=True,
    )
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "Too many tokens" in str(raised.value)


def test_temporary_credentials_sign_the_session_token(gateway):
    gateway.chat.completions.create(model="claude-bedrock-session", messages=[{"role": "user", "content": "Hello"}])
    headers = last_request()["headers"]
    assert headers["x-amz-security-token"] == SESSION_TOKEN
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")


def test_content_bedrock_cannot_take_is_a_400_before_any_call(gateway):
    before = len(BedrockUpstream.received)
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.chat.completions.create(model="claude-bedrock", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert "image_url" in str(raised.value)
    assert len(BedrockUpstream.received) == before


def test_a_wrong_secret_is_an_openai_error_without_the_key(upstream, tmp_path):
    wrong = "wrong-secret-0123456789abcdef"
    with gateway_server(tmp_path, litellm_config(upstream), aws_env(wrong)) as url:
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            sdk.chat.completions.create(model="claude-bedrock", messages=[{"role": "user", "content": "hi"}])
    # The gateway did sign and send; the fake refused the signature.
    assert BedrockUpstream.received[-1]["signature_problem"] == SIGNATURE_MISMATCH
    error = raised.value
    assert error.status_code in (403, 502)
    # OpenAI's error shape (SDK versions differ on whether `body` is the whole or the inner object).
    inner = error.body.get("error", error.body) if isinstance(error.body, dict) else None
    assert isinstance(inner, dict) and inner.get("message"), error.body
    shown = str(error.body) + str(error) + error.response.text
    assert wrong not in shown and SECRET_ACCESS_KEY not in shown
    assert json.dumps({"message": SIGNATURE_MISMATCH}) not in shown
