"""What the cache stores and answers: the entry format, lookup statuses, results and computations."""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gql.cache.keys import EntryKey

# Bumped when the entry layout changes (older entries then read as undecodable: a miss).
ENTRY_FORMAT = 2


class CacheStatus(enum.Enum):
    HIT = "HIT"
    MISS = "MISS"
    # Computed because a refresh invalidated the entry this request would have used.
    REFRESHED = "REFRESHED"
    # Past its fresh period: answered at once while it is recomputed, or kept because recomputing failed.
    STALE = "STALE"
    # Caching is switched off: computed, not stored.
    BYPASS = "BYPASS"


class CacheState(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"  # Redis unreachable (breaker open): serving from the in-process cache
    DISABLED = "disabled"


@dataclass(frozen=True)
class CacheResult:
    value: Any
    status: CacheStatus
    age_seconds: float
    ttl_seconds: float  # remaining fresh lifetime (0 when stale)
    error: str | None = None  # why a stale value was served instead of a new one (fail-safe)
    coalesced: bool = False  # a refresh that joined one already under way
    reached_fleet: bool = True  # a refresh whose invalidation reached Redis (False: this process alone knows of it)


class ComputationError(Exception):
    """A computation failed and no earlier value could stand in; `str()` is safe to show to clients."""


@dataclass(frozen=True)
class CacheEntry:
    generation: int
    created: float
    fresh: float  # seconds after `created` during which it is a hit
    duration: float  # how long computing it took (for early refresh)
    value: Any

    def encode(self) -> bytes:
        return orjson.dumps(
            {"f": ENTRY_FORMAT, "g": self.generation, "t": self.created, "ttl": self.fresh, "d": self.duration, "v": self.value}
        )

    @classmethod
    def decode(cls, raw: bytes) -> CacheEntry:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("f") != ENTRY_FORMAT or "v" not in data:
            raise ValueError("not a cache entry of this format")
        entry = cls(int(data["g"]), float(data["t"]), float(data["ttl"]), float(data["d"]), data["v"])
        if not all(math.isfinite(x) for x in (entry.created, entry.fresh, entry.duration)):
            raise ValueError("not a cache entry of this format")
        return entry


@dataclass(frozen=True)
class Fresh:
    """A value found or computed, with the seconds it stays fresh."""

    value: Any
    fresh: float


@dataclass(frozen=True)
class Computation:
    """One value to compute: under which key, for how long it stays fresh, and how.

    Exceptions of the `refused` types mean the arguments are wrong (the caller's business): they reach
    the caller as they are, are not logged, are not marked as failures, and no older value stands in.
    """

    key: EntryKey
    ttl: float
    compute: Callable[[], Awaitable[Any]]
    refused: tuple[type[Exception], ...] = ()

    @property
    def namespace(self) -> str:
        return self.key.namespace

    def refuses(self, exc: BaseException) -> bool:
        return isinstance(exc, self.refused)


def describe(exc: BaseException) -> str:
    """A failure as clients may see it: the exception's type only (its message may hold internals,
    which go to the log)."""
    if isinstance(exc, ComputationError):
        return str(exc)
    return exc.__class__.__name__
