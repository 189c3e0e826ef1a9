"""Automatic Persisted Queries (Apollo's protocol: `extensions.persistedQuery.sha256Hash`, `PersistedQueryNotFound`)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from gql.asgi import GraphQLRequest, error_body
from gql.cache.raw import RawStore

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


async def resolve_persisted_query(request: GraphQLRequest, store: RawStore, ttl: float) -> dict[str, Any] | None:
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
        await store.write({}, {}, key, query.encode(), ttl)
        return None
    found = await store.read((), [key])
    if found is None or found[1][0] is None:
        return error_body("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")
    request.data["query"] = found[1][0].decode()
    request.replay_body = orjson.dumps(request.data) if request.method == "POST" else request.replay_body
    return None
