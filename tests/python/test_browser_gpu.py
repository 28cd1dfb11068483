"""Headless-browser test of the web UI's GPUs page against a real `agentbox serve`.

Owns the end-to-end checks of the GPU page (`ui/src/gpu_page.rs`, `gpu_card.rs`,
`charts.rs`) and of page switching (`ui/src/route.rs`): the sidebar opens /gpus, a reload
keeps the page, Back and Forward follow it, and polling of /api/gpu stops on leaving.
Without a GPU (CI) the page shows the server's reason and the engine's models on the CPU;
a second test feeds it a recorded-shape GPU through request interception to check the
cards, the process table and the charts (live and 24 h).
Reuses the `page` fixture of test_browser_chat.py; screenshots go to tests/python/artifacts/.
"""

from __future__ import annotations

import math
import re
import time

import httpx
from playwright.sync_api import Page, Request, expect

from test_browser_chat import ARTIFACTS, CHAT_MODEL, page  # noqa: F401 (`page` is a fixture)

STATUS_URL = re.compile(r"/api/gpu(\?|$)")
HISTORY_URL = re.compile(r"/api/gpu/history(\?|$)")
POLL_INTERVAL_S = 2.0


def count_status_requests(page: Page) -> list[str]:
    """Records the URL of every /api/gpu request the page makes from now on."""
    urls: list[str] = []

    def record(request: Request) -> None:
        if STATUS_URL.search(request.url):
            urls.append(request.url)

    page.on("request", record)
    return urls


def open_gpu_page_from_chat(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_test_id("model-picker")).to_have_value(CHAT_MODEL, timeout=30_000)
    page.get_by_test_id("nav-gpus").click()
    expect(page.get_by_test_id("gpu-page")).to_be_visible()
    assert page.url == base_url + "/gpus"


def expect_engine_models(page: Page, engine: dict) -> None:
    rows = page.get_by_test_id("engine-model")
    expect(rows).to_have_count(len(engine["models"]), timeout=10_000)
    for model in engine["models"]:
        row = rows.filter(has=page.get_by_test_id("engine-model-name").get_by_text(model["name"], exact=True))
        expect(row.get_by_test_id("engine-model-device")).to_have_text(model["device"])
        expect(row).to_contain_text(f"{model['kv_cache_tokens']:,} tokens")


def test_gpu_page_navigation_reload_and_engine(page: Page, server) -> None:
    base_url = server.base_url
    status = httpx.get(base_url + "/api/gpu", timeout=10).json()
    chat_models = [m for m in status["engine"]["models"] if m["name"] == CHAT_MODEL]
    assert chat_models and chat_models[0]["device"] == "cpu", status["engine"]

    requests = count_status_requests(page)
    open_gpu_page_from_chat(page, base_url)
    expect(page.get_by_test_id("nav-gpus")).to_have_attribute("aria-current", "page")
    if status["available"]:
        # A machine with a GPU: one card each, and no "No GPU" panel.
        expect(page.get_by_test_id("gpu-card")).to_have_count(len(status["gpus"]), timeout=10_000)
        expect(page.get_by_test_id("no-gpu")).to_have_count(0)
    else:
        expect(page.get_by_test_id("no-gpu")).to_contain_text("No GPU", timeout=10_000)
        expect(page.get_by_test_id("no-gpu-reason")).to_have_text(status["reason"])
        expect(page.get_by_test_id("gpu-card")).to_have_count(0)
    expect_engine_models(page, status["engine"])
    page.screenshot(path=str(ARTIFACTS / "gpus.png"), full_page=True)

    # The page polls while shown.
    page.wait_for_timeout(2.5 * POLL_INTERVAL_S * 1000)
    assert len(requests) >= 3, f"expected /api/gpu polled every {POLL_INTERVAL_S}s: {requests}"

    # A reload of /gpus opens the same page.
    page.reload()
    expect(page.get_by_test_id("gpu-page")).to_be_visible(timeout=30_000)
    assert page.url == base_url + "/gpus"
    if not status["available"]:
        expect(page.get_by_test_id("no-gpu-reason")).to_have_text(status["reason"], timeout=10_000)
    expect_engine_models(page, status["engine"])

    # Back to chat: the chat works and the polling stops.
    page.get_by_test_id("nav-chat").click()
    assert page.url == base_url + "/"
    expect(page.get_by_test_id("model-picker")).to_have_value(CHAT_MODEL, timeout=30_000)
    expect(page.get_by_test_id("gpu-page")).to_have_count(0)
    expect(page.get_by_test_id("nav-chat")).to_have_attribute("aria-current", "page")
    page.wait_for_timeout(500)  # a request already in flight may still land
    before = len(requests)
    page.wait_for_timeout(2.5 * POLL_INTERVAL_S * 1000)
    assert len(requests) == before, f"/api/gpu still polled after leaving the page: {requests[before:]}"

    # Back and Forward follow the pages.
    page.go_back()
    expect(page.get_by_test_id("gpu-page")).to_be_visible()
    assert page.url == base_url + "/gpus"
    page.go_forward()
    expect(page.get_by_test_id("model-picker")).to_be_visible()
    assert page.url == base_url + "/"


def fake_gpu_status(now_ms: int) -> dict:
    """An /api/gpu answer for one busy GPU, shaped like the server's (identities and
    current values as in tests/data/nvml/h100_recording.json)."""
    recent = []
    for i in range(300):
        t = now_ms - (299 - i) * 1000
        load = 0.5 + 0.45 * math.sin(i / 18)
        recent.append(
            {
                "t": t,
                "gpu_util": round(100 * load),
                "mem_copy_util": round(40 * load),
                "fb_used_mib": 20_000 + 30_000 * load,
                "fb_total_mib": 81_559.0,
                # A gap: the GPU did not report power for a few seconds.
                "power_w": None if 120 <= i < 126 else 90 + 500 * load,
                "temperature_c": 38 + 30 * load,
                "sm_clock_mhz": 1980.0,
            }
        )
    return {
        "available": True,
        "reason": None,
        "driver_version": "550.90.07",
        "cuda_driver_version": "12.4",
        "sample_interval_ms": 1000,
        "monitor": {"samples": 1234, "cpu_seconds": 0.42},
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-0b5c6f1e-93b1-4e55-a2b7-1c0ffee00001",
                "name": "NVIDIA H100 80GB HBM3",
                "pci_bus_id": "00000000:00:06.0",
                "device": "nvidia0",
                "current": {
                    "t": now_ms,
                    "gpu_util": 87,
                    "mem_copy_util": 35,
                    "fb_used_mib": 49_152.0,
                    "fb_free_mib": 32_407.0,
                    "fb_total_mib": 81_559.0,
                    "temperature_c": 64,
                    "power_w": 512.4,
                    "energy_mj": 9_876_543_210,
                    "sm_clock_mhz": 1980,
                    "mem_clock_mhz": 2619,
                    "pcie_tx_kbps": 12_345,
                    "pcie_rx_kbps": 678,
                    "last_xid": 0,
                },
                "mig": {"enabled": False, "pending": False, "instances": []},
                "processes": [
                    {"pid": 4242, "name": "agentbox", "used_memory_mib": 40_960.0, "agentbox": True},
                    {"pid": 777, "name": "python3", "used_memory_mib": 8_192.0, "agentbox": False},
                ],
                "models": [],
                "recent": recent,
            }
        ],
        "engine": {
            "device": "cpu",
            "models": [
                {
                    "name": CHAT_MODEL,
                    "device": "cpu",
                    "kv_cache_usage": 0.37,
                    "kv_cache_tokens": 65_536,
                    "running": 2,
                    "waiting": 1,
                }
            ],
        },
    }


def fake_gpu_history(now_ms: int, uuid: str) -> dict:
    minute = 60_000
    start = now_ms - now_ms % minute - 24 * 60 * minute
    points = []
    for i in range(24 * 60):
        if 600 <= i < 660:
            continue  # an hour with the server down
        load = 0.3 + 0.25 * math.sin(i / 90) + 0.15 * math.sin(i / 7)
        points.append(
            {
                "t": start + i * minute,
                "gpu_util": 100 * load,
                "mem_copy_util": 30 * load,
                "fb_used_mib": 10_000 + 50_000 * load,
                "fb_total_mib": 81_559.0,
                "power_w": 80 + 450 * load,
                "temperature_c": 35 + 35 * load,
                "sm_clock_mhz": 1700.0,
            }
        )
    return {"bucket_secs": 60, "hours": 24, "gpus": [{"uuid": uuid, "index": 0, "name": "NVIDIA H100 80GB HBM3", "points": points}]}


def stat(card, label: str):
    """The stat tile whose label is exactly `label`."""
    return card.get_by_test_id("gpu-stat").filter(
        has=card.page.locator(".stat-label", has_text=re.compile(f"^{re.escape(label)}$"))
    )


def chart_lines(page: Page) -> list[str]:
    return page.locator('[data-testid="chart"] path.chart-line').evaluate_all(
        "paths => paths.map(p => p.getAttribute('d') || '')"
    )


def test_gpu_page_draws_a_gpu(page: Page, server) -> None:
    now_ms = int(time.time() * 1000)
    status = fake_gpu_status(now_ms)
    uuid = status["gpus"][0]["uuid"]
    history_requests: list[str] = []

    def serve_history(route):
        history_requests.append(route.request.url)
        route.fulfill(json=fake_gpu_history(now_ms, uuid))

    # Tall enough for the whole card: the page scrolls inside its pane, not the window.
    page.set_viewport_size({"width": 1280, "height": 1500})
    page.route(STATUS_URL, lambda route: route.fulfill(json=status))
    page.route(HISTORY_URL, serve_history)
    page.goto(server.base_url + "/gpus")

    card = page.get_by_test_id("gpu-card")
    expect(card).to_have_count(1, timeout=30_000)
    expect(card.get_by_test_id("gpu-name")).to_have_text("NVIDIA H100 80GB HBM3")
    expect(card).to_contain_text(uuid)
    expect(card).to_contain_text("Driver 550.90.07 · CUDA 12.4")
    expect(stat(card, "Utilization")).to_contain_text("87 %")
    expect(stat(card, "Memory")).to_contain_text("48.0 / 79.6 GiB")
    expect(stat(card, "Power")).to_contain_text("512 W")
    expect(stat(card, "Temperature")).to_contain_text("64 °C")
    expect(stat(card, "SM clock")).to_contain_text("1980 MHz")
    expect(stat(card, "PCIe")).to_contain_text("12.3 MB/s")
    expect(stat(card, "Last XID")).to_contain_text("none")
    expect(stat(card, "MIG")).to_contain_text("disabled")
    processes = card.get_by_test_id("gpu-process")
    expect(processes).to_have_count(2)
    expect(processes.filter(has_text="4242").locator(".badge")).to_have_text("agentbox")
    expect(processes.filter(has_text="777").locator(".badge")).to_have_count(0)
    expect(card.get_by_test_id("gpu-models")).to_have_text("none")
    expect(page.get_by_test_id("no-gpu")).to_have_count(0)
    expect_engine_models(page, status["engine"])

    # Four live charts, each drawn; power has a gap, so its line has two pieces.
    expect(card.get_by_test_id("chart")).to_have_count(4)
    live = chart_lines(page)
    assert all(d.startswith("M") for d in live), live
    assert live[2].count("M") == 2, f"the power gap was not left open: {live[2][:200]}"
    page.screenshot(path=str(ARTIFACTS / "gpus-live.png"), full_page=True)

    # The 24 h view reads the history once, then keeps it between polls.
    page.get_by_test_id("range-day").click()
    expect(page.get_by_test_id("range-day")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function(
        """live => {
          const lines = [...document.querySelectorAll('[data-testid="chart"] path.chart-line')];
          return lines.length === 4 && lines.every((p, i) => (p.getAttribute('d') || '') !== live[i]);
        }""",
        arg=live,
        timeout=10_000,
    )
    day = chart_lines(page)
    assert all(d.count("M") == 2 for d in day), "the hour without data should split each 24 h line"
    page.wait_for_timeout(2.5 * POLL_INTERVAL_S * 1000)
    assert len(history_requests) == 1, history_requests
    page.screenshot(path=str(ARTIFACTS / "gpus-24h.png"), full_page=True)

    page.get_by_test_id("range-live").click()
    page.wait_for_function(
        "live => document.querySelector('[data-testid=\"chart\"] path.chart-line').getAttribute('d') === live[0]",
        arg=live,
        timeout=10_000,
    )
