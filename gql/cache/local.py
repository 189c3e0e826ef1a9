"""The in-process stand-in for Redis: entries, generations and failure marks of this process only."""

from __future__ import annotations

from gql.cache.entries import CacheEntry
from gql.clock import Clock
from gql.lru import LRU


class LocalCache:
    """What this process answers from while Redis is away, under its own generations.

    Its generations are bumped by every `invalidate`, with or without Redis, so that an entry kept here
    never outlives a refresh made through this process.
    """

    def __init__(self, max_entries: int, clock: Clock) -> None:
        self.entries: LRU[str, CacheEntry] = LRU(max_entries=max_entries)
        self._generations: dict[str, int] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._clock = clock

    def generation(self, namespace: str) -> int:
        return self._generations.get(namespace, 0)

    def bump(self, namespace: str) -> None:
        self._generations[namespace] = self.generation(namespace) + 1

    def mark_failed(self, key: str, error: str, seconds: float) -> None:
        """Remember a failed computation of `key` for `seconds` (retries wait that long)."""
        self._failures[key] = (self._clock.monotonic() + seconds, error)

    def failure(self, key: str) -> str | None:
        until, error = self._failures.get(key, (0.0, ""))
        return error if self._clock.monotonic() < until else None

    def forget(self) -> None:
        """Drop entries and failure marks (they may predate refreshes made elsewhere); keep generations."""
        self.entries.clear()
        self._failures.clear()
