"""The UI's conversation API over the store (run on SQLite and, by
`make python-tests-postgres`, on Postgres): create, append, read back in order, list,
survive a restart, delete."""

from __future__ import annotations

import httpx

from conftest import config_server

# httpx adds a slash to a base URL; the collection itself has none.
ROOT = "/api/conversations"


def test_conversations_round_trip_and_survive_a_restart(tmp_path):
    with config_server(tmp_path) as base:
        api = httpx.Client(base_url=base, timeout=10)
        first = api.post(ROOT, json={"title": "first", "model": "m"}).json()
        second = api.post(ROOT, json={"title": "second", "model": "m"}).json()
        for role, content in [("user", "hello"), ("assistant", "hi there"), ("user", "ünïcode ✓")]:
            r = api.post(f"{ROOT}/{first['id']}/messages", json={"role": role, "content": content})
            assert r.status_code == 201, r.text
        listed = {c["id"]: c["title"] for c in api.get(ROOT).json()}
        assert listed == {first["id"]: "first", second["id"]: "second"}, listed
        assert api.post(f"{ROOT}/missing/messages", json={"role": "user", "content": "x"}).status_code == 404
    with config_server(tmp_path) as base:
        api = httpx.Client(base_url=base, timeout=10)
        got = api.get(f"{ROOT}/{first['id']}").json()
        assert got["title"] == "first"
        assert [(m["role"], m["content"]) for m in got["messages"]] == [
            ("user", "hello"), ("assistant", "hi there"), ("user", "ünïcode ✓")]
        assert api.delete(f"{ROOT}/{first['id']}").status_code == 204
        assert api.get(f"{ROOT}/{first['id']}").status_code == 404
        assert [c["id"] for c in api.get(ROOT).json()] == [second["id"]]
