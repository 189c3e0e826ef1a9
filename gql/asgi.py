"""ASGI plumbing of /graphql: reading a GraphQL request, replaying its body, sending an answer."""

from __future__ import annotations

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


class BadRequest(ValueError):
    """A request body that no GraphQL server could read; the message says what is expected."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_request(scope: Scope, receive: Receive) -> tuple[GraphQLRequest | None, bytes]:
    """The operation of a request and the body read; None when it is not a single JSON operation
    (a batch, a form, GraphiQL), which the GraphQL app answers itself."""
    headers = Headers(scope=scope)
    if scope["method"] == "GET":
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "query" not in params and "extensions" not in params:
            return None, b""  # GraphiQL, or a request the GraphQL app will answer with its own error
        data: dict[str, Any] = {"query": params.get("query"), "operationName": params.get("operationName")}
        for name in ("variables", "extensions"):
            if name in params:
                try:
                    data[name] = orjson.loads(params[name])
                except orjson.JSONDecodeError:
                    return None, b""
        return GraphQLRequest("GET", headers, data, None), b""
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if "application/json" not in headers.get("content-type", ""):
        return None, body
    data = _checked_json(body)
    return (GraphQLRequest("POST", headers, data, body) if isinstance(data, dict) else None), body


def _checked_json(body: bytes) -> Any:
    """The JSON of a POST body, refused unless it is an operation object or a batch of them."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON in UTF-8 ({exc})") from None
    if not isinstance(data, dict) and not (isinstance(data, list) and all(isinstance(op, dict) for op in data)):
        raise BadRequest(
            'the request body must be a JSON object such as {"query": "{ indexes { code } }"}, or an array of such objects'
        )
    # Only a \uD800-\uDFFF escape can make a string that is not Unicode text; such bodies are rare.
    if b"\\ud" in body.lower():
        try:
            orjson.dumps(data)  # refuses lone surrogates
        except TypeError:
            raise BadRequest("the request body holds a string that is not valid Unicode (a lone surrogate escape)") from None
    return data


def rewritten(scope: Scope, receive: Receive, request: GraphQLRequest) -> tuple[Scope, Receive]:
    """The request as the GraphQL app must see it (with a persisted query filled in)."""
    if request.method == "POST":
        return scope, replaying(receive, request.replay_body or b"")
    if request.data.get("query") is None:
        return scope, receive
    params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    params["query"] = request.data["query"]
    return {**scope, "query_string": urlencode(params).encode("latin-1")}, receive


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
