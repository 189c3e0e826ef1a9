"""`ResultCache`: read-through caching of computed values, with refresh and invalidation.

What it guarantees (docs/caching.md has the whole story):

- **Single flight, fleet-wide.** Concurrent misses of one key in one process share one computation
  (gql/cache/flights.py); across processes the computing one holds a Redis lease (gql/cache/leases.py).
- **Stale-while-revalidate.** After its fresh period an entry stays usable for a stale period: it is
  answered at once (status STALE) while one background computation, fleet-wide, replaces it. Hot keys
  may be recomputed a little before they expire (probabilistic early expiration, "XFetch").
- **Fail-safe.** When a computation fails and an older value is at hand (up to a maximum age) that
  value is served, marked STALE with the error, and the failing computation is retried at most once
  per throttle period, fleet-wide.
- **Redis faults.** Every call has a short bound; a circuit breaker stops using Redis after consecutive
  failures and probes it again after a cool-down (gql/cache/redis_link.py). Meanwhile an in-process
  cache (gql/cache/local.py, with single flight) stands in.
- **Refresh is never lost.** Each namespace (one per cached field) has a generation; `invalidate`
  increments it, and writes are conditional on the generation the computation started under.
- Undecodable entries are misses (logged once); fresh periods get a random spread (TTL jitter).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from gql import metrics
from gql.cache.breaker import BreakerState
from gql.cache.connect import Client
from gql.cache.entries import (
    CacheEntry,
    CacheResult,
    CacheState,
    CacheStatus,
    Computation,
    ComputationError,
    describe,
)
from gql.cache.flights import Flights
from gql.cache.generations import KnownGenerations
from gql.cache.keys import EntryKey, Keys
from gql.cache.leases import Leases, Outcome
from gql.cache.local import LocalCache
from gql.cache.notify import Notifications, cancel_all
from gql.cache.policy import EntryPolicy
from gql.cache.raw import RawStore
from gql.cache.redis_link import RedisLink, Unavailable, milliseconds
from gql.cache.view import LocalView
from gql.clock import SYSTEM_CLOCK, Clock
from gql.config import Settings

log = logging.getLogger("gql.cache")

class ResultCache:
    def __init__(
        self, settings: Settings, clock: Clock = SYSTEM_CLOCK, *, local_entries: int | None = None,
        view_namespaces: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.cache_prefix)
        self.link = RedisLink(settings, self._reconnected, clock, probe_key=self.keys.generation("data"))
        self.local = LocalCache(settings.local_cache_entries if local_entries is None else local_entries, clock)
        self.policy = EntryPolicy(settings, clock)
        self.clock = clock
        self._background: set[asyncio.Task] = set()
        self.generations = KnownGenerations(self.link, self.keys, self._background, self._follow_generation)
        self._notify = Notifications(self.link, self.keys.channel, lambda: self.state is CacheState.OK)
        self._leases = Leases(settings, self.link, self.keys, self._notify, self.policy, self._background)
        self._flights = Flights(self._leases, self.local, self.policy, settings.cache_fail_safe_retry_seconds, self._background)
        self._refreshes: dict[str, asyncio.Task[CacheResult]] = {}
        # Namespaces invalidated while Redis was away: bumped there before it is used again.
        self._pending_invalidations: set[str] = set()
        self._unreplicated_warned = False
        # Whole responses and other bytes, for the layers above (gql/responses.py).
        self.raw = RawStore(self.link, self.keys, self.local, self.generations)
        # What a hit may trust without reading Redis (gql/cache/view.py); `start_view` starts it in a server.
        self.view = LocalView(self.link, self.keys, self.generations, view_namespaces, settings.view_lease_seconds)

    # --- state --------------------------------------------------------------------------------

    @property
    def state(self) -> CacheState:
        if self.link.disabled:
            return CacheState.DISABLED
        return CacheState.OK if self.link.breaker.state is BreakerState.CLOSED else CacheState.DEGRADED

    @property
    def breaker_state(self) -> BreakerState:
        return self.link.breaker.state

    @property
    def computations(self) -> Mapping[str, int]:
        """Computations actually run here, per namespace (joined callers of a shared one do not count)."""
        return self.policy.computations

    def start_view(self) -> None:
        """Keep this process's view (a server's, whose hits use it) under a lease from now on."""
        if self.view.enabled:
            self._notify.watch(self.keys.view_topic, self.view)
            self._notify.ensure_listening()
            self.view.start()

    async def close(self) -> None:
        await self.view.close()
        await self._notify.close()
        await cancel_all(self._background)
        await self.link.close()

    async def warm(self, connections: int = 8) -> None:
        """Open connections now, so that the first burst of requests does not pay for opening them."""
        await self.link.warm(connections)

    async def drain(self) -> None:
        """Wait for background work (recomputations, stores) to end; for tests and shutdown."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def check(self) -> CacheState:
        """Probe Redis now (for health checks) and return the resulting state."""
        if self.state is CacheState.OK:
            try:
                await self.link.call(self.link.probe)
            except Unavailable:
                return CacheState.DEGRADED  # this probe failed, whether or not the breaker has opened yet
        else:
            await self.link.usable()
        return self.state

    # --- reading through ----------------------------------------------------------------------

    async def get_or_compute(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]],
        *, refused: tuple[type[Exception], ...] = (),
    ) -> CacheResult:
        """The cached value for these arguments; computed (once, fleet-wide) when there is none.

        Exceptions of the `refused` types mean the arguments are wrong (see `Computation`).
        """
        return await self._get(Computation(self.keys.entry(namespace, parts), ttl, compute, refused))

    async def _get(self, computation: Computation) -> CacheResult:
        if self.link.disabled:
            metrics.lookup(computation.namespace, "bypass")
            return CacheResult(await self.policy.timed(computation), CacheStatus.BYPASS, 0.0, 0.0)
        return await self._read_through(computation)

    async def _read_through(self, computation: Computation) -> CacheResult:
        namespace, key = computation.namespace, computation.key
        # Whether Redis answered (after one retry): if not, this request goes on without it.
        use_redis, generation, entry = await self._lookup(key, await self.link.usable())
        now = self.clock.now()
        if entry is not None and entry.generation == generation:
            age = max(0.0, now - entry.created)
            if age < entry.fresh:
                if self.policy.refresh_early(entry, now):
                    self._flights.revalidate(computation, generation, use_redis, entry.created)
                metrics.lookup(namespace, "hit")
                return CacheResult(entry.value, CacheStatus.HIT, age, entry.fresh - age)
            if age < entry.fresh + self.policy.stale_seconds(entry.fresh):
                # Answered now; recomputed once in the background, unless that failed a moment ago.
                failure = await self._recent_failure(computation, use_redis)
                if failure is None:
                    self._flights.revalidate(computation, generation, use_redis, entry.created)
                metrics.lookup(namespace, "stale")
                return CacheResult(entry.value, CacheStatus.STALE, age, 0.0, error=failure)
        usable_age = entry.fresh + self.policy.fail_safe_seconds if entry is not None else 0.0
        fallback = entry if entry is not None and now - entry.created < usable_age else None
        status = CacheStatus.REFRESHED if entry is not None and entry.generation < generation else CacheStatus.MISS
        if fallback is not None:
            failure = await self._recent_failure(computation, use_redis)
            if failure is not None:  # failed a moment ago: do not hammer it, keep serving the old value
                return self._fail_safe(namespace, fallback, failure, now)
        try:
            found = await self._flights.fill(computation, generation, use_redis)
        except Exception as exc:
            if computation.refuses(exc):
                raise
            if fallback is not None:
                return self._fail_safe(namespace, fallback, describe(exc), now)
            metrics.lookup(namespace, "error")
            raise ComputationError(f"computing {namespace} failed and no earlier result is cached to stand in") from exc
        metrics.lookup(namespace, "miss")
        return CacheResult(found.value, status, 0.0, found.fresh)

    def _fail_safe(self, namespace: str, entry: CacheEntry, error: str, now: float) -> CacheResult:
        metrics.lookup(namespace, "stale")
        return CacheResult(entry.value, CacheStatus.STALE, max(0.0, now - entry.created), 0.0, error=error)

    async def _lookup(self, key: EntryKey, use_redis: bool) -> tuple[bool, int, CacheEntry | None]:
        """(whether Redis answered, the namespace generation, the entry if any)."""
        for _ in range(2 if use_redis else 0):
            try:
                raw_generation, raw_entry = await self.link.call(self.link.read_many, self.keys.generation(key.namespace), key.name)
            except Unavailable:
                if self.link.breaker.state is not BreakerState.CLOSED:
                    break  # Redis is out: do without it
                continue  # one failure with the breaker closed may be a hiccup (or a busy loop): once more
            generation = self.generations.seen(key.namespace, int(raw_generation or 0))
            return True, generation, self.policy.decode(key.name, raw_entry)
        return False, self.local.generation(key.namespace), self.local.entries.get(key.name)

    async def _recent_failure(self, computation: Computation, use_redis: bool) -> str | None:
        """The failure that throttles recomputing: this process's own first (it holds even when marking it in Redis
        failed, and costs no round trip), then the fleet's mark in Redis."""
        local = self.local.failure(computation.key.name)
        if local is not None or not use_redis:
            return local
        try:
            return await self._leases.recent_failure(computation)
        except Unavailable:
            return None

    # --- refresh ------------------------------------------------------------------------------------

    async def refresh(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]],
        *, refused: tuple[type[Exception], ...] = (),
    ) -> CacheResult:
        """Invalidate every entry of the namespace, then compute the value for `parts`.

        Concurrent refreshes of the same value (same arguments, so the same data version) anywhere in
        the fleet coalesce into one: the later ones wait for it and report `coalesced`.
        """
        computation = Computation(self.keys.entry(namespace, parts), ttl, compute, refused)
        identity = computation.key.name
        task = self._refreshes.get(identity)
        if task is not None:
            return replace(await asyncio.shield(task), coalesced=True)
        task = asyncio.ensure_future(self._refresh(computation))
        self._refreshes[identity] = task
        task.add_done_callback(lambda _: self._refreshes.pop(identity, None))
        return await asyncio.shield(task)

    async def _refresh(self, computation: Computation) -> CacheResult:
        key = computation.key
        lease = self.keys.refresh_lease(key)
        topic = self.keys.refresh_topic(key)
        token = uuid.uuid4().hex
        held = None
        if await self.link.usable():
            waiter = self._notify.wait_for(topic)  # before trying: an end announced in between is not missed
            try:
                # SET NX answers None (not False) when the key exists.
                lease_ms = milliseconds(self.settings.cache_lease_seconds)
                held = bool(await self.link.call(self.link.reader.set, lease, token, nx=True, px=lease_ms))
            except Unavailable:
                held = None
            if held is False and await self._await_release(lease, topic, waiter):
                # Another process refreshed the same thing: its result is ours now that its lease is gone.
                return replace(await self._get(computation), coalesced=True)
            self._notify.stop_waiting(topic, waiter)
        keeper = asyncio.ensure_future(self._leases.keep(lease, token)) if held else None
        try:
            reached = await self.invalidate(key.namespace)
            return replace(await self._get(computation), reached_fleet=reached)
        finally:
            if keeper is not None:
                keeper.cancel()
                await self._leases.release(lease, token, topic, Outcome.DONE)

    async def _await_release(self, lease: str, topic: str, waiter: asyncio.Future[str]) -> bool:
        """Wait until the lease is gone (woken by its holder's message); False if Redis stopped answering."""
        self._notify.ensure_listening()
        try:
            while True:
                try:
                    remaining = await self.link.call(self.link.reader.pttl, lease)
                except Unavailable:
                    return False
                if remaining < 0:
                    return True
                if await self._notify.next_outcome(waiter, self._notify.bound(remaining)) is not None:
                    waiter = self._notify.wait_for(topic)
        finally:
            self._notify.stop_waiting(topic, waiter)

    async def invalidate(self, namespace: str) -> bool:
        """Make every entry of the namespace a miss now, in Redis and in the local cache. False when Redis could not
        be told: then only this process knows, until Redis answers again (it is told first thing then)."""
        self.local.bump(namespace)
        if self.link.disabled:
            return True
        if await self.link.usable():
            try:
                # Published too: every process following the namespace hears of it (`on_invalidated`).
                generation, sequence, replicas = await self.link.call(self.link.bump, *self._bump_keys(namespace))
                self.generations.seen(namespace, generation)
                if replicas is not None:
                    self._replicated(namespace, replicas)
                # Every server process answering from its view must have applied it before this returns.
                return await self.view.everyone_has(sequence)
            except Unavailable:
                pass
        # Redis holds entries from before this invalidation: bump its generation before using it again.
        self._pending_invalidations.add(namespace)
        return False

    def _bump_keys(self, namespace: str) -> tuple[str, str, str, str, str]:
        return self.keys.generation(namespace), self.keys.view_sequence, self.keys.channel, self.keys.view_topic, namespace

    def _replicated(self, namespace: str, replicas: int) -> None:
        """Count a refresh fewer replicas acknowledged than asked for; warn once until they do again (a master left
        without a replica after a failover would otherwise log every refresh)."""
        if replicas >= self.link.refresh_replicas:
            if self._unreplicated_warned:
                log.warning("refreshes reach %d replica(s) again", replicas)
            self._unreplicated_warned = False
            return
        metrics.unreplicated_refresh()
        if not self._unreplicated_warned:
            self._unreplicated_warned = True
            log.warning(
                "the refresh of %s reached %d of %d replicas (within %.2f s, or none was connected): if the master "
                "fails before it replicates, processes that saw it put it back (docs/caching.md, \"Failover never "
                "undoes a refresh\"); counted in gql_cache_unreplicated_refreshes_total, not logged again until "
                "refreshes reach enough replicas", namespace, replicas, self.link.refresh_replicas, self.link.refresh_wait,
            )

    def on_invalidated(self, namespace: str, handler: Callable[[int | None], Awaitable[None]]) -> None:
        """Call `handler(generation)` whenever any process invalidates the namespace, from now on (this
        process listens to the channel from now on). `handler(None)`: the subscription to the channel has just
        (re)started, so an invalidation may have been missed meanwhile; look at the generation."""

        async def heard(outcome: str | None) -> None:
            await handler(self.generations.seen(namespace, int(outcome)) if outcome else None)

        self._notify.follow(self.keys.generation(namespace), heard)
        self._notify.ensure_listening()

    def _follow_generation(self, namespace: str) -> None:
        async def heard(outcome: str | None) -> None:
            if outcome:
                self.generations.seen(namespace, int(outcome))

        self._notify.follow(self.keys.generation(namespace), heard)
        self._notify.ensure_listening()

    async def _reconnected(self, client: Client) -> None:
        """Redis answers again: apply the invalidations made meanwhile, before anyone reads it."""
        while self._pending_invalidations:
            # Taken out before its bump: a refresh meanwhile (Redis not in use until this ends) puts it back in,
            # and it is bumped again, never dropped.
            namespace = min(self._pending_invalidations)
            self._pending_invalidations.discard(namespace)
            try:
                await self.link.bump(*self._bump_keys(namespace), client)
            except BaseException:
                self._pending_invalidations.add(namespace)
                raise
        # Local entries may predate refreshes made through other processes while Redis was away.
        self.local.forget()
