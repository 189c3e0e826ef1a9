"""Bytes under keys, for layers above that store their own encodings (whole responses, persisted queries)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from gql.cache.generations import KnownGenerations
from gql.cache.keys import Keys
from gql.cache.local import LocalCache
from gql.cache.redis_link import REDIS_FAILURES, RedisLink, Unavailable, milliseconds

log = logging.getLogger("gql.cache")


class RawStore:
    """Reads and conditional writes of bytes, through the same bounded link and breaker as the cache."""

    def __init__(self, link: RedisLink, keys: Keys, local: LocalCache, generations: KnownGenerations) -> None:
        self._link = link
        self.keys = keys
        self._local = local
        self._generations = generations

    async def read(
        self, namespaces: Sequence[str], keys: Sequence[str], *, soft: bool = False
    ) -> tuple[dict[str, int], list[bytes | None]] | None:
        """The current generations of `namespaces` and the values at `keys`, in one round trip.

        None while Redis is unavailable (callers then do without this layer), and, with `soft` (the caller has an
        answer in hand), when Redis has not answered within the soft timeout (the call goes on in the background).
        """
        if not await self._link.usable():
            return None
        try:
            call = self._link.call_soft if soft else self._link.call
            raw = await call(self._link.read_many, *[self.keys.generation(n) for n in namespaces], *keys)
        except Unavailable:
            return None
        # raw holds the generations first, then the values: zip stops at the namespaces.
        generations = {n: self._generations.seen(n, int(g or 0)) for n, g in zip(namespaces, raw, strict=False)}
        return generations, list(raw[len(namespaces):])

    async def read_bulk(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """Large values at `keys`; None while Redis is unavailable or slow to deliver them."""
        try:
            return await self._link.call(self._link.read_many, *keys)
        except Unavailable:
            return None

    async def write(
        self, generations: Mapping[str, int], bodies: Mapping[str, bytes], key: str, value: bytes, ttl: float
    ) -> bool:
        """Store `value` at `key` (in the generations' slot) if every generation is still as read, then `bodies`
        (keys of one slot), all for `ttl` seconds; False if nothing was stored. A reader that finds `value` before
        the bodies, or without them (a failed write), does without both."""
        if not self._link.in_use:
            return False
        namespaces = list(generations)
        try:
            stored = await self._link.store_all_if_current(
                keys=[*[self.keys.generation(n) for n in namespaces], key],
                args=[len(namespaces), *[generations[n] for n in namespaces], milliseconds(ttl), value],
            )
            if stored and bodies:
                await self._link.store_all_if_current(keys=list(bodies), args=[0, milliseconds(ttl), *bodies.values()])
        except REDIS_FAILURES as exc:
            log.info("writing to Redis failed (%s); not stored", exc.__class__.__name__)
            return False
        return bool(stored)

    async def claim(self, key: str, seconds: float) -> bool:
        """True for the first caller of the fleet to claim `key` within `seconds` (or when Redis is away)."""
        if not await self._link.usable():
            return True
        try:
            return bool(await self._link.call(self._link.reader.set, key, b"1", nx=True, px=milliseconds(seconds)))
        except Unavailable:
            return True

    async def available(self, *, wait: bool = True) -> bool:
        """Whether Redis is in use now; once the breaker's cool-down is over, this call probes it (without
        `wait`, in the background: False meanwhile)."""
        return await self._link.usable(wait=wait)

    def local_generations(self, namespaces: Sequence[str]) -> dict[str, int]:
        """This process's own generations of `namespaces` (what `invalidate` bumps while Redis is away)."""
        return {n: self._local.generation(n) for n in namespaces}
