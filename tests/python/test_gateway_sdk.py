"""The official `openai` SDK through agentbox's gateway.

A second agentbox runs with no local models and a LiteLLM config whose `gpt-4` is the first
agentbox (the session `server`), with the master key taken from `os.environ/...` as LiteLLM
users write it. The SDK, holding that key, must get the upstream's answers, streamed and
not; a wrong key must be an `AuthenticationError`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import openai
import pytest

from conftest import _find_binary, _free_port, _log_tail

MASTER_KEY = "sk-gateway-test-key"
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    litellm = tmp / "litellm.yaml"
    litellm.write_text(
        "model_list:\n"
        "  - model_name: gpt-4\n"
        f"    litellm_params: {{model: openai/{MODEL}, api_base: {server.base_url}/v1, "
        "api_key: os.environ/UPSTREAM_KEY}\n"
        "router_settings: {routing_strategy: simple-shuffle, num_retries: 1}\n"
        "general_settings: {master_key: os.environ/GATEWAY_MASTER_KEY}\n"
    )
    config = tmp / "agentbox.yaml"
    config.write_text("models: []\n")
    port = _free_port()
    env = dict(os.environ, UPSTREAM_KEY="sk-upstream", GATEWAY_MASTER_KEY=MASTER_KEY)
    log_path = tmp / "gateway.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(_find_binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp),
         "--config", str(config), "--litellm-config", str(litellm)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited early:\n{_log_tail(log_path)}", pytrace=False)
        try:
            if httpx.get(base_url + "/health/ready", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gateway not ready:\n{_log_tail(log_path)}", pytrace=False)
        time.sleep(0.1)
    yield base_url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, _log_tail(log_path)
    log.close()


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
