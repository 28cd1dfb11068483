"""The seed platform's LiteLLM config, verbatim, with its three upstreams served locally.

`gpt-4` (OpenAI) and `claude-3` (Anthropic) have no `api_base`: as LiteLLM does, agentbox
takes `OPENAI_API_BASE` and `ANTHROPIC_API_BASE` from the environment, which point at local
fakes. `llama-70b` names `http://vllm-llama:8000/v1`: the gateway reaches it through
`HTTP_PROXY`, a local fake that answers for that host. The `openai` SDK, holding the master
key from `os.environ/LITELLM_MASTER_KEY`, must reach each with the right key and format.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import gateway_server

SEED = """model_list:
  - model_name: gpt-4
    litellm_params: {model: openai/gpt-4, api_key: os.environ/OPENAI_API_KEY}
  - model_name: claude-3
    litellm_params: {model: anthropic/claude-3-opus, api_key: os.environ/ANTHROPIC_API_KEY}
  - model_name: llama-70b
    litellm_params: {model: openai/llama-70b, api_base: http://vllm-llama:8000/v1}
router_settings: {routing_strategy: least-busy, enable_fallbacks: true}
general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}
"""
MASTER = "sk-seed-master"


class Upstream(BaseHTTPRequestHandler):
    """OpenAI's and Anthropic's wire formats, and a proxy for `vllm-llama`; keeps requests."""

    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Upstream.received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        if self.path.endswith("/v1/messages"):
            answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                      "content": [{"type": "text", "text": "from anthropic"}], "stop_reason": "end_turn",
                      "usage": {"input_tokens": 3, "output_tokens": 2}}
        else:
            answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": f"from {body['model']}"}}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def seed_gateway(tmp_path_factory):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{httpd.server_port}"
    env = {
        "OPENAI_API_KEY": "sk-openai-seed",
        "ANTHROPIC_API_KEY": "sk-ant-seed",
        "LITELLM_MASTER_KEY": MASTER,
        "OPENAI_API_BASE": f"{local}/openai/v1",
        "ANTHROPIC_API_BASE": f"{local}/anthropic",
        "HTTP_PROXY": local,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with gateway_server(tmp_path_factory.mktemp("seed"), SEED, env) as url:
        yield url
    httpd.shutdown()


def ask(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    return reply.choices[0].message.content


def test_each_seed_model_reaches_its_upstream_with_its_key(seed_gateway):
    Upstream.received.clear()
    assert ask(seed_gateway, "gpt-4") == "from gpt-4"
    sent = Upstream.received[-1]
    assert sent["path"] == "/openai/v1/chat/completions"
    assert sent["headers"]["authorization"] == "Bearer sk-openai-seed"

    assert ask(seed_gateway, "claude-3") == "from anthropic"
    sent = Upstream.received[-1]
    assert sent["path"] == "/anthropic/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-seed" and sent["body"]["model"] == "claude-3-opus"

    assert ask(seed_gateway, "llama-70b") == "from llama-70b"
    sent = Upstream.received[-1]
    assert sent["path"] == "http://vllm-llama:8000/v1/chat/completions"
    assert "authorization" not in sent["headers"]

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=seed_gateway + "/v1", api_key="wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=seed_gateway + "/v1", api_key=MASTER).models.list()
    assert sorted(m.id for m in models) == ["claude-3", "gpt-4", "llama-70b"]
