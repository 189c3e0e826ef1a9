"""Single flight in this process: concurrent misses of one key share one computation.

A flight is the computation of one key under one generation. It runs under the fleet's lease while
Redis is in use (gql/cache/leases.py), else here alone, with the value kept in the local cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from gql.cache.entries import CacheEntry, Computation, Fresh, describe
from gql.cache.leases import Handoff, Leases
from gql.cache.local import LocalCache
from gql.cache.policy import EntryPolicy

log = logging.getLogger("gql.cache")

_Flight = tuple[str, int]  # (entry key, generation)


class Flights:
    def __init__(
        self, leases: Leases, local: LocalCache, policy: EntryPolicy, fail_safe_retry_seconds: float,
        background: set[asyncio.Task],
    ) -> None:
        self._leases = leases
        self._local = local
        self._policy = policy
        self._retry_seconds = fail_safe_retry_seconds
        self._flights: dict[_Flight, asyncio.Task[Fresh | Handoff]] = {}
        self._background = background

    async def fill(self, computation: Computation, generation: int, use_redis: bool) -> Fresh:
        """Join this process's computation of the key, or start one."""
        flight = (computation.key.name, generation)
        while True:
            task = self._flights.get(flight)
            if task is None:
                task = self._start(flight, self._fly(computation, generation, use_redis, background=False))
            # A caller that is cancelled (client gone) does not cancel the computation for the others.
            found = await asyncio.shield(task)
            if isinstance(found, Fresh):
                return found
            # That was a background recomputation that left the work to another process: a caller needs the value.

    def revalidate(self, computation: Computation, generation: int, use_redis: bool, replacing: float) -> None:
        """Recompute in the background (the value computed at `replacing`), unless this process or another does."""
        flight = (computation.key.name, generation)
        if flight not in self._flights:
            self._start(flight, self._fly(computation, generation, use_redis, background=True, after=replacing))

    def _start(self, flight: _Flight, work: Coroutine[Any, Any, Fresh | Handoff]) -> asyncio.Task[Fresh | Handoff]:
        task = asyncio.ensure_future(work)
        self._flights[flight] = task
        self._background.add(task)

        def done(t: asyncio.Task[Fresh | Handoff]) -> None:
            self._flights.pop(flight, None)
            self._background.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a failure nobody awaited is logged by _fly, not by asyncio

        task.add_done_callback(done)
        return task

    async def _fly(
        self, computation: Computation, generation: int, use_redis: bool, *, background: bool, after: float = 0.0
    ) -> Fresh | Handoff:
        try:
            if use_redis:
                leased = await self._leases.compute(computation, generation, background, after)
                if leased is not Handoff.LOCAL:
                    return leased
                if background:
                    return Handoff.ELSEWHERE  # a background recomputation does not run without the fleet's lease
            value, fresh, _ = await self._policy.run(computation)
            if self._local.generation(computation.namespace) == generation:
                self._keep(CacheEntry(generation, self._policy.clock.now(), fresh, 0.0, value), computation)
            return Fresh(value, fresh)
        except Exception as exc:
            if computation.refuses(exc):
                raise
            self._local.mark_failed(computation.key.name, describe(exc), self._retry_seconds)
            log.error(
                "computing %s failed%s: %s", computation.namespace,
                " in the background; still serving the stale value" if background else "", describe(exc), exc_info=exc,
            )
            raise

    def _keep(self, entry: CacheEntry, computation: Computation) -> None:
        if self._local.entries.max_entries and not self._policy.oversize(computation.namespace, entry.encode()):
            self._local.entries.put(computation.key.name, entry)
