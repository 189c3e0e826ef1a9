"""Read-through cache of plain values in Redis, with an in-process fallback while Redis is away.

Each namespace (one per cached field) has a generation number in Redis. Every entry records the
generation it was computed under; `invalidate` increments the generation, which makes every older
entry of the namespace a miss at once, whatever its arguments. Writes are conditional on the
generation still being the one the computation started under, so a computation that began
before an invalidation can never store its (older) result over a newer one.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gql import metrics
from gql.config import Settings

log = logging.getLogger(__name__)

# Bumped when the entry layout changes.
_ENTRY_FORMAT = 1

# Store several keys only if every listed generation is still what the caller read before computing.
# KEYS: n generation keys, then the value keys; ARGV: n, the n generations, the TTL in ms, the values.
_STORE_ALL_IF_CURRENT = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[i]) or '0') ~= tonumber(ARGV[1 + i]) then return 0 end
end
local ttl = ARGV[n + 2]
for i = n + 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ttl)
end
return 1
"""

# Store only if the namespace generation is still the one the computation started under.
_STORE_IF_CURRENT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


class CacheStatus(enum.Enum):
    HIT = "HIT"
    MISS = "MISS"
    # Computed because a refresh invalidated the entry this request would have used.
    REFRESHED = "REFRESHED"
    # Caching is switched off: computed, not stored.
    BYPASS = "BYPASS"


class CacheState(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"  # Redis unreachable: serving from the in-process cache
    DISABLED = "disabled"


@dataclass(frozen=True)
class CacheResult:
    value: Any
    status: CacheStatus
    age_seconds: float
    ttl_seconds: float  # remaining lifetime


@dataclass(frozen=True)
class _Entry:
    generation: int
    created: float
    ttl: float
    value: Any

    def encode(self) -> bytes:
        return orjson.dumps({"f": _ENTRY_FORMAT, "g": self.generation, "t": self.created, "ttl": self.ttl, "v": self.value})

    @classmethod
    def decode(cls, raw: bytes) -> _Entry:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("f") != _ENTRY_FORMAT or "v" not in data:
            raise ValueError("not a cache entry of this format")
        return cls(int(data["g"]), float(data["t"]), float(data["ttl"]), data["v"])


@dataclass(frozen=True)
class CacheConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "gql"
    timeout: float = 0.1
    retry_seconds: float = 5.0
    local_entries: int = 256
    enabled: bool = True
    # Values whose encoded entry is larger are served but not stored.
    max_entry_bytes: int = 32 * 1024 * 1024
    # Read bound for `read_bulk`/`write` of large values, which run off the request path.
    bulk_timeout: float = 2.0


def cache_config(settings: Settings) -> CacheConfig:
    return CacheConfig(
        redis_url=settings.redis_url, prefix=settings.cache_prefix, timeout=settings.redis_timeout,
        retry_seconds=settings.redis_retry_seconds, local_entries=settings.local_cache_entries,
        enabled=settings.cache_enabled, max_entry_bytes=settings.cache_max_entry_bytes,
    )


def cache_key(prefix: str, namespace: str, parts: Mapping[str, Any]) -> str:
    """A key from a namespace and normalized arguments; the arguments are hashed, never embedded."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"{prefix}:entry:{namespace}:{digest}"


class ResultCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._redis = redis.Redis.from_url(
            config.redis_url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            # redis-py retries with backoff by default; a slow Redis must cost one short timeout, not seconds.
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
        )
        # Megabyte values (whole responses) are moved off the request path or once per worker; they
        # get their own connections and a longer bound, and their failures do not trip the breaker.
        self._bulk = redis.Redis.from_url(
            config.redis_url,
            socket_timeout=max(config.timeout, config.bulk_timeout),
            socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
        )
        self._store_script = self._bulk.register_script(_STORE_IF_CURRENT)
        self._store_all_script = self._bulk.register_script(_STORE_ALL_IF_CURRENT)
        self._state = CacheState.OK if config.enabled else CacheState.DISABLED
        metrics.REDIS_UP.set(1 if config.enabled else 0)
        self._retry_at = 0.0
        self._pending_invalidations: set[str] = set()
        self._local: OrderedDict[str, _Entry] = OrderedDict()
        self._local_generations: dict[str, int] = {}
        self._flights: dict[tuple[str, int, bool], asyncio.Task] = {}
        self._bad_keys_logged: set[str] = set()
        self._oversize_logged: set[str] = set()
        # Computations actually run, per namespace (joined callers of a shared one do not count).
        self.computations: Counter[str] = Counter()

    @property
    def state(self) -> CacheState:
        return self._state

    async def close(self) -> None:
        await self._redis.aclose()
        await self._bulk.aclose()

    async def get_or_compute(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]]
    ) -> CacheResult:
        """The cached value for these arguments, computing and storing it on a miss."""
        if self._state is CacheState.DISABLED:
            metrics.lookup(namespace, "bypass")
            return CacheResult(await self._timed(namespace, compute), CacheStatus.BYPASS, 0.0, 0.0)
        key = cache_key(self.config.prefix, namespace, parts)
        use_redis = await self._redis_available()
        generation, entry = await self._lookup(namespace, key, use_redis)
        now = self._clock()
        if entry is not None and entry.generation == generation:
            age = max(0.0, now - entry.created)
            if age < entry.ttl:
                metrics.lookup(namespace, "hit")
                return CacheResult(entry.value, CacheStatus.HIT, age, entry.ttl - age)
        status = CacheStatus.REFRESHED if entry is not None and entry.generation < generation else CacheStatus.MISS
        metrics.lookup(namespace, status.value.lower())
        # Callers asking the same question under the same generation share one computation; one
        # that is cancelled (client gone) does not cancel it for the others.
        flight_key = (key, generation, use_redis)
        task = self._flights.get(flight_key)
        if task is None:
            task = asyncio.ensure_future(self._compute_and_store(namespace, key, generation, ttl, compute, use_redis))
            self._flights[flight_key] = task
            task.add_done_callback(lambda _: self._flights.pop(flight_key, None))
        value = await asyncio.shield(task)
        return CacheResult(value, status, 0.0, ttl)

    async def invalidate(self, namespace: str) -> None:
        """Make every entry of the namespace stale now, in Redis and in the local cache."""
        self._local_generations[namespace] = self._local_generations.get(namespace, 0) + 1
        for key in [k for k in self._local if k.startswith(f"{self.config.prefix}:entry:{namespace}:")]:
            del self._local[key]
        if self._state is CacheState.DISABLED:
            return
        if await self._redis_available():
            try:
                await self._redis.incr(self._generation_key(namespace))
                return
            except (RedisError, OSError) as exc:
                self._mark_degraded(exc)
        # Redis holds entries from before this invalidation: bump its generation before using it again.
        self._pending_invalidations.add(namespace)

    async def _lookup(self, namespace: str, key: str, use_redis: bool) -> tuple[int, _Entry | None]:
        if not use_redis:
            return self._local_generations.get(namespace, 0), self._local.get(key)
        try:
            raw_generation = await self._redis.get(self._generation_key(namespace))
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return self._local_generations.get(namespace, 0), self._local.get(key)
        generation = int(raw_generation or 0)
        # Redis has just answered; the entry may be megabytes, so it is read with the longer bound
        # and a slow read is a miss, not a reason to stop using Redis.
        try:
            raw_entry = await self._bulk.get(key)
        except (RedisError, OSError) as exc:
            log.info("reading cache entry %s failed (%s); computing instead", key, exc.__class__.__name__)
            return generation, None
        if raw_entry is None:
            return generation, None
        try:
            return generation, _Entry.decode(raw_entry)
        except (ValueError, TypeError, KeyError):
            if key not in self._bad_keys_logged:
                self._bad_keys_logged.add(key)
                log.warning("cache entry %s cannot be decoded; treating it as a miss and overwriting it", key)
            return generation, None

    async def _compute_and_store(
        self, namespace: str, key: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]], use_redis: bool
    ) -> Any:
        value = await self._timed(namespace, compute)
        entry = _Entry(generation, self._clock(), ttl, value)
        encoded = entry.encode()
        if len(encoded) > self.config.max_entry_bytes:
            metrics.oversize(namespace)
            if namespace not in self._oversize_logged:
                self._oversize_logged.add(namespace)
                log.warning(
                    "a %s result of %d bytes is over the cache entry limit of %d bytes: served, not cached",
                    namespace, len(encoded), self.config.max_entry_bytes,
                )
            return value
        if use_redis and self._state is CacheState.OK:
            try:
                await self._store_script(
                    keys=[self._generation_key(namespace), key], args=[generation, encoded, max(1, int(ttl * 1000))]
                )
            except (RedisError, OSError) as exc:
                log.info("storing cache entry %s failed (%s); served, not stored", key, exc.__class__.__name__)
            return value
        if self._local_generations.get(namespace, 0) == generation:
            self._remember_locally(key, entry)
        return value

    async def _timed(self, namespace: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        self.computations[namespace] += 1
        began = time.perf_counter()
        try:
            return await compute()
        finally:
            metrics.computation(namespace, time.perf_counter() - began)

    def _remember_locally(self, key: str, entry: _Entry) -> None:
        if self.config.local_entries <= 0:
            return
        self._local[key] = entry
        self._local.move_to_end(key)
        while len(self._local) > self.config.local_entries:
            self._local.popitem(last=False)

    async def _redis_available(self) -> bool:
        if self._state is CacheState.OK:
            return True
        if self._state is CacheState.DISABLED or time.monotonic() < self._retry_at:
            return False
        # One probe at a time: callers arriving meanwhile keep to the local cache until it succeeds.
        self._retry_at = time.monotonic() + self.config.retry_seconds
        try:
            await self._redis.ping()
            for namespace in sorted(self._pending_invalidations):
                await self._redis.incr(self._generation_key(namespace))
                self._pending_invalidations.discard(namespace)
        except (RedisError, OSError) as exc:
            self._retry_at = time.monotonic() + self.config.retry_seconds
            log.debug("Redis still unreachable: %s", exc)
            return False
        # Local entries may predate refreshes made through other workers while Redis was up.
        self._local.clear()
        self._state = CacheState.OK
        metrics.REDIS_UP.set(1)
        log.warning("Redis at %s is reachable again; caching in Redis", _safe_url(self.config.redis_url))
        return True

    def _mark_degraded(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.config.retry_seconds
        if self._state is CacheState.OK:
            self._state = CacheState.DEGRADED
            metrics.REDIS_UP.set(0)
            log.warning(
                "Redis at %s is unreachable (%s); serving from an in-process cache, retrying every %.0f s",
                _safe_url(self.config.redis_url), exc.__class__.__name__, self.config.retry_seconds,
            )

    # --- bytes under keys, for layers above that store their own encodings (whole responses) ------

    async def read(self, namespaces: Sequence[str], keys: Sequence[str]) -> tuple[dict[str, int], list[bytes | None]] | None:
        """The current generations of `namespaces` and the values at `keys`, in one round trip.

        None while Redis is unavailable (callers then do without this layer).
        """
        if self._state is not CacheState.OK or not await self._redis_available():
            return None
        try:
            raw = await self._redis.mget(*[self._generation_key(n) for n in namespaces], *keys)
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return None
        generations = {n: int(g or 0) for n, g in zip(namespaces, raw)}
        return generations, list(raw[len(namespaces):])

    async def read_bulk(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """Large values at `keys`; None while Redis is unavailable or slow to deliver them."""
        if self._state is not CacheState.OK:
            return None
        try:
            return list(await self._bulk.mget(*keys))
        except (RedisError, OSError) as exc:
            log.info("bulk read from Redis failed (%s); answering without it", exc.__class__.__name__)
            return None

    async def write(self, generations: Mapping[str, int], items: Mapping[str, bytes], ttl: float) -> bool:
        """Store `items` for `ttl` seconds if every generation is still as read; False if not stored."""
        if self._state is not CacheState.OK:
            return False
        namespaces = list(generations)
        try:
            stored = await self._store_all_script(
                keys=[*[self._generation_key(n) for n in namespaces], *items],
                args=[len(namespaces), *[generations[n] for n in namespaces], max(1, int(ttl * 1000)), *items.values()],
            )
        except (RedisError, OSError) as exc:
            log.info("bulk write to Redis failed (%s); not stored", exc.__class__.__name__)
            return False
        return bool(stored)

    async def claim(self, key: str, seconds: float) -> bool:
        """True for the first caller of the fleet to claim `key` within `seconds` (or when Redis is away)."""
        if self._state is not CacheState.OK:
            return True
        try:
            return bool(await self._redis.set(key, b"1", nx=True, px=max(1, int(seconds * 1000))))
        except (RedisError, OSError) as exc:
            self._mark_degraded(exc)
            return True

    def key(self, *parts: str) -> str:
        """A key under this cache's prefix."""
        return ":".join((self.config.prefix, *parts))

    async def check(self) -> CacheState:
        """Probe Redis now (for health checks) and return the resulting state."""
        if self._state is CacheState.OK:
            try:
                await self._redis.ping()
            except (RedisError, OSError) as exc:
                self._mark_degraded(exc)
        else:
            await self._redis_available()
        return self._state

    def _generation_key(self, namespace: str) -> str:
        return f"{self.config.prefix}:generation:{namespace}"


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
