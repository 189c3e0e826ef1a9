"""Resilience of the cache as clients see it: real `python -m gql serve` processes over real HTTP, real
redis-server processes, faults injected with the GQL_FAULT_* knobs, signals and killed processes.

No mocks: every assertion is about HTTP answers, what /metrics and /healthz say, and what is in Redis.
Each server process reports only its own counts (its query worker's come back with each answer), so
fleet-wide counts are sums over the servers, read after every request has been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import RedisServer, ServerProcess

YIELD = "{ yieldThisYear { code yieldPct } }"
YIELD_HSI = '{ yieldThisYear(codes: ["HSI"]) { code yieldPct } }'
YIELD_AS_OF = "query($d: Date) { yieldThisYear(asOf: $d) { code yieldPct lastDate } }"
REFRESH = "mutation { refreshCache(targets: [YIELD_THIS_YEAR]) { refreshed { target durationMs coalesced } } }"
FIELD = "yieldThisYear"
TOKEN = "resilience-admin-token"
# Every request has a bound: a hang fails the test instead of stalling it.
TIMEOUT = 15.0


# --- servers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(redis_url: str, tmp_path: Path, count: int = 1, **env: str) -> Iterator[list[ServerProcess]]:
    """`count` servers started at once (startup is mostly loading the data), stopped at the end."""
    started: list[ServerProcess] = []
    try:
        for i in range(count):
            # Exact lifetimes unless a test says otherwise: no TTL jitter, no early refresh.
            exact = {"GQL_CACHE_TTL_JITTER": "0", "GQL_CACHE_EARLY_REFRESH": "0", **env}
            started.append(ServerProcess(redis_url, exact, log=tmp_path / f"server-{i}.log"))
        deadline = time.monotonic() + 60
        for server in started:
            server.wait_ready(deadline)
        yield started
    except BaseException:
        for i, server in enumerate(started):  # shown by pytest with the failure
            print(f"--- log of server {i} ({server.base}) ---\n{server.output()[-4000:]}")
        raise
    finally:
        for server in started:
            server.terminate()
        for server in started:
            server.reap()


# --- HTTP -----------------------------------------------------------------------------------------


def post(base: str, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    response = httpx2.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, headers=headers or {},
                           timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def burst(calls: list[tuple[str, str, dict]], delays: list[float] | None = None) -> list[httpx2.Response]:
    """POST every (base, query, headers) at once, each after its delay; the answers in the same order."""

    async def run() -> list[httpx2.Response]:
        limits = httpx2.Limits(max_connections=len(calls), max_keepalive_connections=len(calls))
        async with httpx2.AsyncClient(timeout=TIMEOUT, limits=limits) as client:

            async def one(base: str, query: str, headers: dict, delay: float) -> httpx2.Response:
                await asyncio.sleep(delay)
                return await client.post(f"{base}/graphql", json={"query": query}, headers=headers)

            return await asyncio.gather(*[one(*call, delay) for call, delay in zip(calls, delays or [0.0] * len(calls), strict=False)])

    return asyncio.run(run())


def answered(response: httpx2.Response) -> dict:
    """The body of a 200 answer with data and without errors."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    assert body.get("data"), body
    return body


def statuses(body: dict) -> list[str]:
    return [entry["status"] for entry in body["extensions"]["cache"]]


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels at this server's /metrics (0 when none)."""
    text = httpx2.get(f"{base}/metrics", timeout=TIMEOUT).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def computations(fleet: list[ServerProcess]) -> float:
    return sum(metric(s.base, "gql_computations_total", field=FIELD) for s in fleet)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- single flight ----------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", ["0", "1"], ids=["in-server", "query-workers"])
def test_a_cold_stampede_on_four_servers_computes_each_key_once(shared_redis, tmp_path, processes):
    # 0: the 50 requests of a server share one computation in its process, the servers share the lease;
    # 1: each server sends them to its query worker, and the four workers share the lease.
    shared = prefix("stampede")
    with servers(shared_redis.url, tmp_path, 4, **shared_redis.env, GQL_CACHE_PREFIX=shared, GQL_FAULT_COMPUTE_DELAY="1.0",
                 GQL_QUERY_PROCESSES=processes) as fleet:
        calls = [(server.base, YIELD if i % 2 else YIELD_HSI, {}) for server in fleet for i in range(50)]
        random.Random(7).shuffle(calls)
        responses = burst(calls)

        bodies: dict[str, list[dict]] = {YIELD: [], YIELD_HSI: []}
        for (_, query, _), response in zip(calls, responses, strict=False):
            body = answered(response)
            assert statuses(body) in (["MISS"], ["HIT"]), body["extensions"]
            bodies[query].append(body)
        assert len(bodies[YIELD]) == len(bodies[YIELD_HSI]) == 100
        for query, rows in ((YIELD, 10), (YIELD_HSI, 1)):
            assert len(bodies[query][0]["data"][FIELD]) == rows
            assert all(body["data"] == bodies[query][0]["data"] for body in bodies[query])
        # Two keys, each computed exactly once in the whole fleet (each was computed at least once:
        # it was answered from an empty cache).
        assert computations(fleet) == 2
        assert sum(metric(s.base, "gql_cache_leases_total", field=FIELD, outcome="acquired") for s in fleet) == 2
        assert len(shared_redis.keys(f"{shared}:entry:{{{FIELD}:*")) == 2


def test_a_computation_slower_than_its_lease_runs_once(shared_redis, tmp_path):
    # The lease (0.5 s) is kept by its holder while it computes (2 s): the waiters, including those
    # that come when the first lease period is long over, never take over from a live holder.
    shared = prefix("slow")
    with servers(shared_redis.url, tmp_path, 2, **shared_redis.env, GQL_CACHE_PREFIX=shared, GQL_CACHE_LEASE_SECONDS="0.5",
                 GQL_FAULT_COMPUTE_DELAY="2.0") as fleet:
        calls = [(server.base, YIELD, {}) for _ in range(6) for server in fleet]
        delays = [0.0, 0.0, 0.0, 0.0, 0.7, 0.7, 0.7, 0.7, 1.4, 1.4, 1.4, 1.4]
        bodies = [answered(response) for response in burst(calls, delays)]
        assert all(body["data"] == bodies[0]["data"] for body in bodies)
        assert len(bodies[0]["data"][FIELD]) == 10
        assert computations(fleet) == 1
        waited = sum(metric(s.base, "gql_cache_leases_total", field=FIELD, outcome="waited") for s in fleet)
        assert waited >= 1, "the other server should have waited for the holder's computation"


def test_when_the_lease_holder_is_killed_another_server_takes_over(shared_redis, tmp_path):
    shared = prefix("killed")
    with servers(shared_redis.url, tmp_path, 2, **shared_redis.env, GQL_CACHE_PREFIX=shared, GQL_CACHE_LEASE_SECONDS="1",
                 GQL_FAULT_COMPUTE_DELAY="2.0") as (a, b):
        outcome: dict[str, Any] = {}
        # Each server process listens on the channel from its start (refreshes made through the others).
        listening = wait_until(lambda: shared_redis.subscribers(f"{shared}:filled") == 2 and 2, 10, "A and B to listen")

        def ask(name: str, server: ServerProcess) -> None:
            try:
                outcome[name] = httpx2.post(f"{server.base}/graphql", json={"query": YIELD}, timeout=TIMEOUT)
            except httpx2.TransportError as exc:
                outcome[name] = exc

        to_a = threading.Thread(target=ask, args=("a", a))
        to_a.start()
        wait_until(lambda: shared_redis.keys(f"{shared}:lease:compute:*"), 10, "A to take the lease")
        to_b = threading.Thread(target=ask, args=("b", b))
        to_b.start()
        # B (its query worker) waits for the holder: it listens on the "filled" channel too.
        wait_until(lambda: shared_redis.subscribers(f"{shared}:filled") > listening, 10, "B to wait for A's computation")
        assert "b" not in outcome
        a.kill()
        killed = time.monotonic()
        to_b.join(TIMEOUT + 5)
        took = time.monotonic() - killed
        to_a.join(TIMEOUT + 5)

        assert isinstance(outcome["a"], httpx2.TransportError), "A died before answering"
        assert isinstance(outcome["b"], httpx2.Response), outcome["b"]
        body = answered(outcome["b"])
        assert len(body["data"][FIELD]) == 10
        assert statuses(body) == ["MISS"]
        # A's lease runs out at most 1 s after its death, then B computes (2 s): B took over, it did
        # not wait for its own request's timeout.
        assert took < 1.0 + 2.0 + 3.0, f"B answered {took:.1f} s after A died"
        assert metric(b.base, "gql_computations_total", field=FIELD) == 1
        assert metric(b.base, "gql_cache_leases_total", field=FIELD, outcome="waited") == 1
        assert metric(b.base, "gql_cache_leases_total", field=FIELD, outcome="acquired") == 1
        assert len(shared_redis.keys(f"{shared}:entry:{{{FIELD}:*")) == 1
        assert shared_redis.keys(f"{shared}:lease:compute:*") == []


# --- stale-while-revalidate and fail-safe -------------------------------------------------------------


def test_stale_while_revalidate_answers_the_old_value_and_recomputes_once(shared_redis, tmp_path):
    with servers(shared_redis.url, tmp_path, 1, **shared_redis.env, GQL_YIELD_TTL="1", GQL_CACHE_STALE_SECONDS="30",
                 GQL_RESPONSE_CACHE="true", GQL_FAULT_COMPUTE_DELAY="2.0") as (server,):
        first = post(server.base, YIELD)
        assert statuses(first) == ["MISS"] and not first.get("errors")
        time.sleep(1.3)  # past the fresh period (1 s), well within the stale period (30 s)

        stale = post(server.base, YIELD)  # starts the background recomputation (2 s)
        entry = stale["extensions"]["cache"][0]
        assert entry["status"] == "STALE" and "error" not in entry, entry
        assert entry["ageSeconds"] >= 1.0 and entry["ttlSeconds"] == 0
        assert stale["data"] == first["data"] and not stale.get("errors")

        # While it is recomputed, everybody gets the old value at once and nobody computes again.
        began = time.monotonic()
        responses = burst([(server.base, YIELD, {})] * 20)
        took = time.monotonic() - began
        for response in responses:
            body = answered(response)
            assert statuses(body) == ["STALE"], (f"the 20 requests took {took:.2f} s", body["extensions"])
            assert body["extensions"]["cache"][0]["ageSeconds"] >= 1.0
            assert body["data"] == first["data"]

        def fresh() -> dict | None:
            body = post(server.base, YIELD)
            assert statuses(body) in (["STALE"], ["HIT"]), body["extensions"]
            return body if statuses(body) == ["HIT"] else None

        hit = wait_until(fresh, 6, "the recomputed value")
        assert hit["extensions"]["cache"][0]["ageSeconds"] < 1.0
        assert hit["data"] == first["data"]
        assert computations([server]) == 2  # the first one and one background recomputation
        time.sleep(0.3)
        assert computations([server]) == 2


def test_fail_safe_serves_the_last_good_value_and_throttles_retries(shared_redis, tmp_path):
    fail = tmp_path / "fail"
    with servers(shared_redis.url, tmp_path, 1, **shared_redis.env, GQL_YIELD_TTL="1", GQL_CACHE_STALE_SECONDS="0",
                 GQL_CACHE_FAIL_SAFE_RETRY_SECONDS="3", GQL_FAULT_COMPUTE_FAIL_FILE=str(fail)) as (server,):

        def failures() -> float:
            return metric(server.base, "gql_computation_failures_total", field=FIELD)

        def kept(body: dict) -> None:
            """The last good value, marked STALE with the error, and no GraphQL error."""
            assert not body.get("errors"), body
            assert body["data"] == good["data"]
            entry = body["extensions"]["cache"][0]
            assert entry["status"] == "STALE", entry
            assert "InjectedFault" in entry.get("error", ""), entry

        good = post(server.base, YIELD)
        assert statuses(good) == ["MISS"]
        time.sleep(1.2)  # expired, and no stale period: the next request must compute
        fail.touch()

        kept(post(server.base, YIELD))
        failed_at = time.monotonic()
        assert (computations([server]), failures()) == (2, 1)
        for _ in range(3):  # within the throttle (3 s): the old value, without trying again
            kept(post(server.base, YIELD))
        assert time.monotonic() - failed_at < 2.5, "the test was too slow to be within the throttle"
        assert (computations([server]), failures()) == (2, 1)

        time.sleep(max(0.0, failed_at + 3.3 - time.monotonic()))
        kept(post(server.base, YIELD))  # the throttle is over: tried again (fails again)
        retried_at = time.monotonic()
        assert (computations([server]), failures()) == (3, 2)

        fail.unlink()
        kept(post(server.base, YIELD))  # healed, but the throttle still holds
        assert (computations([server]), failures()) == (3, 2)

        time.sleep(max(0.0, retried_at + 3.3 - time.monotonic()))
        recovered = post(server.base, YIELD)
        assert not recovered.get("errors")
        entry = recovered["extensions"]["cache"][0]
        assert entry["status"] == "MISS" and "error" not in entry and entry["ageSeconds"] == 0, entry
        assert recovered["data"] == good["data"]
        assert (computations([server]), failures()) == (4, 2)
        again = post(server.base, YIELD)
        assert statuses(again) == ["HIT"] and "error" not in again["extensions"]["cache"][0]


def test_a_failed_computation_with_nothing_to_stand_in_is_an_error_and_stores_nothing(shared_redis, tmp_path):
    fail = tmp_path / "fail"
    fail.touch()
    with servers(shared_redis.url, tmp_path, 1, **shared_redis.env, GQL_FAULT_COMPUTE_FAIL_FILE=str(fail)) as (server,):
        for _ in range(2):  # the failure is not cached: each request tries (and fails) again
            body = post(server.base, YIELD)  # HTTP 200
            assert body.get("data") is None, body
            assert [e["extensions"]["code"] for e in body["errors"]] == ["COMPUTATION_FAILED"], body
            assert shared_redis.keys(f"{server.prefix}:entry:*") == []
            assert shared_redis.keys(f"{server.prefix}:response:*") == []
        assert computations([server]) == 2
        assert metric(server.base, "gql_computation_failures_total", field=FIELD) == 2
        assert metric(server.base, "gql_cache_lookups_total", field=FIELD, outcome="error") == 2

        fail.unlink()  # nothing stood in, so nothing throttles the next try
        healed = post(server.base, YIELD)
        assert not healed.get("errors") and statuses(healed) == ["MISS"] and len(healed["data"][FIELD]) == 10
        assert len(shared_redis.keys(f"{server.prefix}:entry:*")) == 1


# --- Redis faults -----------------------------------------------------------------------------------


class Load:
    """Threads sending cached queries without pause; every answer is checked and kept with its phase."""

    DATES = [None, "2026-03-02", "2025-06-03", "2024-09-10", "2023-12-01"]

    def __init__(self, base: str, threads: int = 2) -> None:
        self.base = base
        self.phase = "before"
        self.results: list[tuple[str, str | None]] = []  # (phase, problem or None)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx2.Client(timeout=10) as client:
            while not self._stop.is_set():
                phase = self.phase
                date = rng.choice(self.DATES)
                try:
                    response = client.post(f"{self.base}/graphql", json={"query": YIELD_AS_OF, "variables": {"d": date}})
                    body = response.json() if response.status_code == 200 else None
                    if body is None:
                        problem = f"HTTP {response.status_code}: {response.text[:300]}"
                    elif body.get("errors") or not body.get("data") or not body["data"][FIELD]:
                        problem = f"asOf {date}: {str(body)[:300]}"
                    else:
                        problem = None
                except Exception as exc:  # noqa: BLE001  # a timeout, a reset connection: all failures of the service
                    problem = f"asOf {date}: {exc!r}"
                self.results.append((phase, problem))

    def count(self, phase: str) -> int:
        return sum(1 for p, _ in self.results if p == phase)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class Watch:
    """Samples the breaker (/metrics) and the cache state (/healthz) of a server, with the load's phase."""

    def __init__(self, base: str, load: Load) -> None:
        self.base = base
        self.load = load
        self.samples: list[tuple[str, float, str]] = []  # (phase, breaker state, health cache state)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.load.phase
            try:
                breaker = metric(self.base, "gql_cache_breaker_state")
                health = httpx2.get(f"{self.base}/healthz", timeout=10).json()["cache"]["state"]
            except Exception as exc:  # noqa: BLE001  # any failure to answer is what is sampled
                health, breaker = f"unanswered: {exc!r}", -1.0
            self.samples.append((phase, breaker, health))
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_redis_frozen_then_killed_under_load_every_request_is_answered(own_redis: RedisServer, tmp_path):
    with servers(own_redis.url, tmp_path, 1, GQL_REDIS_RETRY_SECONDS="0.5") as (server,):
        keys = f"{server.prefix}:entry:*"

        def recovered() -> bool:
            health = httpx2.get(f"{server.base}/healthz", timeout=10).json()["cache"]["state"]
            return health == "ok" and metric(server.base, "gql_cache_breaker_state") == 0

        with Load(server.base) as load, Watch(server.base, load) as watch:
            wait_until(lambda: load.count("before") >= 20, 10, "the load to get going")
            assert own_redis.client().keys(keys)
            opened = [metric(server.base, "gql_cache_breaker_opened_total")]

            load.phase = "frozen"
            own_redis.freeze()  # connections open, nothing answered: every call runs into its bound
            time.sleep(2)
            own_redis.thaw()
            load.phase = "thawed"
            wait_until(recovered, 5, "the cache to be ok again after the freeze")
            opened.append(metric(server.base, "gql_cache_breaker_opened_total"))

            load.phase = "killed"
            own_redis.stop()  # connections refused
            time.sleep(2)
            own_redis.start()  # same port, empty
            load.phase = "restarted"
            wait_until(recovered, 5, "the cache to be ok again after the restart")
            # Used again without restarting the server: the new Redis fills with entries.
            wait_until(lambda: own_redis.client().keys(keys), 5, "entries in the restarted Redis")
            opened.append(metric(server.base, "gql_cache_breaker_opened_total"))
            wait_until(lambda: load.count("restarted") >= 20, 10, "requests after the restart")

        problems = [f"{phase}: {problem}" for phase, problem in load.results if problem]
        assert not problems, f"{len(problems)} of {len(load.results)} requests failed:\n" + "\n".join(problems[:20])
        for phase in ("before", "frozen", "thawed", "killed", "restarted"):
            assert load.count(phase) > 0, f"no request was answered in the phase {phase!r}"
        for phase in ("frozen", "killed"):
            seen = [(breaker, health) for p, breaker, health in watch.samples if p == phase]
            assert any(breaker == 1 or health == "degraded" for breaker, health in seen), (phase, seen)
        assert opened[1] > opened[0], "the breaker did not open while Redis was frozen"
        assert opened[2] > opened[1], "the breaker did not open while Redis was down"
        assert not [s for s in watch.samples if s[2].startswith("unanswered")], "/metrics or /healthz went unanswered"
        assert recovered()


def ages(body: dict) -> list[float]:
    return [entry["ageSeconds"] for entry in body["extensions"]["cache"]]


@pytest.mark.parametrize("fault", ["frozen", "refusing"])
def test_a_kept_answer_goes_out_while_redis_is_away_but_never_after_a_refresh_through_this_server(own_redis, tmp_path, fault):
    """Soft timeouts: a hot query is answered from the response this process served a moment ago instead of
    waiting for a frozen Redis (or computing again when it refuses); a refresh through this process ends that."""
    with servers(own_redis.url, tmp_path, 1, GQL_ADMIN_TOKEN=TOKEN, GQL_QUERY_PROCESSES="0") as (server,):
        warm = post(server.base, YIELD)
        wait_until(lambda: statuses(post(server.base, YIELD)) == ["HIT"], 10, "the answer to be stored and kept")
        hits = metric(server.base, "gql_response_cache_total", outcome="hit")
        time.sleep(1.5)  # the kept answer is at least this old: told apart from one computed after the refresh
        own_redis.freeze() if fault == "frozen" else own_redis.stop()
        try:
            kept = post(server.base, YIELD)
            assert kept["data"] == warm["data"] and statuses(kept) == ["HIT"] and min(ages(kept)) >= 1.5, kept
            assert metric(server.base, "gql_response_cache_total", outcome="hit") == hits + 1
            refreshed = post(server.base, REFRESH, headers={"Authorization": f"Bearer {TOKEN}"})
            # Applied here, and said to reach this process alone.
            assert [e["extensions"]["code"] for e in refreshed["errors"]] == ["REDIS_UNAVAILABLE"], refreshed
            after = post(server.base, YIELD)
            assert after["data"] == warm["data"] and max(ages(after)) < 1.5, after  # not the answer kept before it
        finally:
            own_redis.thaw() if fault == "frozen" else own_redis.start()


# --- refresh -------------------------------------------------------------------------------------------


def test_concurrent_refreshes_across_servers_coalesce_into_one_computation(shared_redis, tmp_path):
    shared = prefix("refresh")
    with servers(shared_redis.url, tmp_path, 2, **shared_redis.env, GQL_CACHE_PREFIX=shared, GQL_ADMIN_TOKEN=TOKEN,
                 GQL_FAULT_COMPUTE_DELAY="1.0") as fleet:
        warm = [post(server.base, YIELD) for server in fleet]
        assert statuses(warm[0]) == ["MISS"] and statuses(warm[1]) == ["HIT"]
        before = computations(fleet)
        assert before == 1

        auth = {"Authorization": f"Bearer {TOKEN}"}
        responses = burst([(server.base, REFRESH, auth) for _ in range(3) for server in fleet])
        refreshed = [answered(response)["data"]["refreshCache"]["refreshed"] for response in responses]
        assert all([r["target"] for r in each] == ["YIELD_THIS_YEAR"] for each in refreshed)
        coalesced = sum(each[0]["coalesced"] for each in refreshed)

        assert computations(fleet) - before == 1
        assert coalesced >= 5, refreshed
        # What every server answers now is the refreshed value (a new generation), not the warm one.
        for server in fleet:
            after = post(server.base, YIELD)
            assert statuses(after) == ["HIT"] and after["data"] == warm[0]["data"]
        assert computations(fleet) - before == 1
