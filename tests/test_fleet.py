"""The cache on a Redis Cluster and a Sentinel group, with real processes: masters killed mid-run, a refresh that
a failover really loses, and every mode over TLS.

The cache behaviours themselves (single flight across servers, leases, stale, fail-safe, refresh coalescing) run
on a cluster too: tests/test_resilience.py runs them in every mode (the `shared_redis` fixture).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import httpx2
import pytest
import redis
import redis.cluster

from tests.support.topologies import RedisCluster, RedisNode, SentinelGroup, Tls, subscribers
from tests.test_resilience import (
    FIELD,
    REFRESH,
    TOKEN,
    YIELD,
    Load,
    ages,
    post,
    prefix,
    servers,
    statuses,
    wait_until,
)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def generation_key(shared: str) -> str:
    """Where the yieldThisYear generation of cache prefix `shared` lives (gql/cache/keys.py)."""
    return f"{shared}:generation:{{{shared}}}:{FIELD}"


def refresh(base: str) -> float:
    """refreshCache of yieldThisYear through `base`; returns when it was sent (Unix time)."""
    sent = time.time()
    body = post(base, REFRESH, headers=ADMIN)
    assert not body.get("errors"), body
    return sent


def hit_through_redis(base: str) -> bool:
    """The default yieldThisYear answer is a HIT, with Redis in use (not the in-process stand-in)."""
    healthy = httpx2.get(f"{base}/healthz", timeout=10).json()["cache"]["state"] == "ok"
    return healthy and statuses(post(base, YIELD)) == ["HIT"]


def computed_after(base: str, sent: float) -> bool:
    """Every cached field of the default answer was computed after `sent` (so not undone by a failover)."""
    return max(ages(post(base, YIELD))) < time.time() - sent


def assert_all_answered(*loads: Load) -> None:
    problems = [f"{phase}: {problem}" for load in loads for phase, problem in load.results if problem]
    total = sum(len(load.results) for load in loads)
    assert not problems, f"{len(problems)} of {total} requests failed:\n" + "\n".join(problems[:20])
    for load in loads:
        for phase in ("before", "failover", "after"):
            assert load.count(phase) > 0, f"no request was answered in the phase {phase!r}"


def test_killing_the_master_of_the_generations_mid_run_loses_no_answer_and_no_refresh(own_topology, tmp_path: Path):
    cluster: RedisCluster = own_topology(RedisCluster)
    shared = prefix("failover")
    with servers(cluster.url, tmp_path, 2, GQL_REDIS_MODE="cluster", GQL_CACHE_PREFIX=shared, GQL_ADMIN_TOKEN=TOKEN,
                 GQL_REDIS_RETRY_SECONDS="0.5") as fleet:
        for server in fleet:
            wait_until(partial(hit_through_redis, server.base), 15, "HITs before the kill")
        master = cluster.master_for_key(generation_key(shared))
        loads = [Load(server.base) for server in fleet]
        with loads[0], loads[1]:
            wait_until(lambda: all(load.count("before") >= 10 for load in loads), 10, "the load to get going")
            sent = refresh(fleet[0].base)  # acknowledged by the master's replica (WAIT) before it returns
            with master.client() as client:
                refreshed = int(client.get(generation_key(shared)))
            for load in loads:
                load.phase = "failover"
            cluster.kill(master)
            cluster.wait_failover(master)
            for server in fleet:
                wait_until(partial(hit_through_redis, server.base), 20, "HITs through Redis after the failover")
            for load in loads:
                load.phase = "after"
            wait_until(lambda: all(load.count("after") >= 10 for load in loads), 10, "requests after the failover")
        assert_all_answered(*loads)
        with redis.cluster.RedisCluster.from_url(cluster.url) as client:
            assert int(client.get(generation_key(shared))) >= refreshed, "the failover undid the refresh's generation"
        # Both servers listen on the channel again (one may have been subscribed at the node that died).
        wait_until(lambda: subscribers([node for node in cluster.nodes if node.live], f"{shared}:filled") >= 2, 10, "both servers to subscribe again")
        for server in fleet:
            assert computed_after(server.base, sent), "an answer from before the refresh came back after the failover"


def test_a_refresh_that_a_failover_loses_is_put_back_by_the_processes_that_saw_it(own_topology, tmp_path: Path):
    """No replica holds the refresh (it is frozen and cut off, and refreshes do not wait for one): the promoted replica
    has the old generation. The servers, which made or heard the refresh, answer under theirs and put it back."""
    cluster: RedisCluster = own_topology(RedisCluster)
    shared = prefix("lost")
    with servers(cluster.url, tmp_path, 2, GQL_REDIS_MODE="cluster", GQL_CACHE_PREFIX=shared, GQL_ADMIN_TOKEN=TOKEN,
                 GQL_REDIS_RETRY_SECONDS="0.5", GQL_REDIS_REFRESH_REPLICAS="0") as (a, b):
        for server in (a, b):
            wait_until(partial(hit_through_redis, server.base), 15, "HITs before the refresh")
        key = generation_key(shared)
        master = cluster.master_for_key(key)
        (replica,) = cluster.replicas[master]
        cluster.freeze(replica)
        try:
            # Frozen, the replica would still find in its socket what the master sent it before dying: cut the link
            # first, so the refresh is never sent (the frozen replica cannot connect again).
            master.ask("CLIENT", "KILL", "TYPE", "replica")
            sent = refresh(a.base)
            with master.client() as client:
                refreshed = int(client.get(key))
            cluster.kill(master)
        finally:
            cluster.thaw(replica)
        cluster.wait_failover(master)
        with replica.client() as client:
            assert int(client.get(key) or 0) < refreshed, "the promoted replica has the refresh: nothing was lost"
        # b did not make the refresh: it heard of it on the channel.
        for server in (b, a):
            wait_until(partial(computed_after, server.base, sent), 20, "answers computed after the refresh")
        with replica.client() as client:
            wait_until(lambda: int(client.get(key) or 0) == refreshed, 10, "the lost generation to be put back")
        for server in (a, b):
            wait_until(partial(hit_through_redis, server.base), 20, "HITs through Redis after the failover")
            assert computed_after(server.base, sent)


def test_a_sentinel_failover_answers_every_request_and_hits_resume_on_the_promoted_replica(own_topology, tmp_path: Path):
    group: SentinelGroup = own_topology(SentinelGroup, password="redis-secret", sentinel_password="sentinel-secret")
    env = {
        "GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINELS": group.sentinels, "GQL_REDIS_SENTINEL_SERVICE": group.service,
        "GQL_REDIS_PASSWORD": "redis-secret", "GQL_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
    }
    # REDIS_URL gives only the scheme and database: the sentinels name the master.
    with servers("redis://sentinel-named/0", tmp_path, 1, **env, GQL_ADMIN_TOKEN=TOKEN, GQL_REDIS_RETRY_SECONDS="0.5") as (server,):
        wait_until(lambda: hit_through_redis(server.base), 15, "HITs before the kill")
        with Load(server.base) as load:
            wait_until(lambda: load.count("before") >= 10, 10, "the load to get going")
            sent = refresh(server.base)
            load.phase = "failover"
            old = group.kill_master()
            promoted = group.wait_promoted(old)
            wait_until(lambda: hit_through_redis(server.base), 20, "HITs through Redis after the failover")
            load.phase = "after"
            wait_until(lambda: load.count("after") >= 10, 10, "requests after the failover")
        assert_all_answered(load)
        assert computed_after(server.base, sent)
        with group.node_at(promoted).client() as client:
            assert client.keys(f"{server.prefix}:entry:*"), "nothing cached on the promoted replica"
        wait_until(lambda: subscribers([group.node_at(promoted)], f"{server.prefix}:filled") >= 1, 10, "the server to subscribe again")


# --- TLS in every mode ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["standalone", "cluster", "sentinel"])
async def test_every_mode_works_over_tls(mode: str, own_topology, redis_tls: Tls, make_cache):
    if mode == "standalone":
        url, changes = own_topology(RedisNode, tls=redis_tls).url, {}
    elif mode == "cluster":
        url, changes = own_topology(RedisCluster, tls=redis_tls).url, {"redis_mode": "cluster"}
    else:
        group = own_topology(SentinelGroup, tls=redis_tls)
        url = f"rediss://127.0.0.1/0?ssl_ca_certs={redis_tls.ca}"
        changes = {"redis_mode": "sentinel", "redis_sentinels": group.sentinels, "redis_sentinel_service": group.service}
    assert url.startswith("rediss://")
    first = make_cache(url, **changes)
    second = make_cache.twin(first)
    heard: asyncio.Queue[int | None] = asyncio.Queue()

    async def handler(generation: int | None) -> None:
        await heard.put(generation)

    second.on_invalidated("ns", handler)
    assert await asyncio.wait_for(heard.get(), 10) is None  # subscribed, over TLS

    async def value() -> dict:
        return {"mode": mode}

    assert (await first.get_or_compute("ns", {"k": 1}, 60, value)).status.value == "MISS"
    assert (await second.get_or_compute("ns", {"k": 1}, 60, value)).status.value == "HIT"
    await first.invalidate("ns")
    assert await asyncio.wait_for(heard.get(), 10)
    assert (await second.get_or_compute("ns", {"k": 1}, 60, value)).status.value == "REFRESHED"
    assert first.state.value == second.state.value == "ok"
