"""Read-through cache of plain values in Redis, built to hold under load and faults.

What it guarantees (docs/caching.md has the whole story):

- **Single flight, fleet-wide.** Concurrent misses of one key in one process share one computation;
  across processes the computing one holds a Redis lease (`SET NX PX`, extended while it computes,
  released by a script that checks its token). The others wait for the "filled" message on a pub/sub
  channel, and take over when the lease runs out because its holder died.
- **Stale-while-revalidate.** After its fresh period an entry stays usable for a stale period: it is
  answered at once (status STALE) while one background computation, fleet-wide, replaces it. Hot keys
  may be recomputed a little before they expire (probabilistic early expiration, "XFetch").
- **Fail-safe.** When a computation fails and an older value is at hand (up to a maximum age) that
  value is served, marked STALE with the error, and the failing computation is retried at most once
  per throttle period, fleet-wide.
- **Redis faults.** Every call has a short bound; a circuit breaker stops using Redis after consecutive
  failures and probes it again after a cool-down. Meanwhile an in-process cache (with single flight)
  stands in.
- **Refresh is never lost.** Each namespace (one per cached field) has a generation; `invalidate`
  increments it, and writes are conditional on the generation the computation started under.
- Undecodable entries are misses (logged once); fresh periods get a random spread (TTL jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import hashlib
import logging
import math
import random
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gql import metrics
from gql.config import Settings

log = logging.getLogger(__name__)

# Bumped when the entry layout changes (older entries then read as undecodable: a miss).
_ENTRY_FORMAT = 2

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

# Store an entry if the namespace generation is still the one the computation started under, clear
# the failure mark, give up the lease (if still ours) and tell waiting processes.
# KEYS: generation, entry, lease, failure mark; ARGV: generation, entry, ttl ms, token, channel, key.
_STORE_AND_RELEASE = """
local stored = 0
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[4])
  stored = 1
end
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. (stored == 1 and '|stored' or '|unstored'))
return stored
"""

# Give up the lease if it is still ours and tell waiting processes how it ended.
# KEYS: lease; ARGV: token, channel, message.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# Keep the lease while the computation runs; 0 when it is no longer ours.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


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


class BreakerState(enum.IntEnum):
    CLOSED = 0  # Redis in use
    OPEN = 1  # Redis skipped until the cool-down ends
    HALF_OPEN = 2  # one probe under way


@dataclass(frozen=True)
class CacheResult:
    value: Any
    status: CacheStatus
    age_seconds: float
    ttl_seconds: float  # remaining fresh lifetime (0 when stale)
    error: str | None = None  # why a stale value was served instead of a new one (fail-safe)
    coalesced: bool = False  # a refresh that joined one already under way


class ComputationError(Exception):
    """A computation failed and no earlier value could stand in; `str()` is safe to show to clients."""


@dataclass(frozen=True)
class _Entry:
    generation: int
    created: float
    fresh: float  # seconds after `created` during which it is a hit
    duration: float  # how long computing it took (for early refresh)
    value: Any

    def encode(self) -> bytes:
        return orjson.dumps(
            {"f": _ENTRY_FORMAT, "g": self.generation, "t": self.created, "ttl": self.fresh, "d": self.duration, "v": self.value}
        )

    @classmethod
    def decode(cls, raw: bytes) -> _Entry:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("f") != _ENTRY_FORMAT or "v" not in data:
            raise ValueError("not a cache entry of this format")
        entry = cls(int(data["g"]), float(data["t"]), float(data["ttl"]), float(data["d"]), data["v"])
        if not all(math.isfinite(x) for x in (entry.created, entry.fresh, entry.duration)):
            raise ValueError("not a cache entry of this format")
        return entry


@dataclass(frozen=True)
class CacheConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "gql"
    # Connect and read bound of every Redis call on a request's path.
    timeout: float = 0.1
    # Bound for writing values (after the answer is computed, never awaited by a request).
    write_timeout: float = 1.0
    # Circuit breaker: open after this many consecutive failed calls, probe again after the cool-down.
    breaker_failures: int = 3
    retry_seconds: float = 5.0
    local_entries: int = 256
    enabled: bool = True
    # Values whose encoded entry is larger are served but not stored.
    max_entry_bytes: int = 32 * 1024 * 1024
    # How long past its fresh period an entry is answered at once while it is recomputed; None: its TTL.
    stale_seconds: float | None = None
    # How old a value may be to stand in for a failed computation.
    fail_safe_seconds: float = 86400.0
    # After a failed computation that an older value stood in for, wait this long before trying again.
    fail_safe_retry_seconds: float = 30.0
    # Lease on a computation; extended every third of it while the computation runs.
    lease_seconds: float = 5.0
    # Fresh periods are shortened by a random fraction up to this, so keys written together expire apart.
    ttl_jitter: float = 0.1
    # XFetch's beta: larger recomputes hot keys earlier; 0 never before expiry.
    early_refresh: float = 1.0


def cache_config(settings: Settings) -> CacheConfig:
    return CacheConfig(
        redis_url=settings.redis_url, prefix=settings.cache_prefix, timeout=settings.redis_timeout,
        write_timeout=settings.redis_write_timeout, breaker_failures=settings.redis_breaker_failures,
        retry_seconds=settings.redis_retry_seconds, local_entries=settings.local_cache_entries,
        enabled=settings.cache_enabled, max_entry_bytes=settings.cache_max_entry_bytes,
        stale_seconds=settings.cache_stale_seconds, fail_safe_seconds=settings.cache_fail_safe_seconds,
        fail_safe_retry_seconds=settings.cache_fail_safe_retry_seconds, lease_seconds=settings.cache_lease_seconds,
        ttl_jitter=settings.cache_ttl_jitter, early_refresh=settings.cache_early_refresh,
    )


def cache_key(prefix: str, namespace: str, parts: Mapping[str, Any]) -> str:
    """A key from a namespace and normalized arguments; the arguments are hashed, never embedded."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"{prefix}:entry:{namespace}:{digest}"


# Set by `ResultCache.request()` for one request: whether one of its Redis calls has failed, so that
# layers above keep the rest of it out of places that need Redis (the query worker processes).
_request_redis_failed: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("request_redis_failed", default=None)


class _Unavailable(Exception):
    """Redis cannot be used for this call (breaker open, or the call failed)."""


class _Refused(Exception):
    """Carries an exception that says the arguments are wrong, through the machinery, to the caller."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def _refusing(compute: Callable[[], Awaitable[Any]], refused: tuple[type[Exception], ...]) -> Callable[[], Awaitable[Any]]:
    async def guarded() -> Any:
        try:
            return await compute()
        except refused as exc:
            raise _Refused(exc) from exc

    return guarded


class CircuitBreaker:
    """Closed until `failures` consecutive calls fail; then open for `cooldown` seconds; then one probe.

    A refused or broken connection is a clear failure. A timeout is not always one: a burst of work can
    hold the event loop past the bound while Redis answered in time (on a busy machine, a cold stampede
    did). So timeouts open the breaker only once they have gone on, with no success, for `slow_span`.
    """

    def __init__(
        self, failures: int, cooldown: float, on_change: Callable[[BreakerState, BreakerState], None], slow_span: float = 0.5
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown = cooldown
        self.slow_span = slow_span
        self.state = BreakerState.CLOSED
        self._on_change = on_change
        self._consecutive = 0
        self._streak_began = 0.0
        self._open_until = 0.0

    def probe_due(self) -> bool:
        """True once for the caller that should probe: open, and the cool-down is over."""
        if self.state is BreakerState.OPEN and time.monotonic() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def succeeded(self) -> None:
        """A call answered. Only while closed: a slow call that answers after the breaker opened
        must not close it (that skips the probe, which first applies the refreshes made meanwhile)."""
        if self.state is BreakerState.CLOSED:
            self._consecutive = 0

    def probe_succeeded(self) -> None:
        self._consecutive = 0
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failed(self, timed_out: bool = False) -> None:
        now = time.monotonic()
        if self._consecutive == 0:
            self._streak_began = now
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
        elif self.state is BreakerState.CLOSED and self._consecutive >= self.failures:
            if not timed_out or now - self._streak_began >= self.slow_span:
                self._open(now)

    def _open(self, now: float) -> None:
        self._open_until = now + self.cooldown
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        self._on_change(previous, state)


class ResultCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        # redis-py retries with backoff by default (5 s timeouts, 10 retries in redis-py 8): a slow
        # Redis must cost one short bound, never seconds.
        bounded = dict(
            retry=Retry(NoBackoff(), 0), retry_on_error=[], health_check_interval=0, socket_connect_timeout=config.timeout,
            # No CLIENT SETINFO when connecting: a burst that opens connections pays less.
            driver_info=None,
        )
        self._redis = redis.Redis.from_url(config.redis_url, socket_timeout=config.timeout, **bounded)
        self._writer = redis.Redis.from_url(config.redis_url, socket_timeout=max(config.timeout, config.write_timeout), **bounded)
        self._listener_client = redis.Redis.from_url(config.redis_url, socket_timeout=config.timeout, **bounded)
        self._store_all_script = self._writer.register_script(_STORE_ALL_IF_CURRENT)
        self._store_and_release = self._writer.register_script(_STORE_AND_RELEASE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._extend_script = self._redis.register_script(_EXTEND)
        self._breaker = CircuitBreaker(
            config.breaker_failures, config.retry_seconds, self._breaker_changed, slow_span=5 * config.timeout
        )
        self._disabled = not config.enabled
        metrics.breaker(BreakerState.OPEN if self._disabled else BreakerState.CLOSED, opened=False)
        self._probing = False
        self._pending_invalidations: set[str] = set()
        self._local: OrderedDict[str, _Entry] = OrderedDict()
        self._local_generations: dict[str, int] = {}
        self._local_failures: dict[str, tuple[float, str]] = {}
        self._flights: dict[tuple[str, int], asyncio.Task] = {}
        self._refreshes: dict[tuple[str, str], asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._listener: asyncio.Task | None = None
        self._listening = asyncio.Event()
        self._channel = f"{config.prefix}:filled"
        self._bad_keys_logged: set[str] = set()
        self._oversize_logged: set[str] = set()
        # Computations actually run here, per namespace (joined callers of a shared one do not count).
        self.computations: Counter[str] = Counter()

    # --- state --------------------------------------------------------------------------------

    @property
    def state(self) -> CacheState:
        if self._disabled:
            return CacheState.DISABLED
        return CacheState.OK if self._breaker.state is BreakerState.CLOSED else CacheState.DEGRADED

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for client in (self._redis, self._writer, self._listener_client):
            await client.aclose()

    async def warm(self, connections: int = 8) -> None:
        """Open connections now, so that the first burst of requests does not pay for opening them."""
        if self._disabled or self._breaker.state is not BreakerState.CLOSED:
            return
        pings = [self._redis.ping() for _ in range(connections)] + [self._writer.ping() for _ in range(2)]
        await asyncio.gather(*pings, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for background work (recomputations, stores) to end; for tests and shutdown."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- reading through ----------------------------------------------------------------------

    async def get_or_compute(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]],
        *, refused: tuple[type[Exception], ...] = (),
    ) -> CacheResult:
        """The cached value for these arguments; computed (once, fleet-wide) when there is none.

        Exceptions of the `refused` types mean the arguments are wrong (the caller's business): they
        reach the caller as they are, are not logged, and no older value stands in for them.
        """
        if refused:
            compute = _refusing(compute, refused)
        if self._disabled:
            metrics.lookup(namespace, "bypass")
            return CacheResult(await self._timed(namespace, compute), CacheStatus.BYPASS, 0.0, 0.0)
        key = cache_key(self.config.prefix, namespace, parts)
        use_redis = await self._usable()
        # Whether Redis answered (after one retry): if not, this request goes on without it.
        use_redis, generation, entry = await self._lookup(namespace, key, use_redis)
        now = self._clock()
        if entry is not None and entry.generation == generation:
            age = max(0.0, now - entry.created)
            if age < entry.fresh:
                if self._refresh_early(entry, now):
                    self._revalidate(namespace, key, generation, ttl, compute, use_redis, entry.created)
                metrics.lookup(namespace, "hit")
                return CacheResult(entry.value, CacheStatus.HIT, age, entry.fresh - age)
            if age < entry.fresh + self._stale_seconds(entry.fresh):
                # Answered now; recomputed once in the background, unless that failed a moment ago.
                failure = await self._recent_failure(key, use_redis)
                if failure is None:
                    self._revalidate(namespace, key, generation, ttl, compute, use_redis, entry.created)
                metrics.lookup(namespace, "stale")
                return CacheResult(entry.value, CacheStatus.STALE, age, 0.0, error=failure)
        fallback = entry if entry is not None and now - entry.created < entry.fresh + self.config.fail_safe_seconds else None
        status = CacheStatus.REFRESHED if entry is not None and entry.generation < generation else CacheStatus.MISS
        if fallback is not None:
            failure = await self._recent_failure(key, use_redis)
            if failure is not None:  # failed a moment ago: do not hammer it, keep serving the old value
                return self._fail_safe(namespace, fallback, failure, now)
        try:
            value, ttl_used = await self._fill(namespace, key, generation, ttl, compute, use_redis)
        except _Refused as exc:
            raise exc.original from None
        except Exception as exc:
            if fallback is not None:
                return self._fail_safe(namespace, fallback, _describe(exc), now)
            metrics.lookup(namespace, "error")
            raise ComputationError(f"computing {namespace} failed and no earlier result is cached to stand in") from exc
        metrics.lookup(namespace, "miss")
        return CacheResult(value, status, 0.0, ttl_used)

    def _fail_safe(self, namespace: str, entry: _Entry, error: str, now: float) -> CacheResult:
        metrics.lookup(namespace, "stale")
        return CacheResult(entry.value, CacheStatus.STALE, max(0.0, now - entry.created), 0.0, error=error)

    def _stale_seconds(self, fresh: float) -> float:
        return fresh if self.config.stale_seconds is None else self.config.stale_seconds

    def _refresh_early(self, entry: _Entry, now: float) -> bool:
        """XFetch (Vattani et al., 2015): recompute before expiry with a probability that grows near it."""
        beta = self.config.early_refresh
        if beta <= 0 or entry.duration <= 0:
            return False
        return now - entry.duration * beta * math.log(1.0 - random.random()) >= entry.created + entry.fresh

    async def _lookup(self, namespace: str, key: str, use_redis: bool) -> tuple[bool, int, _Entry | None]:
        """(whether Redis answered, the namespace generation, the entry if any)."""
        for attempt in range(2 if use_redis else 0):
            try:
                raw_generation, raw_entry = await self._call(self._redis.mget, self._generation_key(namespace), key)
            except _Unavailable:
                if self._breaker.state is not BreakerState.CLOSED:
                    break  # Redis is out: do without it
                continue  # one failure with the breaker closed may be a hiccup (or a busy loop): once more
            return True, int(raw_generation or 0), self._decode(key, raw_entry)
        return False, self._local_generations.get(namespace, 0), self._local.get(key)

    def _decode(self, key: str, raw: bytes | None) -> _Entry | None:
        if raw is None:
            return None
        try:
            return _Entry.decode(raw)
        except (ValueError, TypeError, KeyError):
            if key not in self._bad_keys_logged:
                self._bad_keys_logged.add(key)
                log.warning("cache entry %s cannot be decoded; treating it as a miss and overwriting it", key)
            return None

    async def _recent_failure(self, key: str, use_redis: bool) -> str | None:
        if use_redis:
            try:
                raw = await self._call(self._redis.get, self._failure_key(key))
                return raw.decode(errors="replace") if raw is not None else None
            except _Unavailable:
                pass
        until, error = self._local_failures.get(key, (0.0, ""))
        return error if time.monotonic() < until else None

    # --- computing once -------------------------------------------------------------------------

    async def _fill(
        self, namespace: str, key: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]], use_redis: bool
    ) -> tuple[Any, float]:
        """Join this process's computation of the key, or start one; (value, fresh seconds)."""
        flight = (key, generation)
        while True:
            task = self._flights.get(flight)
            if task is None:
                task = self._start(flight, self._flight(namespace, key, generation, ttl, compute, use_redis, background=False))
            # A caller that is cancelled (client gone) does not cancel the computation for the others.
            found = await asyncio.shield(task)
            if found is not None:
                return found
            # That was a background recomputation that left the work to another process: a caller needs the value.

    def _revalidate(
        self, namespace: str, key: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]], use_redis: bool,
        replacing: float,
    ) -> None:
        """Recompute in the background (the value computed at `replacing`), unless this process or another does."""
        flight = (key, generation)
        if flight not in self._flights:
            self._start(flight, self._flight(namespace, key, generation, ttl, compute, use_redis, background=True, after=replacing))

    def _start(self, flight: tuple[str, int], work: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._flights[flight] = task
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._flights.pop(flight, None)
            self._background.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a failure nobody awaited is logged by _flight, not by asyncio

        task.add_done_callback(done)
        return task

    async def _flight(
        self, namespace: str, key: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]],
        use_redis: bool, *, background: bool, after: float = 0.0,
    ) -> tuple[Any, float] | None:
        try:
            if use_redis:
                found = await self._leased(namespace, key, generation, ttl, compute, background, after)
                if found is not None or background:
                    return found
            value, fresh, _ = await self._compute(namespace, ttl, compute)
            if self._local_generations.get(namespace, 0) == generation:
                self._remember_locally(key, _Entry(generation, self._clock(), fresh, 0.0, value))
            return value, fresh
        except _Refused:
            raise
        except Exception as exc:
            self._local_failures[key] = (time.monotonic() + self.config.fail_safe_retry_seconds, _describe(exc))
            log.error(
                "computing %s failed%s: %s", namespace, " in the background; still serving the stale value" if background else "",
                _describe(exc), exc_info=exc,
            )
            raise

    async def _compute(self, namespace: str, ttl: float, compute: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float]:
        began = time.perf_counter()
        value = await self._timed(namespace, compute)
        fresh = ttl * (1.0 - random.uniform(0.0, self.config.ttl_jitter)) if self.config.ttl_jitter > 0 else ttl
        return value, fresh, time.perf_counter() - began

    async def _leased(
        self, namespace: str, key: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]], background: bool,
        after: float = 0.0,
    ) -> tuple[Any, float] | None:
        """Compute under the key's lease, or wait for its holder; None: compute without Redis."""
        # Per generation: after a refresh, the new computation must not wait for one of before it.
        lease = self._lease_key(key, f"compute:{generation}")
        token = uuid.uuid4().hex
        lease_ms = max(1, int(self.config.lease_seconds * 1000))
        for _ in range(20):  # a bound on takeovers; each holder either ends or dies
            waiter = self._wait_for(key)  # before trying: a fill announced in between is not missed
            try:
                acquired = await self._call(self._redis.set, lease, token, nx=True, px=lease_ms)
            except _Unavailable:
                self._stop_waiting(key, waiter)
                if self._breaker.state is BreakerState.CLOSED:
                    continue  # a failed call, but Redis is not out (yet): computing without the lease could run it twice
                return None
            if acquired:
                self._stop_waiting(key, waiter)
                # The previous holder may have stored the value and let go between our lookup and now.
                try:
                    stored = await self._fresh_entry(key, generation, after)
                except _Unavailable:
                    stored = None  # we hold the lease: compute
                if stored is not None:
                    await self._release(lease, token, f"{key}|stored")
                    return stored
                metrics.lease(namespace, "acquired")
                return await self._compute_leased(namespace, key, lease, token, generation, ttl, compute)
            if background:
                self._stop_waiting(key, waiter)
                return None  # another process is already recomputing it
            metrics.lease(namespace, "waited")
            outcome = await self._await_holder(namespace, key, lease, generation, waiter)
            if outcome is None:
                return None
            if outcome != "retry":
                return outcome
        return None

    async def _await_holder(
        self, namespace: str, key: str, lease: str, generation: int, waiter: asyncio.Future
    ) -> tuple[Any, float] | str | None:
        """The value another process computes; "retry" when its lease ended without one; None: give up on Redis."""
        self._ensure_listener()
        try:
            while True:
                try:
                    stored = await self._fresh_entry(key, generation)
                    if stored is not None:
                        return stored
                    remaining_ms = await self._call(self._redis.pttl, lease)
                except _Unavailable:
                    if self._breaker.state is BreakerState.CLOSED:
                        continue  # see _leased
                    return None
                if remaining_ms < 0:
                    return "retry"  # the holder is gone (lease expired) or ended without storing
                # Woken by the holder's message; without a subscription yet, look again soon; at the
                # latest when the lease would run out unless its holder extends it.
                wait = remaining_ms / 1000 + 0.01 if self._listening.is_set() else 0.05
                try:
                    message = await asyncio.wait_for(asyncio.shield(waiter), timeout=wait)
                except asyncio.TimeoutError:
                    continue
                if message == "failed":
                    failure = await self._recent_failure(key, True)
                    raise ComputationError(failure or f"computing {namespace} failed in another process")
                if message == "unstored":
                    return None  # not stored (too large, or a refresh overtook it): compute here
                waiter = self._wait_for(key)
        finally:
            self._stop_waiting(key, waiter)

    async def _fresh_entry(self, key: str, generation: int, after: float = 0.0) -> tuple[Any, float] | None:
        """(value, fresh seconds left) of a fresh entry computed under this generation or a later one
        (so at least as new as what was asked for), and after `after` (a value being replaced early
        does not count); raises _Unavailable."""
        entry = self._decode(key, await self._call(self._redis.get, key))
        if entry is None or entry.created <= after:
            return None
        if entry.generation >= generation and self._clock() - entry.created < entry.fresh:
            return entry.value, entry.fresh - (self._clock() - entry.created)
        return None

    async def _compute_leased(
        self, namespace: str, key: str, lease: str, token: str, generation: int, ttl: float, compute: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, float]:
        keeper = asyncio.ensure_future(self._keep_lease(lease, token))
        try:
            value, fresh, duration = await self._compute(namespace, ttl, compute)
        except _Refused:
            keeper.cancel()
            await self._release(lease, token, f"{key}|unstored")  # the waiters get the same refusal themselves
            raise
        except Exception as exc:
            keeper.cancel()
            await self._release_failed(key, lease, token, _describe(exc))
            raise
        finally:
            keeper.cancel()
        entry = _Entry(generation, self._clock(), fresh, duration, value)
        # Normally stored before the callers get the value (so the next request is a hit), but a slow
        # Redis may cost them one short bound at most; the store goes on in the background.
        task = asyncio.ensure_future(self._store_leased(namespace, key, lease, token, entry))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.wait({task}, timeout=self.config.timeout)
        return value, fresh

    async def _keep_lease(self, lease: str, token: str) -> None:
        every = self.config.lease_seconds / 3
        lease_ms = max(1, int(self.config.lease_seconds * 1000))
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._call(self._extend_script, keys=[lease], args=[token, lease_ms]):
                    log.warning("lost the lease %s: another process may compute the same value", lease)
                    return
            except _Unavailable:
                pass

    async def _store_leased(self, namespace: str, key: str, lease: str, token: str, entry: _Entry) -> None:
        encoded = entry.encode()
        if self._oversize(namespace, encoded):
            await self._release(lease, token, f"{key}|unstored")
            return
        keep = entry.fresh + max(self._stale_seconds(entry.fresh), self.config.fail_safe_seconds)
        try:
            await self._store_and_release(
                keys=[self._generation_key(namespace), key, lease, self._failure_key(key)],
                args=[entry.generation, encoded, max(1, int(keep * 1000)), token, self._channel, key],
            )
        except (RedisError, OSError) as exc:
            # Off the request path and maybe megabytes: a slow write is not a reason to stop using Redis.
            log.info("storing cache entry %s failed (%s); served, not stored", key, exc.__class__.__name__)

    async def _release(self, lease: str, token: str, message: str) -> None:
        try:
            await self._call(self._release_script, keys=[lease], args=[token, self._channel, message])
        except _Unavailable:
            pass

    async def _release_failed(self, key: str, lease: str, token: str, error: str) -> None:
        """Mark the failure (throttling retries fleet-wide), give up the lease, wake the waiters."""
        try:
            await self._call(
                self._redis.set, self._failure_key(key), error.encode(), px=max(1, int(self.config.fail_safe_retry_seconds * 1000))
            )
            await self._call(self._release_script, keys=[lease], args=[token, self._channel, f"{key}|failed"])
        except _Unavailable:
            pass

    async def _timed(self, namespace: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        self.computations[namespace] += 1
        began = time.perf_counter()
        try:
            return await compute()
        except _Refused:
            raise
        except Exception:
            metrics.computation_failed(namespace)
            raise
        finally:
            metrics.computation(namespace, time.perf_counter() - began)

    def _oversize(self, namespace: str, encoded: bytes) -> bool:
        if len(encoded) <= self.config.max_entry_bytes:
            return False
        metrics.oversize(namespace)
        if namespace not in self._oversize_logged:
            self._oversize_logged.add(namespace)
            log.warning(
                "a %s result of %d bytes is over the cache entry limit of %d bytes: served, not cached",
                namespace, len(encoded), self.config.max_entry_bytes,
            )
        return True

    def _remember_locally(self, key: str, entry: _Entry) -> None:
        if self.config.local_entries <= 0 or self._oversize(key.split(":")[-2], entry.encode()):
            return
        self._local[key] = entry
        self._local.move_to_end(key)
        while len(self._local) > self.config.local_entries:
            self._local.popitem(last=False)

    # --- the "filled" channel ---------------------------------------------------------------------

    def _wait_for(self, key: str) -> asyncio.Future:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        return waiter

    def _stop_waiting(self, key: str, waiter: asyncio.Future) -> None:
        waiting = self._waiters.get(key)
        if waiting and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._waiters[key]

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        """Deliver "filled" messages to this process's waiters; reconnects after Redis comes back."""
        while True:
            if self.state is not CacheState.OK:
                await asyncio.sleep(0.2)
                continue
            pubsub = self._listener_client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._listening.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        key, _, outcome = message["data"].decode().rpartition("|")
                        for waiter in self._waiters.pop(key, ()):
                            if not waiter.done():
                                waiter.set_result(outcome)
            except (RedisError, OSError) as exc:
                log.debug("cache notifications interrupted: %s", exc)
                await asyncio.sleep(0.2)
            finally:
                self._listening.clear()
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    # --- refresh ------------------------------------------------------------------------------------

    async def refresh(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]],
        *, refused: tuple[type[Exception], ...] = (),
    ) -> CacheResult:
        """Invalidate every entry of the namespace, then compute the value for `parts`.

        Concurrent refreshes of the same value (same arguments, so the same data version) anywhere in
        the fleet coalesce into one: the later ones wait for it and report `coalesced`.
        """
        identity = (namespace, cache_key(self.config.prefix, namespace, parts))
        task = self._refreshes.get(identity)
        if task is not None:
            return replace(await asyncio.shield(task), coalesced=True)
        if refused:
            compute = _refusing(compute, refused)
        task = asyncio.ensure_future(self._refresh(namespace, parts, ttl, compute, identity[1]))
        self._refreshes[identity] = task
        task.add_done_callback(lambda _: self._refreshes.pop(identity, None))
        return await asyncio.shield(task)

    async def _refresh(
        self, namespace: str, parts: Mapping[str, Any], ttl: float, compute: Callable[[], Awaitable[Any]], key: str
    ) -> CacheResult:
        lease = self._lease_key(key, "refresh")
        token = uuid.uuid4().hex
        held = None
        if await self._usable():
            try:
                # SET NX answers None (not False) when the key exists.
                held = bool(await self._call(self._redis.set, lease, token, nx=True, px=max(1, int(self.config.lease_seconds * 1000))))
            except _Unavailable:
                held = None
        if held is False:
            # Another process is refreshing the same thing: its result is ours once its lease is gone.
            if await self._await_release(lease):
                result = await self.get_or_compute(namespace, parts, ttl, compute)
                return replace(result, coalesced=True)
        keeper = asyncio.ensure_future(self._keep_lease(lease, token)) if held else None
        try:
            await self.invalidate(namespace)
            return await self.get_or_compute(namespace, parts, ttl, compute)
        finally:
            if keeper is not None:
                keeper.cancel()
                try:
                    await self._call(self._release_script, keys=[lease], args=[token, self._channel, f"{key}:refresh|done"])
                except _Unavailable:
                    pass

    async def _await_release(self, lease: str) -> bool:
        """Wait until the lease is gone; False if Redis stopped answering."""
        while True:
            try:
                remaining = await self._call(self._redis.pttl, lease)
            except _Unavailable:
                return False
            if remaining < 0:
                return True
            await asyncio.sleep(min(0.05, remaining / 1000))

    async def invalidate(self, namespace: str) -> None:
        """Make every entry of the namespace a miss now, in Redis and in the local cache."""
        self._local_generations[namespace] = self._local_generations.get(namespace, 0) + 1
        if self._disabled:
            return
        if await self._usable():
            try:
                await self._call(self._redis.incr, self._generation_key(namespace))
                return
            except _Unavailable:
                pass
        # Redis holds entries from before this invalidation: bump its generation before using it again.
        self._pending_invalidations.add(namespace)

    # --- Redis calls and the breaker --------------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def request() -> Iterator[None]:
        """Scope of one request, for `failed_in_this_request`."""
        token = _request_redis_failed.set([False])
        try:
            yield
        finally:
            _request_redis_failed.reset(token)

    @staticmethod
    def failed_in_this_request() -> bool:
        flag = _request_redis_failed.get()
        return flag is not None and flag[0]

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        if self._breaker.state is not BreakerState.CLOSED:
            raise _Unavailable
        try:
            result = await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            flag = _request_redis_failed.get()
            if flag is not None:
                flag[0] = True
            self._breaker.failed(timed_out=isinstance(exc, RedisTimeoutError))
            log.debug("Redis call failed: %r", exc)
            raise _Unavailable from exc
        self._breaker.succeeded()
        return result

    async def _usable(self) -> bool:
        """Whether to use Redis for this request (probing it when the breaker's cool-down is over)."""
        if self._disabled:
            return False
        if self._breaker.state is BreakerState.CLOSED:
            return True
        if self._probing or not self._breaker.probe_due():
            return False
        self._probing = True
        try:
            # Pooled connections may be to a Redis that has since restarted: with no retries, each
            # would fail once. Start afresh.
            for client in (self._redis, self._writer):
                await client.connection_pool.disconnect()
            await self._redis.ping()
            for namespace in sorted(self._pending_invalidations):
                await self._redis.incr(self._generation_key(namespace))
                self._pending_invalidations.discard(namespace)
        except (RedisError, OSError) as exc:
            log.debug("Redis still unreachable: %s", exc)
            self._breaker.failed(timed_out=isinstance(exc, RedisTimeoutError))
            return False
        finally:
            self._probing = False
        # Local entries may predate refreshes made through other processes while Redis was away.
        self._local.clear()
        self._local_failures.clear()
        self._breaker.probe_succeeded()
        return True

    def _breaker_changed(self, previous: BreakerState, state: BreakerState) -> None:
        metrics.breaker(state)
        url = _safe_url(self.config.redis_url)
        if state is BreakerState.OPEN and previous is BreakerState.CLOSED:
            log.warning(
                "Redis at %s is unreachable (%d failed calls in a row); serving from an in-process cache, "
                "trying again every %.1f s",
                url, self._breaker.failures, self.config.retry_seconds,
            )
        elif state is BreakerState.CLOSED:
            log.warning("Redis at %s is reachable again; caching in Redis", url)

    # --- bytes under keys, for layers above that store their own encodings (whole responses) ------

    async def read(self, namespaces: Sequence[str], keys: Sequence[str]) -> tuple[dict[str, int], list[bytes | None]] | None:
        """The current generations of `namespaces` and the values at `keys`, in one round trip.

        None while Redis is unavailable (callers then do without this layer).
        """
        if not await self._usable():
            return None
        try:
            raw = await self._call(self._redis.mget, *[self._generation_key(n) for n in namespaces], *keys)
        except _Unavailable:
            return None
        generations = {n: int(g or 0) for n, g in zip(namespaces, raw)}
        return generations, list(raw[len(namespaces):])

    async def read_bulk(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """Large values at `keys`; None while Redis is unavailable or slow to deliver them."""
        try:
            return list(await self._call(self._redis.mget, *keys))
        except _Unavailable:
            return None

    async def write(self, generations: Mapping[str, int], items: Mapping[str, bytes], ttl: float) -> bool:
        """Store `items` for `ttl` seconds if every generation is still as read; False if not stored."""
        if self.state is not CacheState.OK:
            return False
        namespaces = list(generations)
        try:
            stored = await self._store_all_script(
                keys=[*[self._generation_key(n) for n in namespaces], *items],
                args=[len(namespaces), *[generations[n] for n in namespaces], max(1, int(ttl * 1000)), *items.values()],
            )
        except (RedisError, OSError) as exc:
            log.info("writing to Redis failed (%s); not stored", exc.__class__.__name__)
            return False
        return bool(stored)

    async def claim(self, key: str, seconds: float) -> bool:
        """True for the first caller of the fleet to claim `key` within `seconds` (or when Redis is away)."""
        if not await self._usable():
            return True
        try:
            return bool(await self._call(self._redis.set, key, b"1", nx=True, px=max(1, int(seconds * 1000))))
        except _Unavailable:
            return True

    async def available(self) -> bool:
        """Whether Redis is in use now; once the breaker's cool-down is over, this call probes it."""
        return await self._usable()

    def local_generations(self, namespaces: Sequence[str]) -> dict[str, int]:
        """This process's own generations of `namespaces` (what `invalidate` bumps while Redis is away)."""
        return {n: self._local_generations.get(n, 0) for n in namespaces}

    def key(self, *parts: str) -> str:
        """A key under this cache's prefix."""
        return ":".join((self.config.prefix, *parts))

    async def check(self) -> CacheState:
        """Probe Redis now (for health checks) and return the resulting state."""
        if self.state is CacheState.OK:
            try:
                await self._call(self._redis.ping)
            except _Unavailable:
                return CacheState.DEGRADED  # this probe failed, whether or not the breaker has opened yet
        else:
            await self._usable()
        return self.state

    def _generation_key(self, namespace: str) -> str:
        return f"{self.config.prefix}:generation:{namespace}"

    def _lease_key(self, key: str, kind: str = "compute") -> str:
        return f"{self.config.prefix}:lease:{kind}:{key.rpartition(':entry:')[2]}"

    def _failure_key(self, key: str) -> str:
        return f"{self.config.prefix}:failed:{key.rpartition(':entry:')[2]}"


def _describe(exc: BaseException) -> str:
    """A failure as clients may see it: the exception's type only (its message may hold internals,
    which go to the log)."""
    if isinstance(exc, ComputationError):
        return str(exc)
    return exc.__class__.__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
