"""Headless-browser test of the web UI against a server started with a master key.

Owns the end-to-end checks of the UI's API key handling (`ui/src/auth.rs`,
`ui/src/key_panel.rs`): the key panel appears once however many calls fail, a wrong key
shows the server's refusal and the panel stays, the right key fills the model picker and
a chat reply streams with `Authorization: Bearer KEY` on the calls, a reload keeps the key
(localStorage), "Forget API key" brings the panel back, and the GPUs page asks once while
it polls and shows its data as soon as the key is accepted.
Starts its own keyed `agentbox serve` (conftest's `extra_server`); reuses the `page`
fixture of test_browser_chat.py; screenshots go to tests/python/artifacts/.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest
from playwright.sync_api import Page, Request, expect

from conftest import REPO_ROOT, extra_server
from test_browser_chat import (  # noqa: F401 (`page` is a fixture)
    ARTIFACTS,
    CHAT_MODEL,
    REPLY_TIMEOUT_MS,
    assert_no_error_banner,
    page,
    send,
)

MASTER_KEY = "sk-ui-test"
STORAGE_KEY = "agentbox.api_key"
PROMPT = "Say hello."
API_URL = re.compile(r"/(v1|api)/")
GPU_STATUS_URL = re.compile(r"/api/gpu(\?|$)")
POLL_INTERVAL_MS = 2_000


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    env = {
        "AGENTBOX_MASTER_KEY": MASTER_KEY,
        "AGENTBOX_MODELS_DIR": os.environ.get("AGENTBOX_MODELS_DIR") or str(REPO_ROOT / "models"),
    }
    with extra_server(tmp_path_factory.mktemp("keyed"), env=env) as base_url:
        yield base_url


def record_api_calls(page: Page) -> list[tuple[str, str | None]]:
    """Records (url, Authorization header) of every /v1 and /api call from now on."""
    calls: list[tuple[str, str | None]] = []

    def record(request: Request) -> None:
        if API_URL.search(request.url):
            calls.append((request.url, request.headers.get("authorization")))

    page.on("request", record)
    return calls


def stored_key(page: Page) -> str | None:
    return page.evaluate(f"localStorage.getItem({STORAGE_KEY!r})")


def expect_key_panel(page: Page, error: str | None) -> None:
    panel = page.get_by_test_id("api-key-panel")
    expect(panel).to_be_visible(timeout=30_000)
    expect(panel).to_have_count(1)
    expect(panel).to_contain_text("This agentbox server requires an API key")
    if error is None:
        expect(page.get_by_test_id("api-key-error")).to_have_count(0)
    else:
        expect(page.get_by_test_id("api-key-error")).to_have_text(error)


def test_the_server_wants_the_key_but_serves_the_ui(keyed_server: str) -> None:
    assert httpx.get(keyed_server + "/", timeout=10).status_code == 200
    refused = httpx.get(keyed_server + "/api/conversations", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    assert httpx.get(keyed_server + "/api/conversations", headers=headers, timeout=10).status_code == 200


def test_key_panel_wrong_key_right_key_chat_reload_forget(page: Page, keyed_server: str) -> None:
    calls = record_api_calls(page)
    page.goto(keyed_server + "/")

    # 1. No key: one panel (the models and the conversations both fail), no error line,
    #    no banner behind it, the field focused.
    expect_key_panel(page, error=None)
    expect(page.get_by_test_id("api-key-input")).to_be_focused()
    page.wait_for_timeout(1_000)
    expect(page.get_by_test_id("api-key-panel")).to_have_count(1)
    assert_no_error_banner(page)
    expect(page.get_by_test_id("forget-api-key")).to_have_count(0)
    assert calls and all(auth is None for _, auth in calls), calls
    page.screenshot(path=str(ARTIFACTS / "api-key-prompt.png"))

    # 2. A wrong key: the server's refusal shows, the panel stays, nothing is stored.
    page.get_by_test_id("api-key-input").fill("sk-wrong")
    page.get_by_test_id("api-key-submit").click()
    expect_key_panel(page, error="Incorrect API key provided.")
    assert stored_key(page) is None
    page.screenshot(path=str(ARTIFACTS / "api-key-wrong.png"))

    # 3. The right key (Enter submits): the panel goes, the page loads, the key is stored.
    calls.clear()
    page.get_by_test_id("api-key-input").fill(MASTER_KEY)
    page.get_by_test_id("api-key-input").press("Enter")
    expect(page.get_by_test_id("api-key-panel")).to_have_count(0, timeout=10_000)
    expect(page.get_by_test_id("model-picker")).to_have_value(CHAT_MODEL, timeout=10_000)
    assert stored_key(page) == MASTER_KEY
    expect(page.get_by_test_id("forget-api-key")).to_be_visible()
    assert_no_error_banner(page)

    # 4. A chat reply streams; every call carried the key.
    with page.expect_request("**/v1/chat/completions") as chat_request:
        send(page, PROMPT)
    assert chat_request.value.headers.get("authorization") == f"Bearer {MASTER_KEY}"
    chat_response = chat_request.value.response()
    assert chat_response is not None and chat_response.status == 200
    assert chat_response.headers["content-type"].startswith("text/event-stream")
    expect(page.get_by_test_id("stop-button")).to_be_hidden(timeout=REPLY_TIMEOUT_MS)
    reply = page.get_by_test_id("message-assistant").first
    expect(reply).not_to_be_empty()
    assert (reply.text_content() or "").strip(), "the reply ended empty"
    assert_no_error_banner(page)
    expect(page.get_by_test_id("conversation-item")).to_have_count(1, timeout=10_000)
    assert calls and all(auth == f"Bearer {MASTER_KEY}" for _, auth in calls), calls
    page.screenshot(path=str(ARTIFACTS / "api-key-chat.png"))

    # 5. A reload keeps the key: no panel, the conversation lists and opens.
    page.reload()
    expect(page.get_by_test_id("model-picker")).to_have_value(CHAT_MODEL, timeout=30_000)
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(1, timeout=10_000)
    items.first.click()
    expect(page.get_by_test_id("message-user")).to_have_text(PROMPT, timeout=10_000)
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(page.get_by_test_id("api-key-panel")).to_have_count(0)
    assert_no_error_banner(page)
    page.screenshot(path=str(ARTIFACTS / "api-key-reloaded.png"))

    # 6. "Forget API key" removes it and reloads: the panel is back.
    with page.expect_navigation():
        page.get_by_test_id("forget-api-key").click()
    expect_key_panel(page, error=None)
    assert stored_key(page) is None
    expect(page.get_by_test_id("forget-api-key")).to_have_count(0)
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "api-key-forgotten.png"))


def test_gpu_page_asks_once_while_polling_then_loads(page: Page, keyed_server: str) -> None:
    calls = record_api_calls(page)
    page.goto(keyed_server + "/gpus")
    expect(page.get_by_test_id("gpu-page")).to_be_visible()
    expect_key_panel(page, error=None)

    # The page keeps polling behind the panel; each refusal must not open another one.
    page.wait_for_timeout(2.5 * POLL_INTERVAL_MS)
    polls = [url for url, _ in calls if GPU_STATUS_URL.search(url)]
    assert len(polls) >= 2, f"expected /api/gpu polled behind the panel: {polls}"
    expect(page.get_by_test_id("api-key-panel")).to_have_count(1)
    assert_no_error_banner(page)

    # The key is taken in place (no reload): the page shows the engine's models at once.
    page.evaluate("window.__same_document = true")
    page.get_by_test_id("api-key-input").fill(MASTER_KEY)
    page.get_by_test_id("api-key-submit").click()
    expect(page.get_by_test_id("api-key-panel")).to_have_count(0, timeout=10_000)
    names = page.get_by_test_id("engine-model-name")
    expect(names.filter(has_text=CHAT_MODEL)).to_have_count(1, timeout=5_000)
    assert page.evaluate("window.__same_document") is True, "accepting the key reloaded the page"
    assert_no_error_banner(page)
    page.screenshot(path=str(ARTIFACTS / "api-key-gpus.png"), full_page=True)

    # The chat page, loaded before the key, has retried too.
    page.get_by_test_id("nav-chat").click()
    expect(page.get_by_test_id("model-picker")).to_have_value(CHAT_MODEL, timeout=10_000)
    assert_no_error_banner(page)
