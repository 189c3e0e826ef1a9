"""Result caches for tests: made on a real Redis under a key prefix of their own, all closed at teardown."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from gql.cache import ResultCache
from gql.clock import SYSTEM_CLOCK, Clock
from gql.config import Settings


class ManualClock(Clock):
    """The real clocks plus an offset that a test moves forward, instead of sleeping until time has passed.

    Only the cache's own sense of time moves: entry ages, the breaker's cool-down, failure marks in this
    process. Redis expiries and the event loop keep real time.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class CacheFactory:
    """`make_cache(url, **settings)`: a cache with exact lifetimes (no TTL jitter or early refresh unless
    asked) and a fresh key prefix; `twin(cache)`: another process's cache on the same Redis and prefix."""

    def __init__(self) -> None:
        self.made: list[ResultCache] = []

    def __call__(self, url: str, *, clock: Clock | None = None, **changes: Any) -> ResultCache:
        settings: dict[str, Any] = dict(
            redis_url=url, cache_prefix=f"t-{uuid.uuid4().hex[:8]}", redis_retry_seconds=0.1, cache_ttl_jitter=0.0,
            cache_early_refresh=0.0,
        )
        settings.update(changes)
        return self._keep(ResultCache(Settings(**settings), clock if clock is not None else SYSTEM_CLOCK))

    def twin(self, cache: ResultCache, **changes: Any) -> ResultCache:
        return self._keep(ResultCache(replace(cache.settings, **changes), cache.clock))

    def _keep(self, cache: ResultCache) -> ResultCache:
        self.made.append(cache)
        return cache

    async def close(self) -> None:
        for cache in reversed(self.made):
            await cache.close()
