"""A database that is away, goes away or stops answering, on a PostgreSQL of the test's own (initdb, pg_ctl):
the server waits for it at start, answers from its last snapshot meanwhile, says so once, and picks up what
was committed once it is back. A hit never waits on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.postgres import PrivatePostgres
from tests.support.servers import ROOT, ServerProcess
from tests.support.waiting import wait_until

PASSWORD = "s3cret-in-url"  # trust auth ignores it; it must never show in a log or an answer
YIELD = '{ yieldThisYear(codes: ["A"]) { code lastDate lastClose } }'


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    workdir = Path(tempfile.mkdtemp(prefix="gql-pg-"))
    server = PrivatePostgres(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def psql(pg: PrivatePostgres, statement: str, database: str = "gql") -> str:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1",
                           "-qAtc", statement], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def url_of(pg: PrivatePostgres) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg.port}/gql"


def seeded(pg: PrivatePostgres) -> str:
    psql(pg, "CREATE DATABASE gql", database="postgres")
    done = subprocess.run([sys.executable, "-m", "gql", "db", "init"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GQL_DATABASE_URL": url_of(pg)})
    assert done.returncode == 0, done.stderr
    psql(pg, "INSERT INTO market_index VALUES ('A', 'Alpha', 'etl');"
             "INSERT INTO index_close VALUES ('A', '2024-01-02', 100), ('A', '2024-01-03', 101)")
    return url_of(pg)


def ask(base: str, query: str = YIELD) -> httpx2.Response:
    return httpx2.post(f"{base}/graphql", json={"query": query}, timeout=10)


def last_date(base: str) -> str:
    return ask(base).json()["data"]["yieldThisYear"][0]["lastDate"]


@pytest.fixture
def server_on(redis_server) -> Iterator:
    started: list[ServerProcess] = []

    def start(url: str) -> ServerProcess:
        server = ServerProcess(redis_server.url, {"GQL_DATABASE_URL": url, "GQL_DATABASE_TIMEOUT": "2"})
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate()
        server.reap()


def test_a_database_away_at_start_is_waited_for(pg, server_on):
    url = seeded(pg)
    pg.stop()
    server = server_on(url)

    def not_ready() -> dict | None:
        try:
            answer = httpx2.get(f"{server.base}/readyz", timeout=2)
        except httpx2.TransportError:
            return None
        return answer.json() if answer.status_code == 503 else None

    reason = wait_until(not_ready, "/readyz answers 503 while the database is away", timeout=60)["reason"]
    assert f"postgresql://postgres:***@127.0.0.1:{pg.port}/gql" in reason
    refused = ask(server.base)
    assert refused.status_code == 503 and refused.json()["errors"][0]["extensions"]["code"] == "DATA_UNAVAILABLE"
    pg.start()
    server.wait_ready(time.monotonic() + 60)  # retried with backoff, no restart
    assert last_date(server.base) == "2024-01-03"
    assert PASSWORD not in server.output() and "data not loaded" in server.output()


def test_a_database_gone_while_running_is_reported_once_and_followed_again(pg, server_on):
    url = seeded(pg)
    server = server_on(url)
    server.wait_ready(time.monotonic() + 60)
    assert last_date(server.base) == "2024-01-03"
    pg.stop()
    wait_until(lambda: httpx2.get(f"{server.base}/healthz", timeout=5).json()["data"]["state"] == "degraded",
               "/healthz says the data source is degraded", timeout=60)
    health = httpx2.get(f"{server.base}/healthz", timeout=5).json()
    assert health["status"] == "degraded" and PASSWORD not in str(health)
    # Answers go on from the last snapshot: a hit, and a variant never asked before (computed from it).
    assert last_date(server.base) == "2024-01-03"
    other = ask(server.base, '{ indexChart(codes: ["A"]) { series { points { date } } } }').json()
    assert [p["date"] for p in other["data"]["indexChart"]["series"][0]["points"]] == ["2024-01-02", "2024-01-03"]
    time.sleep(2)  # several polls fail meanwhile: still one line
    pg.start()
    psql(pg, "INSERT INTO index_close VALUES ('A', '2024-01-04', 102)")  # committed as soon as it is back
    wait_until(lambda: last_date(server.base) == "2024-01-04", "the close committed after the restart is answered", timeout=60)
    wait_until(lambda: httpx2.get(f"{server.base}/healthz", timeout=5).json()["data"]["state"] == "ok", "/healthz says ok again")
    log = server.output()
    assert log.count("data not reloaded") == 1, log
    assert PASSWORD not in log


def test_a_frozen_database_never_makes_an_answer_wait(pg, server_on):
    url = seeded(pg)
    server = server_on(url)
    server.wait_ready(time.monotonic() + 60)
    assert last_date(server.base) == "2024-01-03"
    pg.freeze()
    try:
        # The 10 s client timeout is a hang guard: answers never touch the database, whatever it does.
        for _ in range(20):
            assert last_date(server.base) == "2024-01-03"
        fresh = ask(server.base, '{ indexChart(codes: ["A"], frequency: WEEKLY) { series { points { date } } } }')
        assert fresh.status_code == 200 and "errors" not in fresh.json()
        assert httpx2.get(f"{server.base}/healthz", timeout=10).status_code == 200
    finally:
        pg.thaw()
    psql(pg, "INSERT INTO index_close VALUES ('A', '2024-01-04', 102)")
    wait_until(lambda: last_date(server.base) == "2024-01-04", "a commit after the thaw is answered", timeout=60)
