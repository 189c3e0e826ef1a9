"""The generations this process knows of, so that one that Redis lost in a failover is put back.

Redis replicates asynchronously: a replica promoted after its master died may lack the master's last writes,
among them a generation that a refresh moved on. Every process remembers the highest generation of each
namespace it has read, heard of or made; a generation read lower than that is a lost write. The process answers
under the generation it knows (so entries from before the refresh stay misses) and raises Redis's back to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gql.cache.keys import Keys
from gql.cache.redis_link import RedisLink, Unavailable

log = logging.getLogger("gql.cache")


class KnownGenerations:
    def __init__(
        self, link: RedisLink, keys: Keys, background: set[asyncio.Task], follow: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._link = link
        # Called once per namespace, when first seen: from then on its invalidations, heard on the channel,
        # come to `seen` too (answers kept in memory rely on this: see gql/responses.py `_kept`).
        self._follow = follow
        self._keys = keys
        self._background = background
        self._known: dict[str, int] = {}
        self._repairing: set[str] = set()

    def seen(self, namespace: str, generation: int) -> int:
        """The generation to use, given one read from Redis: never lower than one known before."""
        known = self._known.get(namespace)
        if known is None:
            self._follow(namespace)
            known = 0
        if generation > known:
            self._known[namespace] = generation
            return generation
        if generation < known and namespace not in self._repairing:
            self._repairing.add(namespace)
            task = asyncio.ensure_future(self._put_back(namespace, generation, known))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return known

    def known(self, namespace: str) -> int:
        """The highest generation of the namespace seen so far (0: none)."""
        return self._known.get(namespace, 0)

    async def _put_back(self, namespace: str, found: int, known: int) -> None:
        try:
            raised = await self._link.call(
                self._link.raise_generation, keys=[self._keys.generation(namespace)], args=[self._keys.channel, known],
            )
            if not raised:
                return  # a read sent before the generation moved on, answered after: nothing was lost
            log.warning(
                "Redis had lost a refresh of %s (generation %d read back as %d: a failover that lost the last writes?); "
                "put back", namespace, known, found,
            )
        except Unavailable:
            pass  # the next read that finds it lower tries again
        finally:
            self._repairing.discard(namespace)
