"""GraphQL over WebSocket at /graphql (graphql-transport-ws): what the socket carries, and its limits.

Strawberry runs the protocol; this module adds what the service needs on top of it, through the handler and
adapter classes Strawberry's view is built with:

- only subscriptions: queries and mutations go over HTTP, where the response cache, the query workers and
  the request log are (a `subscribe` of one is answered with an `error`, code `HTTP_REQUIRED`);
- per client address, at most `GQL_WS_MAX_CONNECTIONS_PER_CLIENT` open connections in this process (one more
  is closed at once with 4429);
- per connection, at most `GQL_WS_MAX_SUBSCRIPTIONS` at once (one more is an `error`, `TOO_MANY_SUBSCRIPTIONS`);
- a connection with no subscription for `GQL_WS_IDLE_SECONDS` is closed (4408); `connection_init` must come
  within `GQL_WS_INIT_TIMEOUT` (Strawberry's own timeout, 4408 too).

The document limits (tokens, aliases, depth) are the schema's extensions, as over HTTP (gql/limits.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError, OperationType
from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage

from gql import metrics
from gql.config import Settings
from gql.protocol import query_shape
from gql.schema.types import CACHED_FIELDS

log = logging.getLogger(__name__)

# extensions.code of a refused `subscribe`.
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
HTTP_REQUIRED = "HTTP_REQUIRED"
# Close codes: the protocol's own (4400 bad request, 4408 timeout, 4429 too many), for our limits too.
CLOSE_BAD_REQUEST = 4400
CLOSE_TIMEOUT = 4408
CLOSE_TOO_MANY = 4429
# A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455, 5.5): longer ones are cut.
_MAX_REASON_BYTES = 123


@dataclass
class SocketLimits:
    """The limits of this process's WebSocket connections, and the connections open per client address."""

    per_client: int
    subscriptions: int
    idle_seconds: float
    open: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, settings: Settings) -> SocketLimits:
        return cls(settings.ws_max_connections_per_client, settings.ws_max_subscriptions, settings.ws_idle_seconds)

    def admit(self, client: str) -> bool:
        if self.open[client] >= self.per_client:
            return False
        self.open[client] += 1
        metrics.WS_CONNECTIONS.inc()
        return True

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
        metrics.WS_CONNECTIONS.dec()


class WebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter, sending text frames (the protocol's; the app's JSON encoder makes bytes, which the
    adapter would send as binary frames), with close reasons cut to what a close frame holds (Strawberry sends
    a syntax error's message as the reason, and a message may echo a long name)."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        try:
            await self.ws.send_text(self.view.encode_json_string(message))
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc

    async def close(self, code: int, reason: str) -> None:
        encoded = reason.encode()
        if len(encoded) > _MAX_REASON_BYTES:
            reason = encoded[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
        await super().close(code, reason)


class SubscriptionsHandler(BaseGraphQLTransportWSHandler[Any, None]):
    """Strawberry's graphql-transport-ws handler with the limits of this module (see its docstring)."""

    async def handle(self) -> None:
        limits: SocketLimits = self.view.socket_limits  # type: ignore[attr-defined]  # our view (gql/app.py)
        client = _client(self.context)
        if not limits.admit(client):
            metrics.WS_REFUSED.labels("connections").inc()
            log.warning("WebSocket closed: %d connections from %s are open already, the limit "
                        "(GQL_WS_MAX_CONNECTIONS_PER_CLIENT)", limits.per_client, client)
            await self.websocket.close(CLOSE_TOO_MANY, f"too many connections from this address: at most {limits.per_client}")
            return
        idle = asyncio.create_task(self._close_when_idle(limits.idle_seconds), name="gql-ws-idle")
        try:
            await super().handle()
        finally:
            idle.cancel()
            limits.release(client)

    async def _close_when_idle(self, idle_seconds: float) -> None:
        """Close the connection once it has had no subscription for `idle_seconds` (looked at every tenth of it,
        at least every second: the handler's own bookkeeping, `operations`, is read, never changed)."""
        loop = asyncio.get_running_loop()
        step = min(1.0, idle_seconds / 10)
        since = loop.time()
        while True:
            await asyncio.sleep(step)
            if self.operations:
                since = loop.time()
            elif loop.time() - since >= idle_seconds:
                metrics.WS_REFUSED.labels("idle").inc()
                await self.websocket.close(CLOSE_TIMEOUT, f"no subscription for {idle_seconds:g} s")
                return

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload = message.get("payload")
        query = payload.get("query") if isinstance(payload, dict) else None
        name = payload.get("operationName") if isinstance(payload, dict) else None
        variables = payload.get("variables") if isinstance(payload, dict) else None
        if not (isinstance(message.get("id"), str) and isinstance(query, str) and (name is None or isinstance(name, str))
                and (variables is None or isinstance(variables, dict))):
            await self.websocket.close(
                CLOSE_BAD_REQUEST, "subscribe needs an id and a payload with a query (a string), variables (an object)"
            )
            return
        if not self.connection_acknowledged or message["id"] in self.operations:
            await super().handle_subscribe(message)  # the protocol's answers: 4401, 4409
            return
        shape = query_shape(query, name, CACHED_FIELDS)  # None: it does not parse, which the schema reports
        if shape is not None and shape.operation not in (OperationType.SUBSCRIPTION, None):
            metrics.WS_REFUSED.labels("operation").inc()
            await self._refuse(message["id"], HTTP_REQUIRED,
                               f"a {shape.operation.value} is sent over HTTP: POST /graphql (or GET, for a query); this "
                               "WebSocket carries subscriptions only")
            return
        limit: int = self.view.socket_limits.subscriptions  # type: ignore[attr-defined]
        if len(self.operations) >= limit:
            metrics.WS_REFUSED.labels("subscriptions").inc()
            await self._refuse(message["id"], TOO_MANY_SUBSCRIPTIONS,
                               f"this connection has {len(self.operations)} subscriptions, the limit (GQL_WS_MAX_SUBSCRIPTIONS): "
                               "complete one first, or open another connection")
            return
        await super().handle_subscribe(message)

    async def _refuse(self, operation_id: str, code: str, message: str) -> None:
        error = GraphQLError(message, extensions={"code": code})
        await self.send_message({"id": operation_id, "type": "error", "payload": [error.formatted]})


def _client(context: Any) -> str:
    client = getattr(context.request, "client", None)
    return client.host if client else "unknown"
