"""Cacheable queries executed in worker processes (the default) answer exactly as in the server."""

from __future__ import annotations

import logging
import os
import re
import signal

import pytest
from starlette.testclient import TestClient

from gql.config import Settings
from tests.support.http import CHART, YIELD, statuses
from tests.support.servers import spawned_children

QUERIES = [
    (CHART, {"codes": ["HSI", "000300"], "f": "WEEKLY", "start": "2019-06-01"}),
    (YIELD, {"asOf": "2023-05-05"}),
    ('{ yieldThisYear(codes: ["NOPE"]) { code } }', {}),
    ("{ a: indexChart(frequency: MONTHLY) { series { code points { __typename d: date close } } } indexes { code } }", {}),
]


@pytest.fixture
def pooled(make_client, settings: Settings) -> TestClient:
    return make_client(query_processes=1, cache_prefix=settings.cache_prefix + "-w")


@pytest.fixture
def inline(make_client) -> TestClient:
    return make_client()


def ask(client: TestClient, query: str, variables: dict) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200
    client.portal.call(client.app.state.responses.drain)
    return response.json()


@pytest.mark.parametrize(("query", "variables"), QUERIES)
def test_same_answers_as_in_the_server(pooled, inline, query, variables):
    in_worker, in_server = ask(pooled, query, variables), ask(inline, query, variables)
    assert in_worker.get("data") == in_server.get("data")
    assert in_worker.get("errors") == in_server.get("errors")
    assert statuses(in_worker) == statuses(in_server)


def test_worker_answers_are_stored_and_served_as_hits(pooled):
    assert statuses(ask(pooled, YIELD, {"codes": ["HSI"]})) == ["MISS"]
    assert statuses(ask(pooled, YIELD, {"codes": ["HSI"]})) == ["HIT"]
    assert pooled.app.state.responses.hits == 1
    # The computation ran in the worker, not in the server.
    assert sum(pooled.app.state.service.cache.computations.values()) == 0


def test_worker_metrics_reach_the_server(pooled):
    def computed() -> float:
        match = re.search(r'gql_computations_total\{field="indexChart"\} (\S+)', pooled.get("/metrics").text)
        return float(match.group(1)) if match else 0.0

    before = computed()
    ask(pooled, CHART, {"codes": ["000905"], "end": "2015-05-05"})
    assert computed() == before + 1


def worker_processes() -> set[int]:
    """Live query worker processes of this test process's apps (the resource tracker and redis-server are not spawn_main)."""
    return spawned_children(os.getpid())


def computed_in_this_process(client: TestClient) -> int:
    return sum(client.app.state.service.cache.computations.values())


def computed_anywhere(client: TestClient) -> float:
    """gql_computations_total of yieldThisYear on /metrics: the server's and its workers' (sent back)."""
    match = re.search(r'gql_computations_total\{field="yieldThisYear"\} (\S+)', client.get("/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_a_killed_worker_is_replaced_and_the_request_still_answered(pooled, caplog):
    ask(pooled, YIELD, {"codes": ["HSI"], "asOf": "2022-02-02"})
    killed = worker_processes()
    assert len(killed) == 1  # query_processes=1
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    with caplog.at_level(logging.ERROR, logger="gql.workers"):
        body = ask(pooled, YIELD, {"codes": ["HSI"], "asOf": "2021-02-02"})
    assert body["data"]["yieldThisYear"][0]["code"] == "HSI"
    # The pool noticed the death and answered this one in the server.
    assert sum("a query worker process died" in r.getMessage() for r in caplog.records) == 1
    in_server, anywhere = computed_in_this_process(pooled), computed_anywhere(pooled)
    assert in_server == 1
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gql.workers"):
        body = ask(pooled, YIELD, {"codes": ["HSI"], "asOf": "2020-02-03"})
    assert body["data"]["yieldThisYear"][0]["code"] == "HSI" and statuses(body) == ["MISS"]
    # Answered by a new worker process: computed once, not in the server, with no worker failure.
    assert computed_anywhere(pooled) == anywhere + 1 and computed_in_this_process(pooled) == in_server
    assert not [r for r in caplog.records if r.name == "gql.workers"]
    replacements = worker_processes()
    assert len(replacements) == 1 and replacements.isdisjoint(killed)
    for pid in replacements:
        os.kill(pid, 0)  # alive


def test_while_redis_is_away_a_refresh_still_holds(own_redis, make_client):
    client = make_client(redis_url=own_redis.url, query_processes=1, admin_token="t")
    first = ask(client, YIELD, {"asOf": "2024-04-04"})
    own_redis.stop()
    during = ask(client, YIELD, {"asOf": "2024-04-04"})
    assert during["data"] == first["data"]
    refreshed = client.post("/graphql", json={"query": "mutation { refreshCache { refreshed { target } } }"},
                            headers={"Authorization": "Bearer t"})
    # Done in the server process, which says it reached only itself (the other processes cannot hear of it).
    assert [e["extensions"]["code"] for e in refreshed.json()["errors"]] == ["REDIS_UNAVAILABLE"]
    # Served by the server process, whose cache the refresh reached: never a hit from before it.
    assert statuses(ask(client, YIELD, {"asOf": "2024-04-04"})) != ["HIT"]
