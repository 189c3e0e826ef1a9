"""How entries are made and judged: running a computation (timed, counted), lifetimes, sizes, decoding."""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from typing import Any

from gql import metrics
from gql.cache.entries import CacheEntry, Computation
from gql.clock import Clock
from gql.config import Settings

log = logging.getLogger("gql.cache")


class EntryPolicy:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.stale_setting = settings.cache_stale_seconds
        self.fail_safe_seconds = settings.cache_fail_safe_seconds
        self.ttl_jitter = settings.cache_ttl_jitter
        self.early_refresh = settings.cache_early_refresh
        self.max_entry_bytes = settings.cache_max_entry_bytes
        self.clock = clock
        # Computations actually run here, per namespace (joined callers of a shared one do not count).
        self.computations: Counter[str] = Counter()
        self._bad_keys_logged: set[str] = set()
        self._oversize_logged: set[str] = set()

    async def run(self, computation: Computation) -> tuple[Any, float, float]:
        """(value, fresh seconds with jitter, seconds it took)."""
        began = time.perf_counter()
        value = await self.timed(computation)
        ttl = computation.ttl
        fresh = ttl * (1.0 - random.uniform(0.0, self.ttl_jitter)) if self.ttl_jitter > 0 else ttl
        return value, fresh, time.perf_counter() - began

    async def timed(self, computation: Computation) -> Any:
        namespace = computation.namespace
        self.computations[namespace] += 1
        began = time.perf_counter()
        try:
            return await computation.compute()
        except Exception as exc:
            if not computation.refuses(exc):
                metrics.computation_failed(namespace)
            raise
        finally:
            metrics.computation(namespace, time.perf_counter() - began)

    def stale_seconds(self, fresh: float) -> float:
        """How long past its fresh period an entry is answered at once while it is recomputed."""
        return fresh if self.stale_setting is None else self.stale_setting

    def keep_seconds(self, fresh: float) -> float:
        """How long Redis keeps an entry: fresh, then stale or standing in for a failure."""
        return fresh + max(self.stale_seconds(fresh), self.fail_safe_seconds)

    def refresh_early(self, entry: CacheEntry, now: float) -> bool:
        """XFetch (Vattani et al., 2015): recompute before expiry with a probability that grows near it."""
        beta = self.early_refresh
        if beta <= 0 or entry.duration <= 0:
            return False
        return now - entry.duration * beta * math.log(1.0 - random.random()) >= entry.created + entry.fresh

    def oversize(self, namespace: str, encoded: bytes) -> bool:
        if len(encoded) <= self.max_entry_bytes:
            return False
        metrics.oversize(namespace)
        if namespace not in self._oversize_logged:
            self._oversize_logged.add(namespace)
            log.warning(
                "a %s result of %d bytes is over the cache entry limit of %d bytes: served, not cached",
                namespace, len(encoded), self.max_entry_bytes,
            )
        return True

    def decode(self, name: str, raw: bytes | None) -> CacheEntry | None:
        """The entry stored under the key `name`; an undecodable one is a miss (logged once per key)."""
        if raw is None:
            return None
        try:
            return CacheEntry.decode(raw)
        except (ValueError, TypeError, KeyError):
            if name not in self._bad_keys_logged:
                self._bad_keys_logged.add(name)
                log.warning("cache entry %s cannot be decoded; treating it as a miss and overwriting it", name)
            return None
