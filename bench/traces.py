#!/usr/bin/env python3
"""Trace ingestion and query speed, side by side with raw SQLite in the same run.

Usage: .venv/bin/python bench/traces.py AGENTBOX_BIN [--observations N] [--clients C]
                                        [--database-url postgres://...]

1. Starts a gateway-only agentbox (no local models, automatic traces off) on a fresh
   data directory.
2. Batch API: C client threads POST pre-built `/api/public/ingestion` batches of 100
   `generation-create` events (10 traces each, models and users varied, times spread over
   30 days) until N observations are acknowledged (207).
3. OTLP: the same count again as pre-built protobuf `ExportTraceServiceRequest`s of 100
   spans each to `/api/public/otel/v1/traces`: per trace, a root span that names the user
   and nine child spans, as instrumented applications send them.
4. Raw SQLite ceiling: Python's sqlite3 inserts the same observation rows (and their trace
   rows) into the same schema, WAL with `synchronous=FULL`, one transaction per 100 rows
   (the durability a 2xx promises), from one thread.
   With `--database-url` agentbox stores in a fresh database of that Postgres server
   instead, and the ceiling is `psql` running the same inserts (a transaction per 100
   rows, default `synchronous_commit`) into a fresh copy of agentbox's schema there.
5. Queries on the store now holding 2N observations: a trace list filtered by user, one
   trace with its observations, daily metrics for 30 days; p50/p95 of 50 calls each.
Prints a Markdown table. Bodies are built before timing, so the client's JSON and protobuf
work is not counted; the clients share the 2 cores with the server all the same.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

BATCH = 100
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "local-llama"]
NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def event_rows(seed: int, count: int):
    """(trace id, observation id, model, user, start ms, input, output) per observation.

    Ten observations per trace. Ids are random hex, as SDKs make them (Langfuse's UUIDs,
    OpenTelemetry's random trace and span ids). Times run in order over the last 30 days,
    as live traffic arrives, so that daily metrics have 30 days to cover.
    """
    rng = random.Random(seed)
    step = 30 * DAY_MS // max(1, count // 10)
    rows = []
    for i in range(count):
        trace = hashlib.md5(f"t{seed}-{i // 10}".encode()).hexdigest()
        obs = hashlib.md5(f"o{seed}-{i}".encode()).hexdigest()[:16]
        start = NOW_MS - 30 * DAY_MS + (i // 10) * step + (i % 10) * 100
        rows.append((trace, obs, rng.choice(MODELS), f"user{rng.randrange(1000)}",
                     start, rng.randrange(50, 2000), rng.randrange(5, 500)))
    return rows


def batch_body(rows) -> bytes:
    """A Langfuse batch: each trace's `trace-create`, then a `generation-create` per row."""
    batch = []
    seen = set()
    for trace, obs, model, user, start, tin, tout in rows:
        if trace not in seen:
            seen.add(trace)
            batch.append({"id": f"e-{trace}", "type": "trace-create", "timestamp": iso(start),
                          "body": {"id": trace, "name": "bench", "userId": user, "timestamp": iso(start)}})
        batch.append({"id": f"e-{obs}", "type": "generation-create", "timestamp": iso(start),
                      "body": {"id": obs, "traceId": trace, "name": "llm", "model": model,
                               "startTime": iso(start), "endTime": iso(start + 800),
                               "usage": {"input": tin, "output": tout},
                               "input": [{"role": "user", "content": "hello " * 8}],
                               "output": {"role": "assistant", "content": "world " * 8}}})
    return json.dumps({"batch": batch}).encode()


def otlp_body(rows) -> bytes:
    def kv(key, value):
        if isinstance(value, int):
            return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))

    spans = []
    roots = {}
    for trace, obs, model, user, start, tin, tout in rows:
        span_id = hashlib.md5(obs.encode()).digest()[:8]
        attributes = [kv("gen_ai.request.model", model), kv("gen_ai.usage.input_tokens", tin),
                      kv("gen_ai.usage.output_tokens", tout),
                      kv("gen_ai.prompt", "hello " * 8), kv("gen_ai.completion", "world " * 8)]
        # A trace's first span is its root and names its user; the others are its children.
        parent = roots.get(trace, b"")
        if not parent:
            roots[trace] = span_id
            attributes.append(kv("user.id", user))
        spans.append(trace_pb2.Span(
            trace_id=hashlib.md5(trace.encode()).digest(), span_id=span_id, parent_span_id=parent,
            name="llm", kind=3, start_time_unix_nano=start * 1_000_000,
            end_time_unix_nano=(start + 800) * 1_000_000, attributes=attributes))
    request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name="bench"), spans=spans)])])
    return request.SerializeToString()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_all(port: int, path: str, content_type: str, bodies: list[bytes], clients: int, auth: str) -> float:
    """Posts every body over `clients` keep-alive connections; returns the seconds taken."""
    queue = list(enumerate(bodies))
    lock = threading.Lock()
    failures = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                _, body = queue.pop()
            conn.request("POST", path, body=body, headers={"Content-Type": content_type, "Authorization": auth})
            response = conn.getresponse()
            text = response.read()
            if response.status not in (200, 207) or b'"errors":[]' not in text and response.status == 207:
                failures.append((response.status, text[:200]))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Sustained means queryable: the clock stops once every acknowledged event is folded
    # into the store (the ingestion log's backlog on /metrics is 0; always so on Postgres).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        if "\nagentbox_traces_ingest_backlog 0\n" in metrics:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} failed posts, first: {failures[0]}")
    return elapsed


def raw_sqlite(rows, directory: Path) -> float:
    """The same rows into the same tables, WAL + synchronous=FULL, a commit per 100."""
    db = sqlite3.connect(directory / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    # The same tables and indexes as agentbox's store.
    source = sqlite3.connect(directory / "ab" / "agentbox.db")
    schema = [sql for (sql,) in source.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name IN ('traces', 'observations') AND sql IS NOT NULL "
        "ORDER BY type DESC")]
    source.close()
    for sql in schema:
        db.execute(sql)
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        db.execute("BEGIN")
        for trace, obs, model, user, start, tin, tout in rows[i:i + BATCH]:
            db.execute("INSERT OR IGNORE INTO traces (project_id, id, timestamp, name, user_id, updated_at) "
                       "VALUES ('default', ?, ?, 'bench', ?, ?)", (trace, start, user, NOW_MS))
            db.execute("INSERT INTO observations (project_id, id, trace_id, type, name, start_time, end_time, "
                       "model, input, output, usage_input, usage_output, usage_total, calculated_input_cost, "
                       "calculated_output_cost, updated_at) VALUES ('default', ?, ?, 'GENERATION', 'llm', ?, ?, ?, "
                       "?, ?, ?, ?, ?, ?, ?, ?)",
                       (obs, trace, start, start + 800, model, json.dumps([{"role": "user", "content": "hello " * 8}]),
                        json.dumps({"role": "assistant", "content": "world " * 8}), tin, tout, tin + tout,
                        tin * 2.5e-6, tout * 1e-5, NOW_MS))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def psql(url: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", *args], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path="/" + name).geturl()


def raw_postgres(rows, server_url: str, schema_from: str) -> float:
    """The same rows into a copy of agentbox's tables through psql, a commit per 100."""
    name = f"agentbox_bench_raw_{os.getpid()}"
    psql(server_url, "-c", f"CREATE DATABASE {name}")
    url = with_database(server_url, name)
    try:
        schema = subprocess.run(["pg_dump", "--schema-only", "--no-owner", schema_from], text=True,
                                capture_output=True, check=True).stdout
        psql(url, stdin=schema)

        def text(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"
        lines = []
        for i in range(0, len(rows), BATCH):
            lines.append("BEGIN;")
            for trace, obs, model, user, start, tin, tout in rows[i:i + BATCH]:
                lines.append("INSERT INTO traces (project_id, id, timestamp, name, user_id, updated_at) "
                             f"VALUES ('default', {text(trace)}, {start}, 'bench', {text(user)}, {NOW_MS}) "
                             "ON CONFLICT DO NOTHING;")
                lines.append(
                    "INSERT INTO observations (project_id, id, trace_id, type, name, start_time, end_time, model, "
                    "input, output, usage_input, usage_output, usage_total, calculated_input_cost, "
                    f"calculated_output_cost, updated_at) VALUES ('default', {text(obs)}, {text(trace)}, "
                    f"'GENERATION', 'llm', {start}, {start + 800}, {text(model)}, "
                    f"{text(json.dumps([{'role': 'user', 'content': 'hello ' * 8}]))}, "
                    f"{text(json.dumps({'role': 'assistant', 'content': 'world ' * 8}))}, {tin}, {tout}, "
                    f"{tin + tout}, {tin * 2.5e-6}, {tout * 1e-5}, {NOW_MS});")
            lines.append("COMMIT;")
        script = "\n".join(lines)
        started = time.perf_counter()
        psql(url, stdin=script)
        return time.perf_counter() - started
    finally:
        psql(server_url, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def timed_get(port: int, path: str, auth: str, runs: int = 50) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": auth})
        response = conn.getresponse()
        response.read()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status}")
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--database-url", help="store in a fresh database on this Postgres server")
    args = parser.parse_args()
    n = args.observations - args.observations % BATCH
    work = Path(tempfile.mkdtemp())
    (work / "agentbox.yaml").write_text("models: []\ntraces: {enabled: false}\ngpu: {enabled: false}\n")
    port = free_port()
    key = "sk-bench-traces"
    auth = "Basic " + base64.b64encode(f"pk-lf-bench:{key}".encode()).decode()
    env = {**os.environ, "AGENTBOX_MASTER_KEY": key}
    bench_db = None
    if args.database_url:
        bench_db = f"agentbox_bench_{os.getpid()}"
        psql(args.database_url, "-c", f"CREATE DATABASE {bench_db}")
        env["AGENTBOX_DATABASE_URL"] = with_database(args.database_url, bench_db)
    server = subprocess.Popen([args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "ab"),
                               "--config", str(work / "agentbox.yaml")],
                              env=env,
                              stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        print(f"/proc/loadavg before: {Path('/proc/loadavg').read_text().strip()}")
        batch_rows = event_rows(1, n)
        otlp_rows = event_rows(2, n)
        batch_bodies = [batch_body(batch_rows[i:i + BATCH]) for i in range(0, n, BATCH)]
        otlp_bodies = [otlp_body(otlp_rows[i:i + BATCH]) for i in range(0, n, BATCH)]
        t_batch = post_all(port, "/api/public/ingestion", "application/json", batch_bodies, args.clients, auth)
        t_otlp = post_all(port, "/api/public/otel/v1/traces", "application/x-protobuf", otlp_bodies, args.clients, auth)
        if bench_db:
            t_raw = raw_postgres(event_rows(3, n), args.database_url, env["AGENTBOX_DATABASE_URL"])
            store, raw_name = "Postgres", "raw Postgres inserts (psql, a transaction per"
        else:
            t_raw = raw_sqlite(event_rows(3, n), work)
            store, raw_name = "SQLite", "raw SQLite inserts (sqlite3, WAL, synchronous=FULL, commit per"
        user = batch_rows[0][3]
        trace = batch_rows[0][0]
        list_p = timed_get(port, f"/api/public/traces?userId={user}&limit=50", auth)
        tree_p = timed_get(port, f"/api/public/traces/{trace}", auth)
        from_ts = iso(NOW_MS - 30 * DAY_MS).replace(":", "%3A")
        daily_p = timed_get(port, f"/api/public/metrics/daily?fromTimestamp={from_ts}&limit=31", auth, runs=20)
        print(f"/proc/loadavg after: {Path('/proc/loadavg').read_text().strip()}")
        raw_rate = n / t_raw
        print(f"\n{n:,} observations per path, batches of {BATCH}, {args.clients} client threads.\n")
        print(f"| path ({store}) | observations/s | vs raw {store} |")
        print("|---|---:|---:|")
        print(f"| {raw_name} {BATCH}) | {raw_rate:,.0f} | 1.00× |")
        for name, t in (("`POST /api/public/ingestion` (Langfuse batch, JSON)", t_batch),
                        ("`POST /api/public/otel/v1/traces` (OTLP protobuf)", t_otlp)):
            print(f"| {name} | {n / t:,.0f} | {(n / t) / raw_rate:.2f}× |")
        print(f"\nQueries with {2 * n:,} observations stored (p50 / p95 ms):\n")
        print("| query | p50 ms | p95 ms |")
        print("|---|---:|---:|")
        for name, (p50, p95) in (("trace list filtered by user (limit 50)", list_p),
                                 ("one trace with its observations", tree_p),
                                 ("daily metrics, 30 days", daily_p)):
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if bench_db:
            psql(args.database_url, "-c", f"DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)")


if __name__ == "__main__":
    main()
