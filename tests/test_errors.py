"""gql/errors.py through real GraphQL answers: every kind of error gets its `extensions.code`, an
unexpected exception is masked (the client gets a request id, the log gets the traceback)."""

from __future__ import annotations

import logging
import re

import pytest

from gql import analytics
from gql.data import PriceStore
from tests.support.http import YIELD, error_of

ALIASES_OVER_THE_LIMIT = "{ " + " ".join(f"a{i}: __typename" for i in range(21)) + " }"  # the default limit is 20
CACHED_FIELDS_OVER_THE_LIMIT = "{ " + " ".join(f"y{i}: yieldThisYear {{ code }}" for i in range(11)) + " }"  # 10


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"query": "{ indexes { "}, "GRAPHQL_PARSE_FAILED"),
        ({"query": "{ nope }"}, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": "query($d: Date) { yieldThisYear(asOf: $d) { code } }", "variables": {"d": "2020-02-30"}}, "BAD_USER_INPUT"),
        ({"query": '{ yieldThisYear(asOf: "soon") { code } }'}, "BAD_USER_INPUT"),
        ({"query": '{ yieldThisYear(codes: ["X"]) { code } }'}, "BAD_USER_INPUT"),
        ({"query": "{ indexChart(frequency: HOURLY) { start } }"}, "BAD_USER_INPUT"),
        # Parse and validation errors graphql-core raises, and those of the limiters.
        ({"query": "{ indexes { nope } }"}, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": "{ indexes }"}, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": "{ yieldThisYear(codes: 5) { code } }"}, "BAD_USER_INPUT"),
        ({"query": "query($c: [String!]) { yieldThisYear(codes: $c) { code } }", "variables": {"c": 5}}, "BAD_USER_INPUT"),
        ({"query": "query($f: Frequency!) { indexChart(frequency: $f) { start } }", "variables": {"f": "HOURLY"}}, "BAD_USER_INPUT"),
        ({"query": "query($d: Date) { yieldThisYear(asOf: $d) { code } }", "variables": {"d": 5}}, "BAD_USER_INPUT"),
        ({"query": ALIASES_OVER_THE_LIMIT}, "QUERY_TOO_COMPLEX"),
        ({"query": CACHED_FIELDS_OVER_THE_LIMIT}, "QUERY_TOO_COMPLEX"),
        # Errors the API raises itself keep their own code.
        ({"query": "mutation { refreshCache { refreshed { target } } }"}, "UNAUTHENTICATED"),
    ],
)
def test_every_error_has_a_stable_code(client, payload, code):
    error = client.post("/graphql", json=payload).json()["errors"][0]
    assert error["extensions"]["code"] == code


def test_each_answer_of_a_batch_has_its_own_codes(client):
    response = client.post("/graphql", json=[{"query": "{ indexes { "}, {"query": '{ yieldThisYear(codes: ["X"]) { code } }'},
                                             {"query": "{ indexes { code } }"}])
    assert response.status_code == 200
    parse, bad_input, fine = response.json()
    assert [e["extensions"]["code"] for e in parse["errors"]] == ["GRAPHQL_PARSE_FAILED"]
    assert [e["extensions"]["code"] for e in bad_input["errors"]] == ["BAD_USER_INPUT"]
    assert "errors" not in fine and fine["data"]["indexes"]


@pytest.mark.parametrize(
    ("payload", "wrong", "allowed"),
    [
        ({"query": "{ indexChart(frequency: HOURLY) { start } }"}, "HOURLY", "allowed: DAILY, WEEKLY, MONTHLY"),
        ({"query": "query($f: Frequency!) { indexChart(frequency: $f) { start } }", "variables": {"f": "hourly"}},
         "hourly", "allowed: DAILY, WEEKLY, MONTHLY"),
        ({"query": "mutation { refreshCache(targets: [NOPE]) { refreshed { target } } }"}, "NOPE",
         "allowed: INDEX_CHART, YIELD_THIS_YEAR"),
    ],
)
def test_a_wrong_enum_value_is_answered_with_the_allowed_ones(client, payload, wrong, allowed):
    error = error_of(client.post("/graphql", json=payload))
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert f"Value '{wrong}' does not exist" in error["message"] and error["message"].endswith(allowed)


# --- a failed computation, and an unexpected exception ---------------------------------------------


def test_unexpected_errors_are_masked(client, monkeypatch):
    def broken(*args):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(analytics, "yields_this_year", broken)
    response = client.post("/graphql", json={"query": YIELD})
    assert response.status_code == 200
    assert "secret internal detail" not in response.text
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "COMPUTATION_FAILED"
    assert error["message"].startswith("computing yieldThisYear failed and no earlier result is cached")


def test_unexpected_errors_carry_the_request_id_and_log_the_traceback(client, monkeypatch, caplog):
    def broken(*args):
        raise KeyError("internal detail 42")

    monkeypatch.setattr(analytics, "yields_this_year", broken)
    with caplog.at_level(logging.ERROR):
        response = client.post("/graphql", json={"query": YIELD}, headers={"X-Request-ID": "req-77"})
    error = error_of(response)
    assert response.headers["x-request-id"] == "req-77"
    assert error["extensions"] == {"code": "COMPUTATION_FAILED"}
    assert "req-77" in error["message"] and "internal detail" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if r.exc_info or "internal detail 42" in r.getMessage()]
    assert logged and all(r.request_id == "req-77" for r in logged)


@pytest.fixture
def broken_store(monkeypatch: pytest.MonkeyPatch) -> str:
    """Reading the data set raises: a bug of ours, not of the request (`indexes` reads it outside any cache)."""
    secret = "secret detail 9 from /srv/data"

    def broken(self):
        raise RuntimeError(secret)

    monkeypatch.setattr(PriceStore, "__iter__", broken)
    return secret


def test_an_unexpected_exception_is_masked_with_the_request_id(client, broken_store):
    response = client.post("/graphql", json={"query": "{ indexes { code } }"}, headers={"X-Request-ID": "rid-5"})
    error = error_of(response)
    assert error["message"] == "Internal error; the server log has the details under request id rid-5"
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "rid-5"}
    assert error["path"] == ["indexes"] and response.json()["data"] is None
    assert response.headers["x-request-id"] == "rid-5"
    assert broken_store not in response.text and "RuntimeError" not in response.text and "Traceback" not in response.text
    # Without an id of the client's, the generated one is named, the one the response header carries.
    generated = client.post("/graphql", json={"query": "{ indexes { code } }"})
    error = error_of(generated)
    assert error["extensions"]["requestId"] == generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{24}", error["extensions"]["requestId"])


def test_an_unexpected_exception_is_logged_with_its_traceback_under_the_request_id(client, broken_store, caplog):
    with caplog.at_level(logging.ERROR):
        client.post("/graphql", json={"query": "{ indexes { code } }"}, headers={"X-Request-ID": "rid-6"})
    [logged] = [r for r in caplog.records if r.exc_info]
    assert logged.levelno == logging.ERROR and logged.request_id == "rid-6"
    assert isinstance(logged.exc_info[1], RuntimeError) and str(logged.exc_info[1]) == broken_store


def test_a_spread_of_an_unknown_fragment_is_a_validation_error(client):
    # Strawberry's depth limiter looks the fragment up first (a KeyError); the rule that knows says why instead.
    [error] = client.post("/graphql", json={"query": "query { ...F }"}).json()["errors"]
    assert error["message"] == "Unknown fragment 'F'."
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
