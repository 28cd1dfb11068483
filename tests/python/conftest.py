"""Pytest fixtures that start a real `agentbox serve` process for the Python client tests.

Owns the session-scoped `server` fixture (binary lookup, free port, data dir, log capture,
readiness polling on /health/ready, graceful SIGTERM shutdown that must exit 0) and the
`client` fixture (an `openai.OpenAI` client pointed at the server's /v1). Shared by every
test in this folder; test_gateway_sdk.py also starts a second server in front of it.
Helpers: `extra_server` (another agentbox), `gateway_server` / `config_server` (one with no
local models and a given config), `eventually` (poll for what is written asynchronously).

Owns the store under test too. By default each server keeps its tables in SQLite in its data
dir. With `AGENTBOX_TEST_DATABASE_URL` (a Postgres superuser URL, as `make
python-tests-postgres` sets from scripts/postgres.sh) each data dir gets its own database
`agentbox_t<hex>` instead, passed to the servers as `AGENTBOX_DATABASE_URL`: `server_env`
(what every server is started with), `database_url` (a data dir's database, created on first
use and kept for the session so that a restart on the same data dir finds its rows, as with
agentbox.db; all dropped at the session's end), `query_store` and `lock_store` (read the
store, or hold its write lock, whichever backend it is).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import warnings
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
SHUTDOWN_TIMEOUT_S = 30.0
# The Postgres server the store tests run against, as a superuser URL; unset: SQLite.
TEST_DATABASE_URL = os.environ.get("AGENTBOX_TEST_DATABASE_URL") or None
_databases: dict[Path, str] = {}  # data dir -> its database's URL, under Postgres


def _find_binary() -> Path:
    if os.environ.get("AGENTBOX_BIN"):
        path = Path(os.environ["AGENTBOX_BIN"])
        source = "AGENTBOX_BIN"
    elif os.environ.get("CARGO_TARGET_DIR"):
        path = Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "agentbox"
        source = "$CARGO_TARGET_DIR/release/agentbox"
    else:
        path = Path.home() / ".cache" / "agentbox-target" / "release" / "agentbox"
        source = "~/.cache/agentbox-target/release/agentbox"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"agentbox binary not found or not executable at {path} (from {source}). "
            "Build it with `cargo build --release -p app` or set AGENTBOX_BIN.",
            pytrace=False,
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<could not read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _psql(url: str, sql: str) -> list[tuple[str, ...]]:
    """Runs `sql` with psql against `url`; the result rows as text (NULL as "")."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("AGENTBOX_TEST_DATABASE_URL is set but psql is not installed "
                    "(apt-get install postgresql-client)", pytrace=False)
    run = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--csv", "-t", "-d", url, "-c", sql],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"psql failed on {sql!r}: {run.stderr.strip()}")
    return [tuple(row) for row in csv.reader(io.StringIO(run.stdout))]


def database_url(data_dir: Path) -> str | None:
    """The Postgres database of the servers using `data_dir` (created on first use), or
    None when the tests run against SQLite."""
    if TEST_DATABASE_URL is None:
        return None
    key = Path(data_dir).resolve()
    if key not in _databases:
        name = f"agentbox_t{secrets.token_hex(8)}"
        _psql(TEST_DATABASE_URL, f"CREATE DATABASE {name}")
        _databases[key] = urllib.parse.urlsplit(TEST_DATABASE_URL)._replace(path="/" + name).geturl()
    return _databases[key]


def _drop_databases() -> None:
    """Drops every database `database_url` made (best effort: a failure only warns)."""
    while _databases:
        _, url = _databases.popitem()
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        try:
            _psql(TEST_DATABASE_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception as e:  # noqa: BLE001 - a throwaway cluster: leave it
            warnings.warn(f"could not drop test database {name}: {e}")


def pytest_sessionfinish(session, exitstatus):
    _drop_databases()


def server_env(data_dir: Path, env: dict | None = None) -> dict:
    """The environment for an `agentbox serve` on `data_dir`: ours, the store's database
    under Postgres (never an outside `AGENTBOX_DATABASE_URL` under SQLite), then `env`."""
    merged = {k: v for k, v in os.environ.items() if k != "AGENTBOX_DATABASE_URL"}
    url = database_url(data_dir)
    if url is not None:
        merged["AGENTBOX_DATABASE_URL"] = url
    return {**merged, **(env or {})}


def query_store(data_dir: Path, sql: str) -> list[tuple]:
    """The rows of `sql` run against the store of the server(s) on `data_dir`: agentbox.db
    there, or its Postgres database (values then come back as text)."""
    url = database_url(data_dir)
    if url is not None:
        return _psql(url, sql)
    db = sqlite3.connect(Path(data_dir) / "agentbox.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@contextlib.contextmanager
def lock_store(data_dir: Path):
    """Holds the store's write lock from another process while the block runs: SQLite's
    `BEGIN EXCLUSIVE`, or under Postgres every table locked IN EXCLUSIVE MODE (reads go
    on, writes wait), in one transaction that commits on leaving."""
    url = database_url(data_dir)
    if url is None:
        db = sqlite3.connect(Path(data_dir) / "agentbox.db", isolation_level=None, timeout=10)
        db.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            db.execute("COMMIT")
            db.close()
        return
    tables = _psql(url, "SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = current_schema()")
    if not tables:
        raise RuntimeError(f"no tables to lock in {url}: the server did not migrate it")
    psql = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    psql.stdin.write("BEGIN;\nSET LOCAL lock_timeout = '10s';\n"
                     f"LOCK TABLE {', '.join(row[0] for row in tables)} IN EXCLUSIVE MODE;\n"
                     "\\echo locked\n")
    psql.stdin.flush()
    answer = psql.stdout.readline()
    if answer.strip() != "locked":
        psql.kill()
        raise RuntimeError(f"could not lock the store: {answer}{psql.stdout.read()}")
    try:
        yield
    finally:
        psql.communicate("COMMIT;\n", timeout=30)
        assert psql.returncode == 0, "psql failed to release the store's lock"


@contextlib.contextmanager
def extra_server(tmp: Path, *args: str, env: dict | None = None):
    """Starts another `agentbox serve` (on a free port, data in `tmp`, with `args`), yields
    its base URL once ready, and stops it with SIGTERM, which must exit 0."""
    port = _free_port()
    log_path = tmp / f"agentbox-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(_find_binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp), *args],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env(tmp, env),
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"agentbox exited early:\n{_log_tail(log_path)}", pytrace=False)
        try:
            if httpx.get(base_url + "/health/ready", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"agentbox not ready:\n{_log_tail(log_path)}", pytrace=False)
        time.sleep(0.1)
    try:
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        log.close()
        assert code == 0, _log_tail(log_path)


def gateway_server(tmp: Path, litellm_yaml: str, env: dict | None = None, agentbox_yaml: str = ""):
    """An `extra_server` with no local models and this LiteLLM config (plus, optionally,
    more agentbox config such as a `traces:` section)."""
    (tmp / "litellm.yaml").write_text(litellm_yaml)
    (tmp / "agentbox.yaml").write_text("models: []\n" + agentbox_yaml)
    return extra_server(tmp, "--config", str(tmp / "agentbox.yaml"),
                        "--litellm-config", str(tmp / "litellm.yaml"), env=env)


def config_server(tmp: Path, agentbox_yaml: str = "", env: dict | None = None):
    """An `extra_server` with no local models, no gateway, and this extra agentbox config."""
    (tmp / "agentbox.yaml").write_text("models: []\n" + agentbox_yaml)
    return extra_server(tmp, "--config", str(tmp / "agentbox.yaml"), env=env)


def eventually(fetch, done=lambda value: True, timeout: float = 15.0, what: str = "the condition"):
    """Calls `fetch` until it returns a value `done` accepts (exceptions count as not yet),
    and returns that value; fails with the last value or error after `timeout` seconds.
    For what a server writes off the request path (automatic traces, SDK exports)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fetch()
            if done(value):
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - not there yet
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout:.0f}s; last: {last!r}"[:4000], pytrace=False)
        time.sleep(0.1)


@dataclasses.dataclass
class Server:
    base_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen
    port: int
    database_url: str | None  # the store's Postgres database; None: agentbox.db in data_dir


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    binary = _find_binary()
    tmp = tmp_path_factory.mktemp("agentbox")
    data_dir = tmp / "data"
    data_dir.mkdir()
    log_path = tmp / "server.log"
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"

    models_dir = os.environ.get("AGENTBOX_MODELS_DIR") or str(REPO_ROOT / "models")
    env = server_env(data_dir, {"AGENTBOX_MODELS_DIR": models_dir})

    cmd = [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(tmp),
    )

    def kill_and_fail(reason: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()
        pytest.fail(
            f"{reason}\ncommand: {' '.join(cmd)}\nlog {log_path} (tail):\n{_log_tail(log_path)}",
            pytrace=False,
        )

    deadline = time.monotonic() + READY_TIMEOUT_S
    last_status = "no response"
    while True:
        code = proc.poll()
        if code is not None:
            kill_and_fail(f"agentbox exited with code {code} before becoming ready")
        try:
            r = httpx.get(base_url + "/health/ready", timeout=2.0)
            if r.status_code == 200:
                break
            last_status = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last_status = repr(e)
        if time.monotonic() > deadline:
            kill_and_fail(
                f"agentbox not ready after {READY_TIMEOUT_S:.0f}s (last /health/ready: {last_status})"
            )
        time.sleep(0.25)

    yield Server(base_url=base_url, data_dir=data_dir, log_path=log_path, process=proc, port=port,
                 database_url=database_url(data_dir))

    # Graceful shutdown is a requirement: SIGTERM must lead to exit code 0.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            log_file.close()
            pytest.fail(
                f"agentbox did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM\n"
                f"log tail:\n{_log_tail(log_path)}",
                pytrace=False,
            )
    else:
        code = proc.returncode
    log_file.close()
    assert code == 0, (
        f"agentbox exited with code {code} after SIGTERM (expected 0)\nlog tail:\n{_log_tail(log_path)}"
    )


@pytest.fixture(scope="session")
def client(server: Server):
    import openai

    c = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300.0)
    yield c
    c.close()


@pytest.fixture(scope="session")
def http(server: Server):
    """A raw httpx client for checking wire-level JSON shapes."""
    with httpx.Client(base_url=server.base_url, timeout=300.0) as c:
        yield c
