"""Prometheus metrics: of this process, or of all the server's processes in multiprocess mode (README, "Metrics")."""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# prometheus-client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set when it is imported, every process
# (each uvicorn worker of `serve --workers N`, which sets it) keeps its values in files there, and one scrape
# adds them up. Unset (one process, the tests' apps): the ordinary in-memory registry.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

CACHE_LOOKUPS = Counter(
    "gql_cache_lookups_total",
    "Cached-field lookups by outcome: hit (fresh), miss (computed or waited for), stale (answered past its fresh "
    "period, or standing in for a failed computation), error (computation failed, nothing to stand in), bypass (caching off)",
    ["field", "outcome"],
)
COMPUTATIONS = Counter("gql_computations_total", "Computations actually run (shared ones count once)", ["field"])
COMPUTATION_SECONDS = Histogram(
    "gql_computation_seconds", "Time of each computation", ["field"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OVERSIZE_ENTRIES = Counter(
    "gql_cache_oversize_total", "Results served but not cached because they exceed GQL_CACHE_MAX_ENTRY_BYTES", ["field"]
)
RESPONSES = Counter(
    "gql_response_cache_total", "Cacheable queries answered from stored responses (hit) or executed (miss)", ["outcome"]
)
RESPONSE_HITS = RESPONSES.labels("hit")
RESPONSE_MISSES = RESPONSES.labels("miss")
COMPUTATION_FAILURES = Counter("gql_computation_failures_total", "Computations that raised", ["field"])
LEASES = Counter(
    "gql_cache_leases_total",
    "Misses that took a computation's Redis lease (acquired) or waited for another process's computation (waited)",
    ["field", "outcome"],
)
# Each process has its own breaker: across processes a sum would mean nothing, so there is one sample per
# live process (a `pid` label, in multiprocess mode), gone when the process is.
REDIS_UP = Gauge(
    "gql_cache_redis_up", "1 while Redis is in use, 0 while degraded to the in-process cache", multiprocess_mode="liveall"
)
BREAKER_STATE = Gauge(
    "gql_cache_breaker_state", "Circuit breaker on Redis: 0 closed (in use), 1 open (skipped), 2 half-open (probing)",
    multiprocess_mode="liveall",
)
UNREPLICATED_REFRESHES = Counter(
    "gql_cache_unreplicated_refreshes_total",
    "Refreshes whose new generation fewer replicas than GQL_REDIS_REFRESH_REPLICAS acknowledged in time",
)
BREAKER_OPENED = Counter("gql_cache_breaker_opened_total", "Times the circuit breaker on Redis opened")
# The view under a lease (gql/cache/view.py): hits answered from it, and how long refreshes waited for the fleet.
VIEW_HITS = Counter("gql_response_view_hits_total", "Of the response cache's hits, those answered with no Redis round trip")
VIEW_WAITS = Histogram(
    "gql_view_wait_seconds", "How long an invalidation waited for every server process holding a view lease to apply it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# GraphQL over WebSocket (gql/subscriptions.py): only server processes have sockets.
# Counts: summed over the live processes (a dead one's sockets are closed).
WS_CONNECTIONS = Gauge("gql_ws_connections", "Open GraphQL WebSocket connections", multiprocess_mode="livesum")
SUBSCRIPTIONS = Gauge("gql_subscriptions", "dataChanged subscriptions listening for new data versions", multiprocess_mode="livesum")
WS_REFUSED = Counter(
    "gql_ws_refused_total",
    "WebSocket limits applied: connections closed (connections: per client address; idle: no subscription) and "
    "subscribe messages refused (subscriptions: per connection; operation: a query or mutation)",
    ["reason"],
)
# Purge requests to downstream caches (gql/downstream.py), by final outcome (after up to 3 attempts).
DOWNSTREAM_PURGES = Counter(
    "gql_downstream_purges_total",
    "Purge requests sent to downstream caches (GQL_PURGE_URLS), one per URL and purge: ok (a 2xx answer) or failed "
    "(no 2xx answer after 3 attempts; logged with the URL and the reason)",
    ["outcome"],
)
DOWNSTREAM_PURGES.labels("ok")  # shown as 0 until the first purge: a rate of failures is defined from the start
DOWNSTREAM_PURGES.labels("failed")


def exposition() -> bytes:
    """What /metrics serves: this process's metrics, or in multiprocess mode those of every process of the server
    (counters and histograms added up, including those of processes that have ended; gauges as declared above)."""
    if MULTIPROCESS_DIR is None:
        return generate_latest()
    _forget_ended_processes(MULTIPROCESS_DIR)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, MULTIPROCESS_DIR)
    return generate_latest(registry)


def _forget_ended_processes(directory: str) -> None:
    """Remove the live gauges of processes that are gone (a worker killed, restarted by uvicorn as another pid)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = os.path.basename(path)[: -len(".db")].rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            # Another process may be removing the same files at the same time.
            with contextlib.suppress(FileNotFoundError):
                mark_process_dead(int(pid), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except (ProcessLookupError, PermissionError):  # gone, or its pid reused by another user's process
        return False
    return True


# In a query worker process (gql/workers.py) metrics are recorded as events and sent back with the
# answer, so that the server's /metrics counts the work of its workers too (in multiprocess mode, the
# server process counts them into its own files).
_events: list[tuple] | None = None


def capture() -> None:
    """From now on record events instead of counting them (in a query worker process)."""
    global _events
    _events = []
    if MULTIPROCESS_DIR is not None:
        # A query worker's gauges are not reported (its breaker: see docs/operations.md), but prometheus-client
        # made their file when this module was imported: withdraw it, as for a process that has ended. (While it
        # was starting, a scrape showed a 0 for it: query workers start before their server is ready, so only
        # a replacement for one that died can be seen that way.)
        mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


def take() -> list[tuple]:
    """The events recorded since the last call: sent back with each answer, including those of
    background work that ended after the previous answer left."""
    global _events
    taken, _events = _events or [], ([] if _events is not None else None)
    return taken


def lookup(field: str, outcome: str) -> None:
    _record(("lookup", field, outcome))


def computation(field: str, seconds: float) -> None:
    _record(("computation", field, seconds))


def oversize(field: str) -> None:
    _record(("oversize", field))


def computation_failed(field: str) -> None:
    _record(("failed", field))


def lease(field: str, outcome: str) -> None:
    _record(("lease", field, outcome))


def view_wait(seconds: float) -> None:
    VIEW_WAITS.observe(seconds)


def unreplicated_refresh() -> None:
    UNREPLICATED_REFRESHES.inc()


def breaker(state: int, *, opened: bool = True) -> None:
    """The breaker of this process (a query worker's own breaker is not reported; see docs/operations.md)."""
    if _events is None:
        BREAKER_STATE.set(int(state))
        REDIS_UP.set(1 if int(state) == 0 else 0)
        if int(state) == 1 and opened:
            BREAKER_OPENED.inc()


def _record(event: tuple) -> None:
    if _events is not None:
        _events.append(event)
    else:
        apply([event])


# labels() takes a lock and builds a key; hits are counted on the hot path, so children are kept.
_lookup_children: dict[tuple[str, str], Any] = {}


def apply(events: list[tuple]) -> None:
    for kind, field, *rest in events:
        if kind == "lookup":
            child = _lookup_children.get((field, rest[0]))
            if child is None:
                child = _lookup_children[(field, rest[0])] = CACHE_LOOKUPS.labels(field, rest[0])
            child.inc()
        elif kind == "computation":
            COMPUTATIONS.labels(field).inc()
            COMPUTATION_SECONDS.labels(field).observe(rest[0])
        elif kind == "oversize":
            OVERSIZE_ENTRIES.labels(field).inc()
        elif kind == "failed":
            COMPUTATION_FAILURES.labels(field).inc()
        elif kind == "lease":
            LEASES.labels(field, rest[0]).inc()
