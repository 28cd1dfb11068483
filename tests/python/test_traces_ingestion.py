"""Langfuse's HTTP contract, byte for byte: batch ingestion, OTLP bodies, scores, reads.

One agentbox with no models and a master key (retention off, so fixed dates stay) takes
Langfuse batches through httpx: per-event 207 results with bad events turned away alone,
event-id dedupe, partial updates, credentials on every route, body limits, raw OTLP
(protobuf gzipped, JSON, garbage), the scores route, and the read filters. Two more
servers check projects (each sees only its own traces) and durability: every event
answered 207 survives a SIGKILL.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import threading
import time

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from conftest import (READY_TIMEOUT_S, _find_binary, _free_port, _log_tail, config_server,
                      extra_server, server_env)

MASTER = "sk-traces-ingest-test"
AUTH = ("pk-ingest", MASTER)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traces-ingest")
    with config_server(tmp, "traces: {retention_days: 0}\n", env={"AGENTBOX_MASTER_KEY": MASTER}) as url:
        yield url


def ev(event_id: str, kind: str, body, timestamp: str = "2026-02-01T08:00:00.000Z") -> dict:
    return {"id": event_id, "type": kind, "timestamp": timestamp, "body": body}


def ingest(url: str, batch: list, auth=AUTH) -> httpx.Response:
    return httpx.post(url + "/api/public/ingestion", json={"batch": batch}, auth=auth, timeout=30)


def get(url: str, path: str, auth=AUTH, **params) -> dict:
    r = httpx.get(url + path, params=params, auth=auth, timeout=10)
    assert r.status_code == 200, (path, params, r.status_code, r.text)
    return r.json()


def results(response: httpx.Response) -> tuple[dict, dict]:
    """(event id -> status) for successes and for errors, from a 207."""
    assert response.status_code == 207, response.text
    body = response.json()
    for error in body["errors"]:
        assert error["status"] == 400 and error["message"], error
    return ({s["id"]: s["status"] for s in body["successes"]}, {e["id"]: e["status"] for e in body["errors"]})


def test_a_batch_answers_per_event_and_bad_events_do_not_sink_good_ones(traces):
    t = "2026-02-01T08:00:00.000Z"
    batch = [
        ev("e-trace", "trace-create", {"id": "t-mixed", "name": "mixed", "userId": "u-mixed", "timestamp": t}),
        ev("e-span", "span-create", {"id": "o-span", "traceId": "t-mixed", "name": "step",
                                     "startTime": t, "endTime": "2026-02-01T08:00:02.000Z"}),
        ev("e-gen", "generation-create", {"id": "o-gen", "traceId": "t-mixed", "parentObservationId": "o-span",
                                          "name": "llm", "model": "gpt-4o-mini", "startTime": t,
                                          "usage": {"promptTokens": 1000, "completionTokens": 500}}),
        ev("e-log", "sdk-log", {"log": "hello"}),
        ev("bad-type", "banana-create", {"id": "o-banana", "traceId": "t-mixed"}),
        ev("bad-no-trace", "span-create", {"id": "o-orphan", "name": "orphan", "startTime": t}),
        ev("bad-time", "span-create", {"id": "o-late", "traceId": "t-mixed", "startTime": "yesterday"}),
        ev("bad-score", "score-create", {"traceId": "t-mixed", "name": "no-value"}),
        ev("bad-body", "span-create", "not an object"),
        {"type": "span-create", "timestamp": t, "body": {"id": "o-no-event-id", "traceId": "t-mixed"}},
    ]
    successes, errors = results(ingest(traces, batch))
    assert successes == {"e-trace": 201, "e-span": 201, "e-gen": 201, "e-log": 201}
    assert {"bad-type", "bad-no-trace", "bad-time", "bad-score", "bad-body"} <= set(errors)
    assert len(errors) == 6

    trace = get(traces, "/api/public/traces/t-mixed")
    assert (trace["name"], trace["userId"]) == ("mixed", "u-mixed")
    observations = {o["id"]: o for o in trace["observations"]}
    assert set(observations) == {"o-span", "o-gen"}
    gen = observations["o-gen"]
    assert (gen["type"], gen["parentObservationId"], gen["model"]) == ("GENERATION", "o-span", "gpt-4o-mini")
    assert gen["usage"]["input"] == 1000 and gen["usage"]["output"] == 500 and gen["usage"]["total"] == 1500
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output.
    assert gen["calculatedTotalCost"] == pytest.approx(1000 * 0.15e-6 + 500 * 0.6e-6, rel=1e-9)
    assert observations["o-span"]["latency"] == pytest.approx(2.0)
    assert httpx.get(f"{traces}/api/public/observations/o-banana", auth=AUTH).status_code == 404


def test_an_event_with_an_unreadable_timestamp_is_rejected(traces):
    """Langfuse validates every event's `timestamp` as ISO-8601 with an offset."""
    successes, errors = results(ingest(traces, [
        ev("ts-good", "trace-create", {"id": "t-ts-good"}),
        ev("ts-bad", "trace-create", {"id": "t-ts-bad"}, timestamp="not a time"),
    ]))
    assert (successes, errors) == ({"ts-good": 201}, {"ts-bad": 400})


def test_resent_event_ids_are_applied_once(traces):
    batch = [
        ev("d-trace", "trace-create", {"id": "t-dedupe", "name": "dedupe"}),
        ev("d-create", "generation-create", {"id": "g-dedupe", "traceId": "t-dedupe", "name": "llm",
                                             "model": "gpt-4o", "usageDetails": {"input": 10, "output": 5}}),
        ev("d-upd-1", "generation-update", {"id": "g-dedupe", "traceId": "t-dedupe",
                                            "usageDetails": {"input": 100, "output": 50}}),
        ev("d-upd-2", "generation-update", {"id": "g-dedupe", "traceId": "t-dedupe", "output": "final",
                                            "usageDetails": {"input": 200, "output": 80}}),
        # No body id: a second application would make a second score.
        ev("d-score", "score-create", {"traceId": "t-dedupe", "name": "dup", "value": 1}),
    ]
    successes, errors = results(ingest(traces, batch))
    assert len(successes) == 5 and errors == {}
    # An SDK retrying a batch whose answer it lost, plus one new event.
    resent = [batch[1], batch[2], batch[4], ev("d-new", "span-create", {"id": "s-dedupe", "traceId": "t-dedupe"})]
    successes, errors = results(ingest(traces, resent))
    assert successes == {"d-create": 201, "d-upd-1": 201, "d-score": 201, "d-new": 201} and errors == {}

    trace = get(traces, "/api/public/traces/t-dedupe")
    gen = {o["id"]: o for o in trace["observations"]}["g-dedupe"]
    assert (gen["usage"]["input"], gen["usage"]["output"], gen["usage"]["total"]) == (200, 80, 280)
    assert (gen["name"], gen["model"], gen["type"], gen["output"]) == ("llm", "gpt-4o", "GENERATION", "final")
    assert gen["calculatedTotalCost"] == pytest.approx(200 * 2.5e-6 + 80 * 10e-6, rel=1e-9)
    assert [s["name"] for s in trace["scores"]] == ["dup"]
    assert {o["id"] for o in trace["observations"]} == {"g-dedupe", "s-dedupe"}


def test_an_event_id_twice_in_one_batch_is_applied_once(traces):
    """The first event with an id applies; the same id later in the batch is a duplicate."""
    batch = [ev("twice", "trace-create", {"id": "t-twice", "name": "first", "tags": ["a"]}),
             ev("twice", "trace-create", {"id": "t-twice", "name": "second", "tags": ["b"]}),
             ev("twice-other", "trace-create", {"id": "t-twice", "userId": "u-twice"})]
    successes, errors = results(ingest(traces, batch))
    assert successes == {"twice": 201, "twice-other": 201} and errors == {}
    trace = get(traces, "/api/public/traces/t-twice")
    assert (trace["name"], trace["tags"], trace["userId"]) == ("first", ["a"], "u-twice")


def test_partial_updates_keep_what_they_leave_out(traces):
    successes, _ = results(ingest(traces, [
        ev("p-1", "trace-create", {"id": "t-partial", "name": "partial", "userId": "u-partial",
                                   "sessionId": "s-partial", "input": {"q": 1}}),
        ev("p-2", "span-create", {"id": "s-partial", "traceId": "t-partial", "name": "work",
                                  "startTime": "2026-02-01T08:00:00Z", "metadata": {"step": 1}}),
        ev("p-3", "trace-create", {"id": "t-partial", "output": {"a": 2}}),
        ev("p-4", "span-update", {"id": "s-partial", "traceId": "t-partial", "endTime": "2026-02-01T08:00:03Z",
                                  "level": "WARNING", "statusMessage": "slow"}),
    ]))
    assert len(successes) == 4
    trace = get(traces, "/api/public/traces/t-partial")
    assert (trace["name"], trace["userId"], trace["sessionId"]) == ("partial", "u-partial", "s-partial")
    assert (trace["input"], trace["output"]) == ({"q": 1}, {"a": 2})
    span = trace["observations"][0]
    assert (span["name"], span["type"], span["metadata"], span["level"], span["statusMessage"]) == (
        "work", "SPAN", {"step": 1}, "WARNING", "slow")
    assert span["latency"] == pytest.approx(3.0)


def test_trace_updates_merge_tags_and_metadata(traces):
    """Langfuse's upsert: tags become the union, metadata is merged key by key."""
    results(ingest(traces, [
        ev("m-1", "trace-create", {"id": "t-merge", "tags": ["a"], "metadata": {"x": 1}}),
        ev("m-2", "trace-create", {"id": "t-merge", "tags": ["b"], "metadata": {"y": 2}}),
    ]))
    trace = get(traces, "/api/public/traces/t-merge")
    assert (sorted(trace["tags"]), trace["metadata"]) == (["a", "b"], {"x": 1, "y": 2})


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b'{"batch": 3}', "batch"),
    (b'{"events": []}', "batch"),
])
def test_a_bad_envelope_is_a_400(traces, body, why):
    r = httpx.post(traces + "/api/public/ingestion", content=body, auth=AUTH,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert why in r.json()["message"] and r.json()["error"] == "Bad Request"


ROUTES = [
    ("POST", "/api/public/ingestion", {"json": {"batch": []}}),
    ("POST", "/api/public/otel/v1/traces", {"content": b"", "headers": {"content-type": "application/x-protobuf"}}),
    ("POST", "/v1/traces", {"content": b"", "headers": {"content-type": "application/x-protobuf"}}),
    ("POST", "/api/public/scores", {"json": {"traceId": "t-auth", "name": "x", "value": 1}}),
    ("GET", "/api/public/projects", {}),
    ("GET", "/api/public/traces", {}),
    ("GET", "/api/public/traces/t-auth", {}),
    ("GET", "/api/public/observations", {}),
    ("GET", "/api/public/observations/o-auth", {}),
    ("GET", "/api/public/sessions", {}),
    ("GET", "/api/public/metrics/daily", {}),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong-secret": {"auth": ("pk-ingest", "sk-wrong")},
    "secret-as-public-key": {"auth": (MASTER, "")},
    "bearer-master-key": {"headers": {"authorization": f"Bearer {MASTER}"}},
    "not-base64": {"headers": {"authorization": "Basic %%%"}},
}


@pytest.mark.parametrize("method, path, options", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_wants_the_projects_credentials(traces, method, path, options):
    results(ingest(traces, [ev("auth-1", "trace-create", {"id": "t-auth"}),
                            ev("auth-2", "span-create", {"id": "o-auth", "traceId": "t-auth"})]))
    answers = {}
    for name, credentials in BAD_CREDENTIALS.items():
        headers = {**options.get("headers", {}), **credentials.get("headers", {})}
        r = httpx.request(method, traces + path, auth=credentials.get("auth"), timeout=10,
                          **{**options, "headers": headers})
        answers[name] = (r.status_code, sorted(r.json()) if r.status_code == 401 else r.text)
    assert answers == {name: (401, ["error", "message"]) for name in BAD_CREDENTIALS}
    r = httpx.request(method, traces + path, auth=AUTH, timeout=10, **options)
    assert r.status_code < 300, r.text


def test_health_needs_no_credentials(traces):
    r = httpx.get(traces + "/api/public/health")
    assert r.status_code == 200 and r.json()["status"] == "OK"


@pytest.mark.parametrize("path, content_type", [
    ("/api/public/ingestion", "application/json"),
    ("/api/public/otel/v1/traces", "application/x-protobuf"),
    ("/api/public/scores", "application/json"),
])
def test_a_body_over_32_mib_is_a_413(traces, path, content_type):
    body = b'{"batch": [' + b" " * (32 * MIB + 1) + b"]}"
    r = httpx.post(traces + path, content=body, auth=AUTH, headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 413, r.text[:300]


def kv(key: str, value) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def otlp_request(trace_hex: str, user: str) -> bytes:
    start = 1_772_000_000_000_000_000
    root = Span(trace_id=bytes.fromhex(trace_hex), span_id=bytes.fromhex("0102030405060708"), name="raw-root",
                start_time_unix_nano=start, end_time_unix_nano=start + 2_000_000_000,
                attributes=[kv("user.id", user)])
    llm = Span(trace_id=bytes.fromhex(trace_hex), span_id=bytes.fromhex("1112131415161718"),
               parent_span_id=bytes.fromhex("0102030405060708"), name="raw-llm",
               start_time_unix_nano=start + 100_000_000, end_time_unix_nano=start + 900_000_000,
               attributes=[kv("gen_ai.request.model", "gpt-4o"), kv("gen_ai.usage.input_tokens", 40),
                           kv("gen_ai.usage.output_tokens", 10)],
               status=Status(code=Status.STATUS_CODE_ERROR, message="upstream 500"))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[root, llm])])])
    return request.SerializeToString()


def test_a_gzipped_protobuf_otlp_body_is_stored(traces):
    trace_hex = "ab" * 16
    r = httpx.post(traces + "/api/public/otel/v1/traces", content=gzip.compress(otlp_request(trace_hex, "raw-user")),
                   auth=AUTH, headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"})
    assert r.status_code == 200, r.text
    trace = get(traces, f"/api/public/traces/{trace_hex}")
    assert (trace["name"], trace["userId"], trace["timestamp"]) == ("raw-root", "raw-user", "2026-02-25T06:13:20.000Z")
    observations = {o["name"]: o for o in trace["observations"]}
    llm = observations["raw-llm"]
    assert (llm["id"], llm["parentObservationId"], llm["type"]) == ("1112131415161718", "0102030405060708", "GENERATION")
    assert (llm["level"], llm["statusMessage"], llm["usage"]["total"]) == ("ERROR", "upstream 500", 50)
    assert llm["latency"] == pytest.approx(0.8)


def test_an_otlp_json_body_is_stored(traces):
    trace_hex = "cd" * 16
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "deployment.environment", "value": {"stringValue": "staging"}}]},
        "scopeSpans": [{"scope": {"name": "js"}, "spans": [{
            "traceId": trace_hex.upper(), "spanId": "A1A2A3A4A5A6A7A8", "name": "json-root", "kind": 1,
            "startTimeUnixNano": "1772000000000000000", "endTimeUnixNano": "1772000001000000000",
            "attributes": [{"key": "langfuse.trace.tags", "value": {"arrayValue": {"values": [
                {"stringValue": "js"}, {"stringValue": "otlp"}]}}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "64"}},
                {"key": "llm.model_name", "value": {"stringValue": "gpt-4o-mini"}}]}]}]}]}
    r = httpx.post(traces + "/api/public/otel/v1/traces", json=body, auth=AUTH)
    assert r.status_code == 200, r.text
    trace = get(traces, f"/api/public/traces/{trace_hex}")
    assert (trace["name"], trace["tags"], trace["environment"]) == ("json-root", ["js", "otlp"], "staging")
    (obs,) = trace["observations"]
    assert (obs["id"], obs["type"], obs["model"], obs["usage"]["input"]) == (
        "a1a2a3a4a5a6a7a8", "GENERATION", "gpt-4o-mini", 64)


@pytest.mark.parametrize("body, headers", [
    (b"\xff\xff\xff\x01garbage", {"content-type": "application/x-protobuf"}),
    (b"\x1f\x8b\x08\x00garbage", {"content-type": "application/x-protobuf", "content-encoding": "gzip"}),
    (b'{"resourceSpans": 3}', {"content-type": "application/json"}),
    (b"{not json", {"content-type": "application/json"}),
], ids=["protobuf", "gzip", "json-shape", "json-syntax"])
def test_an_unreadable_otlp_body_is_a_400(traces, body, headers):
    r = httpx.post(traces + "/api/public/otel/v1/traces", content=body, auth=AUTH, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["message"]


def test_an_empty_otlp_export_is_a_200_and_another_content_type_is_refused(traces):
    empty = ExportTraceServiceRequest().SerializeToString()
    r = httpx.post(traces + "/v1/traces", content=empty, auth=AUTH, headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 200
    r = httpx.post(traces + "/v1/traces", content=b"{}", auth=AUTH, headers={"content-type": "text/plain"})
    assert r.status_code in (400, 415), r.text


def test_the_scores_route_takes_one_score_or_a_list(traces):
    results(ingest(traces, [ev("sc-t", "trace-create", {"id": "t-scores"})]))
    one = httpx.post(traces + "/api/public/scores", auth=AUTH,
                     json={"id": "score-one", "traceId": "t-scores", "name": "accuracy", "value": 0.5})
    assert (one.status_code, one.json()) == (200, {"id": "score-one"})
    many = httpx.post(traces + "/api/public/scores", auth=AUTH, json=[
        {"traceId": "t-scores", "name": "label", "value": "good", "dataType": "CATEGORICAL"},
        {"traceId": "t-scores", "name": "passed", "value": 1, "dataType": "BOOLEAN"}])
    assert many.status_code == 202, many.text
    mixed = httpx.post(traces + "/api/public/scores", auth=AUTH, json=[
        {"traceId": "t-scores", "name": "late", "value": 2}, {"traceId": "t-scores", "name": "broken"}])
    assert mixed.status_code == 207 and (mixed.json()["accepted"], mixed.json()["rejected"]) == (1, 1)
    bad = httpx.post(traces + "/api/public/scores", auth=AUTH, json={"name": "nowhere", "value": 1})
    assert bad.status_code == 400, bad.text

    scores = {s["name"]: s for s in get(traces, "/api/public/traces/t-scores")["scores"]}
    assert set(scores) == {"accuracy", "label", "passed", "late"}
    assert (scores["accuracy"]["dataType"], scores["accuracy"]["value"]) == ("NUMERIC", 0.5)
    assert (scores["label"]["dataType"], scores["label"]["stringValue"]) == ("CATEGORICAL", "good")
    assert (scores["passed"]["dataType"], scores["passed"]["value"]) == ("BOOLEAN", 1)
    assert get(traces, "/api/public/traces", name="missing")["data"] == []


def test_read_filters_select_pages_and_order_traces(traces):
    def trace(id, day, **fields):
        return ev(f"f-{id}", "trace-create", {"id": id, "timestamp": f"2026-03-0{day}T10:00:00.000Z", **fields})

    results(ingest(traces, [
        trace("f1", 1, name="alpha", userId="ua", sessionId="s1", tags=["x", "y"], environment="prod"),
        trace("f2", 2, name="alpha", userId="ub", sessionId="s1", tags=["x"], environment="dev"),
        trace("f3", 3, name="beta", userId="ua", tags=["y"]),
        ev("f-span", "span-create", {"id": "f1-span", "traceId": "f1", "name": "plan", "level": "WARNING",
                                     "startTime": "2026-03-01T10:00:01Z"}),
        ev("f-gen", "generation-create", {"id": "f1-gen", "traceId": "f1", "name": "call", "model": "gpt-4o",
                                          "parentObservationId": "f1-span", "startTime": "2026-03-01T10:00:02Z"}),
        ev("f-gen3", "generation-create", {"id": "f3-gen", "traceId": "f3", "name": "call", "model": "gpt-4o",
                                           "startTime": "2026-03-03T10:00:02Z"}),
    ]))
    window = {"fromTimestamp": "2026-03-01T00:00:00Z", "toTimestamp": "2026-03-04T00:00:00Z"}

    def ids(**params):
        return [t["id"] for t in get(traces, "/api/public/traces", **{**window, **params})["data"]]

    cases = {
        "window": ({}, ["f3", "f2", "f1"]),
        "user": ({"userId": "ua"}, ["f3", "f1"]),
        "name": ({"name": "alpha"}, ["f2", "f1"]),
        "session": ({"sessionId": "s1"}, ["f2", "f1"]),
        "all tags": ({"tags": ["x", "y"]}, ["f1"]),
        "one tag": ({"tags": "y"}, ["f3", "f1"]),
        "environment": ({"environment": "dev"}, ["f2"]),
        "two environments": ({"environment": ["dev", "prod"]}, ["f2", "f1"]),
        "from is inclusive": ({"fromTimestamp": "2026-03-02T10:00:00Z"}, ["f3", "f2"]),
        "to is exclusive": ({"toTimestamp": "2026-03-02T10:00:00Z"}, ["f1"]),
        "page 2 of 2": ({"limit": 2, "page": 2}, ["f1"]),
    }
    assert {name: ids(**params) for name, (params, _) in cases.items()} == {
        name: expected for name, (_, expected) in cases.items()}
    meta = get(traces, "/api/public/traces", limit=2, **window)["meta"]
    assert meta == {"page": 1, "limit": 2, "totalItems": 3, "totalPages": 2}

    def observations(**params):
        return sorted(o["id"] for o in get(traces, "/api/public/observations", **params)["data"])

    observation_cases = {
        "trace": ({"traceId": "f1"}, ["f1-gen", "f1-span"]),
        "type": ({"traceId": "f1", "type": "GENERATION"}, ["f1-gen"]),
        "level": ({"traceId": "f1", "level": "WARNING"}, ["f1-span"]),
        "parent": ({"parentObservationId": "f1-span"}, ["f1-gen"]),
        "name and user": ({"name": "call", "userId": "ua"}, ["f1-gen", "f3-gen"]),
        "start time": ({"name": "call", "fromStartTime": "2026-03-02T00:00:00Z"}, ["f3-gen"]),
    }
    assert {name: observations(**params) for name, (params, _) in observation_cases.items()} == {
        name: expected for name, (_, expected) in observation_cases.items()}

    session = get(traces, "/api/public/sessions/s1")
    assert sorted(t["id"] for t in session["traces"]) == ["f1", "f2"]
    assert session["createdAt"] == "2026-03-01T10:00:00.000Z"
    assert httpx.get(traces + "/api/public/sessions/no-such-session", auth=AUTH).status_code == 404
    assert httpx.get(traces + "/api/public/traces", params={"page": 0}, auth=AUTH).status_code == 400
    assert httpx.get(traces + "/api/public/traces", params={"fromTimestamp": "soon"}, auth=AUTH).status_code == 400


def test_the_default_environment_filters_like_it_reads(traces):
    """A trace sent without an environment reads as `default`, so `environment=default`
    must find it (Langfuse stores `default`)."""
    results(ingest(traces, [ev("env-1", "trace-create", {"id": "t-env-default", "userId": "u-env-default"})]))
    listed = get(traces, "/api/public/traces", userId="u-env-default")["data"]
    assert [t["environment"] for t in listed] == ["default"]
    assert [t["id"] for t in get(traces, "/api/public/traces", userId="u-env-default",
                                 environment="default")["data"]] == ["t-env-default"]


# Retention off: the events' fixed dates are months old, and the retention thread's first
# pass (a few seconds after start) would delete them mid-test.
PROJECTS = """traces:
  retention_days: 0
  projects:
    - {id: shop, name: Shop, public_key: pk-shop, secret_key: sk-shop}
    - {id: blog, public_key: pk-blog, secret_key: sk-blog}
"""


def test_each_project_sees_only_its_own_traces(tmp_path):
    shop, blog = ("pk-shop", "sk-shop"), ("pk-blog", "sk-blog")
    with config_server(tmp_path, PROJECTS) as url:
        for auth, name in [(shop, "shop-trace"), (blog, "blog-trace")]:
            results(ingest(url, [
                ev("same-event-id", "trace-create", {"id": "shared-id", "name": name, "sessionId": f"{name}-s"}),
                ev(f"{name}-only", "trace-create", {"id": f"{name}-only", "userId": "same-user"}),
                ev(f"{name}-gen", "generation-create", {"id": "shared-gen", "traceId": "shared-id", "model": "gpt-4o",
                                                        "usageDetails": {"input": 1, "output": 1}}),
            ], auth=auth))
        results(ingest(url, [ev("shop-score", "score-create", {"traceId": "shared-id", "name": "q", "value": 1})],
                       auth=shop))

        def view(auth):
            return {
                "traces": sorted(t["id"] for t in get(url, "/api/public/traces", auth=auth)["data"]),
                "same user": [t["id"] for t in get(url, "/api/public/traces", auth=auth, userId="same-user")["data"]],
                "shared name": get(url, "/api/public/traces/shared-id", auth=auth)["name"],
                "shared scores": len(get(url, "/api/public/traces/shared-id", auth=auth)["scores"]),
                "observations": len(get(url, "/api/public/observations", auth=auth)["data"]),
                "sessions": [s["id"] for s in get(url, "/api/public/sessions", auth=auth)["data"]],
                "project": [(p["id"], p["name"]) for p in get(url, "/api/public/projects", auth=auth)["data"]],
            }

        assert view(shop) == {"traces": ["shared-id", "shop-trace-only"], "same user": ["shop-trace-only"],
                              "shared name": "shop-trace", "shared scores": 1, "observations": 1,
                              "sessions": ["shop-trace-s"], "project": [("shop", "Shop")]}
        assert view(blog) == {"traces": ["blog-trace-only", "shared-id"], "same user": ["blog-trace-only"],
                              "shared name": "blog-trace", "shared scores": 0, "observations": 1,
                              "sessions": ["blog-trace-s"], "project": [("blog", "blog")]}
        assert httpx.get(url + "/api/public/traces/blog-trace-only", auth=shop).status_code == 404
        assert httpx.get(url + "/api/public/observations/shared-gen", auth=blog).status_code == 200
        for auth in [("pk-shop", "sk-blog"), ("pk-blog", "sk-shop"), ("pk-other", "sk-shop"), None]:
            assert httpx.get(url + "/api/public/traces", auth=auth).status_code == 401, auth


def start_agentbox(data_dir, *args: str):
    """An `agentbox serve` we can SIGKILL: (process, base URL, log path). Its store (SQLite
    in `data_dir`, or that data dir's Postgres database) is the one a later `extra_server`
    on `data_dir` opens."""
    port = _free_port()
    log_path = data_dir / f"agentbox-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(_find_binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env(data_dir))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        assert proc.poll() is None, _log_tail(log_path)
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return proc, url, log_path
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"agentbox not ready:\n{_log_tail(log_path)}", pytrace=False)
        time.sleep(0.1)


def test_every_acknowledged_event_survives_a_sigkill(tmp_path):
    # Retention off, as for the module's server: the events' fixed dates are months old.
    (tmp_path / "agentbox.yaml").write_text("models: []\ntraces: {retention_days: 0}\n")
    config = ("--config", str(tmp_path / "agentbox.yaml"))
    proc, url, log_path = start_agentbox(tmp_path, *config)
    acknowledged: list[str] = []  # trace ids whose batch got a 207 with no errors
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int):
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(100_000):
                if stop.is_set():
                    return
                ids = [f"w{worker}-b{n}-t{i}" for i in range(10)]
                batch = []
                for trace_id in ids:
                    batch.append(ev(f"{trace_id}-e1", "trace-create", {"id": trace_id, "name": "durable"}))
                    batch.append(ev(f"{trace_id}-e2", "generation-create", {
                        "id": f"{trace_id}-g", "traceId": trace_id, "model": "gpt-4o",
                        "usageDetails": {"input": 100, "output": 10}, "input": "x" * 500}))
                try:
                    r = client.post("/api/public/ingestion", json={"batch": batch})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 207 and not r.json()["errors"]:
                    with lock:
                        acknowledged.extend(ids)

    workers = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while True:
        with lock:
            if len(acknowledged) >= 2000:
                break
        assert time.monotonic() < deadline, f"only {len(acknowledged)} traces acknowledged in 60 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    with lock:
        survivors_expected = list(acknowledged)
    assert len(survivors_expected) >= 2000, _log_tail(log_path)

    with extra_server(tmp_path, *config) as restarted:
        missing = []
        with httpx.Client(base_url=restarted, timeout=10) as client:
            for trace_id in survivors_expected:
                r = client.get(f"/api/public/traces/{trace_id}")
                if r.status_code != 200 or [o["id"] for o in r.json()["observations"]] != [f"{trace_id}-g"]:
                    missing.append((trace_id, r.status_code))
            total = client.get("/api/public/traces", params={"name": "durable", "limit": 1}).json()["meta"]
            # The day totals, kept by the same transactions that fold the ingestion log
            # (start-up folds what the kill left there), equal the numbers computed from
            # the rows: nothing was counted twice or left out.
            totals = [client.get("/api/public/metrics/daily", params={"limit": 3, **extra}).json()["data"]
                      for extra in ({}, {"environment": "default"})]
        assert missing == [], f"{len(missing)} of {len(survivors_expected)} acknowledged traces lost: {missing[:10]}"
        assert total["totalItems"] >= len(survivors_expected)
        counts = [[(d["date"], d["countTraces"], d["countObservations"]) for d in days] for days in totals]
        assert counts[0] == counts[1] and sum(n for _, n, _ in counts[0]) >= len(survivors_expected), counts


def test_every_acknowledged_event_is_readable_at_once_and_the_backlog_drains(traces):
    """Ingestion is answered once the events are in the ingestion log; the store folds them
    in large transactions soon after. A read right after an answer still sees the events
    (it waits for the fold), under concurrent ingestion too, and afterwards nothing is left
    waiting (`agentbox_traces_ingest_backlog` on /metrics)."""
    url = traces

    def sender(worker: int, seen: list):
        with httpx.Client(base_url=url, auth=AUTH, timeout=30) as client:
            for n in range(20):
                trace_id = f"rw-{worker}-{n}"
                batch = [ev(f"{trace_id}-t", "trace-create", {"id": trace_id, "userId": f"rw-user-{worker}"})]
                batch += [ev(f"{trace_id}-g{i}", "generation-create",
                             {"id": f"{trace_id}-g{i}", "traceId": trace_id, "model": "gpt-4o",
                              "usage": {"input": 10, "output": 1}}) for i in range(5)]
                r = client.post("/api/public/ingestion", json={"batch": batch})
                assert r.status_code == 207 and not r.json()["errors"], r.text
                got = client.get(f"/api/public/traces/{trace_id}")
                assert got.status_code == 200, got.text
                seen.append(len(got.json()["observations"]))

    seen: list[int] = []
    workers = [threading.Thread(target=sender, args=(w, seen)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen == [5] * 80
    metrics = httpx.get(url + "/metrics", timeout=10).text
    backlog = [line for line in metrics.splitlines() if line.startswith("agentbox_traces_ingest_backlog ")]
    assert backlog == ["agentbox_traces_ingest_backlog 0"], backlog
