"""The one owner of Redis key names: every key the service reads or writes is built here.

All keys live under the configured prefix (`GQL_CACHE_PREFIX`). The part in braces is the key's hash tag: on a
Redis Cluster only that part picks the slot, so keys with the same tag live on the same shard, and a script may
touch them together. Two families:

- `{<p>}`: the generations of every namespace and the meta of stored responses. A hit reads the generations of
  its fields and a response's meta in one MGET, and a response's meta is written only if those generations are
  still current (one script): they must share a slot. They are small (tens of bytes; a meta is ~200 bytes).
- `{<namespace>:<digest>}` and `{<response digest>}`: a cached value with its leases and failure mark (one script
  stores the value, clears the mark and lets the lease go), and a stored response's bodies. These are the large
  values (up to megabytes), spread over the cluster by their digest.

A value and the generation it was computed under are in different slots, so no script checks one against the
other: each value carries its generation (an entry's `g`, a meta's `generations`) and readers compare it with the
current one. A value of an older generation is a miss, never a hit.

| key | holds |
|---|---|
| `<p>:entry:{<namespace>:<digest>}` | a cached value (`CacheEntry`) |
| `<p>:generation:{<p>}:<namespace>` | the namespace's generation; `invalidate` moves it on (`data` is the data epoch) |
| `<p>:lease:compute:{<namespace>:<digest>}:<generation>` | the lease of the process computing an entry |
| `<p>:lease:refresh:{<namespace>:<digest>}` | the lease of the process refreshing a value |
| `<p>:failed:{<namespace>:<digest>}` | the failure mark that throttles retries of a failing computation |
| `<p>:view:sequence:{<p>}` | the invalidation sequence: every `invalidate` moves it on with the generation (gql/cache/view.py) |
| `<p>:view:members:{<p>}` | sorted set: each server process's view lease, scored by when it runs out (Redis time, ms) |
| `<p>:view:acks:{<p>}` | hash: the sequence each server process has applied to its view |
| `<p>:response:{<p>}:<digest>:meta` | a stored whole response's meta: ETag, fields, generations (gql/stored.py) |
| `<p>:response:{<digest>}:<etag>:raw|deflate` | its bodies, named by the ETag the meta gives (so never another answer's) |
| `<p>:apq:<sha256>` | an Automatic Persisted Query's text |
| `<p>:scheduled-refresh:<slot>` | the claim of the process that runs a scheduled refresh |
| `<p>:downstream-purge:<old>:<new>` | the claim of the process that purges downstream caches of a data change (gql/downstream.py) |
| `<p>:filled` (channel) | "a computation ended" messages, `<entry key>|<outcome>`; invalidations, `<generation key>|<generation>` |
| | and, for the views, `<p>:view|<sequence> <previous> <namespace> <generation>` |

The channel is classic pub/sub, also on a Cluster, where a message published on any node reaches the subscribers
of every node: see docs/operations.md, "Redis Cluster", for why not sharded pub/sub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


def digest(parts: Mapping[str, Any]) -> str:
    """A digest of normalized arguments (key order does not matter); arguments are never embedded in keys."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EntryKey:
    """The key of one cached value: its namespace (a cached field) and the digest of its arguments."""

    namespace: str
    digest: str
    name: str  # the Redis key


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channel = f"{prefix}:filled"
        self._shared = "{" + prefix + "}"  # the hash tag of generations and response metas

    def entry(self, namespace: str, parts: Mapping[str, Any]) -> EntryKey:
        hashed = digest(parts)
        return EntryKey(namespace, hashed, f"{self.prefix}:entry:{{{namespace}:{hashed}}}")

    def generation(self, namespace: str) -> str:
        return f"{self.prefix}:generation:{self._shared}:{namespace}"

    @property
    def view_sequence(self) -> str:
        return f"{self.prefix}:view:sequence:{self._shared}"

    @property
    def view_members(self) -> str:
        return f"{self.prefix}:view:members:{self._shared}"

    @property
    def view_acks(self) -> str:
        return f"{self.prefix}:view:acks:{self._shared}"

    @property
    def view_topic(self) -> str:
        """What invalidations are announced as to the processes' views (with their place in the sequence)."""
        return f"{self.prefix}:view"

    def compute_lease(self, key: EntryKey, generation: int) -> str:
        # Per generation: after a refresh, the new computation must not wait for one of before it.
        return f"{self.prefix}:lease:compute:{{{key.namespace}:{key.digest}}}:{generation}"

    def refresh_lease(self, key: EntryKey) -> str:
        return f"{self.prefix}:lease:refresh:{{{key.namespace}:{key.digest}}}"

    def failure(self, key: EntryKey) -> str:
        return f"{self.prefix}:failed:{{{key.namespace}:{key.digest}}}"

    def response_meta(self, digest: str) -> str:
        return f"{self.prefix}:response:{self._shared}:{digest}:meta"

    def response_body(self, digest: str, etag: str, part: str) -> str:
        return f"{self.prefix}:response:{{{digest}}}:{etag}:{part}"

    def persisted_query(self, sha256: str) -> str:
        return f"{self.prefix}:apq:{sha256}"

    def scheduled_refresh(self, slot: str) -> str:
        return f"{self.prefix}:scheduled-refresh:{slot}"

    def downstream_purge(self, previous: str, version: str) -> str:
        return f"{self.prefix}:downstream-purge:{previous}:{version}"

    def refresh_topic(self, key: EntryKey) -> str:
        """What the end of a refresh of `key` is announced as on the channel."""
        return f"{key.name}:refresh"
