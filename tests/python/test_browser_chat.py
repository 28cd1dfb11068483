"""Headless-browser test of the web UI's chat page against a real `agentbox serve`.

Owns the end-to-end checks of `ui/`: the model picker is fed by /v1/models, a reply
streams into the page token by token, Stop aborts a reply and keeps the partial text,
conversations survive a reload, a server error reaches the error banner, and replies
render as Markdown with the model's raw HTML shown as text.
Drives Debian's /usr/bin/chromium through the PyPI `playwright` package; screenshots
go to tests/python/artifacts/. Uses the session `server` fixture from conftest.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBED_MODEL = "all-MiniLM-L6-v2"
QUESTION = "What is the capital of France?"
STORY_PROMPT = (
    "Write a very long story, at least 3000 words, about a dragon who learns to bake bread. "
    "Describe every day of the dragon's life in detail."
)
# The model runs on CPU, possibly beside a build; a 512-token reply can take a while.
REPLY_TIMEOUT_MS = 300_000

# Records every change of the newest assistant bubble, so growth is seen token by token
# rather than at whatever moments a poll from Python happens to land.
RECORD_SAMPLES_JS = """
() => {
  window.__samples = [];
  const record = () => {
    const bubbles = document.querySelectorAll('[data-testid="message-assistant"]');
    const last = bubbles[bubbles.length - 1];
    window.__samples.push({
      count: bubbles.length,
      len: last ? last.textContent.length : -1,
      streaming: document.querySelector('[data-testid="stop-button"]') !== null,
    });
  };
  window.__observer = new MutationObserver(record);
  window.__observer.observe(document.body, { subtree: true, childList: true, characterData: true });
}
"""


@pytest.fixture()
def page(tmp_path: Path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: page_errors.append(f"console: {message.text}")
            if message.type == "error" and "panicked" in message.text
            else None,
        )
        yield page
        context.close()
        assert not page_errors, f"errors in the page: {page_errors}"


def open_chat(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_have_value(CHAT_MODEL, timeout=30_000)
    options = picker.locator("option").all_text_contents()
    assert CHAT_MODEL in options
    assert EMBED_MODEL not in options, f"embedding model offered for chat: {options}"


def send(page: Page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("send-button").click()


def assert_no_error_banner(page: Page) -> None:
    banners = page.get_by_test_id("error-banner").all_text_contents()
    assert not banners, f"the page shows an error: {banners}"


def assistant_text(page: Page, index: int) -> str:
    return page.get_by_test_id("message-assistant").nth(index).text_content() or ""


def wait_for_stored_messages(base_url: str, count: int) -> dict:
    """Polls the REST API until the newest conversation holds `count` messages."""
    deadline = time.monotonic() + 15
    last: dict = {}
    while time.monotonic() < deadline:
        conversations = httpx.get(base_url + "/api/conversations", timeout=10).json()
        if conversations:
            last = httpx.get(f"{base_url}/api/conversations/{conversations[0]['id']}", timeout=10).json()
            if len(last.get("messages", [])) >= count:
                return last
        time.sleep(0.2)
    pytest.fail(f"newest conversation did not reach {count} stored messages: {last}")


def test_chat_streams_stops_and_survives_reload(page: Page, server) -> None:
    base_url = server.base_url
    open_chat(page, base_url)

    # 1. A first question: the reply must be seen growing while it streams.
    page.evaluate(RECORD_SAMPLES_JS)
    send(page, QUESTION)
    expect(page.get_by_test_id("message-user").first).to_have_text(QUESTION)
    expect(page.get_by_test_id("stop-button")).to_be_visible(timeout=10_000)
    expect(page.get_by_test_id("stop-button")).to_be_hidden(timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_test_id("send-button")).to_be_visible()
    assert_no_error_banner(page)

    samples = page.evaluate("window.__samples")
    streaming_lengths = [s["len"] for s in samples if s["streaming"] and s["count"] == 1 and s["len"] > 0]
    assert streaming_lengths, f"assistant text never seen while streaming; samples: {samples[-20:]}"
    # Not strictly monotonic: re-rendering Markdown can hide markup ("**" before "**bold**").
    assert streaming_lengths[-1] > streaming_lengths[0], f"assistant text did not grow while streaming: {streaming_lengths}"
    first_reply = assistant_text(page, 0)
    assert first_reply.strip(), "the first reply ended empty"
    page.screenshot(path=str(ARTIFACTS / "chat.png"))

    # 2. A long story, stopped as soon as text appears: the partial reply stays and stops growing.
    send(page, STORY_PROMPT)
    expect(page.get_by_test_id("message-user")).to_have_count(2)
    expect(page.get_by_test_id("message-assistant")).to_have_count(2, timeout=10_000)
    page.wait_for_function(
        """() => {
          const bubbles = document.querySelectorAll('[data-testid="message-assistant"]');
          return bubbles.length === 2 && bubbles[1].textContent.trim().length > 0;
        }""",
        timeout=REPLY_TIMEOUT_MS,
    )
    stop = page.get_by_test_id("stop-button")
    assert stop.is_visible(), "the story finished before Stop could be pressed"
    stop.click()
    expect(stop).to_be_hidden(timeout=5_000)
    expect(page.get_by_test_id("send-button")).to_be_visible()
    length_at_stop = len(assistant_text(page, 1))
    page.wait_for_timeout(1_200)
    partial_reply = assistant_text(page, 1)
    assert len(partial_reply) == length_at_stop, "text kept growing after Stop"
    assert partial_reply.strip(), "the partial reply vanished after Stop"
    page.screenshot(path=str(ARTIFACTS / "stopped.png"))

    stored = wait_for_stored_messages(base_url, 4)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][0]["content"] == QUESTION
    assert stored["title"] == QUESTION
    assert stored["model"] == CHAT_MODEL

    # 3. After a reload the conversation is listed and opens with all its messages.
    page.reload()
    items = page.get_by_test_id("conversation-item")
    expect(items.first).to_be_visible(timeout=30_000)
    expect(items.first).to_contain_text(QUESTION)
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    items.first.click()
    users = page.get_by_test_id("message-user")
    expect(users).to_have_count(2, timeout=10_000)
    expect(users.nth(0)).to_have_text(QUESTION)
    expect(users.nth(1)).to_have_text(STORY_PROMPT)
    expect(page.get_by_test_id("message-assistant")).to_have_count(2)
    assert assistant_text(page, 0) == first_reply
    assert assistant_text(page, 1) == partial_reply, "the stored partial reply differs from what was shown"
    page.screenshot(path=str(ARTIFACTS / "reloaded.png"))


def test_server_error_reaches_the_error_banner(page: Page, server) -> None:
    def overloaded(route):
        route.fulfill(
            status=503,
            content_type="application/json",
            body='{"error":{"message":"the scheduler is overloaded","type":"overloaded_error",'
            '"param":null,"code":"overloaded"}}',
        )

    page.route("**/v1/chat/completions", overloaded)
    open_chat(page, server.base_url)
    page.get_by_test_id("new-chat").click()
    page.get_by_test_id("message-input").fill("Hello?")
    page.get_by_test_id("message-input").press("Enter")
    expect(page.get_by_test_id("error-banner")).to_contain_text("the scheduler is overloaded", timeout=10_000)
    expect(page.get_by_test_id("send-button")).to_be_visible()
    expect(page.get_by_test_id("message-user")).to_have_text("Hello?")
    expect(page.get_by_test_id("message-assistant")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "error.png"))


def sse_reply(*pieces: str) -> str:
    """An OpenAI-style chat completion stream whose content is `pieces`, in order."""

    def event(delta: dict, finish_reason: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": CHAT_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return "data: " + json.dumps(chunk) + "\n\n"

    body = event({"role": "assistant"})
    body += "".join(event({"content": piece}) for piece in pieces)
    body += event({}, "stop") + "data: [DONE]\n\n"
    return body


def test_reply_markdown_is_rendered_and_raw_html_is_not(page: Page, server) -> None:
    reply = sse_reply(
        "Here is **bold** and code:\n\n```python\nprint(1)\n```\n\n",
        "<script>window.__injected = 1</script>\n\n",
        '<img src="x" onerror="window.__injected = 2"> [link](javascript:window.__injected=3)',
    )
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=reply),
    )
    open_chat(page, server.base_url)
    page.get_by_test_id("new-chat").click()
    send(page, "Show me some markdown")
    bubble = page.get_by_test_id("message-assistant").last
    expect(bubble.locator("pre code")).to_have_text("print(1)\n", timeout=10_000)
    expect(bubble.locator("strong")).to_have_text("bold")
    expect(bubble).to_contain_text("<script>window.__injected = 1</script>")
    expect(bubble.locator("script, img")).to_have_count(0)
    expect(bubble.locator("a")).not_to_have_attribute("href", re.compile("javascript", re.IGNORECASE))
    assert page.evaluate("window.__injected") is None
    assert_no_error_banner(page)
