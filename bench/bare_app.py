"""The bare app: a plain ASGI callable returning stored response bytes from memory, the most any Python ASGI
service can do under the same uvicorn (`uvicorn bare_app:app --app-dir bench`, uvloop and httptools as the
service gets them).

Keyed by the SHA-256 of the request body, like the ceiling app: the first request of a body reads its bytes
from Redis (where bench/run.py seeds what the service answered), every later one is served from memory. An
`If-None-Match` naming the stored bytes' ETag gets a 304, as the service answers a revalidation.
"""

from __future__ import annotations

import hashlib
import os

import redis.asyncio as redis

from bench.ceiling_app import key_for

_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
# sha256(body) -> (response bytes, their ETag); filled on a body's first request.
_memory: dict[bytes, tuple[bytes, bytes]] = {}
_NOT_SEEDED = b'{"errors":[{"message":"not seeded"}]}'


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":  # lifespan and anything else: nothing to set up
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = await _body(receive)
    digest = hashlib.sha256(body).digest()
    found = _memory.get(digest)
    if found is None:
        stored = await _redis.get(key_for(body))
        if isinstance(stored, str):  # only with decode_responses, which this client does not set
            stored = stored.encode()
        if stored is None:
            await _send(send, 404, _NOT_SEEDED, [])
            return
        found = _memory[digest] = (stored, b'"' + hashlib.sha256(stored).hexdigest()[:32].encode() + b'"')
    stored, etag = found
    for name, value in scope["headers"]:
        if name == b"if-none-match" and value == etag:
            await _send(send, 304, b"", [(b"etag", etag)])
            return
    await _send(send, 200, stored, [(b"etag", etag)])


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
