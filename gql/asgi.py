"""ASGI plumbing of /graphql: a request's parts, replaying its body, sending an answer (gql/protocol.py reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send


@dataclass
class GraphQLRequest:
    """A single JSON operation, as GET parameters or a POST body."""

    method: str
    headers: Headers
    data: dict[str, Any]
    replay_body: bytes | None  # POST body to hand to the GraphQL app (None: unchanged GET)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def rewritten(scope: Scope, receive: Receive, request: GraphQLRequest) -> tuple[Scope, Receive]:
    """The request as the GraphQL app must see it (with a persisted query filled in)."""
    if request.method == "POST":
        return json_content_type(scope), replaying(receive, request.replay_body or b"")
    if request.data.get("query") is None:
        return scope, receive
    params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    params["query"] = request.data["query"]
    return {**scope, "query_string": urlencode(params).encode("latin-1")}, receive


def json_content_type(scope: Scope) -> Scope:
    """A POST with its content type as the GraphQL app matches it ("Application/JSON; charset=utf-8" is JSON too)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def replaying(receive: Receive, body: bytes) -> Receive:
    """A receive that delivers `body` (already read) first, then whatever `receive` delivers."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def with_default_headers(send: Send, defaults: dict[bytes, bytes]) -> Send:
    """A send that adds `defaults` to the response start, unless the app set them."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            present = {name.lower() for name, _ in headers}
            headers += [(name, value) for name, value in defaults.items() if name not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending


def error_body(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


async def send_json(send: Send, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
    await send_response(send, status, orjson.dumps(payload), {**headers, "content-type": "application/json"})


# Bodies up to this size are joined into one message; above it each part goes as it is (no copy of megabytes).
JOIN_BELOW = 64 * 1024


async def send_encoded(send: Send, status: int, parts: Sequence[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """A hit's answer: the body is `parts` in order, a stored body of megabytes and its per-request tail sent as
    separate messages above JOIN_BELOW rather than copied into one (one memcpy of the whole body less per hit). The
    headers come as ASGI carries them (lower-case latin-1 bytes, no Content-Length), their constant parts encoded
    once. A 304 has no body (and no Content-Length)."""
    length = sum(len(part) for part in parts)
    if status != 304:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if status == 304 or length < JOIN_BELOW:
        await send({"type": "http.response.body", "body": b"" if status == 304 else b"".join(parts)})
        return
    last = len(parts) - 1
    for number, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": number < last})


async def send_response(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    if status != 304:
        headers["content-length"] = str(len(body))
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    })
    await send({"type": "http.response.body", "body": body if status != 304 else b""})
