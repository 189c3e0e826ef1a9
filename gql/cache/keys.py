"""The one owner of Redis key names: every key the service reads or writes is built here.

All keys live under the configured prefix (`GQL_CACHE_PREFIX`):

| key | holds |
|---|---|
| `<p>:entry:<namespace>:<digest>` | a cached value (`CacheEntry`) |
| `<p>:generation:<namespace>` | the namespace's generation; `invalidate` increments it (`data` is the data epoch) |
| `<p>:lease:compute:<generation>:<namespace>:<digest>` | the lease of the process computing an entry |
| `<p>:lease:refresh:<namespace>:<digest>` | the lease of the process refreshing a value |
| `<p>:failed:<namespace>:<digest>` | the failure mark that throttles retries of a failing computation |
| `<p>:response:<digest>:meta|raw|deflate` | a stored whole response (gql/stored.py) |
| `<p>:apq:<sha256>` | an Automatic Persisted Query's text |
| `<p>:scheduled-refresh:<slot>` | the claim of the process that runs a scheduled refresh |
| `<p>:filled` (channel) | "a computation ended" messages, `<entry key>|<outcome>`; invalidations, `<generation key>|<generation>` |
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

    def entry(self, namespace: str, parts: Mapping[str, Any]) -> EntryKey:
        hashed = digest(parts)
        return EntryKey(namespace, hashed, f"{self.prefix}:entry:{namespace}:{hashed}")

    def generation(self, namespace: str) -> str:
        return f"{self.prefix}:generation:{namespace}"

    def compute_lease(self, key: EntryKey, generation: int) -> str:
        # Per generation: after a refresh, the new computation must not wait for one of before it.
        return f"{self.prefix}:lease:compute:{generation}:{key.namespace}:{key.digest}"

    def refresh_lease(self, key: EntryKey) -> str:
        return f"{self.prefix}:lease:refresh:{key.namespace}:{key.digest}"

    def failure(self, key: EntryKey) -> str:
        return f"{self.prefix}:failed:{key.namespace}:{key.digest}"

    def response(self, digest: str, part: str) -> str:
        return f"{self.prefix}:response:{digest}:{part}"

    def persisted_query(self, sha256: str) -> str:
        return f"{self.prefix}:apq:{sha256}"

    def scheduled_refresh(self, slot: str) -> str:
        return f"{self.prefix}:scheduled-refresh:{slot}"

    def refresh_topic(self, key: EntryKey) -> str:
        """What the end of a refresh of `key` is announced as on the channel."""
        return f"{key.name}:refresh"
