#!/usr/bin/env python3
"""Summarises bench/gateway.sh's wrk and hey outputs as Markdown tables."""

import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def wrk(mode, target):
    text = (out / f"wrk-{mode}-{target}.txt").read_text()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return float(rps.group(1)) if rps else 0.0, int(errors.group(1)) if errors else 0


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "secs": 1000.0}[unit]


def paced(mode, target, rate):
    """wrk --latency with Poisson-paced requests: p50, p99 (ms), achieved rate, errors."""
    text = (out / f"paced-{mode}-{target}-{rate}.txt").read_text()
    found = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        found[pct] = ms(*m.groups()) if m else float("nan")
    got = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return found["50"], found["99"], float(got.group(1)) if got else 0.0, int(errors.group(1)) if errors else 0


def hey(mode, target, rate):
    text = (out / f"hey-{mode}-{target}-{rate}.txt").read_text()
    found = {}
    for pct in ("50", "99"):
        m = re.search(rf"{pct}% in ([\d.]+) secs", text)
        found[pct] = float(m.group(1)) * 1000 if m else float("nan")
    got = re.search(r"Requests/sec:\s+([\d.]+)", text)
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)
    bad = sum(int(n) for code, n in codes if code != "200")
    return found["50"], found["99"], float(got.group(1)) if got else 0.0, bad


for mode, title in (("json", "non-streaming"), ("sse", "streaming")):
    print(f"\n### {title}\n")
    print("| | direct to upstream | agentbox | LiteLLM |")
    print("|---|---:|---:|---:|")
    row = [f"{wrk(mode, t)[0]:,.0f}" + (f" ({wrk(mode, t)[1]} errors)" if wrk(mode, t)[1] else "") for t in ("direct", "agentbox", "litellm")]
    print(f"| max requests/s (wrk, 64 connections) | {' | '.join(row)} |")
    for rate in ("seq", 200, 1000, 2000):
        cells = []
        base = hey(mode, "direct", rate)
        for target in ("direct", "agentbox", "litellm"):
            p50, p99, achieved, bad = hey(mode, target, rate)
            cell = f"p50 {p50:.2f} / p99 {p99:.2f} ms"
            if target != "direct":
                cell += f" (+{p50 - base[0]:.2f} / +{p99 - base[1]:.2f})"
            if rate != "seq" and achieved < rate * 0.9:
                cell += f", only {achieved:,.0f}/s"
            if bad:
                cell += f", {bad} errors"
            cells.append(cell)
        label = "one connection, back to back" if rate == "seq" else f"{rate:,} requests/s offered (hey, 20 connections)"
        print(f"| {label} | {' | '.join(cells)} |")
    for rate in (200, 1000, 2000):
        cells = []
        base = paced(mode, "direct", rate)
        for target in ("direct", "agentbox", "litellm"):
            p50, p99, achieved, bad = paced(mode, target, rate)
            cell = f"p50 {p50:.2f} / p99 {p99:.2f} ms"
            if target != "direct":
                cell += f" (+{p50 - base[0]:.2f} / +{p99 - base[1]:.2f})"
            if achieved < rate * 0.9:
                cell += f", only {achieved:,.0f}/s"
            if bad:
                cell += f", {bad} errors"
            cells.append(cell)
        print(f"| {rate:,} requests/s, Poisson arrivals (wrk, 20 connections) | {' | '.join(cells)} |")
