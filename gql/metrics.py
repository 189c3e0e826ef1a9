"""Prometheus metrics of this process (each uvicorn worker has its own; see README, "Metrics")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_LOOKUPS = Counter(
    "gql_cache_lookups_total", "Cached-field lookups by outcome (hit, miss, refreshed, bypass)", ["field", "outcome"]
)
COMPUTATIONS = Counter("gql_computations_total", "Computations actually run (shared ones count once)", ["field"])
COMPUTATION_SECONDS = Histogram(
    "gql_computation_seconds", "Time of each computation", ["field"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OVERSIZE_ENTRIES = Counter(
    "gql_cache_oversize_total", "Results served but not cached because they exceed GQL_CACHE_MAX_ENTRY_BYTES", ["field"]
)
REDIS_UP = Gauge("gql_cache_redis_up", "1 while Redis is in use, 0 while degraded to the in-process cache")
