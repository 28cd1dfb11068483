"""Headless-browser tests of the web UI's tracing pages against a real `agentbox serve`.

Owns the end-to-end checks of `ui/src/traces_page.rs`, `trace_view.rs`, `trace_tree.rs`,
`sessions_page.rs`, `costs_page.rs`, `bar_chart.rs` and `feedback.rs`: a chat answer in the
UI carries thumbs up / down stored as the BOOLEAN score `user-feedback` on the answer's
trace (the chat sends `metadata.trace_id` and `session_id`), found again with its vote
when the conversation is reopened; the trace shows in /traces,
opens as a tree with the generation's model and tokens, and its conversation is a session
in /sessions; /costs draws SVG bar charts. A second test ingests traces through the
Langfuse API to check the tree's nesting and timeline, the filters and the pagination. A
third starts a keyed server (conftest's `extra_server`): the pages ask for the key, then
send it as HTTP Basic `pk-lf-ui:KEY`.
Reuses the `page` fixture of test_browser_chat.py; screenshots go to tests/python/artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from playwright.sync_api import Page, expect

from conftest import REPO_ROOT, extra_server

from test_browser_chat import (  # noqa: F401 (`page` is a fixture)
    ARTIFACTS,
    CHAT_MODEL,
    REPLY_TIMEOUT_MS,
    assert_no_error_banner,
    open_chat,
    page,
    send,
)

PROMPT = "Name three colors."
FEEDBACK = "user-feedback"


def get_trace_when(base_url: str, trace_id: str, ready, timeout_s: float = 20.0) -> dict:
    """Polls GET /api/public/traces/{id} until `ready(trace)` holds; returns the trace."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{base_url}/api/public/traces/{trace_id}", timeout=10)
        if response.status_code == 200:
            last = response.json()
            if ready(last):
                return last
        else:
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} never became ready: {last}")


def feedback_scores(trace: dict) -> list[dict]:
    return [score for score in trace["scores"] if score["name"] == FEEDBACK]


def test_chat_feedback_traces_sessions_and_costs(page: Page, server) -> None:
    base_url = server.base_url
    chat_bodies: list[dict] = []
    page.on(
        "request",
        lambda request: chat_bodies.append(json.loads(request.post_data or "{}"))
        if request.url.endswith("/v1/chat/completions")
        else None,
    )

    # A chat answer gets thumbs; the call named its trace and session.
    open_chat(page, base_url)
    send(page, PROMPT)
    feedback = page.get_by_test_id("feedback")
    expect(feedback).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_test_id("stop-button")).to_have_count(0)
    trace_id = feedback.get_attribute("data-trace-id")
    assert trace_id and len(trace_id) == 32, trace_id
    assert len(chat_bodies) == 1, chat_bodies
    metadata = chat_bodies[0]["metadata"]
    assert metadata["trace_id"] == trace_id
    session_id = metadata["session_id"]
    conversations = httpx.get(base_url + "/api/conversations", timeout=10).json()
    assert session_id in [c["id"] for c in conversations], (session_id, conversations)

    # Thumbs up: chosen in the page, stored as a BOOLEAN score of 1 on the trace.
    up, down = page.get_by_test_id("thumbs-up"), page.get_by_test_id("thumbs-down")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(page.get_by_test_id("feedback-saved")).to_be_visible()
    trace = get_trace_when(base_url, trace_id, lambda t: feedback_scores(t))
    [score] = feedback_scores(trace)
    assert score["dataType"] == "BOOLEAN" and score["value"] == 1, score
    assert trace["sessionId"] == session_id
    page.screenshot(path=str(ARTIFACTS / "chat-feedback.png"), full_page=True)

    # Changing the vote replaces the score rather than adding one; then back to up.
    down.click()
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(up).to_have_attribute("aria-pressed", "false")
    get_trace_when(base_url, trace_id, lambda t: [s["value"] for s in feedback_scores(t)] == [0])
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    trace = get_trace_when(base_url, trace_id, lambda t: [s["value"] for s in feedback_scores(t)] == [1])
    # A reopened conversation finds its answer's trace and shows the vote.
    page.reload()
    page.get_by_test_id("conversation-item").filter(has_text=PROMPT).first.click()
    expect(page.get_by_test_id("message-assistant")).to_have_count(1, timeout=10_000)
    expect(feedback).to_have_attribute("data-trace-id", trace_id, timeout=10_000)
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")

    [generation] = [o for o in trace["observations"] if o["type"] == "GENERATION"]
    assert generation["model"] == CHAT_MODEL
    usage = generation["usage"]
    assert usage["input"] > 0 and usage["output"] > 0, usage

    # The trace is in the list, with its session and one observation.
    page.get_by_test_id("nav-traces").click()
    assert page.url == base_url + "/traces"
    expect(page.get_by_test_id("nav-traces")).to_have_attribute("aria-current", "page")
    row = page.locator(f'[data-testid="trace-row"][data-trace-id="{trace_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.get_by_test_id("trace-observations")).to_have_text("1")
    expect(row.get_by_test_id("trace-session")).to_have_attribute("title", session_id)
    expect(row.get_by_test_id("trace-latency")).not_to_have_text("—")
    page.screenshot(path=str(ARTIFACTS / "traces.png"), full_page=True)

    # Filtering by the session keeps it; a name nobody uses empties the list.
    page.get_by_test_id("filter-session").fill(session_id)
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("trace-row")).to_have_count(1)
    expect(row).to_be_visible()
    page.get_by_test_id("filter-session").fill("")
    page.get_by_test_id("filter-name").fill("no-such-trace-name")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("traces-empty")).to_be_visible()
    page.get_by_test_id("filter-clear").click()
    expect(row).to_be_visible()

    # The trace view: the generation node with its model and tokens.
    row.get_by_test_id("trace-link").click()
    assert page.url == f"{base_url}/traces/{trace_id}"
    expect(page.get_by_test_id("trace-view")).to_be_visible()
    expect(page.get_by_test_id("trace-id")).to_have_text(trace_id)
    node = page.locator('[data-testid="tree-node"][data-kind="GENERATION"]')
    expect(node).to_have_count(1, timeout=10_000)
    expect(node.get_by_test_id("node-model")).to_have_text(CHAT_MODEL)
    expect(node.get_by_test_id("node-tokens")).to_have_text(
        f"{usage['input']:,} → {usage['output']:,} tokens"
    )
    trace_scores = page.get_by_test_id("trace-scores")
    expect(trace_scores.locator(f'[data-score-name="{FEEDBACK}"]')).to_contain_text("true")
    # The trace node is selected first: its input holds the prompt.
    expect(page.get_by_test_id("json-input")).to_contain_text(PROMPT)
    node.click()
    expect(node).to_have_class(re.compile(r"\bselected\b"))
    expect(page.get_by_test_id("detail-facts")).to_contain_text(CHAT_MODEL)
    expect(page.get_by_test_id("detail-facts")).to_contain_text(
        f"{usage['input']:,} in · {usage['output']:,} out"
    )
    expect(page.get_by_test_id("json-input")).to_contain_text(PROMPT)
    expect(page.get_by_test_id("json-model-parameters")).to_contain_text("max_tokens")
    page.screenshot(path=str(ARTIFACTS / "trace-view.png"), full_page=True)

    # A reload of /traces/{id} opens the same trace; Back returns to the list.
    page.reload()
    expect(page.locator('[data-testid="tree-node"][data-kind="GENERATION"]')).to_have_count(1, timeout=30_000)
    page.go_back()
    assert page.url == base_url + "/traces"
    expect(row).to_be_visible(timeout=10_000)

    # Costs: SVG bar charts with this model's tokens, and totals.
    page.get_by_test_id("nav-costs").click()
    assert page.url == base_url + "/costs"
    tokens_chart = page.get_by_test_id("tokens-chart")
    expect(tokens_chart.locator("svg rect.bar").first).to_be_attached(timeout=10_000)
    expect(tokens_chart.get_by_test_id("legend-item").filter(has_text=CHAT_MODEL)).to_have_count(1)
    expect(page.get_by_test_id("cost-chart").locator("svg")).to_have_count(1)
    expect(page.get_by_test_id("traces-chart").locator("svg rect.bar").first).to_be_attached()
    expect(page.get_by_test_id("total-tokens")).not_to_have_text("0")
    expect(page.get_by_test_id("total-traces")).not_to_have_text("0")
    page.screenshot(path=str(ARTIFACTS / "costs.png"), full_page=True)

    # Sessions: the conversation is one, and holds the chat's trace.
    page.get_by_test_id("nav-sessions").click()
    assert page.url == base_url + "/sessions"
    session_row = page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')
    expect(session_row).to_be_visible(timeout=10_000)
    session_row.get_by_test_id("session-link").click()
    assert page.url == f"{base_url}/sessions/{session_id}"
    expect(page.get_by_test_id("session-id")).to_have_text(session_id)
    session_trace = page.locator(f'[data-testid="session-trace-row"][data-trace-id="{trace_id}"]')
    expect(session_trace).to_be_visible()
    expect(session_trace).to_contain_text(PROMPT)
    page.screenshot(path=str(ARTIFACTS / "session.png"), full_page=True)
    session_trace.click()
    assert page.url == f"{base_url}/traces/{trace_id}"
    assert_no_error_banner(page)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ingest(base_url: str, events: list[dict], auth: tuple[str, str] | None = None) -> None:
    batch = [{"id": uuid.uuid4().hex, "timestamp": iso(datetime.now(timezone.utc)), **e} for e in events]
    response = httpx.post(base_url + "/api/public/ingestion", json={"batch": batch}, auth=auth, timeout=30)
    assert response.status_code == 207, response.text
    assert not response.json()["errors"], response.json()


def test_trace_tree_filters_and_pages(page: Page, server) -> None:
    base_url = server.base_url
    user = f"ui-test-{uuid.uuid4().hex[:8]}"
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    trace_id = uuid.uuid4().hex

    # One trace nested three deep: agent span → retrieval span + generation → event.
    at = lambda ms: iso(start + timedelta(milliseconds=ms))  # noqa: E731
    ingest(base_url, [
        {"type": "trace-create", "body": {
            "id": trace_id, "name": "agent-run", "userId": user, "tags": ["ui-tree"],
            "timestamp": at(0), "input": {"question": "why?"}, "output": "because"}},
        {"type": "span-create", "body": {
            "id": "agent", "traceId": trace_id, "name": "agent", "startTime": at(0), "endTime": at(1000)}},
        {"type": "span-create", "body": {
            "id": "retrieve", "traceId": trace_id, "parentObservationId": "agent", "name": "retrieve",
            "startTime": at(0), "endTime": at(250)}},
        {"type": "generation-create", "body": {
            "id": "answer", "traceId": trace_id, "parentObservationId": "agent", "name": "answer",
            "model": "gpt-4o-mini", "startTime": at(250), "endTime": at(1000),
            "usage": {"input": 1200, "output": 34}, "costDetails": {"total": 0.0123}}},
        {"type": "event-create", "body": {
            "id": "checked", "traceId": trace_id, "parentObservationId": "answer", "name": "checked",
            "startTime": at(900)}},
    ])
    # 59 more traces for the same user: two pages of 50.
    ingest(base_url, [
        {"type": "trace-create", "body": {
            "id": f"{user}-{i:02d}", "name": "bulk", "userId": user, "timestamp": at(-60_000 - i * 1000)}}
        for i in range(59)
    ])

    page.goto(base_url + "/traces")
    page.get_by_test_id("filter-user").fill(user)
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("pager-summary")).to_have_text("Page 1 of 2 · 60 traces", timeout=10_000)
    expect(page.get_by_test_id("trace-row")).to_have_count(50)
    expect(page.get_by_test_id("pager-previous")).to_be_disabled()
    page.get_by_test_id("pager-next").click()
    expect(page.get_by_test_id("pager-summary")).to_have_text("Page 2 of 2 · 60 traces")
    expect(page.get_by_test_id("trace-row")).to_have_count(10)
    expect(page.get_by_test_id("pager-next")).to_be_disabled()
    page.get_by_test_id("pager-previous").click()

    # The tag filter keeps only the nested trace; its row counts four observations.
    page.get_by_test_id("filter-tag").fill("ui-tree")
    page.get_by_test_id("filter-apply").click()
    expect(page.get_by_test_id("pager-summary")).to_have_text("Page 1 of 1 · 1 trace")
    row = page.locator(f'[data-testid="trace-row"][data-trace-id="{trace_id}"]')
    expect(row.get_by_test_id("trace-observations")).to_have_text("4")
    expect(row.get_by_test_id("trace-cost")).to_have_text("$0.0123")
    row.click()
    assert page.url == f"{base_url}/traces/{trace_id}"

    # Depth first, children under parents, siblings by start time.
    nodes = page.get_by_test_id("tree-node")
    expect(nodes).to_have_count(5, timeout=10_000)
    names = [n.strip() for n in page.get_by_test_id("tree-node").locator(".tree-name").all_text_contents()]
    assert names == ["agent-run", "agent", "retrieve", "answer", "checked"], names
    kinds = [nodes.nth(i).get_attribute("data-kind") for i in range(5)]
    assert kinds == ["TRACE", "SPAN", "SPAN", "GENERATION", "EVENT"], kinds
    answer = nodes.nth(3)
    expect(answer.get_by_test_id("node-tokens")).to_have_text("1,200 → 34 tokens")
    expect(answer.get_by_test_id("node-cost")).to_have_text("$0.0123")
    expect(answer.get_by_test_id("node-latency")).to_have_text("750 ms")

    # Timeline: bars placed by start and end within the trace's one-second span.
    def bar(i: int) -> tuple[float, float]:
        style = nodes.nth(i).locator(".timeline-bar").get_attribute("style") or ""
        parts = dict(p.split(":", 1) for p in style.replace(" ", "").split(";") if ":" in p)
        return float(parts["left"].rstrip("%")), float(parts["width"].rstrip("%"))

    assert bar(1) == (0.0, 100.0)
    assert bar(2) == (0.0, 25.0)
    assert bar(3) == (25.0, 75.0)
    assert bar(4)[0] == 90.0

    # Folding the agent hides its descendants.
    nodes.nth(1).locator(".fold").click()
    expect(nodes).to_have_count(2)
    nodes.nth(1).locator(".fold").click()
    expect(nodes).to_have_count(5)

    # Selecting a node shows its input and output; the trace's own in the trace node.
    expect(page.get_by_test_id("json-output")).to_have_text("because")
    nodes.nth(3).click()
    expect(page.get_by_test_id("detail-name")).to_have_text("answer")
    expect(page.get_by_test_id("detail-facts")).to_contain_text("gpt-4o-mini")
    page.screenshot(path=str(ARTIFACTS / "trace-tree.png"), full_page=True)

    # Back keeps the list's filters.
    page.get_by_test_id("back-to-traces").click()
    expect(page.get_by_test_id("filter-tag")).to_have_value("ui-tree")
    expect(page.get_by_test_id("trace-row")).to_have_count(1)
    assert_no_error_banner(page)


MASTER_KEY = "sk-traces-ui-test"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    env = {
        "AGENTBOX_MASTER_KEY": MASTER_KEY,
        "AGENTBOX_MODELS_DIR": os.environ.get("AGENTBOX_MODELS_DIR") or str(REPO_ROOT / "models"),
    }
    with extra_server(tmp_path_factory.mktemp("keyed-traces"), env=env) as base_url:
        yield base_url


def test_traces_with_a_master_key_send_basic_auth(page: Page, keyed_server: str) -> None:
    trace_id = uuid.uuid4().hex
    assert httpx.get(keyed_server + "/api/public/traces", timeout=10).status_code == 401
    ingest(keyed_server, [{"type": "trace-create", "body": {"id": trace_id, "name": "keyed-trace"}}],
           auth=("any-public-key", MASTER_KEY))
    public_auth: list[str | None] = []
    page.on(
        "request",
        lambda request: public_auth.append(request.headers.get("authorization"))
        if "/api/public/" in request.url
        else None,
    )

    # No key: one key panel, no banner; the list loads once the key is accepted.
    page.goto(keyed_server + "/traces")
    expect(page.get_by_test_id("api-key-panel")).to_be_visible(timeout=30_000)
    page.wait_for_timeout(500)
    expect(page.get_by_test_id("api-key-panel")).to_have_count(1)
    assert_no_error_banner(page)
    assert public_auth and all(auth is None for auth in public_auth), public_auth
    public_auth.clear()
    page.get_by_test_id("api-key-input").fill(MASTER_KEY)
    page.get_by_test_id("api-key-input").press("Enter")
    expect(page.get_by_test_id("api-key-panel")).to_have_count(0, timeout=10_000)
    row = page.locator(f'[data-testid="trace-row"][data-trace-id="{trace_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    basic = "Basic " + base64.b64encode(f"pk-lf-ui:{MASTER_KEY}".encode()).decode()
    assert public_auth and all(auth == basic for auth in public_auth), public_auth

    # The other pages read with the same credentials.
    row.click()
    expect(page.get_by_test_id("trace-name")).to_have_text("keyed-trace", timeout=10_000)
    page.get_by_test_id("nav-costs").click()
    expect(page.get_by_test_id("total-traces")).to_have_text("1", timeout=10_000)
    page.get_by_test_id("nav-sessions").click()
    expect(page.get_by_test_id("sessions-empty")).to_be_visible(timeout=10_000)
    assert all(auth == basic for auth in public_auth), public_auth
    assert_no_error_banner(page)
