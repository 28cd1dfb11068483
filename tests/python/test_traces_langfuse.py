"""Tracing through the real client libraries: the Langfuse SDK and plain OpenTelemetry.

One agentbox with no models and a master key is the Langfuse server. The Langfuse SDK 4.18
(OTLP protobuf for spans, batch ingestion for scores) records a nested trace with a
priced generation, a client-priced one, trace attributes and scores; the SDK's own read
client and raw HTTP then read it back: the tree, usage, cost from agentbox's price table,
names, tags, sessions, scores and daily metrics. The plain OpenTelemetry SDK exports
`gen_ai.*` spans to both OTLP paths, and they must map as Langfuse maps them.
"""

from __future__ import annotations

import base64

import httpx
import pytest
from langfuse import Langfuse, propagate_attributes
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from conftest import config_server, eventually

MASTER = "sk-traces-sdk-test"
# gpt-4o: $2.50 / M input, $10 / M output (the built-in price table).
GPT_4O_COST = 1000 * 2.5e-6 + 200 * 10e-6  # 0.0045
CLIENT_COST = 0.3  # what the client reports for the gpt-4o-mini call; wins over the table


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    with config_server(tmp_path_factory.mktemp("traces-sdk"), env={"AGENTBOX_MASTER_KEY": MASTER}) as url:
        yield url


def read(url: str, path: str, **params) -> dict:
    r = httpx.get(url + path, params=params, auth=("pk-any", MASTER), timeout=10)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def shape(observations) -> dict:
    """name -> (type, parent name), from the read API's observations (dicts)."""
    by_id = {o["id"]: o for o in observations}
    return {
        o["name"]: (o["type"], by_id[o["parentObservationId"]]["name"] if o["parentObservationId"] else None)
        for o in observations
    }


@pytest.fixture(scope="module")
def sdk_trace(traces):
    """One trace recorded with the Langfuse SDK; returns its ids and the client."""
    lf = Langfuse(public_key="pk-lf-sdk-trace", secret_key=MASTER, host=traces)
    assert lf.auth_check()
    with lf.start_as_current_observation(name="handle-request", input={"question": "2+2?"}) as root:
        with propagate_attributes(user_id="user-sdk", session_id="session-sdk", tags=["checkout", "beta"],
                                  trace_name="checkout-flow", metadata={"team": "payments"}):
            with lf.start_as_current_observation(name="retrieve"):
                with lf.start_as_current_observation(name="lookup", as_type="tool", input={"sku": 7}) as tool:
                    tool.update(output={"price": 4})
            with lf.start_as_current_observation(
                name="answer", as_type="generation", model="gpt-4o",
                model_parameters={"temperature": 0.2, "max_tokens": 64},
                input=[{"role": "user", "content": "2+2?"}], metadata={"prompt_version": "v3"},
            ) as generation:
                generation.update(output={"role": "assistant", "content": "4"},
                                  usage_details={"input": 1000, "output": 200})
                generation.score(name="helpfulness", value=0.75, comment="clear")
                generation_id = generation.id
            with lf.start_as_current_observation(
                name="summarize", as_type="generation", model="gpt-4o-mini",
                usage_details={"input": 2000, "output": 1000},
                cost_details={"input": 0.1, "output": 0.2, "total": CLIENT_COST},
            ):
                pass
        root.update(output={"answer": "4"})
        lf.score_current_trace(name="correct", value=1.0)
        lf.score_current_trace(name="tone", value="friendly", data_type="CATEGORICAL")
        trace_id = lf.get_current_trace_id()
        root_id = root.id
    lf.flush()
    yield {"lf": lf, "trace_id": trace_id, "root_id": root_id, "generation_id": generation_id}
    lf.shutdown()


def test_the_langfuse_sdk_trace_reads_back_through_the_sdk(sdk_trace):
    lf, trace_id = sdk_trace["lf"], sdk_trace["trace_id"]
    trace = eventually(lambda: lf.api.trace.get(trace_id),
                       lambda t: len(t.observations) == 5 and len(t.scores) == 3,
                       what="the SDK's trace with 5 observations and 3 scores")

    assert (trace.name, trace.user_id, trace.session_id) == ("checkout-flow", "user-sdk", "session-sdk")
    assert sorted(trace.tags) == ["beta", "checkout"]
    assert trace.metadata["team"] == "payments"
    assert trace.total_cost == pytest.approx(GPT_4O_COST + CLIENT_COST, rel=1e-9)
    assert trace.latency is not None and trace.latency >= 0

    observations = [{"id": o.id, "name": o.name, "type": o.type, "parentObservationId": o.parent_observation_id}
                    for o in trace.observations]
    assert shape(observations) == {
        "handle-request": ("SPAN", None),
        "retrieve": ("SPAN", "handle-request"),
        "lookup": ("TOOL", "retrieve"),
        "answer": ("GENERATION", "handle-request"),
        "summarize": ("GENERATION", "handle-request"),
    }
    by_name = {o.name: o for o in trace.observations}
    assert by_name["handle-request"].id == sdk_trace["root_id"]
    assert by_name["lookup"].input == {"sku": 7} and by_name["lookup"].output == {"price": 4}

    answer = by_name["answer"]
    assert answer.id == sdk_trace["generation_id"]
    assert answer.model == "gpt-4o"
    assert answer.model_parameters == {"temperature": 0.2, "max_tokens": 64}
    assert answer.input == [{"role": "user", "content": "2+2?"}]
    assert answer.output == {"role": "assistant", "content": "4"}
    assert answer.metadata["prompt_version"] == "v3"
    assert (answer.usage.input, answer.usage.output, answer.usage.total) == (1000, 200, 1200)
    assert answer.usage_details == {"input": 1000, "output": 200, "total": 1200}
    assert answer.calculated_input_cost == pytest.approx(1000 * 2.5e-6, rel=1e-9)
    assert answer.calculated_output_cost == pytest.approx(200 * 10e-6, rel=1e-9)
    assert answer.calculated_total_cost == pytest.approx(GPT_4O_COST, rel=1e-9)

    summarize = by_name["summarize"]
    assert summarize.calculated_total_cost == pytest.approx(CLIENT_COST)
    assert summarize.cost_details["total"] == pytest.approx(CLIENT_COST)

    scores = {(s.name, s.data_type, s.observation_id): s for s in trace.scores}
    assert set(scores) == {
        ("helpfulness", "NUMERIC", sdk_trace["generation_id"]),
        ("correct", "NUMERIC", None),
        ("tone", "CATEGORICAL", None),
    }
    assert scores[("helpfulness", "NUMERIC", sdk_trace["generation_id"])].value == 0.75
    assert scores[("helpfulness", "NUMERIC", sdk_trace["generation_id"])].comment == "clear"
    assert scores[("correct", "NUMERIC", None)].value == 1.0
    assert scores[("tone", "CATEGORICAL", None)].string_value == "friendly"


def test_the_sdks_list_session_and_observation_reads_find_the_trace(sdk_trace, traces):
    lf, trace_id = sdk_trace["lf"], sdk_trace["trace_id"]
    listed = eventually(lambda: lf.api.trace.list(user_id="user-sdk"), lambda r: len(r.data) == 1,
                        what="trace.list(user_id=) finding the trace")
    assert listed.data[0].id == trace_id
    assert len(listed.data[0].observations) == 5 and len(listed.data[0].scores) == 3
    assert listed.meta.total_items == 1
    assert [t.id for t in lf.api.trace.list(tags=["checkout", "beta"]).data] == [trace_id]
    assert lf.api.trace.list(tags=["checkout", "missing"]).data == []
    assert [t.id for t in lf.api.trace.list(name="checkout-flow").data] == [trace_id]
    assert lf.api.trace.list(user_id="someone-else").data == []

    sessions = lf.api.sessions.list()
    assert "session-sdk" in [s.id for s in sessions.data]
    session = lf.api.sessions.get("session-sdk")
    assert [t.id for t in session.traces] == [trace_id]

    generations = lf.api.legacy.observations_v1.get_many(trace_id=trace_id, type="GENERATION")
    assert sorted(o.name for o in generations.data) == ["answer", "summarize"]
    children = read(traces, "/api/public/observations", traceId=trace_id,
                    parentObservationId=sdk_trace["root_id"])
    assert sorted(o["name"] for o in children["data"]) == ["answer", "retrieve", "summarize"]
    one = read(traces, f"/api/public/observations/{sdk_trace['generation_id']}")
    assert one["calculatedTotalCost"] == pytest.approx(GPT_4O_COST, rel=1e-9)

    daily = read(traces, "/api/public/metrics/daily", userId="user-sdk")
    assert len(daily["data"]) == 1
    day = daily["data"][0]
    assert (day["countTraces"], day["countObservations"]) == (1, 5)
    assert day["totalCost"] == pytest.approx(GPT_4O_COST + CLIENT_COST, rel=1e-9)
    usage = {u["model"]: (u["inputUsage"], u["outputUsage"], u["totalUsage"]) for u in day["usage"]}
    assert usage == {"gpt-4o": (1000, 200, 1200), "gpt-4o-mini": (2000, 1000, 3000)}


def otel_tracer(url: str, path: str, key: str, **exporter_options):
    """A private TracerProvider exporting to agentbox (never the global one)."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "agent-app", "deployment.environment": "dev"}))
    auth = "Basic " + base64.b64encode(f"pk-otel:{key}".encode()).decode()
    exporter = OTLPSpanExporter(endpoint=url + path, headers={"Authorization": auth}, **exporter_options)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def record_agent_run(provider: TracerProvider, user: str) -> str:
    tracer = provider.get_tracer("my.app", "0.1")
    with tracer.start_as_current_span("agent-run", kind=SpanKind.SERVER) as root:
        root.set_attribute("user.id", user)
        root.set_attribute("session.id", f"session-of-{user}")
        root.set_attribute("input.value", "what is 2+2?")
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as llm:
            llm.set_attribute("gen_ai.operation.name", "chat")
            llm.set_attribute("gen_ai.system", "openai")
            llm.set_attribute("gen_ai.request.model", "gpt-4o")
            llm.set_attribute("gen_ai.usage.input_tokens", 12000)
            llm.set_attribute("gen_ai.usage.output_tokens", 3000)
        with tracer.start_as_current_span("tool-call") as tool:
            tool.set_status(Status(StatusCode.ERROR, "boom"))
        root.set_attribute("output.value", "4")
        trace_id = format(root.get_span_context().trace_id, "032x")
    assert provider.force_flush(10_000)
    provider.shutdown()
    return trace_id


@pytest.mark.parametrize("path, options", [
    ("/api/public/otel/v1/traces", {}),
    ("/v1/traces", {"compression": Compression.Gzip}),
], ids=["langfuse-path", "otlp-default-path-gzip"])
def test_plain_opentelemetry_gen_ai_spans_become_a_priced_generation(traces, path, options):
    user = "otel-user-" + ("gzip" if options else "plain")
    trace_id = record_agent_run(otel_tracer(traces, path, MASTER, **options), user)
    trace = eventually(lambda: read(traces, f"/api/public/traces/{trace_id}"),
                       lambda t: len(t["observations"]) == 3, what="the OTel trace with 3 observations")

    assert (trace["name"], trace["userId"], trace["sessionId"]) == ("agent-run", user, f"session-of-{user}")
    assert trace["environment"] == "dev"
    assert shape(trace["observations"]) == {
        "agent-run": ("SPAN", None),
        "chat gpt-4o": ("GENERATION", "agent-run"),
        "tool-call": ("SPAN", "agent-run"),
    }
    by_name = {o["name"]: o for o in trace["observations"]}
    llm = by_name["chat gpt-4o"]
    assert llm["model"] == "gpt-4o"
    assert llm["usage"] == {"input": 12000, "output": 3000, "total": 15000, "unit": "TOKENS"}
    expected_cost = 12000 * 2.5e-6 + 3000 * 10e-6  # 0.06
    assert llm["calculatedTotalCost"] == pytest.approx(expected_cost, rel=1e-9)
    assert trace["totalCost"] == pytest.approx(expected_cost, rel=1e-9)
    # Attributes not mapped to a field stay visible as metadata.
    assert llm["metadata"]["gen_ai.system"] == "openai"
    assert (by_name["tool-call"]["level"], by_name["tool-call"]["statusMessage"]) == ("ERROR", "boom")
    assert by_name["agent-run"]["level"] == "DEFAULT"
    assert by_name["agent-run"]["input"] == "what is 2+2?"

    listed = read(traces, "/api/public/traces", userId=user)
    assert [t["id"] for t in listed["data"]] == [trace_id]


def test_an_exporter_with_a_wrong_key_stores_nothing(traces):
    trace_id = record_agent_run(otel_tracer(traces, "/api/public/otel/v1/traces", "sk-wrong"), "otel-intruder")
    r = httpx.get(f"{traces}/api/public/traces/{trace_id}", auth=("pk", MASTER), timeout=10)
    assert r.status_code == 404, r.text
    assert read(traces, "/api/public/traces", userId="otel-intruder")["data"] == []


def test_root_span_io_is_the_trace_io(sdk_trace, traces):
    """Langfuse shows a trace's input and output as its root span's (the v4/v5 SDKs have no
    other way to set them; plain OTel roots carry `input.value` / `output.value`)."""
    sdk = eventually(lambda: read(traces, f"/api/public/traces/{sdk_trace['trace_id']}"),
                     lambda t: len(t["observations"]) == 5)
    assert (sdk["input"], sdk["output"]) == ({"question": "2+2?"}, {"answer": "4"})

    trace_id = record_agent_run(otel_tracer(traces, "/api/public/otel/v1/traces", MASTER), "otel-io-user")
    otel = eventually(lambda: read(traces, f"/api/public/traces/{trace_id}"), lambda t: len(t["observations"]) == 3)
    # As Langfuse's read API does, values that are valid JSON come back parsed: "4" is 4.
    assert (otel["input"], otel["output"]) == ("what is 2+2?", 4)


def test_otel_resource_environment_reaches_observations(traces):
    """Langfuse reads an observation's environment from the span, then the resource
    (`deployment.environment`), as it does for the trace."""
    trace_id = record_agent_run(otel_tracer(traces, "/api/public/otel/v1/traces", MASTER), "otel-env-user")
    trace = eventually(lambda: read(traces, f"/api/public/traces/{trace_id}"), lambda t: len(t["observations"]) == 3)
    assert trace["environment"] == "dev"
    assert {o["name"]: o["environment"] for o in trace["observations"]} == {
        "agent-run": "dev", "chat gpt-4o": "dev", "tool-call": "dev"}
