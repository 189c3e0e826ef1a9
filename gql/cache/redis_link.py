"""The bounded connection to Redis: clients, scripts, the circuit breaker and the probe."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gql import metrics
from gql.cache.breaker import BreakerState, CircuitBreaker
from gql.cache.connect import Client, make_clients
from gql.clock import SYSTEM_CLOCK, Clock
from gql.config import RedisMode, Settings, without_password

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

# Store an entry unless the one there was computed under a later generation (a refresh's value must not be
# overwritten by a computation from before it), clear the failure mark, give up the lease (if still ours) and tell
# waiting processes. The entry's generation is read from its first bytes (`{"f":2,"g":<generation>,...`): the
# generation key itself lives in another slot on a Cluster (gql/cache/keys.py).
# KEYS: entry, lease, failure mark; ARGV: generation, entry, ttl ms, token, channel, key.
STORE_AND_RELEASE = """
local stored = 0
local there = string.match(redis.call('GETRANGE', KEYS[1], 0, 63), '"g":(%d+)')
if there == nil or tonumber(there) <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[3])
  stored = 1
end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
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

# Invalidate a namespace: move its generation on and tell every process (`<generation key>|<new generation>`).
# The new generation is the later of one more than now and Redis's clock in milliseconds, so it never repeats one
# that a failover lost (a replica promoted without the master's last writes): an entry or a kept response of a
# lost generation can never become current again. The invalidation sequence moves on the same way, and the
# processes' views hear of it with its place in the sequence (`<view topic>|<sequence> <previous> <namespace>
# <generation>`; gql/cache/view.py). KEYS: generation, sequence; ARGV: channel, view topic, namespace.
# Returns the new generation and sequence.
BUMP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local generation = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, now)
local text = string.format('%d', generation)
redis.call('SET', KEYS[1], text)
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local sequence = math.max(previous + 1, now)
redis.call('SET', KEYS[2], string.format('%d', sequence))
redis.call('PUBLISH', ARGV[1], KEYS[1] .. '|' .. text)
redis.call('PUBLISH', ARGV[1], string.format('%s|%d %d %s %s', ARGV[2], sequence, previous, ARGV[3], text))
return {generation, sequence}
"""

# A process renews its view's lease: records the sequence it has applied (its acknowledgement), and extends the
# lease only if that is the current sequence (a process behind must catch up first: it cannot hold a lease
# while it misses an invalidation); drops the leases that ran out. Returns the current sequence, whether the lease
# was extended, and the generations of the namespaces named. KEYS: sequence, members, acks, generation keys;
# ARGV: member, applied sequence, lease ms.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sequence = tonumber(redis.call('GET', KEYS[1]) or '0')
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HDEL', KEYS[3], unpack(gone))
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local extended = 0
if tonumber(ARGV[2]) == sequence then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  extended = 1
end
local answer = {string.format('%d', sequence), extended}
for i = 4, #KEYS do answer[#answer + 1] = redis.call('GET', KEYS[i]) or '0' end
return answer
"""

# The processes whose view still lacks invalidation `sequence`: those holding a lease that has not run out and
# whose acknowledgement is older. Returns how many, and the most milliseconds any of their leases has left.
# KEYS: members, acks; ARGV: sequence.
PENDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local pending, longest = 0, 0
for i = 1, #live, 2 do
  local acked = tonumber(redis.call('HGET', KEYS[2], live[i]) or '-1')
  if acked < tonumber(ARGV[1]) then
    pending = pending + 1
    longest = math.max(longest, tonumber(live[i + 1]) - now)
  end
end
return {pending, longest}
"""

# A process leaving (shut down): refreshes need not wait for its lease. KEYS: members, acks; ARGV: member.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# Put back a generation that Redis lost (a failover without the last writes) and a process still knows of:
# raised to it, never lowered. KEYS: generation; ARGV: channel, the known generation. Returns 1 if it was lower.
RAISE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1], KEYS[1] .. '|' .. ARGV[2])
return 1
"""

# Keep the lease while the computation runs; 0 when it is no longer ours.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Set by `RedisLink.request()` for one request: whether one of its Redis calls has failed, so that
# layers above keep the rest of it out of places that need Redis (the query worker processes).
_request_redis_failed: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("request_redis_failed", default=None)


# What a Redis call may raise when Redis cannot serve it. A cluster client's own failures (no node reachable to
# read the slot table from, say) are RedisClusterException, which is not a RedisError.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


class Unavailable(Exception):
    """Redis cannot be used for this call (breaker open, or the call failed)."""


class Late(Unavailable):
    """Redis has not answered within the soft timeout; the call goes on in the background."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a late call's failure is the breaker's business, not asyncio's "never retrieved"


def milliseconds(seconds: float) -> int:
    """A Redis PX argument: at least 1 ms."""
    return max(1, int(seconds * 1000))


class RedisLink:
    """Three bounded clients (requests, writes, the pub/sub listener), the scripts, and the breaker.

    `on_reconnect` runs after a successful probe and before the breaker closes: what must reach Redis
    before anyone uses it again (refreshes made while it was away), and what local state to drop.
    """

    def __init__(
        self, settings: Settings, on_reconnect: Callable[[Client], Awaitable[None]], clock: Clock = SYSTEM_CLOCK,
        *, probe_key: str = "probe",
    ) -> None:
        topology = settings.redis_topology()
        self.url = settings.redis_url if topology.mode is not RedisMode.SENTINEL else (
            f"sentinel {topology.service} at {settings.redis_sentinels}"
        )
        self.timeout = settings.redis_timeout
        self.soft_timeout = min(settings.redis_soft_timeout, settings.redis_timeout)
        self.retry_seconds = settings.redis_retry_seconds
        self.refresh_replicas = settings.refresh_replicas
        self.refresh_wait = settings.redis_refresh_wait
        self.disabled = not settings.cache_enabled
        # redis-py retries with backoff by default (5 s timeouts, 10 retries in redis-py 8): a slow
        # Redis must cost one short bound, never seconds (gql/cache/connect.py).
        write_timeout = max(self.timeout, settings.redis_write_timeout)
        self.reader, self.writer, self.listener = make_clients(
            topology, [(self.timeout, self.timeout), (self.timeout, write_timeout), (self.timeout, self.timeout)],
        )
        self.store_all_if_current = self.writer.register_script(STORE_ALL_IF_CURRENT)
        self.store_and_release = self.writer.register_script(STORE_AND_RELEASE)
        self.release = self.reader.register_script(RELEASE)
        self.extend = self.reader.register_script(EXTEND)
        self.raise_generation = self.reader.register_script(RAISE)
        self.breaker = CircuitBreaker(
            settings.redis_breaker_failures, self.retry_seconds, self._breaker_changed, slow_span=5 * self.timeout,
            clock=clock.monotonic,
        )
        metrics.breaker(BreakerState.OPEN if self.disabled else BreakerState.CLOSED, opened=False)
        self._on_reconnect = on_reconnect
        self._probing = False
        # What the probe reads: a key every request needs (on a Cluster, a PING answered by some node says nothing
        # of the shard that holds it, which may still be failing over).
        self._probe_key = probe_key
        self._late: asyncio.Task[Any] | None = None
        self._background_probe: asyncio.Task[bool] | None = None

    async def bump(
        self, generation_key: str, sequence_key: str, channel: str, view_topic: str, namespace: str, client: Client | None = None,
    ) -> tuple[int, int, int | None]:
        """Run BUMP; then, when refreshes wait for replicas, WAIT on the same connection (WAIT counts the replicas
        that hold that connection's writes) for as many of them as are connected (ROLE says, in the same round
        trip as BUMP: waiting for a replica that is not there only costs the wait). Returns the new generation, the
        new invalidation sequence and how many replicas acknowledged them (None: not asked).

        Sent whole (EVAL, not a script's EVALSHA): like a plain INCR, it takes effect when Redis reads it even if
        its answer comes too late for us (a frozen Redis, then thawed), and invalidations are rare."""
        (generation, sequence), replicas, _ = await self.eval_and_wait(
            BUMP, [generation_key, sequence_key], [channel, view_topic, namespace], client,
        )
        return int(generation), int(sequence), replicas

    async def eval_and_wait(
        self, script: str, keys: list[str], args: list[Any], client: Client | None = None,
    ) -> tuple[Any, int | None, int]:
        """EVAL `script` (keys of one slot); then, when refreshes wait for replicas, WAIT for as many as are connected
        (see `bump`). Returns the script's answer, the replicas that acknowledged it (None: not asked) and how many
        were waited for."""
        client = client or self.reader
        command = ("EVAL", script, len(keys), *keys, *args)
        if not self.refresh_replicas:
            return await client.execute_command(*command), None, 0
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(keys[0])
            if node is None:
                raise RedisError(f"no node serves {keys[0]} (the slot table is being refreshed)")
            connection = node.acquire_connection()
            try:
                return await self._eval_and_wait(connection, command)
            finally:
                node.release(connection)
        connection = await client.connection_pool.get_connection()
        try:
            return await self._eval_and_wait(connection, command)
        finally:
            await client.connection_pool.release(connection)

    async def _eval_and_wait(self, connection: Any, command: tuple[Any, ...]) -> tuple[Any, int, int]:
        answer, role = await self._send(connection, [command, ("ROLE",)])
        connected = len(role[2]) if role and role[0] in (b"master", "master") else 0
        wanted = min(self.refresh_replicas, connected)
        if not wanted:
            return answer, 0, 0
        (acknowledged,) = await self._send(connection, [("WAIT", wanted, milliseconds(self.refresh_wait))])
        return answer, int(acknowledged), wanted

    async def _send(self, connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands in one write on one connection, their answers in order (raising the first error)."""
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            answers = [await connection.read_response(timeout=self.timeout + self.refresh_wait) for _ in commands]
        except BaseException:
            await connection.disconnect()  # answers may still be on their way: this connection is out of step
            raise
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    async def read_many(self, *keys: str) -> list[bytes | None]:
        """GET of every key in one round trip (on a Cluster, one MGET per slot, sent together)."""
        if isinstance(self.reader, RedisCluster):
            found = await self.reader.mget_nonatomic(keys)
        else:
            found = await self.reader.mget(keys)
        return found

    async def rediscover(self, client: Client) -> None:
        """On a Cluster, read the slot table again (from any node it knows): after a failover, a client that has not
        been told MOVED still names the dead master. Raises what the call raises."""
        if isinstance(client, RedisCluster):
            await client.nodes_manager.initialize()

    async def reset(self) -> None:
        """Drop pooled connections: they may be to a Redis that has since restarted or to a master that is one no
        more (with no retries, each would fail once)."""
        for client in (self.reader, self.writer):
            if isinstance(client, RedisCluster):
                for node in client.get_nodes():
                    await node.disconnect()
            else:
                await client.connection_pool.disconnect()

    async def probe(self) -> None:
        """One read of a key every request needs; raises what the call raises."""
        await self.reader.get(self._probe_key)

    @property
    def in_use(self) -> bool:
        return not self.disabled and self.breaker.state is BreakerState.CLOSED

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One bounded call on the request path; Unavailable when the breaker is open or it failed."""
        if self.breaker.state is not BreakerState.CLOSED:
            raise Unavailable
        try:
            result = await fn(*args, **kwargs)
        except REDIS_FAILURES as exc:
            flag = _request_redis_failed.get()
            if flag is not None:
                flag[0] = True
            self.breaker.failed(timed_out=isinstance(exc, RedisTimeoutError))
            log.debug("Redis call failed: %r", exc)
            raise Unavailable from exc
        self.breaker.succeeded()
        return result

    async def call_soft(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`call`, for a request that has an answer in hand: Late when Redis has not answered within the soft
        timeout, and at once while an earlier call that was late is still running (Redis is slow: one call at a time
        finds out whether it still is, and its failure counts for the breaker as any other)."""
        if self._late is not None and not self._late.done():
            raise Late
        task = asyncio.ensure_future(self.call(fn, *args))
        done, _ = await asyncio.wait({task}, timeout=self.soft_timeout)
        if task in done:
            return task.result()
        self._late = task
        task.add_done_callback(_retrieve)
        raise Late

    async def usable(self, *, wait: bool = True) -> bool:
        """Whether to use Redis for this request, probing it when the breaker's cool-down is over; without
        `wait` the probe runs in the background and this request goes on without Redis."""
        if self.disabled:
            return False
        if self.breaker.state is BreakerState.CLOSED:
            return True
        if self._probing or not self.breaker.probe_due():
            return False
        self._probing = True
        if wait:
            return await self._probe()
        task = asyncio.ensure_future(self._probe())
        self._background_probe = task  # kept: a task nothing refers to may be collected before it ends
        return False

    async def _probe(self) -> bool:
        try:
            await self.reset()
            await self.probe()
            await self._on_reconnect(self.reader)
        except REDIS_FAILURES as exc:
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

