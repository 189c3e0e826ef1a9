"""The ASGI middleware of the app: dispatch of /graphql, request ids and the access log, the body limit."""

from __future__ import annotations

import logging
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql.asgi import header, replaying
from gql.logs import REQUEST_ID_HEADER, access_log, log_request, new_request_id, request_id, request_summary
from gql.protocol import refuse_method, send_refusal

_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()


class PathDispatch:
    """Send requests (and WebSocket connections) for one path straight to its ASGI endpoint; anything else to the app."""

    def __init__(self, app: ASGIApp, path: str, endpoint: ASGIApp) -> None:
        self.app = app
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _route_path(scope) == self.path:
            if scope["type"] == "http" and scope["method"] not in ("GET", "POST"):
                await send_refusal(send, refuse_method(scope["method"]))
                return
            await self.endpoint(scope, receive, send)  # a WebSocket: subscriptions (gql/subscriptions.py)
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point: ASGI servers (uvicorn --root-path) and a Starlette Mount put the
    prefix in `root_path` and keep it in `path` too, as Starlette's own router reads it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class RequestIdMiddleware:
    """Give each request an id (the `X-Request-ID` header, every log line it causes) and log one line for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        incoming = header(scope, _REQUEST_ID_BYTES)
        rid = new_request_id(incoming.decode("latin-1") if incoming else None)
        token = request_id.set(rid)
        summary: dict = {"status": 500}
        summary_token = request_summary.set(summary)
        id_header = (_REQUEST_ID_BYTES, rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
                summary["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                log_request(scope, summary, time.perf_counter() - began)
            request_summary.reset(summary_token)
            request_id.reset(token)


class BodyLimitMiddleware:
    """Answer 413 to a request body over the limit, before the app reads or parses any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # the server delivers no more than the declared length
            return
        # Read the body here (it is at most max_bytes) so that a body without a length is bounded too.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, replaying(receive, b"".join(chunks)), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"errors": [{"message": f"request body is larger than {self.max_bytes} bytes, the limit",
                         "extensions": {"code": "PAYLOAD_TOO_LARGE"}}]},
            status_code=413,
        )
        await response(scope, receive, send)
