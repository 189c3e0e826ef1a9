"""Automatic Persisted Queries (Apollo's protocol: `extensions.persistedQuery.sha256Hash`, `PersistedQueryNotFound`)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from gql.asgi import GraphQLRequest, error_body
from gql.cache.raw import RawStore
from gql.lru import LRU

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def known_queries() -> LRU[str, str]:
    """Query texts a process has seen registered or read, by their hash (bounded): a hash names one text for ever,
    so a frontend's hash-only GET (the dashboard's, Apollo's) needs no Redis read once the process knows it."""
    return LRU(max_entries=4096, max_bytes=8 * 2**20, size=len)


async def resolve_persisted_query(
    request: GraphQLRequest, store: RawStore, ttl: float, known: LRU[str, str]
) -> dict[str, Any] | None:
    """Fill in the query of a persisted one, or register it; a refusal body, or None to go on."""
    extensions = request.data.get("extensions")
    persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
    if not isinstance(persisted, dict):
        return None
    digest = persisted.get("sha256Hash")
    if persisted.get("version") != 1 or not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        return error_body("persistedQuery needs version 1 and a sha256Hash of 64 lower-case hex digits", "PERSISTED_QUERY_INVALID")
    query = request.data.get("query")
    key = store.keys.persisted_query(digest)
    if isinstance(query, str):
        if hashlib.sha256(query.encode()).hexdigest() != digest:
            return error_body("provided sha256Hash does not match the query", "PERSISTED_QUERY_HASH_MISMATCH")
        # Written every time it is sent: other processes learn it from Redis, and its TTL starts again there.
        await store.write({}, {}, key, query.encode(), ttl)
        known.put(digest, query)
        return None
    text = known.get(digest)
    if text is None:
        found = await store.read((), [key])
        if found is None or found[1][0] is None:
            return error_body("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")
        text = found[1][0].decode()
        known.put(digest, text)
    request.data["query"] = text
    request.replay_body = orjson.dumps(request.data) if request.method == "POST" else request.replay_body
    return None
