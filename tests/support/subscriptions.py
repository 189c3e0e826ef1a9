"""The dataChanged subscription as the tests use it: a graphql-transport-ws client on a real WebSocket (the
`websockets` package that uvicorn[standard] brings), and the server's own gauges to know a subscriber listens."""

from __future__ import annotations

import json
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.support.waiting import wait_until

DATA_CHANGED = "subscription { dataChanged { version previousVersion codes lastDate } }"
PROTOCOL = "graphql-transport-ws"


def gauge(base: str, name: str) -> float:
    """A metric of the server at `base` (one process: the suite's servers run one worker)."""
    for family in text_string_to_metric_families(httpx2.get(f"{base}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not in {base}/metrics")


def wait_for_subscribers(base: str, count: int) -> None:
    """Until `count` subscriptions listen to the server's feed: from then on each hears every change."""
    wait_until(lambda: gauge(base, "gql_subscriptions") == count, f"{count} subscription(s) listening on {base}", 20)


class Socket:
    """One graphql-transport-ws connection to /graphql of the server at `base` (http://host:port)."""

    def __init__(self, base: str, *, subprotocols: tuple[str, ...] = (PROTOCOL,)) -> None:
        url = "ws" + base.removeprefix("http") + "/graphql"
        # Entered at once (websockets warns about a connection that is not), closed by __exit__.
        self.ws: ClientConnection = connect(
            url, subprotocols=[Subprotocol(p) for p in subprotocols], open_timeout=20, proxy=None
        ).__enter__()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.ws.close()

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def receive(self, timeout: float = 20) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout))

    def init(self) -> Socket:
        self.send({"type": "connection_init", "payload": {}})
        assert self.receive() == {"type": "connection_ack"}
        return self

    def subscribe(self, operation_id: str, query: str = DATA_CHANGED, **payload: Any) -> None:
        self.send({"id": operation_id, "type": "subscribe", "payload": {"query": query, **payload}})

    def ping(self) -> None:
        """A ping answered: the connection is open and the server has read everything sent before."""
        self.send({"type": "ping"})
        assert self.receive() == {"type": "pong"}

    def nothing_within(self, seconds: float) -> None:
        try:
            message = self.ws.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"nothing expected, got {message!r}")

    def closed(self, timeout: float = 20) -> tuple[int, str]:
        """The close code and reason the server sends (every message before it must have been read)."""
        try:
            message = self.ws.recv(timeout)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
        raise AssertionError(f"expected the server to close the connection, got {message!r}")
