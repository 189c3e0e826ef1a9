"""gql/metrics.py: the counters, as the app serves them at /metrics (Prometheus text), and the events a
query worker process records instead of counting, which the server counts when they come back.

The registry is the process's own and lives as long as the test run, so tests compare before and after.
A server with several uvicorn workers (`serve --workers 2`) is run as a user runs it: then one scrape adds
up every process (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.support.http import YIELD, gql, statuses
from tests.support.servers import ROOT, ServerProcess
from tests.support.waiting import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every gql_ sample /metrics serves, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("gql_") and not sample.name.endswith("_created")
    }


def changes(before: Samples, after: Samples) -> dict[tuple, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


def counted(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


HSI_YIELD = "query($asOf: Date) { yieldThisYear(codes: [\"HSI\"], asOf: $asOf) { code } }"


def test_every_metric_is_declared_with_its_type(client):
    families = {f.name: f.type for f in text_string_to_metric_families(client.get("/metrics").text) if f.name.startswith("gql_") and not f.name.endswith("_created")}
    assert families == {
        "gql_cache_lookups": "counter", "gql_computations": "counter", "gql_computation_seconds": "histogram",
        "gql_cache_oversize": "counter", "gql_response_cache": "counter", "gql_computation_failures": "counter",
        "gql_cache_leases": "counter", "gql_cache_redis_up": "gauge", "gql_cache_breaker_state": "gauge",
        "gql_cache_breaker_opened": "counter", "gql_cache_unreplicated_refreshes": "counter",
        "gql_ws_connections": "gauge", "gql_subscriptions": "gauge", "gql_ws_refused": "counter",
        "gql_response_view_hits": "counter", "gql_view_wait_seconds": "histogram", "gql_downstream_purges": "counter",
    }


def test_a_miss_counts_the_lookup_the_computation_its_time_the_lease_and_the_executed_response(client):
    before = scrape(client)
    assert statuses(gql(client, HSI_YIELD, asOf="2021-03-03")) == ["MISS"]
    client.portal.call(client.app.state.responses.drain)
    change = changes(before, scrape(client))
    assert change[counted("gql_cache_lookups_total", field="yieldThisYear", outcome="miss")] == 1
    assert change[counted("gql_computations_total", field="yieldThisYear")] == 1
    assert change[counted("gql_computation_seconds_count", field="yieldThisYear")] == 1
    assert change[counted("gql_computation_seconds_bucket", field="yieldThisYear", le="+Inf")] == 1
    assert 0 < change[counted("gql_computation_seconds_sum", field="yieldThisYear")] < 30
    assert change[counted("gql_cache_leases_total", field="yieldThisYear", outcome="acquired")] == 1
    assert change[counted("gql_response_cache_total", outcome="miss")] == 1
    assert not any(name == "gql_cache_lookups_total" and ("outcome", "hit") in labels for name, labels in change)


def test_a_stored_answer_counts_a_response_hit_and_a_lookup_hit_and_no_computation(client):
    gql(client, HSI_YIELD, asOf="2021-03-05")
    client.portal.call(client.app.state.responses.drain)
    before = scrape(client)
    assert statuses(gql(client, HSI_YIELD, asOf="2021-03-05")) == ["HIT"]
    assert changes(before, scrape(client)) == {
        counted("gql_response_cache_total", outcome="hit"): 1,
        counted("gql_cache_lookups_total", field="yieldThisYear", outcome="hit"): 1,
        # The answer stored a moment ago, under the generations this process's view holds: no Redis round trip.
        counted("gql_response_view_hits_total"): 1,
    }


def test_a_failed_computation_counts_an_error_and_a_failure(make_client, tmp_path):
    fail = tmp_path / "fail"
    fail.touch()
    client = make_client(fault_compute_fail_file=fail)
    before = scrape(client)
    assert gql(client, HSI_YIELD, asOf="2021-03-08")["errors"][0]["extensions"]["code"] == "COMPUTATION_FAILED"
    change = changes(before, scrape(client))
    assert change[counted("gql_cache_lookups_total", field="yieldThisYear", outcome="error")] == 1
    assert change[counted("gql_computation_failures_total", field="yieldThisYear")] == 1
    assert counted("gql_cache_lookups_total", field="yieldThisYear", outcome="miss") not in change


def test_with_caching_off_lookups_count_as_bypass(make_client):
    client = make_client(cache_enabled=False)
    before = scrape(client)
    gql(client, HSI_YIELD, asOf="2021-03-09")
    gql(client, HSI_YIELD, asOf="2021-03-09")
    change = changes(before, scrape(client))
    assert change[counted("gql_cache_lookups_total", field="yieldThisYear", outcome="bypass")] == 2
    assert change[counted("gql_computations_total", field="yieldThisYear")] == 2


def test_an_answer_past_its_lifetime_counts_as_stale(make_client):
    client = make_client(yield_ttl=0.3)
    gql(client, HSI_YIELD, asOf="2021-03-10")
    time.sleep(0.45)
    before = scrape(client)
    assert statuses(gql(client, HSI_YIELD, asOf="2021-03-10")) == ["STALE"]
    client.portal.call(client.app.state.service.cache.drain)  # the recomputation in the background
    change = changes(before, scrape(client))
    assert change[counted("gql_cache_lookups_total", field="yieldThisYear", outcome="stale")] == 1
    assert change[counted("gql_computations_total", field="yieldThisYear")] == 1


def test_the_gauges_follow_redis_away_and_back(own_redis, make_client):
    client = make_client(redis_url=own_redis.url, redis_breaker_failures=1, redis_retry_seconds=0.3)
    start = scrape(client)
    assert start[counted("gql_cache_redis_up")] == 1 and start[counted("gql_cache_breaker_state")] == 0
    own_redis.stop()
    assert "errors" not in gql(client, HSI_YIELD, asOf="2021-03-11")  # Redis fails: the breaker opens
    away = scrape(client)
    assert away[counted("gql_cache_redis_up")] == 0 and away[counted("gql_cache_breaker_state")] in (1, 2)
    assert changes(start, away)[counted("gql_cache_breaker_opened_total")] >= 1
    own_redis.start()
    back = wait_until(lambda: (s := scrape(client))[counted("gql_cache_redis_up")] == 1 and s, "/metrics shows Redis back")
    assert back[counted("gql_cache_breaker_state")] == 0


WORKER_SIDE = """
import json
from prometheus_client import REGISTRY
from gql import metrics

def lookups():
    return REGISTRY.get_sample_value("gql_cache_lookups_total", {"field": "f", "outcome": "hit"}) or 0.0

metrics.capture()  # as a query worker process does at its start
metrics.lookup("f", "hit")
metrics.computation("f", 0.25)
metrics.breaker(1)
first = metrics.take()
second = metrics.take()
counted_while_capturing = lookups()
breaker = REGISTRY.get_sample_value("gql_cache_breaker_state")
metrics.apply(first)  # what the server does with the events that come back with an answer
print(json.dumps({"first": first, "second": second, "while": counted_while_capturing, "after": lookups(),
                  "computed": REGISTRY.get_sample_value("gql_computations_total", {"field": "f"}), "breaker": breaker}))
"""


def test_a_worker_records_events_that_count_where_they_are_applied():
    """In a fresh process (capturing cannot be switched off again, so not in this one)."""
    result = subprocess.run([sys.executable, "-c", WORKER_SIDE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(result.stdout)
    assert seen["first"] == [["lookup", "f", "hit"], ["computation", "f", 0.25]]  # a breaker state is not sent back
    assert seen["second"] == []  # each event is taken once
    assert seen["while"] == 0.0 and seen["breaker"] == 0.0
    assert seen["after"] == 1.0 and seen["computed"] == 1.0


# --- moved from tests/test_security.py ------------------------------------------------------------


def test_metrics_endpoint(client):
    gql(client, YIELD)
    gql(client, YIELD)
    text = client.get("/metrics").text
    for name in ("gql_cache_lookups_total", "gql_computations_total", "gql_computation_seconds_bucket", "gql_cache_redis_up"):
        assert name in text
    assert re.search(r'gql_cache_lookups_total\{field="yieldThisYear",outcome="hit"\} [1-9]', text)


# --- several uvicorn workers: one scrape counts them all ------------------------------------------


def scrape_server(base: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A server's /metrics: each counter's total over all its samples, and each gauge's value by `pid` label."""
    response = httpx2.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200
    totals: dict[str, float] = {}
    by_pid: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if family.type == "gauge":
                by_pid.setdefault(sample.name, {})[sample.labels.get("pid", "")] = sample.value
            else:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals, by_pid


def multiprocess_directory(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [value] = [v.partition(b"=")[2] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.decode())


EARLIER_RUN = """
from gql import metrics
for _ in range(1000):
    metrics.lookup("yieldThisYear", "hit")
"""


@pytest.mark.parametrize("directory_of", ["the server", "the user"])
def test_with_two_workers_every_scrape_counts_the_whole_server(redis_server, tmp_path, directory_of):
    """`serve --workers 2`: whichever worker answers a scrape, the counters are the sum over both workers and their
    query worker processes, and the breaker is reported once per live worker, even after one was killed.

    The multiprocess directory is the server's own (made and removed by `serve`), or one the user names with
    PROMETHEUS_MULTIPROC_DIR, which holds the files of an earlier run: emptied at the start, left at the end."""
    env = {"GQL_WORKERS": "2", "GQL_QUERY_PROCESSES": "1", "GQL_LOG_LEVEL": "info"}
    named = tmp_path / "metrics" if directory_of == "the user" else None
    if named is not None:
        named.mkdir()
        earlier = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(named)}
        subprocess.run([sys.executable, "-c", EARLIER_RUN], cwd=ROOT, env=earlier, timeout=60, check=True)
        assert list(named.glob("counter_*.db"))
        env["PROMETHEUS_MULTIPROC_DIR"] = str(named)
    server = ServerProcess(redis_server.url, env)

    def started(count: int) -> bool:  # /readyz answers once one worker is ready; each says when its startup is over
        return server.output().count("serving 10 indexes from") >= count

    try:
        server.wait_ready(time.monotonic() + 60)
        wait_until(lambda: started(2), "both workers started", timeout=60)
        workers = server.workers()
        assert len(workers) == 2
        directory = multiprocess_directory(min(workers))
        assert directory.is_dir() and (directory == named if named else directory.name.startswith("gql-metrics-"))
        sent = 0
        for day in range(30):  # 10 variants, 3 requests each: misses (in the query workers) and stored answers
            response = httpx2.post(f"{server.base}/graphql", timeout=60,
                                   json={"query": HSI_YIELD, "variables": {"asOf": f"2021-04-{day % 10 + 10}"}})
            assert response.status_code == 200 and "errors" not in response.json()
            sent += 1

        def whole(expected_workers: set[int]) -> None:
            totals, gauges = scrape_server(server.base)
            assert totals["gql_cache_lookups_total"] == sent
            assert totals["gql_response_cache_total"] <= sent
            assert gauges["gql_cache_breaker_state"] == {str(pid): 0.0 for pid in expected_workers}
            assert gauges["gql_cache_redis_up"] == {str(pid): 1.0 for pid in expected_workers}
            assert gauges["gql_ws_connections"] == {"": 0.0} and gauges["gql_subscriptions"] == {"": 0.0}

        for _ in range(5):
            whole(workers)

        # A worker killed: uvicorn starts another. Its counts stay in the sum, its gauges go.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: started(3) and len(server.workers()) == 2, "a new worker started", timeout=60)
        workers = server.workers()
        assert killed not in workers
        for _ in range(5):
            whole(workers)
    finally:
        server.terminate()
        server.reap()
    # The server's own is removed when it stops; the user's is left.
    assert directory.exists() == (named is not None)
