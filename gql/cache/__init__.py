"""The result cache: Redis with single flight, stale-while-revalidate, fail-safe and a breaker.

| module | owns |
|---|---|
| `keys.py` | every Redis key name and digest |
| `entries.py` | the entry format, statuses, results, what a computation is |
| `policy.py` | running computations (timed, counted), lifetimes, size limit, decoding |
| `breaker.py` | the circuit breaker |
| `connect.py` | clients for the three modes (standalone, Cluster, Sentinel), bounded alike |
| `redis_link.py` | bounded clients, scripts, the breaker's probe, soft timeouts |
| `generations.py` | the generations this process knows of, to put back one a failover lost |
| `notify.py` | pub/sub waiters |
| `leases.py` | fleet-wide single flight (Redis leases) |
| `flights.py` | single flight in this process |
| `local.py` | the in-process stand-in while Redis is away |
| `raw.py` | bytes under keys for the response layer |
| `results.py` | `ResultCache`: get_or_compute, refresh, invalidate |
"""

from gql.cache.breaker import BreakerState
from gql.cache.entries import CacheResult, CacheState, CacheStatus, ComputationError
from gql.cache.results import ResultCache

__all__ = ["BreakerState", "CacheResult", "CacheState", "CacheStatus", "ComputationError", "ResultCache"]
