"""The bounded connection to Redis: clients, scripts, the circuit breaker and the probe."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gql import metrics
from gql.cache.breaker import BreakerState, CircuitBreaker
from gql.clock import SYSTEM_CLOCK, Clock
from gql.config import Settings, without_password

log = logging.getLogger("gql.cache")

# Store several keys only if every listed generation is still what the caller read before computing.
# KEYS: n generation keys, then the value keys; ARGV: n, the n generations, the TTL in ms, the values.
STORE_ALL_IF_CURRENT = """
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
STORE_AND_RELEASE = """
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
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# Invalidate a namespace: increment its generation and tell every process (`<generation key>|<new generation>`).
# KEYS: generation; ARGV: channel. Returns the new generation.
BUMP = """
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], KEYS[1] .. '|' .. generation)
return generation
"""

# Keep the lease while the computation runs; 0 when it is no longer ours.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Set by `RedisLink.request()` for one request: whether one of its Redis calls has failed, so that
# layers above keep the rest of it out of places that need Redis (the query worker processes).
_request_redis_failed: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("request_redis_failed", default=None)


class Unavailable(Exception):
    """Redis cannot be used for this call (breaker open, or the call failed)."""


def milliseconds(seconds: float) -> int:
    """A Redis PX argument: at least 1 ms."""
    return max(1, int(seconds * 1000))


class RedisLink:
    """Three bounded clients (requests, writes, the pub/sub listener), the scripts, and the breaker.

    `on_reconnect` runs after a successful probe and before the breaker closes: what must reach Redis
    before anyone uses it again (refreshes made while it was away), and what local state to drop.
    """

    def __init__(
        self, settings: Settings, on_reconnect: Callable[[redis.Redis], Awaitable[None]], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.url = settings.redis_url
        self.timeout = settings.redis_timeout
        self.retry_seconds = settings.redis_retry_seconds
        self.disabled = not settings.cache_enabled
        # redis-py retries with backoff by default (5 s timeouts, 10 retries in redis-py 8): a slow
        # Redis must cost one short bound, never seconds.
        bounded: dict[str, Any] = dict(
            retry=Retry(NoBackoff(), 0), retry_on_error=[], health_check_interval=0, socket_connect_timeout=self.timeout,
            # No CLIENT SETINFO when connecting: a burst that opens connections pays less.
            driver_info=None,
        )
        self.reader = redis.Redis.from_url(self.url, socket_timeout=self.timeout, **bounded)
        self.writer = redis.Redis.from_url(self.url, socket_timeout=max(self.timeout, settings.redis_write_timeout), **bounded)
        self.listener = redis.Redis.from_url(self.url, socket_timeout=self.timeout, **bounded)
        self.store_all_if_current = self.writer.register_script(STORE_ALL_IF_CURRENT)
        self.store_and_release = self.writer.register_script(STORE_AND_RELEASE)
        self.release = self.reader.register_script(RELEASE)
        self.extend = self.reader.register_script(EXTEND)
        self.breaker = CircuitBreaker(
            settings.redis_breaker_failures, self.retry_seconds, self._breaker_changed, slow_span=5 * self.timeout,
            clock=clock.monotonic,
        )
        metrics.breaker(BreakerState.OPEN if self.disabled else BreakerState.CLOSED, opened=False)
        self._on_reconnect = on_reconnect
        self._probing = False

    async def bump(self, generation_key: str, channel: str, client: redis.Redis | None = None) -> int:
        """Run BUMP. Sent whole (EVAL, not a script's EVALSHA): like a plain INCR, it takes effect when Redis reads
        it even if its answer comes too late for us (a frozen Redis, then thawed), and invalidations are rare."""
        return int(await (client or self.reader).eval(BUMP, 1, generation_key, channel))

    @property
    def in_use(self) -> bool:
        return not self.disabled and self.breaker.state is BreakerState.CLOSED

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One bounded call on the request path; Unavailable when the breaker is open or it failed."""
        if self.breaker.state is not BreakerState.CLOSED:
            raise Unavailable
        try:
            result = await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            flag = _request_redis_failed.get()
            if flag is not None:
                flag[0] = True
            self.breaker.failed(timed_out=isinstance(exc, RedisTimeoutError))
            log.debug("Redis call failed: %r", exc)
            raise Unavailable from exc
        self.breaker.succeeded()
        return result

    async def usable(self) -> bool:
        """Whether to use Redis for this request (probing it when the breaker's cool-down is over)."""
        if self.disabled:
            return False
        if self.breaker.state is BreakerState.CLOSED:
            return True
        if self._probing or not self.breaker.probe_due():
            return False
        self._probing = True
        try:
            # Pooled connections may be to a Redis that has since restarted: with no retries, each
            # would fail once. Start afresh.
            for client in (self.reader, self.writer):
                await client.connection_pool.disconnect()
            await self.reader.ping()
            await self._on_reconnect(self.reader)
        except (RedisError, OSError) as exc:
            log.debug("Redis still unreachable: %s", exc)
            self.breaker.failed(timed_out=isinstance(exc, RedisTimeoutError))
            return False
        finally:
            self._probing = False
        self.breaker.probe_succeeded()
        return True

    async def warm(self, connections: int = 8) -> None:
        """Open connections now, so that the first burst of requests does not pay for opening them."""
        if not self.in_use:
            return
        pings = [self.reader.ping() for _ in range(connections)] + [self.writer.ping() for _ in range(2)]
        await asyncio.gather(*pings, return_exceptions=True)

    async def close(self) -> None:
        for client in (self.reader, self.writer, self.listener):
            await client.aclose()

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

    def _breaker_changed(self, previous: BreakerState, state: BreakerState) -> None:
        metrics.breaker(state)
        url = without_password(self.url)
        if state is BreakerState.OPEN and previous is BreakerState.CLOSED:
            log.warning(
                "Redis at %s is unreachable (%d failed calls in a row); serving from an in-process cache, "
                "trying again every %.1f s",
                url, self.breaker.failures, self.retry_seconds,
            )
        elif state is BreakerState.CLOSED:
            log.warning("Redis at %s is reachable again; caching in Redis", url)

