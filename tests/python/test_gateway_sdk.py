"""The official `openai` SDK through agentbox's gateway.

A second agentbox runs with no local models and a LiteLLM config whose `gpt-4` is the first
agentbox (the session `server`), with the master key taken from `os.environ/...` as LiteLLM
users write it. The SDK, holding that key, must get the upstream's answers, streamed and
not; a wrong key must be an `AuthenticationError`.
"""

from __future__ import annotations

import openai
import pytest

from conftest import gateway_server

MASTER_KEY = "sk-gateway-test-key"
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    config = (
        "model_list:\n"
        "  - model_name: gpt-4\n"
        f"    litellm_params: {{model: openai/{MODEL}, api_base: {server.base_url}/v1, "
        "api_key: os.environ/UPSTREAM_KEY}\n"
        "router_settings: {routing_strategy: simple-shuffle, num_retries: 1}\n"
        "general_settings: {master_key: os.environ/GATEWAY_MASTER_KEY}\n"
    )
    env = {"UPSTREAM_KEY": "sk-upstream", "GATEWAY_MASTER_KEY": MASTER_KEY}
    with gateway_server(tmp_path_factory.mktemp("gateway"), config, env) as url:
        yield url


def ask(client: openai.OpenAI, model: str, **extra):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=12,
        temperature=0,
        **extra,
    )


def test_the_sdk_reaches_the_upstream_through_the_gateway(gateway, client):
    direct = ask(client, MODEL).choices[0].message.content
    sdk = openai.OpenAI(base_url=gateway + "/v1", api_key=MASTER_KEY, max_retries=0)
    routed = ask(sdk, "gpt-4")
    assert routed.choices[0].message.content == direct
    assert routed.usage.completion_tokens > 0

    stream = ask(sdk, "gpt-4", stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == direct

    listed = [m.id for m in sdk.models.list()]
    assert listed == ["gpt-4"]


def test_a_wrong_key_is_an_authentication_error(gateway):
    sdk = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        ask(sdk, "gpt-4")
    assert raised.value.status_code == 401
    assert "Incorrect API key" in str(raised.value)
