"""Fleet-wide single flight: one process computes a key under a Redis lease, the others wait for it.

The holder extends its lease every third of its length while it computes, then stores the value and
lets go in one script that also publishes the outcome on the channel. Waiters are woken by that
message; when the lease runs out without one (its holder died), one of them takes over.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid

from gql import metrics
from gql.cache.breaker import BreakerState
from gql.cache.entries import CacheEntry, Computation, ComputationError, Fresh, describe
from gql.cache.keys import Keys
from gql.cache.notify import Notifications
from gql.cache.policy import EntryPolicy
from gql.cache.redis_link import REDIS_FAILURES, RedisLink, Unavailable, milliseconds
from gql.config import Settings

log = logging.getLogger("gql.cache")

# A bound on takeovers; each holder either ends or dies.
_MAX_TAKEOVERS = 20


class Handoff(enum.Enum):
    """How a leased computation ended when it did not produce a value here."""

    LOCAL = "local"  # Redis cannot be used for it: compute in this process, without the lease
    ELSEWHERE = "elsewhere"  # another process is computing it (a background recomputation leaves it be)


class _Wait(enum.Enum):
    RETRY = "retry"  # the holder's lease ended without a value: try for the lease again


class Outcome(enum.Enum):
    """What a lease holder announces on the channel."""

    STORED = "stored"
    UNSTORED = "unstored"  # computed but not stored (too large, or a refresh overtook it): compute yourself
    FAILED = "failed"
    DONE = "done"  # a refresh ended


class Leases:
    def __init__(
        self, settings: Settings, link: RedisLink, keys: Keys, notify: Notifications, policy: EntryPolicy,
        background: set[asyncio.Task],
    ) -> None:
        self.lease_seconds = settings.cache_lease_seconds
        self.fail_safe_retry_seconds = settings.cache_fail_safe_retry_seconds
        self.timeout = settings.redis_timeout
        self._link = link
        self._keys = keys
        self._notify = notify
        self._policy = policy
        self._background = background

    async def compute(self, computation: Computation, generation: int, background: bool, after: float = 0.0) -> Fresh | Handoff:
        """Compute under the key's lease, or wait for its holder's value."""
        key = computation.key
        lease = self._keys.compute_lease(key, generation)
        token = uuid.uuid4().hex
        for _ in range(_MAX_TAKEOVERS):
            waiter = self._notify.wait_for(key.name)  # before trying: a fill announced in between is not missed
            try:
                acquired = await self._link.call(self._link.reader.set, lease, token, nx=True, px=milliseconds(self.lease_seconds))
            except Unavailable:
                self._notify.stop_waiting(key.name, waiter)
                if self._link.breaker.state is BreakerState.CLOSED:
                    continue  # a failed call, but Redis is not out (yet): computing without the lease could run it twice
                return Handoff.LOCAL
            if acquired:
                self._notify.stop_waiting(key.name, waiter)
                # The previous holder may have stored the value and let go between our lookup and now.
                try:
                    stored = await self.fresh_entry(computation, generation, after)
                except Unavailable:
                    stored = None  # we hold the lease: compute
                if stored is not None:
                    await self.release(lease, token, key.name, Outcome.STORED)
                    return stored
                metrics.lease(computation.namespace, "acquired")
                return await self._compute_leased(computation, lease, token, generation)
            if background:
                self._notify.stop_waiting(key.name, waiter)
                return Handoff.ELSEWHERE
            metrics.lease(computation.namespace, "waited")
            waited = await self._await_holder(computation, lease, generation, waiter)
            if waited is not _Wait.RETRY:
                return waited
        return Handoff.LOCAL

    async def _await_holder(
        self, computation: Computation, lease: str, generation: int, waiter: asyncio.Future[str]
    ) -> Fresh | Handoff | _Wait:
        """The value another process computes."""
        topic = computation.key.name
        self._notify.ensure_listening()
        try:
            while True:
                try:
                    stored = await self.fresh_entry(computation, generation)
                    if stored is not None:
                        return stored
                    remaining_ms = await self._link.call(self._link.reader.pttl, lease)
                except Unavailable:
                    if self._link.breaker.state is BreakerState.CLOSED:
                        continue  # see compute()
                    return Handoff.LOCAL
                if remaining_ms < 0:
                    return _Wait.RETRY  # the holder is gone (lease expired) or ended without storing
                # Woken by the holder's message; at the latest when the lease would run out unless extended.
                message = await self._notify.next_outcome(waiter, self._notify.bound(remaining_ms))
                if message is None:
                    continue
                if message == Outcome.FAILED.value:
                    failure = await self.recent_failure(computation)
                    raise ComputationError(failure or f"computing {computation.namespace} failed in another process")
                if message == Outcome.UNSTORED.value:
                    return Handoff.LOCAL
                waiter = self._notify.wait_for(topic)
        finally:
            self._notify.stop_waiting(topic, waiter)

    async def fresh_entry(self, computation: Computation, generation: int, after: float = 0.0) -> Fresh | None:
        """A fresh entry computed under this generation or a later one (so at least as new as what was
        asked for), and after `after` (a value being replaced early does not count); raises Unavailable."""
        name = computation.key.name
        entry = self._policy.decode(name, await self._link.call(self._link.reader.get, name))
        if entry is None or entry.created <= after:
            return None
        age = self._policy.clock.now() - entry.created
        if entry.generation >= generation and age < entry.fresh:
            return Fresh(entry.value, entry.fresh - age)
        return None

    async def recent_failure(self, computation: Computation) -> str | None:
        """The fleet's failure mark of the key (raises Unavailable)."""
        raw = await self._link.call(self._link.reader.get, self._keys.failure(computation.key))
        return raw.decode(errors="replace") if raw is not None else None

    async def _compute_leased(self, computation: Computation, lease: str, token: str, generation: int) -> Fresh:
        keeper = asyncio.ensure_future(self.keep(lease, token))
        name = computation.key.name
        try:
            value, fresh, duration = await self._policy.run(computation)
        except Exception as exc:
            keeper.cancel()
            if computation.refuses(exc):
                await self.release(lease, token, name, Outcome.UNSTORED)  # the waiters get the same refusal themselves
            else:
                await self._release_failed(computation, lease, token, describe(exc))
            raise
        finally:
            keeper.cancel()
        entry = CacheEntry(generation, self._policy.clock.now(), fresh, duration, value)
        # Normally stored before the callers get the value (so the next request is a hit), but a slow
        # Redis may cost them one short bound at most; the store goes on in the background.
        task = asyncio.ensure_future(self._store(computation, lease, token, entry))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.wait({task}, timeout=self.timeout)
        return Fresh(value, fresh)

    async def keep(self, lease: str, token: str) -> None:
        """Extend the lease every third of its length until cancelled, or until it is no longer ours."""
        every = self.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._link.call(self._link.extend, keys=[lease], args=[token, milliseconds(self.lease_seconds)]):
                    log.warning("lost the lease %s: another process may compute the same value", lease)
                    return
            except Unavailable:
                pass

    async def _store(self, computation: Computation, lease: str, token: str, entry: CacheEntry) -> None:
        key = computation.key
        encoded = entry.encode()
        if self._policy.oversize(key.namespace, encoded):
            await self.release(lease, token, key.name, Outcome.UNSTORED)
            return
        try:
            await self._link.store_and_release(
                keys=[key.name, lease, self._keys.failure(key)],
                args=[entry.generation, encoded, milliseconds(self._policy.keep_seconds(entry.fresh)), token, self._keys.channel, key.name],
            )
        except REDIS_FAILURES as exc:
            # Off the request path and maybe megabytes: a slow write is not a reason to stop using Redis.
            log.info("storing cache entry %s failed (%s); served, not stored", key.name, exc.__class__.__name__)

    async def release(self, lease: str, token: str, topic: str, outcome: Outcome) -> None:
        """Give up the lease (if still ours) and announce how it ended to the waiters of `topic`."""
        try:
            await self._link.call(self._link.release, keys=[lease], args=[token, self._keys.channel, f"{topic}|{outcome.value}"])
        except Unavailable:
            pass

    async def _release_failed(self, computation: Computation, lease: str, token: str, error: str) -> None:
        """Mark the failure (throttling retries fleet-wide), give up the lease, wake the waiters."""
        try:
            await self._link.call(
                self._link.reader.set, self._keys.failure(computation.key), error.encode(),
                px=milliseconds(self.fail_safe_retry_seconds),
            )
        except Unavailable:
            return
        await self.release(lease, token, computation.key.name, Outcome.FAILED)
