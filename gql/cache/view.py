"""This process's view of the fleet's generations, trusted under a lease, so that a hit needs no Redis round trip.

A hit must not answer from before a refresh that has returned. Reading the generations from Redis on every request
guarantees it, at the cost of a round trip. The view guarantees it without one:

- Every invalidation moves a fleet-wide *sequence* on, in the same script as the generation (gql/cache/redis_link.py
  BUMP), and is published with its place in the sequence. A process applies the messages in order to its view (the
  known generations, gql/cache/generations.py) and records the sequence it has applied in Redis (its
  acknowledgement), with its lease: a sorted set of processes by when their lease runs out, in Redis time.
- A lease is extended only while the process has applied the current sequence (RENEW), so a process that missed a
  message (its listener cut, or paused) cannot keep one: it catches up from the generations RENEW returns first.
- `invalidate` returns only once every process holding a lease has acknowledged its sequence, or that lease has
  run out (PENDING): at most one lease later, whatever the process does (paused with SIGSTOP, its listener gone).
- A process trusts its view until the time it sent the renewal that extended its lease, plus the lease, less a
  margin: never later than the lease runs out in Redis. It stops trusting it when its listener disconnects or
  it hears of a gap in the sequence, until a renewal has caught it up. Meanwhile hits read Redis, as before.

So after `invalidate` returns, any process answering from its view has applied the invalidation. docs/caching.md,
"A hit without Redis", has the whole argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence

from gql import metrics
from gql.cache.generations import KnownGenerations
from gql.cache.keys import Keys
from gql.cache.redis_link import LEAVE, PENDING, REDIS_FAILURES, RENEW, RedisLink, Unavailable, milliseconds

log = logging.getLogger("gql.cache")

# Trust ends this much before the lease runs out in Redis: the two clocks may run at slightly different rates.
_MARGIN = 0.05


class LocalView:
    def __init__(
        self, link: RedisLink, keys: Keys, generations: KnownGenerations, namespaces: Sequence[str], lease_seconds: float,
    ) -> None:
        self._link = link
        self._keys = keys
        self._generations = generations
        self._namespaces = tuple(namespaces)
        self.lease = lease_seconds
        self.enabled = lease_seconds > 0 and not link.disabled
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.applied: int | None = None  # the sequence applied to the view (None: not caught up yet)
        self._deadline = 0.0  # time.monotonic() until which the view is trusted
        self._listening = False
        self._wake = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self._moves = 0  # how many times `applied` moved (a renewal's answer may race the messages)

    # --- what requests ask ---------------------------------------------------------------------------

    def trusted(self) -> bool:
        """Whether a hit may use the known generations without reading Redis."""
        return time.monotonic() < self._deadline

    def known(self, namespace: str) -> int:
        return self._generations.known(namespace)

    # --- the listener ----------------------------------------------------------------------------------

    def subscribed(self) -> None:
        """The listener (re)subscribed: messages before it may have been missed, so catch up before trusting."""
        self._listening = True
        self.applied = None
        self._wake.set()

    def unsubscribed(self) -> None:
        """The listener lost its subscription: invalidations would go unheard. Stop trusting now."""
        self._listening = False
        self._deadline = 0.0

    def heard(self, outcome: str) -> None:
        """An invalidation message: `<sequence> <previous> <namespace> <generation>`. Applied in order; a gap means
        messages were missed: not trusted until a renewal has caught up."""
        try:
            sequence, previous, namespace, generation = outcome.split(" ")
            seq, prev, gen = int(sequence), int(previous), int(generation)
        except ValueError:
            log.warning("ignored an invalidation message that cannot be read: %r", outcome)
            return
        if self.applied is not None and seq <= self.applied:
            return  # already in the view (a renewal's answer came first)
        if self.applied is not None and prev == self.applied:
            self._generations.seen(namespace, gen)
            self._set_applied(seq)
        else:
            self._deadline = 0.0  # missed one: catch up first
        self._wake.set()  # acknowledge (or catch up) at once: a refresh is waiting

    def _set_applied(self, sequence: int) -> None:
        self.applied = sequence
        self._moves += 1

    # --- the lease -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._keeper is None:
            self._keeper = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        """Renew the lease a few times per lease, and at once when a message asks for an acknowledgement."""
        # Python 3.11's wait_for returns the result, swallowing a cancellation, when the awaited event is set in
        # the same moment (gh-86296; close() then waited for ever): asyncio.timeout, and the flag close() sets.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease / 4):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if not self._listening or not self._link.in_use:
                self._deadline = 0.0
                if not self._link.in_use:
                    await self._link.usable(wait=False)  # the breaker's probe, when due
                continue
            try:
                await self.renew()
            except Exception:  # the keeper must outlive anything; not trusted meanwhile
                self._deadline = 0.0
                log.exception("renewing the view's lease failed")
                await asyncio.sleep(0.1)

    async def renew(self) -> None:
        applied, moves = self.applied, self._moves
        sent = time.monotonic()
        keys = [self._keys.view_sequence, self._keys.view_members, self._keys.view_acks,
                *[self._keys.generation(n) for n in self._namespaces]]
        args = [self.member, -1 if applied is None else applied, milliseconds(self.lease)]
        try:
            answer, replicas, wanted = await self._link.call(self._link.eval_and_wait, RENEW, keys, args)
        except Unavailable:
            self._deadline = 0.0
            return
        sequence, extended, generations = int(answer[0]), bool(answer[1]), answer[2:]
        # Trusted only once the lease is on the replicas a failover could promote (as a refresh's bump is).
        replicated = replicas is None or replicas >= wanted
        if extended and self._listening and replicated and self.applied == applied:
            self._deadline = sent + self.lease - _MARGIN
            return
        if extended:
            return  # the view moved on meanwhile: the next renewal acknowledges that
        self._deadline = 0.0
        # Behind (or ahead, after a failover lost invalidations): take the generations as of that sequence, then
        # renew again at once to acknowledge them. Not if a message moved the view on meanwhile (it is newer).
        if self._moves == moves or (self.applied is not None and sequence > self.applied):
            for namespace, generation in zip(self._namespaces, generations, strict=True):
                self._generations.seen(namespace, int(generation))
            self._set_applied(sequence)
        self._wake.set()

    async def close(self) -> None:
        self._deadline = 0.0
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            self._wake.set()
            await asyncio.wait({self._keeper}, timeout=self.lease)  # bounded, whatever the keeper is waiting on
            self._keeper = None
            if self._link.in_use:
                with contextlib.suppress(*REDIS_FAILURES):
                    await asyncio.wait_for(
                        self._link.reader.eval(LEAVE, 2, self._keys.view_members, self._keys.view_acks, self.member),
                        self._link.timeout,
                    )

    # --- the refresher's side ------------------------------------------------------------------------------

    async def everyone_has(self, sequence: int) -> bool:
        """Wait until every process holding a lease has applied invalidation `sequence` (or its lease ran out):
        at most about one lease. False if Redis stopped answering meanwhile."""
        if self.lease <= 0:
            return True
        waited = 0.0
        pause = 0.001
        deadline = time.monotonic() + self.lease + 2 * self._link.timeout + 1.0
        while True:
            try:
                pending, longest_ms = await self._link.call(
                    self._link.reader.eval, PENDING, 2, self._keys.view_members, self._keys.view_acks, sequence,
                )
            except Unavailable:
                return False
            if not pending:
                metrics.view_wait(waited)
                return True
            if time.monotonic() > deadline:
                log.warning("%d server process(es) neither acknowledged invalidation %d nor let their view lease run "
                            "out within %.1f s (a failover that lost the sequence?)", pending, sequence, self.lease)
                return False
            pause = min(pause * 2, 0.02, max(0.001, int(longest_ms) / 1000))
            await asyncio.sleep(pause)
            waited += pause
