"""The dataChanged subscription over graphql-transport-ws: `python -m gql serve` in real processes, a real
WebSocket client (tests/support/subscriptions.py), data changed as an operator changes it (the importer)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gql.importer import import_csv
from tests.support.servers import running_server
from tests.support.subscriptions import DATA_CHANGED, Socket, gauge, wait_for_subscribers
from tests.support.waiting import wait_until

TOKEN = "subscriptions-token"
DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]


def import_days(data_dir: Path, code: str, days: int) -> None:
    """Import `code` with closes on the first `days` of DAYS, as `python -m gql import` does."""
    prices = data_dir.parent / f"{code}-{days}.csv"
    prices.write_text("date,close\n" + "".join(f"{day},{100 + i}\n" for i, day in enumerate(DAYS[:days])))
    import_csv(prices, data_dir, code, f"Index {code}")


def data_of(base: str) -> dict:
    return httpx2.get(f"{base}/healthz", timeout=10).json()["data"]


def post(base: str, body: object, headers: dict | None = None) -> httpx2.Response:
    return httpx2.post(f"{base}/graphql", json=body, headers=headers or {}, timeout=60)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    import_days(data, "AAA", 2)
    import_days(data, "BBB", 2)
    return data


@pytest.fixture
def server(redis_server, data_dir: Path) -> Iterator[str]:
    with running_server(redis_server.url, GQL_DATA_DIR=str(data_dir)) as base:
        yield base


def event(socket: Socket, operation_id: str = "1") -> dict:
    message = socket.receive()
    assert message["type"] == "next" and message["id"] == operation_id, message
    assert set(message["payload"]) == {"data"}, message  # no errors, and no extensions (the version is in the data)
    return message["payload"]["data"]["dataChanged"]


# --- the protocol, and one event per new data version ---------------------------------------------------


def test_one_event_per_new_data_version_with_what_healthz_shows_afterwards(server, data_dir):
    with Socket(server) as socket:
        socket.init()
        socket.ping()
        socket.subscribe("1")
        wait_for_subscribers(server, 1)
        first = data_of(server)

        import_days(data_dir, "BBB", 3)
        change = event(socket)
        after = data_of(server)
        assert change == {"version": after["version"], "previousVersion": first["version"], "codes": ["BBB"],
                          "lastDate": after["lastDate"]}
        assert after["version"] != first["version"] and after["lastDate"] == "2024-01-04"
        socket.nothing_within(1.0)  # one import, one version, one event (however many file events it makes)

        import_days(data_dir, "CCC", 5)  # an added index
        added = event(socket)
        assert added["codes"] == ["CCC"] and added["previousVersion"] == after["version"]
        assert (added["version"], added["lastDate"]) == (data_of(server)["version"], "2024-01-08")

        (data_dir / "AAA.csv").unlink()  # a removed one
        removed = event(socket)
        assert removed["codes"] == ["AAA"] and removed["version"] == data_of(server)["version"]

        socket.send({"id": "1", "type": "complete"})
        wait_for_subscribers(server, 0)
        socket.ping()  # the connection stays open


def test_two_subscribers_both_hear_a_change(server, data_dir):
    with Socket(server) as one, Socket(server) as two:
        for socket in (one, two):
            socket.init().subscribe("s")
        wait_for_subscribers(server, 2)
        import_days(data_dir, "AAA", 4)
        heard = [event(one, "s"), event(two, "s")]
        assert heard[0] == heard[1]
        assert heard[0]["version"] == data_of(server)["version"] and heard[0]["codes"] == ["AAA"]


def test_a_refresh_sent_to_another_process_reaches_the_subscribers_of_this_one(redis_server, data_dir):
    # No file watchers: only the refresh can reveal the change. Process A gets no GraphQL request at all.
    shared = {"GQL_CACHE_PREFIX": f"fleet-{uuid.uuid4().hex[:8]}", "GQL_DATA_DIR": str(data_dir), "GQL_DATA_WATCH": "false",
              "GQL_ADMIN_TOKEN": TOKEN}
    with running_server(redis_server.url, **shared) as a, running_server(redis_server.url, **shared) as b, Socket(a) as socket:
        socket.init().subscribe("1")
        wait_for_subscribers(a, 1)
        before = data_of(a)["version"]
        import_days(data_dir, "AAA", 3)
        time.sleep(0.5)
        assert data_of(a)["version"] == data_of(b)["version"] == before  # nobody has looked at the files

        refreshed = post(b, {"query": "mutation { refreshCache { dataVersion } }"}, {"Authorization": f"Bearer {TOKEN}"})
        version = refreshed.json()["data"]["refreshCache"]["dataVersion"]
        assert version != before
        change = event(socket)
        assert change["version"] == version and change["previousVersion"] == before and change["codes"] == ["AAA"]
        assert data_of(a)["version"] == version and data_of(a)["lastDate"] == change["lastDate"] == "2024-01-04"


def test_a_connection_with_another_subprotocol_is_closed_4406(server):
    with Socket(server, subprotocols=("graphql-ws",)) as socket:  # the legacy protocol (subscriptions-transport-ws)
        assert socket.closed() == (4406, "Subprotocol not acceptable")


# --- limits ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(redis_server, tmp_path_factory) -> Iterator[str]:
    with running_server(
        redis_server.url, GQL_WS_MAX_CONNECTIONS_PER_CLIENT="2", GQL_WS_MAX_SUBSCRIPTIONS="2", GQL_WS_IDLE_SECONDS="1.5",
        GQL_WS_INIT_TIMEOUT="1", GQL_MAX_BODY_BYTES="65536",
    ) as base:
        yield base


@pytest.fixture
def idle_server(limited) -> str:
    """The limited server with no connection left open by an earlier test (the per-client count is its own)."""
    wait_until(lambda: gauge(limited, "gql_ws_connections") == 0, "earlier connections are gone")
    return limited


def test_connections_per_client_address(idle_server):
    with Socket(idle_server) as one, Socket(idle_server) as two:
        one.init()
        two.init()
        with Socket(idle_server) as third:
            assert third.closed() == (4429, "too many connections from this address: at most 2")
        one.ping()
        two.ping()
        one.ws.close()
        wait_until(lambda: gauge(idle_server, "gql_ws_connections") == 1, "the closed connection is counted out")
        with Socket(idle_server) as again:
            again.init().ping()
    assert gauge(idle_server, "gql_ws_refused_total") >= 1


def test_subscriptions_per_connection(idle_server):
    with Socket(idle_server) as socket:
        socket.init()
        socket.subscribe("1")
        socket.subscribe("2")
        socket.subscribe("3")
        refused = socket.receive()
        assert refused["id"] == "3" and refused["type"] == "error"
        [error] = refused["payload"]
        assert error["extensions"] == {"code": "TOO_MANY_SUBSCRIPTIONS"}
        assert error["message"].startswith("this connection has 2 subscriptions, the limit (GQL_WS_MAX_SUBSCRIPTIONS)")
        socket.send({"id": "1", "type": "complete"})
        socket.ping()
        socket.subscribe("3")  # room again, and the id is free after its error
        socket.subscribe("4")
        assert socket.receive()["id"] == "4"  # refused: 2 and 3 are listening
        wait_for_subscribers(idle_server, 2)


def test_a_connection_without_a_subscription_is_closed_when_idle(idle_server):
    with Socket(idle_server) as socket:
        socket.init()
        began = time.monotonic()
        assert socket.closed() == (4408, "no subscription for 1.5 s")
        assert time.monotonic() - began >= 1.3
    with Socket(idle_server) as socket:
        socket.init().subscribe("1")
        time.sleep(2.5)
        socket.ping()  # listening: not idle
        socket.send({"id": "1", "type": "complete"})
        began = time.monotonic()
        assert socket.closed() == (4408, "no subscription for 1.5 s")
        assert time.monotonic() - began >= 1.3


def test_connection_init_must_come_in_time(idle_server):
    with Socket(idle_server) as socket:
        began = time.monotonic()
        assert socket.closed() == (4408, "Connection initialisation timeout")
        assert time.monotonic() - began >= 0.9


def test_subscribe_before_connection_init_is_closed_4401(idle_server):
    with Socket(idle_server) as socket:
        socket.subscribe("1")
        assert socket.closed() == (4401, "Unauthorized")


def test_the_document_limits_apply_to_subscriptions_and_refuse_that_subscribe_alone(idle_server):
    aliases = "subscription { dataChanged { " + " ".join(f"v{i}: version" for i in range(21)) + " } }"
    depth = "subscription { dataChanged { version " + "{ a " * 11 + "}" * 11 + " } }"
    tokens = "subscription { dataChanged { " + "version " * 1000 + "} }"
    with Socket(idle_server) as socket:
        socket.init()
        for number, (query, message) in enumerate([
            (aliases, "21 aliases found. Allowed: 20"),
            (depth, "'anonymous' exceeds maximum operation depth of 10"),
            (tokens, "Syntax Error: Document contains more than 1000 tokens. Parsing aborted."),
        ]):
            socket.subscribe(str(number), query)
            refused = socket.receive()
            assert (refused["id"], refused["type"]) == (str(number), "error")
            assert {"message": message, "code": "QUERY_TOO_COMPLEX"} in [
                {"message": e["message"], "code": e["extensions"]["code"]} for e in refused["payload"]
            ], refused
        socket.subscribe("bad", "subscription { dataChanged { ticker } }")
        [error] = socket.receive()["payload"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED" and "ticker" in error["message"]
        socket.ping()  # refused subscribes do not close the connection
        # A syntax error does: the protocol's 4400 with the parser's message.
        socket.subscribe("broken", "subscription { dataChanged { ")
        assert socket.closed() == (4400, "Syntax Error: Expected Name, found <EOF>.")


def test_a_message_over_the_body_limit_closes_the_connection(idle_server):
    with Socket(idle_server) as socket:
        socket.init()
        socket.subscribe("1", "subscription { dataChanged { version } }" + " " * 65536)
        code, _ = socket.closed()
        assert code == 1009  # message too big (uvicorn's ws_max_size, which `serve` sets to GQL_MAX_BODY_BYTES)


def test_queries_and_mutations_are_sent_over_http(idle_server):
    with Socket(idle_server) as socket:
        socket.init()
        for number, query in enumerate(["{ indexes { code } }", "mutation { refreshCache { dataVersion } }"]):
            socket.subscribe(str(number), query)
            [error] = socket.receive()["payload"]
            assert error["extensions"] == {"code": "HTTP_REQUIRED"}
            assert "over HTTP: POST /graphql" in error["message"] and "carries subscriptions only" in error["message"]
        socket.ping()


def test_a_subscription_over_http_is_refused_with_a_code(idle_server):
    message = "a subscription is not served over HTTP: open a WebSocket to this URL (/graphql) with the graphql-transport-ws subprotocol"
    answers = [
        post(idle_server, {"query": DATA_CHANGED}),
        httpx2.get(f"{idle_server}/graphql", params={"query": DATA_CHANGED}, timeout=10),
        post(idle_server, [{"query": "{ indexes { code } }"}, {"query": DATA_CHANGED}]),
    ]
    for answer in answers:
        assert answer.status_code == 400 and answer.headers["cache-control"] == "no-store", answer.text
        [error] = answer.json()["errors"]
        assert error["extensions"] == {"code": "WEBSOCKET_REQUIRED"} and message in error["message"], error
    assert answers[2].json()["errors"][0]["message"].startswith("operation 2 of the batch: ")
