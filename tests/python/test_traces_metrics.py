"""`GET /api/public/metrics/daily` from the writer's per-day totals, checked against the
same numbers computed from the rows (a filter that keeps every trace, here
`environment=default`, takes that path): events that update usage and cost later, a
trace whose timestamp moves to another day, models with and without usage, partial days
at the ends of a time range."""

from __future__ import annotations

import httpx
import pytest

from conftest import config_server, eventually

MASTER = "sk-traces-metrics-test"
AUTH = ("pk-metrics", MASTER)
DAY = "2026-03-0{}T{}:00:00.000Z"


def ev(event_id: str, kind: str, body) -> dict:
    return {"id": event_id, "type": kind, "timestamp": "2026-03-05T00:00:00.000Z", "body": body}


def ingest(url: str, batch: list):
    r = httpx.post(url + "/api/public/ingestion", json={"batch": batch}, auth=AUTH, timeout=30)
    assert r.status_code == 207 and not r.json()["errors"], r.text


def daily(url: str, **params) -> list[dict]:
    r = httpx.get(url + "/api/public/metrics/daily", params={"limit": 50, **params}, auth=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def comparable(days: list[dict]) -> list:
    return [(d["date"], d["countTraces"], d["countObservations"], round(d["totalCost"], 9),
             sorted((u["model"], u["inputUsage"], u["outputUsage"], u["totalUsage"], u["countObservations"],
                     u["countTraces"], round(u["totalCost"], 9)) for u in d["usage"]))
            for d in days]


def gen(event_id: str, obs: str, trace: str, start: str, **body) -> dict:
    return ev(event_id, "generation-create", {"id": obs, "traceId": trace, "startTime": start, **body})


BATCHES = [
    [
        ev("a", "trace-create", {"id": "t-1", "timestamp": DAY.format(1, "10")}),
        gen("a1", "g-1", "t-1", DAY.format(1, "10"), model="gpt-4o",
            usage={"input": 1000, "output": 100, "total": 1100}),
        ev("a2", "span-create", {"id": "s-1", "traceId": "t-1", "startTime": DAY.format(1, "10")}),
        ev("b", "trace-create", {"id": "t-2", "timestamp": DAY.format(2, "06")}),
        gen("b1", "g-2", "t-2", DAY.format(2, "06"), model="gpt-4o", usage={"input": 10, "output": 5}),
        gen("b2", "g-3", "t-2", DAY.format(2, "06"), model="claude-3-5-sonnet-20241022",
            usage={"input": 300, "output": 30}, costDetails={"total": 0.5}),
        # Trace 3 is created by its observation (late on day 2), then moved to day 3.
        gen("c1", "g-4", "t-3", DAY.format(2, "23"), model="gpt-4o-mini", usage={"input": 7, "output": 7}),
        ev("d", "trace-create", {"id": "t-4", "timestamp": DAY.format(3, "18")}),
    ],
    [
        # Later events: usage of g-1 grows, g-2 changes model, t-3 moves to day 3.
        ev("a3", "generation-update", {"id": "g-1", "traceId": "t-1", "usage": {"output": 400}}),
        ev("b3", "generation-update", {"id": "g-2", "traceId": "t-2", "model": "gpt-4o-mini"}),
        ev("c2", "trace-create", {"id": "t-3", "timestamp": DAY.format(3, "01")}),
        # A duplicate event id changes nothing.
        gen("a1", "g-1", "t-1", DAY.format(1, "10"), model="gpt-4o", usage={"input": 1, "output": 1}),
    ],
]


@pytest.fixture(scope="module", params=["read between batches", "no read between"])
def metrics(request, tmp_path_factory):
    """A read waits until acknowledged events are folded into the store, so reading after
    the first batch folds it alone (its traces are new: their totals come from the
    inserts), and the second batch then changes them (recomputed from the rows). Without
    the read, both batches are usually folded together."""
    tmp = tmp_path_factory.mktemp("traces-metrics")
    with config_server(tmp, "traces: {retention_days: 0}\n", env={"AGENTBOX_MASTER_KEY": MASTER}) as url:
        for batch in BATCHES:
            ingest(url, batch)
            if request.param == "read between batches":
                assert daily(url)
        yield url


def test_daily_totals_follow_updates_and_moved_traces(metrics):
    url = metrics
    days = daily(url)
    assert [(d["date"], d["countTraces"], d["countObservations"]) for d in days] == [
        ("2026-03-03", 2, 1), ("2026-03-02", 1, 2), ("2026-03-01", 1, 2)]
    usage = {(d["date"], u["model"]): (u["inputUsage"], u["outputUsage"], u["countTraces"])
             for d in days for u in d["usage"]}
    assert usage == {
        ("2026-03-01", "gpt-4o"): (1000, 400, 1),
        ("2026-03-02", "gpt-4o-mini"): (10, 5, 1),
        ("2026-03-02", "claude-3-5-sonnet-20241022"): (300, 30, 1),
        ("2026-03-03", "gpt-4o-mini"): (7, 7, 1),
    }
    claude = next(u for d in days for u in d["usage"] if u["model"].startswith("claude"))
    assert claude["totalCost"] == pytest.approx(0.5)
    assert days[2]["totalCost"] > 0  # gpt-4o is priced by the built-in table


@pytest.mark.parametrize("window", [{}, {"fromTimestamp": "2026-03-01T12:00:00Z"},
                                    {"fromTimestamp": "2026-03-02T00:00:00Z", "toTimestamp": "2026-03-03T02:00:00Z"},
                                    {"fromTimestamp": "2026-03-02T01:00:00Z", "toTimestamp": "2026-03-02T23:00:00Z"}])
def test_daily_totals_equal_the_numbers_computed_from_the_rows(metrics, window):
    url = metrics
    assert comparable(daily(url, **window)) == comparable(daily(url, environment="default", **window))



def test_retention_deletes_old_traces_and_takes_them_out_of_the_totals(tmp_path):
    import datetime
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)).strftime("%Y-%m-%dT10:00:00.000Z")
    new = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with config_server(tmp_path, "traces: {retention_days: 1}\n", env={"AGENTBOX_MASTER_KEY": MASTER}) as url:
        ingest(url, [
            ev("o", "trace-create", {"id": "t-old", "timestamp": old}),
            gen("o1", "g-old", "t-old", old, model="gpt-4o", usage={"input": 5, "output": 5}),
            ev("n", "trace-create", {"id": "t-new", "timestamp": new}),
            gen("n1", "g-new", "t-new", new, model="gpt-4o", usage={"input": 7, "output": 7}),
        ])
        # The retention thread's first pass runs a few seconds after start.
        eventually(lambda: httpx.get(url + "/api/public/traces/t-old", auth=AUTH, timeout=10).status_code,
                   done=lambda status: status == 404, timeout=30, what="t-old to be pruned")
        assert httpx.get(url + "/api/public/observations/g-old", auth=AUTH, timeout=10).status_code == 404
        days = daily(url)
        assert [(d["countTraces"], d["countObservations"]) for d in days] == [(1, 1)], days
        assert comparable(days) == comparable(daily(url, environment="default"))
