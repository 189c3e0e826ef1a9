"""Answers follow the data: one snapshot per answer, picked up unprompted, refresh means now.

tests/test_consistency.py checks the same rules under load across a fleet of real processes; these
tests pin each rule down on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import gql.data
import gql.sources
from gql.data import IndexHistory, IndexMeta, make_closes, write_index_file
from gql.execution import Operation
from gql.feed import WATCH_DEBOUNCE_MS, DataFeed
from gql.sources import PriceSource
from gql.versions import CODE_VERSION, code_version
from gql.workers import Job, QueryWorkers
from tests.support.http import ADMIN, data_version_of, statuses
from tests.support.servers import running_server
from tests.support.settings import with_settings
from tests.support.waiting import wait_until

YIELD = "{ yieldThisYear { code yieldPct lastDate } }"
ALL = "{ indexes { code lastDate } yieldThisYear { code lastDate } indexChart { end series { code points { date } } } }"


def write(data_dir: Path, code: str, last_close: float, days: int = 2) -> None:
    dates = ["2023-12-29", "2024-01-02", "2024-01-03", "2024-01-04"][:days]
    closes = [100.0] * (days - 1) + [last_close]
    write_index_file(data_dir, IndexHistory(IndexMeta(code, f"Index {code}", "test"), make_closes(dates, closes)))


def post(client: TestClient, query: str, headers: dict | None = None) -> dict:
    response = client.post("/graphql", json={"query": query}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write(tmp_path / "data", "AAA", 110.0)
    write(tmp_path / "data", "BBB", 120.0)
    return tmp_path / "data"


# --- one snapshot per response, and the response says which -----------------------------------------


def test_every_answer_names_its_data_version(make_client, data_dir):
    client = make_client(data_dir=data_dir)
    version = data_version_of(client)
    miss = post(client, ALL)
    client.portal.call(client.app.state.responses.drain)
    hit = post(client, ALL)
    uncached = post(client, "{ indexes { code } }")
    assert statuses(miss) == ["MISS", "MISS"] and statuses(hit) == ["HIT", "HIT"]
    assert client.app.state.responses.hits == 1  # the second came from stored bytes
    for body in (miss, hit, uncached):
        assert body["extensions"]["dataVersion"] == version


def test_a_request_answers_from_the_data_it_began_with(make_client, data_dir, tmp_path):
    """A change that lands while a request computes does not reach that request's later fields."""
    fail_file = tmp_path / "slow"  # not created: only the delay matters
    client = make_client(data_dir=data_dir, fault_compute_delay=0.5, fault_compute_fail_file=fail_file, data_watch=True)
    before = data_version_of(client)
    answer: dict = {}
    asking = threading.Thread(target=lambda: answer.update(post(client, ALL)))
    asking.start()
    wait_until(lambda: client.app.state.service.cache.computations or None, "a computation has begun", 10)
    write(data_dir, "AAA", 130.0, days=3)
    wait_until(lambda: data_version_of(client) != before, "the new data is picked up")
    asking.join(30)
    assert answer["extensions"]["dataVersion"] == before
    dates = {row["lastDate"] for row in answer["data"]["indexes"] + answer["data"]["yieldThisYear"]}
    assert dates == {"2024-01-02"} and answer["data"]["indexChart"]["end"] == "2024-01-02"
    after = post(client, ALL)
    assert after["extensions"]["dataVersion"] != before
    assert {row["lastDate"] for row in after["data"]["indexes"] if row["code"] == "AAA"} == {"2024-01-03"}


# --- pickup: unprompted, /healthz included ----------------------------------------------------------------


def test_healthz_and_readyz_follow_an_import_with_no_graphql_request(redis_server, data_dir):
    with running_server(redis_server.url, GQL_DATA_DIR=str(data_dir)) as base:
        import httpx2

        before = httpx2.get(f"{base}/healthz").json()["data"]
        write(data_dir, "BBB", 125.0, days=3)
        # Only the health endpoints are asked: they read the snapshot, they never load data themselves.
        health = wait_until(
            lambda: (h := httpx2.get(f"{base}/healthz").json()["data"])["version"] != before["version"] and h,
            "/healthz shows the new data",
        )
        assert health["lastDate"] == "2024-01-03" and health["problem"] is None
        ready = httpx2.get(f"{base}/readyz").json()["data"]
        assert ready["version"] == health["version"] and ready["lastDate"] == "2024-01-03"


def test_the_feed_follows_the_files_by_itself(data_dir):
    async def scenario() -> None:
        feed = await DataFeed.open(data_dir)
        feed.start()
        try:
            first = feed.current
            await asyncio.sleep(0.2)  # the watcher is set up
            write(data_dir, "CCC", 90.0)
            for _ in range(500):  # nothing but the watcher calls the feed
                if feed.current is not first:
                    break
                await asyncio.sleep(0.02)
            assert feed.current.codes == ("AAA", "BBB", "CCC")
        finally:
            await feed.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("code", ["AAA", "aaa"], ids=["same-case", "other-case"])
def test_one_change_is_logged_once(data_dir, caplog, code):
    """One import, one 'data reloaded' record, however many batches of file events it makes (an import
    in another case replaces AAA.csv, then renames it) and whoever looks again."""

    async def scenario() -> None:
        feed = await DataFeed.open(data_dir)
        feed.start()
        try:
            await asyncio.sleep(0.2)  # the watcher is set up
            first = feed.current
            write(data_dir, code, 130.0, days=3)
            for _ in range(500):
                if feed.current is not first:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(3 * WATCH_DEBOUNCE_MS / 1000)  # time for any further batch of events
            await feed.sync()  # a request or a refresh looking again
        finally:
            await feed.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    reloaded = [r.getMessage() for r in caplog.records if "data reloaded" in r.getMessage()]
    assert len(reloaded) == 1, reloaded
    assert reloaded[0].startswith(f"data reloaded from {data_dir} in process {os.getpid()}: version ")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_the_server_logs_one_line_per_change_and_process(redis_server, data_dir, tmp_path, workers):
    """As an operator sees it: `python -m gql serve` at GQL_LOG_LEVEL=info writes one line for an import
    in each worker process, which names it (each loads the data for itself), and no watchfiles line
    ('1 change detected') besides."""
    import httpx2

    log = tmp_path / "serve.log"
    with running_server(redis_server.url, "--workers", str(workers), log=log, GQL_DATA_DIR=str(data_dir),
                        GQL_LOG_LEVEL="info") as base:
        before = httpx2.get(f"{base}/healthz").json()["data"]["version"]
        write(data_dir, "BBB", 125.0, days=3)
        wait_until(lambda: len(re.findall("data reloaded", log.read_text())) >= workers, "every worker reloads")
        time.sleep(3 * WATCH_DEBOUNCE_MS / 1000)
        assert httpx2.get(f"{base}/healthz").json()["data"]["version"] != before
    lines = log.read_text().splitlines()
    processes = [m.group(1) for line in lines if (m := re.search(r"data reloaded from .* in process (\d+):", line))]
    assert len(processes) == len(set(processes)) == workers, lines
    assert [line for line in lines if "watchfiles" in line] == []


def test_without_the_watcher_data_is_picked_up_by_a_refresh_only(make_client, data_dir):
    client = make_client(data_dir=data_dir, data_watch=False)
    before = data_version_of(client)
    write(data_dir, "AAA", 130.0, days=3)
    assert data_version_of(client) == before
    post(client, REFRESH, headers=ADMIN)
    assert data_version_of(client) != before


# --- refresh means now, fleet-wide ------------------------------------------------------------------------

REFRESH = "mutation { refreshCache { dataVersion refreshed { target } } }"


@pytest.fixture
def fleet(make_client, data_dir: Path) -> tuple[TestClient, TestClient]:
    """Two server processes' apps on one Redis and one directory, without watchers, so that only the
    refresh can bring them the new data."""
    return make_client(data_dir=data_dir, data_watch=False), make_client(data_dir=data_dir, data_watch=False)


def test_refresh_right_after_an_import_serves_the_import_everywhere(fleet, data_dir):
    one, two = fleet
    for client in fleet:
        assert post(client, YIELD)["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(10.0)
        client.portal.call(client.app.state.responses.drain)
    old = post(two, YIELD)
    assert statuses(old) == ["HIT"]
    write(data_dir, "AAA", 150.0, days=3)
    refreshed = post(one, REFRESH, headers=ADMIN)
    new_version = refreshed["data"]["refreshCache"]["dataVersion"]
    assert new_version != old["extensions"]["dataVersion"]
    assert refreshed["extensions"]["dataVersion"] == new_version
    # The other process had not looked at the files; the data epoch makes it look before it answers.
    for client, query in ((two, YIELD), (two, "{ indexes { code lastDate } }"), (one, YIELD)):
        body = post(client, query)
        assert body["extensions"]["dataVersion"] == new_version, query
    body = post(two, YIELD)
    assert body["data"]["yieldThisYear"][0] == {"code": "AAA", "yieldPct": pytest.approx(50.0), "lastDate": "2024-01-03"}


def test_the_other_processes_take_up_a_refresh_with_no_request_of_their_own(fleet, data_dir):
    one, two = fleet
    before = data_version_of(two)
    write(data_dir, "BBB", 150.0, days=3)
    new_version = post(one, REFRESH, headers=ADMIN)["data"]["refreshCache"]["dataVersion"]
    # /healthz reads the process's current snapshot and loads nothing itself: Redis told the process of the
    # new data epoch (the refresh publishes it), and it looked at its files.
    assert wait_until(lambda: data_version_of(two) != before and data_version_of(two), "the other process has the new data") == new_version


def test_refresh_answers_its_data_version(make_client):
    client = make_client()
    body = post(client, REFRESH, headers=ADMIN)
    assert body["data"]["refreshCache"]["dataVersion"] == data_version_of(client)


# --- a bad data set is one version ------------------------------------------------------------------------


def test_a_corrupt_file_among_good_ones_keeps_the_whole_last_good_snapshot(make_client, data_dir, caplog):
    def not_reloaded() -> list[str]:
        return [r.getMessage() for r in caplog.records if "data not reloaded" in r.getMessage()]

    client = make_client(data_dir=data_dir)
    with caplog.at_level(logging.ERROR, logger="gql.feed"):
        good = post(client, ALL)
        bad = data_dir / "BBB.csv"
        tmp = data_dir / ".BBB.tmp"
        tmp.write_text(bad.read_text(encoding="utf-8").replace("120.0", "minus one"), encoding="utf-8")
        os.replace(tmp, bad)
        problem = wait_until(lambda: client.get("/healthz").json()["data"]["problem"], "/healthz names the problem")
        assert "BBB.csv, line 4" in problem and "expected YYYY-MM-DD and a positive number" in problem
        client.portal.call(client.app.state.service.feed.sync)  # looking again changes nothing, logs nothing
        client.portal.call(client.app.state.service.feed.sync)
        assert len(not_reloaded()) == 1, not_reloaded()
        assert "BBB.csv" in not_reloaded()[0] and good["extensions"]["dataVersion"] in not_reloaded()[0]
        # A good change beside the bad file is not served either: the data set is one version or the other.
        write(data_dir, "AAA", 140.0, days=3)
        wait_until(lambda: len(not_reloaded()) == 2, "the second change is logged, once")
        again = post(client, ALL)
        assert again["data"] == good["data"]
        assert again["extensions"]["dataVersion"] == good["extensions"]["dataVersion"]
        # Fixed: both changes at once, in one new version.
        write(data_dir, "BBB", 160.0, days=3)
        wait_until(lambda: data_version_of(client) != good["extensions"]["dataVersion"], "the fixed data is picked up")
        fixed = post(client, ALL)
        assert {r["code"]: r["lastDate"] for r in fixed["data"]["indexes"]} == {"AAA": "2024-01-03", "BBB": "2024-01-03"}
        assert client.get("/healthz").json()["data"]["problem"] is None
        assert len(not_reloaded()) == 2


def test_a_reload_reads_only_the_files_that_changed(data_dir, monkeypatch):
    source = PriceSource(data_dir)
    unchanged = source.store["BBB"]
    read: list[str] = []
    original = gql.sources.read_stamped

    def counting(path: Path):
        read.append(path.name)
        return original(path)

    monkeypatch.setattr(gql.sources, "read_stamped", counting)
    write(data_dir, "AAA", 111.0)
    assert source.changed()
    store = source.reload()
    assert read == ["AAA.csv"]
    assert store["BBB"] is unchanged and store["AAA"].closes.iloc[-1] == 111.0
    assert store.version == PriceSource(data_dir).store.version  # the same content, the same version


# --- query workers answer from the server's snapshot --------------------------------------------------------


def test_a_query_worker_answers_from_the_snapshot_it_is_sent(settings, data_dir):
    """The worker runs with the built-in sample configured, yet answers from the stores it is sent."""
    first = PriceSource(data_dir).store
    write(data_dir, "AAA", 150.0, days=3)
    second = PriceSource(data_dir).store
    assert first.version != second.version
    workers = QueryWorkers(with_settings(settings, data_dir=None), 1)

    async def ask(store) -> dict:
        job = Job(Operation('{ yieldThisYear(codes: ["AAA"]) { lastDate yieldPct } }', None, None), "test", store.version)
        answer = await workers.execute(job, store)
        assert answer is not None
        import orjson

        return orjson.loads(answer.prefix + answer.tail)

    try:
        for store, last, pct in ((first, "2024-01-02", 10.0), (second, "2024-01-03", 50.0), (first, "2024-01-02", 10.0)):
            body = asyncio.run(ask(store))
            assert body["extensions"]["dataVersion"] == store.version
            assert body["data"]["yieldThisYear"] == [{"lastDate": last, "yieldPct": pytest.approx(pct)}]
    finally:
        workers.close()


# --- old wrong entries die ------------------------------------------------------------------------------


def test_the_code_version_covers_every_source_file(tmp_path):
    package = Path(gql.data.__file__).parent
    for source in package.rglob("*.py"):
        copy = tmp_path / source.relative_to(package)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(source.read_bytes())
    assert code_version(tmp_path) == CODE_VERSION
    schema = tmp_path / "schema" / "resolvers.py"  # a module of a subpackage counts too
    schema.write_text(schema.read_text() + "\n# a fix\n")
    assert code_version(tmp_path) != CODE_VERSION


def test_entries_of_other_code_are_never_served(make_client, monkeypatch):
    import gql.responses
    import gql.service

    client = make_client()
    monkeypatch.setattr(gql.service, "CODE_VERSION", "older-code")
    monkeypatch.setattr(gql.responses, "CODE_VERSION", "older-code")
    post(client, YIELD)
    client.portal.call(client.app.state.responses.drain)
    assert statuses(post(client, YIELD)) == ["HIT"]
    monkeypatch.undo()
    assert statuses(post(client, YIELD)) == ["MISS"]


@pytest.mark.anyio
async def test_subscribers_hear_each_new_version_with_the_codes_it_changed(tmp_path):
    from gql.feed import DataFeed
    from gql.importer import import_csv

    prices = tmp_path / "prices.csv"
    prices.write_text("date,close\n2024-01-02,1\n2024-01-03,2\n")
    data = tmp_path / "data"
    import_csv(prices, data, "A", "Alpha")
    import_csv(prices, data, "B", "Beta")
    feed = await DataFeed.open(data)
    try:
        changes = feed.changes()
        heard = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0)  # the subscriber is listening before the change
        prices.write_text("date,close\n2024-01-02,1\n2024-01-03,2\n2024-01-04,3\n")
        import_csv(prices, data, "B", "Beta")
        before = feed.current.version
        await feed.sync()
        change = await asyncio.wait_for(heard, 5)
        assert (change.previous, change.version, change.codes, change.last_date) == (before, feed.current.version, ("B",), "2024-01-04")
        await changes.aclose()
        assert not feed._listeners
    finally:
        await feed.close()
