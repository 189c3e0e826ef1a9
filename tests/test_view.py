"""Hits without a Redis round trip, from each process's view under a lease (gql/cache/view.py), and the refresh
guarantee at its edges, with real server processes: one paused with SIGSTOP across a refresh, a listener cut, a
process joining while a refresh waits, on a standalone Redis and on a Cluster and a Sentinel group."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

from tests.support.servers import ServerProcess
from tests.test_resilience import FIELD, REFRESH, TOKEN, YIELD, ages, metric, post, prefix, servers, statuses, wait_until

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LEASE = 3.0  # long enough that a refresh waiting for a paused process is seen waiting


def view_hits(base: str) -> float:
    return metric(base, "gql_response_view_hits_total")


def answers_from_its_view(base: str) -> bool:
    """The next default yieldThisYear hit of this server is answered from its view (no Redis round trip)."""
    before = view_hits(base)
    return statuses(post(base, YIELD)) == ["HIT"] and view_hits(base) > before


def computed_after(base: str, sent: float) -> bool:
    """The default answer of `base` was computed after `sent` (Unix time): not one from before the refresh."""
    return max(ages(post(base, YIELD))) < time.time() - sent


def all_from_their_views(servers: tuple[ServerProcess, ...], what: str) -> None:
    for server in servers:
        wait_until(partial(answers_from_its_view, server.base), 15, what)


def none_from_before(servers: tuple[ServerProcess, ...], sent: float) -> None:
    for server in servers:
        assert computed_after(server.base, sent), f"{server.base} answered from before the refresh"


class Refresh(threading.Thread):
    """refreshCache of yieldThisYear in the background, so a test can look at the fleet while it waits."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.sent = 0.0
        self.body: dict | None = None

    def run(self) -> None:
        self.sent = time.time()
        self.body = post(self.base, REFRESH, headers=ADMIN)


def fleet_env(**env: str) -> dict[str, str]:
    return {"GQL_ADMIN_TOKEN": TOKEN, "GQL_QUERY_PROCESSES": "0", "GQL_VIEW_LEASE_SECONDS": str(LEASE), **env}


def test_hits_come_from_the_view_and_a_refresh_reaches_every_process_at_once(shared_redis, tmp_path: Path):
    shared = prefix("view")
    with servers(shared_redis.url, tmp_path, 2, **fleet_env(**shared_redis.env, GQL_CACHE_PREFIX=shared)) as (a, b):
        all_from_their_views((a, b), "hits from the view")
        for _ in range(3):
            sent = time.time()
            body = post(a.base, REFRESH, headers=ADMIN)
            assert not body.get("errors"), body
            none_from_before((a, b), sent)  # straight after the refresh returns
        all_from_their_views((a, b), "hits from the view again")


def test_a_process_paused_across_a_refresh_holds_it_up_to_its_lease_and_answers_new_data_when_resumed(
    shared_redis, tmp_path: Path,
):
    """The refresh waits for the paused process (it holds a lease and has not applied the refresh), at most until
    that lease runs out; resumed, the process no longer trusts its view and answers the new data. A process that
    joins meanwhile answers the new data too, and from its view once its own lease holds."""
    shared = prefix("paused")
    with servers(shared_redis.url, tmp_path, 2, **fleet_env(**shared_redis.env, GQL_CACHE_PREFIX=shared)) as (a, b):
        all_from_their_views((a, b), "hits from the view")
        os.kill(b.process.pid, signal.SIGSTOP)
        try:
            refresh = Refresh(a.base)
            refresh.start()
            time.sleep(0.5)
            assert refresh.is_alive(), "the refresh returned while a process holding a lease had not applied it"
            joined = ServerProcess(shared_redis.url, fleet_env(**shared_redis.env, GQL_CACHE_PREFIX=shared),
                                   log=tmp_path / "joined.log")
            try:
                joined.wait_ready(time.monotonic() + 60)
                refresh.join(LEASE + 15)
                assert not refresh.is_alive(), "the refresh waited longer than the paused process's lease"
                assert refresh.body is not None and not refresh.body.get("errors"), refresh.body
                assert computed_after(joined.base, refresh.sent), "the process that joined answered from before the refresh"
                wait_until(partial(answers_from_its_view, joined.base), 15, "the joined process's hits from its view")
            finally:
                joined.terminate()
                joined.reap()
        finally:
            os.kill(b.process.pid, signal.SIGCONT)
        assert computed_after(b.base, refresh.sent), "the resumed process answered from before the refresh"
        assert computed_after(a.base, refresh.sent)
        wait_until(partial(answers_from_its_view, b.base), 15, "the resumed process's hits from its view")


def test_a_cut_listener_stops_hits_from_the_view_until_it_has_caught_up(own_redis, tmp_path: Path):
    """The listener's connection is killed and the refresh is published while it is away: that process does not
    answer from its view meanwhile, the refresh waits until it has caught up, and after it both answer new data."""
    shared = prefix("cut")
    with servers(own_redis.url, tmp_path, 2, **fleet_env(GQL_CACHE_PREFIX=shared)) as (a, b):
        all_from_their_views((a, b), "hits from the view")
        with own_redis.client() as client:
            assert client.execute_command("PUBSUB", "NUMSUB", f"{shared}:filled")[1] == 2
            # Both listeners at once, the refresh straight after: it is published while neither is subscribed.
            client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            sent = time.time()
            body = post(a.base, REFRESH, headers=ADMIN)
        assert not body.get("errors"), body
        none_from_before((a, b), sent)
        all_from_their_views((a, b), "hits from the view once subscribed again")


def test_without_a_lease_every_hit_reads_redis(redis_server, tmp_path: Path):
    with servers(redis_server.url, tmp_path, 1, **fleet_env(GQL_VIEW_LEASE_SECONDS="0")) as (server,):
        wait_until(lambda: statuses(post(server.base, YIELD)) == ["HIT"], 15, "a hit")
        for _ in range(5):
            assert statuses(post(server.base, YIELD)) == ["HIT"]
        assert view_hits(server.base) == 0
        assert FIELD in post(server.base, YIELD)["data"]
