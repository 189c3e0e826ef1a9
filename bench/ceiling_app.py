"""The ceiling: the least a cached GraphQL endpoint can do, one Redis GET of the stored response bytes.

Keyed by the SHA-256 of the request body, so one app serves every benchmarked query. Served by
uvicorn like the real service: `uvicorn ceiling_app:app --app-dir bench` with BENCH_REDIS_URL set.
"""

from __future__ import annotations

import hashlib
import os

import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

KEY_PREFIX = "ceiling:"

_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


def key_for(body: bytes) -> str:
    return KEY_PREFIX + hashlib.sha256(body).hexdigest()


async def graphql(request: Request) -> Response:
    stored = await _redis.get(key_for(await request.body()))
    if stored is None:
        return Response(b'{"errors":[{"message":"not seeded"}]}', status_code=404, media_type="application/json")
    return Response(stored, media_type="application/json")


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"])])
