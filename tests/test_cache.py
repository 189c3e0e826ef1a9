"""ResultCache against real redis-server processes."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gql.cache import BreakerState, CacheState, CacheStatus, ComputationError, ResultCache
from gql.cache.entries import Computation
from gql.cache.keys import Keys
from gql.config import Settings
from tests.support.caches import ManualClock

pytestmark = pytest.mark.anyio

PARTS = {"codes": ["000300"], "asOf": "2024-05-06"}


def cache_key(prefix: str, namespace: str, parts) -> str:
    return Keys(prefix).entry(namespace, parts).name


class Counted:
    """A computation that counts its runs and can be held at a gate."""

    def __init__(self, value=None) -> None:
        self.runs = 0
        self.value = value
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self):
        self.runs += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.value if self.value is not None else {"run": self.runs, "x": [1.5, 2.25]}


async def test_hit_returns_exactly_what_the_miss_returned(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    compute = Counted({"nested": {"a": [1.0, 0.1 + 0.2, -8.08]}, "s": "沪深300", "flag": True})
    first = await cache.get_or_compute("ns", PARTS, 60, compute)
    second = await cache.get_or_compute("ns", PARTS, 60, compute)
    assert first.status is CacheStatus.MISS and second.status is CacheStatus.HIT
    assert second.value == first.value and compute.runs == 1
    assert 0 <= second.age_seconds < 5 and second.ttl_seconds == pytest.approx(60 - second.age_seconds)


async def test_past_its_ttl_a_value_is_served_stale_and_recomputed_in_the_background(redis_server, make_cache):
    clock = ManualClock()
    cache = make_cache(redis_server.url, clock=clock)
    compute = Counted()
    await cache.get_or_compute("ns", PARTS, 0.3, compute)
    assert (await cache.get_or_compute("ns", PARTS, 0.3, compute)).status is CacheStatus.HIT
    clock.advance(0.45)
    stale = await cache.get_or_compute("ns", PARTS, 0.3, compute)
    assert stale.status is CacheStatus.STALE and stale.value["run"] == 1 and stale.ttl_seconds == 0
    await cache.drain()
    again = await cache.get_or_compute("ns", PARTS, 0.3, compute)
    assert again.status is CacheStatus.HIT and again.value["run"] == 2 and compute.runs == 2


async def test_past_the_stale_period_a_value_is_recomputed_before_answering(redis_server, make_cache):
    clock = ManualClock()
    cache = make_cache(redis_server.url, clock=clock, cache_stale_seconds=0.1)
    compute = Counted()
    await cache.get_or_compute("ns", PARTS, 0.2, compute)
    clock.advance(0.4)
    again = await cache.get_or_compute("ns", PARTS, 0.2, compute)
    assert again.status is CacheStatus.MISS and again.value["run"] == 2


async def test_entry_lives_in_redis_for_its_ttl_plus_the_longer_of_stale_and_fail_safe_periods(redis_server, make_cache):
    cache = make_cache(redis_server.url, cache_stale_seconds=30, cache_fail_safe_seconds=600)
    await cache.get_or_compute("ns", PARTS, 120, Counted())
    key = cache_key(cache.keys.prefix, "ns", PARTS)
    assert 710_000 < redis_server.client().pttl(key) <= 720_000


async def test_other_arguments_are_other_keys_and_key_order_does_not_matter(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    compute = Counted()
    await cache.get_or_compute("ns", {"a": 1, "b": 2}, 60, compute)
    assert (await cache.get_or_compute("ns", {"b": 2, "a": 1}, 60, compute)).status is CacheStatus.HIT
    assert (await cache.get_or_compute("ns", {"a": 1, "b": 3}, 60, compute)).status is CacheStatus.MISS
    assert (await cache.get_or_compute("other", {"a": 1, "b": 2}, 60, compute)).status is CacheStatus.MISS
    assert compute.runs == 3


def test_keys_hold_no_user_text():
    key = cache_key("gql", "ns", {"codes": ["'; FLUSHALL; --", "x" * 500]})
    assert "FLUSHALL" not in key and len(key) < 80


async def test_concurrent_misses_share_one_computation(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    compute = Counted()
    compute.gate = asyncio.Event()
    calls = [asyncio.ensure_future(cache.get_or_compute("ns", PARTS, 60, compute)) for _ in range(20)]
    await compute.started.wait()
    compute.gate.set()
    results = await asyncio.gather(*calls)
    assert compute.runs == 1 and cache.computations["ns"] == 1
    assert all(r.value == results[0].value for r in results)


async def test_a_cancelled_caller_does_not_cancel_the_shared_computation(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    compute = Counted()
    compute.gate = asyncio.Event()
    first = asyncio.ensure_future(cache.get_or_compute("ns", PARTS, 60, compute))
    second = asyncio.ensure_future(cache.get_or_compute("ns", PARTS, 60, compute))
    await compute.started.wait()
    first.cancel()
    compute.gate.set()
    assert (await second).value == {"run": 1, "x": [1.5, 2.25]}
    assert (await cache.get_or_compute("ns", PARTS, 60, compute)).status is CacheStatus.HIT
    assert compute.runs == 1


async def test_invalidate_makes_every_variant_stale(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    compute = Counted()
    for day in ("2024-01-02", "2024-03-04"):
        await cache.get_or_compute("ns", {"asOf": day}, 60, compute)
    await cache.get_or_compute("kept", PARTS, 60, compute)
    await cache.invalidate("ns")
    for day in ("2024-01-02", "2024-03-04"):
        result = await cache.get_or_compute("ns", {"asOf": day}, 60, compute)
        assert result.status is CacheStatus.REFRESHED and result.value["run"] > 3
    assert (await cache.get_or_compute("kept", PARTS, 60, compute)).status is CacheStatus.HIT


async def test_a_computation_started_before_invalidate_does_not_store_its_value(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    slow = Counted({"computed": "before refresh"})
    slow.gate = asyncio.Event()
    in_flight = asyncio.ensure_future(cache.get_or_compute("ns", PARTS, 60, slow))
    await slow.started.wait()
    await cache.invalidate("ns")
    fresh = await cache.get_or_compute("ns", PARTS, 60, Counted({"computed": "after refresh"}))
    assert fresh.value == {"computed": "after refresh"}
    slow.gate.set()
    await in_flight
    again = await cache.get_or_compute("ns", PARTS, 60, Counted({"computed": "third"}))
    assert again.status is CacheStatus.HIT and again.value == {"computed": "after refresh"}


async def test_a_corrupt_entry_is_a_miss_and_is_overwritten(redis_server, caplog, make_cache):
    cache = make_cache(redis_server.url)
    key = cache_key(cache.keys.prefix, "ns", PARTS)
    client = redis_server.client()
    for junk in (b"\x00not json", b'{"f": 1, "g": 0}', b"[1, 2, 3]"):
        client.set(key, junk)
        with caplog.at_level(logging.WARNING, logger="gql.cache"):
            result = await cache.get_or_compute("ns", PARTS, 60, Counted({"ok": True}))
        assert result.status is CacheStatus.MISS and result.value == {"ok": True}
        assert (await cache.get_or_compute("ns", PARTS, 60, Counted())).status is CacheStatus.HIT
    assert sum("cannot be decoded" in r.message for r in caplog.records) == 1  # logged once per key


async def test_disabled_cache_bypasses_redis(redis_server, make_cache):
    cache = make_cache(redis_server.url, cache_enabled=False)
    compute = Counted()
    for _ in range(2):
        result = await cache.get_or_compute("ns", PARTS, 60, compute)
        assert result.status is CacheStatus.BYPASS
    assert compute.runs == 2 and cache.state is CacheState.DISABLED
    assert not redis_server.client().keys(f"{cache.keys.prefix}:*")


async def test_redis_stopped_then_back(own_redis, make_cache):
    clock = ManualClock()
    cache = make_cache(own_redis.url, clock=clock, redis_breaker_failures=1)
    compute = Counted()
    await cache.get_or_compute("ns", PARTS, 60, compute)
    own_redis.stop()
    # Still answering: computed once, then served from the in-process cache.
    down1 = await cache.get_or_compute("ns", PARTS, 60, compute)
    down2 = await cache.get_or_compute("ns", PARTS, 60, compute)
    assert cache.state is CacheState.DEGRADED
    assert down1.status is CacheStatus.MISS and down2.status is CacheStatus.HIT and compute.runs == 2
    own_redis.start()  # same port, empty
    clock.advance(0.15)  # past the breaker's cool-down
    back = await cache.get_or_compute("ns", PARTS, 60, compute)
    assert cache.state is CacheState.OK and back.status is CacheStatus.MISS
    assert (await cache.get_or_compute("ns", PARTS, 60, compute)).status is CacheStatus.HIT
    assert own_redis.client().keys(f"{cache.keys.prefix}:entry:*")


async def test_a_refresh_made_while_the_reconnect_applies_earlier_ones_is_applied_too(own_redis, make_cache):
    """Invalidations made while Redis was away are applied when it answers again; one that arrives while they are
    being applied (Redis not in use yet, so it is queued) must be applied as well, not dropped with the queue."""
    clock = ManualClock()
    cache = make_cache(own_redis.url, clock=clock, redis_breaker_failures=1)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    own_redis.stop()
    await cache.get_or_compute("ns", PARTS, 60, Counted())  # the breaker opens
    assert not await cache.invalidate("ns")  # queued: Redis cannot be told
    own_redis.start()
    bumped: list[int] = []
    original = cache.link.bump

    async def bump_during_which_a_refresh_arrives(*keys):
        generation = await original(*keys)
        bumped.append(generation[0])
        if len(bumped) == 1:
            assert not await cache.invalidate("ns")  # the reconnect is under way: queued again
        return generation

    cache.link.bump = bump_during_which_a_refresh_arrives
    clock.advance(0.15)  # past the breaker's cool-down: the next lookup probes and reconnects
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    assert cache.state is CacheState.OK
    assert len(bumped) == 2 and bumped[0] < bumped[1]
    assert int(own_redis.client().get(cache.keys.generation("ns"))) == bumped[1]


async def test_frozen_redis_opens_the_breaker_after_consecutive_failures(own_redis, make_cache):
    cache = make_cache(own_redis.url, redis_timeout=0.1, redis_retry_seconds=30, redis_breaker_failures=3)
    compute = Counted()
    await cache.get_or_compute("ns", PARTS, 60, compute)
    own_redis.freeze()
    try:
        # A hang guard, not a speed test: redis-py's defaults (5 s timeouts, retries) would exceed it.
        for expected in (CacheState.OK, CacheState.OK, CacheState.DEGRADED):
            result = await asyncio.wait_for(cache.get_or_compute("ns", PARTS, 60, compute), timeout=3)
            assert result.value is not None and cache.state is expected
        assert cache.breaker_state is BreakerState.OPEN
        # While the breaker is open, Redis is not asked at all: served from the in-process cache.
        calls = []
        original = cache.link.reader.execute_command

        async def counted(*args, **kwargs):
            calls.append(args[0])
            return await original(*args, **kwargs)

        cache.link.reader.execute_command = counted
        assert (await cache.get_or_compute("ns", PARTS, 60, compute)).status is CacheStatus.HIT
        assert calls == []
    finally:
        own_redis.thaw()


async def test_the_breaker_probes_after_its_cool_down_and_closes_when_redis_answers(own_redis, make_cache):
    clock = ManualClock()
    cache = make_cache(own_redis.url, clock=clock, redis_retry_seconds=0.3, redis_breaker_failures=1, redis_timeout=0.05)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    own_redis.freeze()
    try:
        for _ in range(5):  # timeouts open it once they have gone on for 5 x the bound
            await cache.get_or_compute("ns", PARTS, 60, Counted())
        assert cache.breaker_state is BreakerState.OPEN
        clock.advance(0.4)
        await cache.get_or_compute("ns", PARTS, 60, Counted())  # the probe fails: open again
        assert cache.breaker_state is BreakerState.OPEN
    finally:
        own_redis.thaw()
    clock.advance(0.4)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    assert cache.breaker_state is BreakerState.CLOSED and cache.state is CacheState.OK


def test_every_redis_call_is_bounded_and_never_retried():
    cache = ResultCache(Settings())
    for client in (cache.link.reader, cache.link.listener):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] <= 0.1 and kwargs["socket_connect_timeout"] <= 0.1
        assert kwargs["retry"].get_retries() == 0
    writer = cache.link.writer.connection_pool.connection_kwargs
    assert writer["socket_connect_timeout"] <= 0.1 and writer["retry"].get_retries() == 0


async def test_invalidate_while_redis_is_down_applies_when_it_returns(own_redis, make_cache):
    clock = ManualClock()
    cache = make_cache(own_redis.url, clock=clock, redis_breaker_failures=1)
    await cache.get_or_compute("ns", PARTS, 60, Counted({"old": True}))
    own_redis.freeze()
    try:
        await cache.invalidate("ns")
    finally:
        own_redis.thaw()
    clock.advance(0.15)  # past the breaker's cool-down
    after = await cache.get_or_compute("ns", PARTS, 60, Counted({"new": True}))
    assert after.value == {"new": True} and after.status is CacheStatus.REFRESHED


async def test_every_process_following_a_namespace_hears_its_invalidations(redis_server, make_cache):
    """What carries a refresh's new data epoch to the other server processes without a request of theirs."""
    first = make_cache(redis_server.url)
    second = make_cache.twin(first)
    heard: asyncio.Queue[int | None] = asyncio.Queue()

    async def handler(generation: int | None) -> None:
        await heard.put(generation)

    second.on_invalidated("ns", handler)
    # Listening: the handler is told so (a bump may have been missed before), and looks for itself.
    assert await asyncio.wait_for(heard.get(), 5) is None
    await first.invalidate("ns")
    await first.invalidate("other")  # another namespace: not followed
    await first.invalidate("ns")
    told = [await asyncio.wait_for(heard.get(), 5) for _ in range(2)]
    assert told[0] is not None and told[1] is not None and 0 < told[0] < told[1]
    await asyncio.sleep(0.1)
    assert heard.empty()


# --- single flight across processes (two caches on one Redis stand for two processes) -------------


class Failing:
    """A computation that raises, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self):
        self.runs += 1
        raise RuntimeError("the price feed is down")


async def test_concurrent_misses_in_two_processes_run_one_computation(redis_server, make_cache):
    first = make_cache(redis_server.url, cache_lease_seconds=30)
    second = make_cache.twin(first)
    compute = Counted()
    compute.gate = asyncio.Event()
    calls = [asyncio.ensure_future(c.get_or_compute("ns", PARTS, 60, compute)) for c in (first, second) * 10]
    await compute.started.wait()
    await asyncio.sleep(0.2)  # everyone is waiting on the lease or on the local flight
    compute.gate.set()
    # Woken by the holder's message, not at the end of the 30 s lease.
    results = await asyncio.wait_for(asyncio.gather(*calls), timeout=5)
    assert compute.runs == 1 and first.computations["ns"] + second.computations["ns"] == 1
    assert all(r.value == results[0].value for r in results)


async def test_a_computation_longer_than_its_lease_still_runs_once(redis_server, make_cache):
    first = make_cache(redis_server.url, cache_lease_seconds=0.3)
    second = make_cache.twin(first)
    compute = Counted()
    compute.gate = asyncio.Event()
    holder = asyncio.ensure_future(first.get_or_compute("ns", PARTS, 60, compute))
    await compute.started.wait()
    waiter = asyncio.ensure_future(second.get_or_compute("ns", PARTS, 60, compute))
    await asyncio.sleep(1.0)  # more than three lease periods: the holder keeps extending it
    compute.gate.set()
    assert (await holder).value == (await waiter).value and compute.runs == 1


async def test_when_the_lease_holder_dies_another_process_takes_over(redis_server, make_cache):
    cache = make_cache(redis_server.url, cache_lease_seconds=0.5)
    # What a holder killed mid-computation leaves behind: its lease, running out, never extended.
    generation = 0
    lease = cache.keys.compute_lease(cache.keys.entry("ns", PARTS), generation)
    redis_server.client().set(lease, "dead-holder", px=500)
    compute = Counted({"computed": "by the survivor"})
    began = asyncio.get_running_loop().time()
    result = await asyncio.wait_for(cache.get_or_compute("ns", PARTS, 60, compute), timeout=5)
    assert result.value == {"computed": "by the survivor"} and compute.runs == 1
    assert asyncio.get_running_loop().time() - began >= 0.3  # it did wait for the lease first


async def test_a_failure_is_shared_with_the_waiting_processes(redis_server, make_cache):
    first = make_cache(redis_server.url, cache_lease_seconds=30)
    second = make_cache.twin(first)
    gate = asyncio.Event()
    runs = 0

    async def failing_later():
        nonlocal runs
        runs += 1
        await gate.wait()
        raise RuntimeError("boom")

    holder = asyncio.ensure_future(first.get_or_compute("ns", PARTS, 60, failing_later))
    await asyncio.sleep(0.1)
    waiter = asyncio.ensure_future(second.get_or_compute("ns", PARTS, 60, failing_later))
    await asyncio.sleep(0.1)
    gate.set()
    for call in (holder, waiter):
        with pytest.raises(ComputationError, match="no earlier result"):
            await asyncio.wait_for(call, timeout=5)
    assert runs == 1


# --- stale-while-revalidate and early refresh ---------------------------------------------------------


async def test_a_stale_value_is_recomputed_once_across_processes(redis_server, make_cache):
    clock = ManualClock()
    first = make_cache(redis_server.url, clock=clock)
    second = make_cache.twin(first)
    compute = Counted()
    await first.get_or_compute("ns", PARTS, 0.2, compute)
    clock.advance(0.3)
    compute.gate = asyncio.Event()
    stale = await asyncio.gather(*[c.get_or_compute("ns", PARTS, 0.2, compute) for c in (first, second) * 5])
    assert {r.status for r in stale} == {CacheStatus.STALE} and {r.value["run"] for r in stale} == {1}
    compute.gate.set()
    await first.drain()
    await second.drain()
    assert compute.runs == 2
    fresh = await second.get_or_compute("ns", PARTS, 60, compute)
    assert fresh.status is CacheStatus.HIT and fresh.value["run"] == 2


async def test_hot_keys_are_recomputed_before_they_expire_when_early_refresh_is_on(redis_server, make_cache):
    async def slowish():
        await asyncio.sleep(0.05)
        return {"at": time.time()}

    # 50 ms x 1e7: "about to expire" with a probability of 1 - e^(-60 / 5e5), i.e. all but always.
    eager = make_cache(redis_server.url, cache_early_refresh=1e7)
    first = await eager.get_or_compute("ns", PARTS, 60, slowish)
    hit = await eager.get_or_compute("ns", PARTS, 60, slowish)
    assert hit.status is CacheStatus.HIT and hit.value == first.value  # answered from the cache...
    await eager.drain()
    assert eager.computations["ns"] == 2  # ...and recomputed in the background
    never = make_cache(redis_server.url, cache_early_refresh=0.0)
    await never.get_or_compute("ns", PARTS, 60, slowish)
    await never.get_or_compute("ns", PARTS, 60, slowish)
    await never.drain()
    assert never.computations["ns"] == 1


# --- fail-safe -------------------------------------------------------------------------------------------


async def test_a_failed_computation_is_answered_with_the_last_good_value(redis_server, make_cache):
    clock = ManualClock()
    first = make_cache(redis_server.url, clock=clock, cache_stale_seconds=0, cache_fail_safe_retry_seconds=0.5)
    await first.get_or_compute("ns", PARTS, 0.1, Counted({"good": 1}))
    clock.advance(0.2)
    failing = Failing()
    kept = await first.get_or_compute("ns", PARTS, 0.1, failing)
    assert kept.status is CacheStatus.STALE and kept.value == {"good": 1} and kept.error == "RuntimeError"
    # Retries are throttled, in this process and in the others (through Redis).
    second = make_cache.twin(first)
    for cache in (first, second, first):
        again = await cache.get_or_compute("ns", PARTS, 0.1, failing)
        assert again.status is CacheStatus.STALE and again.error == "RuntimeError"
    assert failing.runs == 1
    await asyncio.sleep(0.6)
    await first.get_or_compute("ns", PARTS, 0.1, failing)
    assert failing.runs == 2
    # Once it succeeds, the new value replaces the old one and the throttle is gone.
    await asyncio.sleep(0.6)
    recovered = await second.get_or_compute("ns", PARTS, 60, Counted({"good": 2}))
    assert recovered.status is CacheStatus.MISS and recovered.value == {"good": 2} and recovered.error is None


async def test_a_value_older_than_the_fail_safe_limit_does_not_stand_in(redis_server, make_cache):
    clock = ManualClock()
    cache = make_cache(redis_server.url, clock=clock, cache_stale_seconds=0, cache_fail_safe_seconds=0.2)
    await cache.get_or_compute("ns", PARTS, 0.1, Counted({"good": 1}))
    clock.advance(0.4)
    with pytest.raises(ComputationError):
        await cache.get_or_compute("ns", PARTS, 0.1, Failing())


async def test_with_no_earlier_value_a_failure_is_an_error_and_nothing_is_cached(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    failing = Failing()
    for _ in range(2):
        with pytest.raises(ComputationError, match="computing ns failed and no earlier result is cached"):
            await cache.get_or_compute("ns", PARTS, 60, failing)
    assert failing.runs == 2  # not throttled: there is nothing to serve instead
    assert not redis_server.client().keys(f"{cache.keys.prefix}:entry:*")


async def test_a_refused_argument_error_reaches_the_caller_as_it_is(redis_server, caplog, make_cache):
    class WrongDates(ValueError):
        pass

    async def refusing():
        raise WrongDates("no closes in that range")

    cache = make_cache(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="gql.cache"), pytest.raises(WrongDates):
        await cache.get_or_compute("ns", PARTS, 60, refusing, refused=(WrongDates,))
    assert not caplog.records


# --- refresh ----------------------------------------------------------------------------------------------


async def test_a_computation_held_at_a_barrier_does_not_overwrite_a_refresh(redis_server, make_cache):
    first = make_cache(redis_server.url)
    second = make_cache.twin(first)
    old = Counted({"computed": "before refresh"})
    old.gate = asyncio.Event()
    in_flight = asyncio.ensure_future(first.get_or_compute("ns", PARTS, 60, old))
    await old.started.wait()
    refreshed = await second.refresh("ns", PARTS, 60, Counted({"computed": "by the refresh"}))
    assert refreshed.value == {"computed": "by the refresh"}
    old.gate.set()
    assert (await in_flight).value == {"computed": "before refresh"}  # its own caller still gets it
    await first.drain()
    for cache in (first, second):
        after = await cache.get_or_compute("ns", PARTS, 60, Counted({"computed": "third"}))
        assert after.status is CacheStatus.HIT and after.value == {"computed": "by the refresh"}


async def test_concurrent_refreshes_coalesce_into_one_computation(redis_server, make_cache):
    first = make_cache(redis_server.url)
    second = make_cache.twin(first)
    await first.get_or_compute("ns", PARTS, 60, Counted({"old": True}))
    compute = Counted({"new": True})
    compute.gate = asyncio.Event()
    calls = [asyncio.ensure_future(c.refresh("ns", PARTS, 60, compute)) for c in (first, second, first, second)]
    await compute.started.wait()
    await asyncio.sleep(0.2)
    compute.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), timeout=5)
    assert compute.runs == 1 and all(r.value == {"new": True} for r in results)
    assert sum(r.coalesced for r in results) == 3


# --- entries --------------------------------------------------------------------------------------------


async def test_entries_of_the_right_format_but_the_wrong_shape_are_misses(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    key = cache_key(cache.keys.prefix, "ns", PARTS)
    client = redis_server.client()
    for junk in (b'{"f": 2, "g": 0, "t": "yesterday", "ttl": 60, "d": 0, "v": 1}',
                 b'{"f": 2, "g": 0, "t": NaN, "ttl": 60, "d": 0, "v": 1}',
                 b'{"f": 2, "g": 0, "t": 1e400, "ttl": 60, "d": 0, "v": 1}',
                 b'{"f": 2, "v": 1}'):
        client.set(key, junk)
        result = await cache.get_or_compute("ns", PARTS, 60, Counted({"ok": True}))
        assert result.status is CacheStatus.MISS and result.value == {"ok": True}


async def test_ttls_of_values_written_together_are_spread(redis_server, make_cache):
    cache = make_cache(redis_server.url, cache_ttl_jitter=0.1)
    results = [await cache.get_or_compute("ns", {"i": i}, 100, Counted()) for i in range(20)]
    fresh = [r.ttl_seconds for r in results]
    assert all(90 <= t <= 100 for t in fresh) and len({round(t, 3) for t in fresh}) > 15
    client = redis_server.client()
    expiries = {client.pttl(cache_key(cache.keys.prefix, "ns", {"i": i})) // 100 for i in range(20)}
    assert len(expiries) > 15


async def test_while_the_breaker_is_open_concurrent_misses_share_one_computation(own_redis, make_cache):
    cache = make_cache(own_redis.url, redis_breaker_failures=1, redis_retry_seconds=30)
    own_redis.stop()
    await cache.get_or_compute("other", PARTS, 60, Counted())  # opens the breaker
    assert cache.state is CacheState.DEGRADED
    compute = Counted()
    compute.gate = asyncio.Event()
    calls = [asyncio.ensure_future(cache.get_or_compute("ns", PARTS, 60, compute)) for _ in range(10)]
    await compute.started.wait()
    compute.gate.set()
    await asyncio.gather(*calls)
    assert compute.runs == 1
    assert (await cache.get_or_compute("ns", PARTS, 60, compute)).status is CacheStatus.HIT


async def test_lookups_are_counted_by_outcome(redis_server, make_cache):
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("gql_cache_lookups_total", {"field": "metered", "outcome": outcome}) or 0.0

    before = {o: count(o) for o in ("hit", "miss", "stale", "error")}
    clock = ManualClock()
    cache = make_cache(redis_server.url, clock=clock, cache_stale_seconds=0.2, cache_fail_safe_retry_seconds=0)
    await cache.get_or_compute("metered", PARTS, 0.1, Counted())  # miss
    await cache.get_or_compute("metered", PARTS, 0.1, Counted())  # hit
    clock.advance(0.15)
    await cache.get_or_compute("metered", PARTS, 0.1, Counted())  # stale
    await cache.drain()
    with pytest.raises(ComputationError):
        await cache.get_or_compute("metered", {"other": 1}, 0.1, Failing())  # error
    after = {o: count(o) - before[o] for o in before}
    assert after == {"hit": 1, "miss": 1, "stale": 1, "error": 1}


async def test_a_request_scope_remembers_a_failed_redis_call(own_redis, make_cache):
    cache = make_cache(own_redis.url, redis_breaker_failures=10)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    own_redis.freeze()
    try:
        with cache.link.request():
            assert not cache.link.failed_in_this_request()
            await cache.get_or_compute("ns", PARTS, 60, Counted())
            assert cache.link.failed_in_this_request()  # the response layer then keeps it out of query workers
        with cache.link.request():
            assert not cache.link.failed_in_this_request()
    finally:
        own_redis.thaw()


async def test_timeouts_open_the_breaker_only_when_they_go_on(own_redis, make_cache):
    """A burst can hold the event loop past the bound while Redis is fine; a short run of timeouts
    must not make a process stop using Redis (and so lose fleet-wide single flight)."""
    clock = ManualClock()
    cache = make_cache(own_redis.url, clock=clock, redis_breaker_failures=3, redis_timeout=0.05)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    own_redis.freeze()
    try:
        for _ in range(3):
            cache.link.breaker.failed(timed_out=True)
        assert cache.breaker_state is BreakerState.CLOSED  # three timeouts at once: not yet
        clock.advance(0.3)  # 5 x the bound with nothing but failures
        cache.link.breaker.failed(timed_out=True)
        assert cache.breaker_state is BreakerState.OPEN
    finally:
        own_redis.thaw()


async def test_refused_connections_open_the_breaker_at_once(own_redis, make_cache):
    cache = make_cache(own_redis.url, redis_breaker_failures=3)
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    own_redis.stop()
    await cache.get_or_compute("ns", PARTS, 60, Counted())  # lookup, its retry, a lease: refused
    await cache.get_or_compute("ns", PARTS, 60, Counted())
    assert cache.breaker_state is BreakerState.OPEN


async def test_a_slow_call_answering_after_the_breaker_opened_does_not_close_it(redis_server, make_cache):
    """Only the probe closes the breaker: it first applies the refreshes made while Redis was out."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gql.cache.redis_link import Unavailable

    cache = make_cache(redis_server.url, redis_breaker_failures=3, redis_retry_seconds=30)
    await cache.get_or_compute("ns", PARTS, 600, Counted({"v": "old"}))

    async def slow_but_fine():
        await asyncio.sleep(0.3)
        return await cache.link.reader.ping()

    async def refused():
        raise RedisConnectionError("refused")

    in_flight = asyncio.ensure_future(cache.link.call(slow_but_fine))
    await asyncio.sleep(0.01)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await cache.link.call(refused)
    assert cache.breaker_state is BreakerState.OPEN
    await cache.invalidate("ns")  # a refresh while Redis is out
    await in_flight
    assert cache.breaker_state is BreakerState.OPEN
    after = await cache.get_or_compute("ns", PARTS, 600, Counted({"v": "new"}))
    assert after.value == {"v": "new"}


@pytest.mark.parametrize("late", ["lookup", "wait"])
async def test_a_value_stored_just_before_the_lease_is_taken_is_not_computed_again(redis_server, late, make_cache):
    """Process b misses (or, waiting, reads no entry) just before a stores and lets go of the lease;
    b then gets the free lease, and must find the value rather than compute it again."""
    a = make_cache(redis_server.url)
    b = make_cache.twin(a)
    runs = []

    def computation(who):
        async def compute():
            runs.append(who)
            await asyncio.sleep(0.2)
            return {"v": 1}

        return compute

    if late == "lookup":  # b is descheduled between its lookup and its try for the lease
        lookup = b._lookup

        async def slow_lookup(*args):
            found = await lookup(*args)
            await asyncio.sleep(0.3)
            return found

        b._lookup = slow_lookup
    else:  # b's read of the entry happens just before a stores, its look at the lease just after
        get = b.link.reader.get

        async def slow_get(*args, **kwargs):
            found = await get(*args, **kwargs)
            if ":entry:" in str(args[0]):
                await asyncio.sleep(0.25)
            return found

        b.link.reader.get = slow_get
    first = asyncio.ensure_future(a.get_or_compute("ns", PARTS, 60, computation("a")))
    await asyncio.sleep(0.05)
    second = await b.get_or_compute("ns", PARTS, 60, computation("b"))
    assert (await first).value == second.value and runs == ["a"]


async def test_a_miss_that_joins_a_background_recomputation_left_to_another_process_still_gets_a_value(redis_server, make_cache):
    cache = make_cache(redis_server.url)
    key = cache.keys.entry("ns", PARTS)
    # Another process holds the lease (and dies): this process's background recomputation leaves it alone...
    redis_server.client().set(cache.keys.compute_lease(key, 0), "other-process", px=300)
    compute = Counted({"v": 1})
    cache._flights.revalidate(Computation(key, 60, compute), 0, True, 0.0)
    # ...and a miss arriving meanwhile joins that flight; it must not come back empty-handed.
    value = (await asyncio.wait_for(cache._flights.fill(Computation(key, 60, compute), 0, True), timeout=5)).value
    assert value == {"v": 1} and compute.runs == 1
