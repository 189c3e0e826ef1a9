"""Redis clients for the three ways Redis is run (GQL_REDIS_MODE): one server, a Cluster, a Sentinel group.

Every client is bounded the same way: one short timeout per call and no retries of redis-py's own, so a
slow or lost Redis costs a request one bound at most and the circuit breaker decides the rest.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gql.config import RedisMode, Topology

Client: TypeAlias = "redis.Redis | RedisCluster"


def make_clients(topology: Topology, timeouts: list[tuple[float, float]]) -> list[Client]:
    """Clients of `topology`, one per (timeout, read timeout) in `timeouts`: every call bounded by the timeout
    (reading an answer by the read timeout: writes of megabytes). In sentinel mode they share one set of sentinel
    connections (each client would otherwise keep its own pool of them)."""
    sentinel = _sentinel(topology, _bounded(topology, min(t for t, _ in timeouts))) if topology.mode is RedisMode.SENTINEL else None
    return [make_client(topology, timeout, read_timeout=read, sentinel=sentinel) for timeout, read in timeouts]


def _bounded(topology: Topology, timeout: float, read_timeout: float | None = None) -> dict[str, Any]:
    bounded: dict[str, Any] = dict(
        socket_timeout=read_timeout or timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), retry_on_error=[],
        health_check_interval=0,
        # No CLIENT SETINFO when connecting: a burst that opens connections pays less.
        driver_info=None,
    )
    if topology.password is not None:
        bounded["password"] = topology.password
    return bounded


def make_client(
    topology: Topology, timeout: float, *, read_timeout: float | None = None, sentinel: Sentinel | None = None,
) -> Client:
    """A client of `topology` whose every call is bounded by `timeout` seconds (reading an answer, by
    `read_timeout` if given)."""
    bounded = _bounded(topology, timeout, read_timeout)
    if topology.mode is RedisMode.CLUSTER:
        # One attempt per call (the retry given is the cluster's own since redis-py 6): a failover shows as failed
        # calls (the breaker then serves from memory) and a call after it finds the new master through the
        # refreshed slot table.
        return RedisCluster.from_url(topology.url, **bounded)
    if topology.mode is RedisMode.SENTINEL:
        return (sentinel or _sentinel(topology, bounded)).master_for(topology.service, redis_class=redis.Redis, **bounded)
    return redis.Redis.from_url(topology.url, **bounded)


def _sentinel(topology: Topology, bounded: dict[str, Any]) -> Sentinel:
    options: dict[str, Any] = dict(parse_url(topology.url))
    tls = options.pop("connection_class", None) is redis.SSLConnection
    for place in ("host", "port", "path"):
        options.pop(place, None)
    if topology.password is not None:
        options["password"] = topology.password
    if tls:
        options["ssl"] = True
    ssl_options = {k: v for k, v in options.items() if k.startswith("ssl")}
    sentinel_options = dict(bounded, **ssl_options)
    sentinel_options.pop("password", None)
    if topology.sentinel_password is not None:
        sentinel_options["password"] = topology.sentinel_password
    return Sentinel(list(topology.sentinels), sentinel_kwargs=sentinel_options, **dict(bounded, **options))
