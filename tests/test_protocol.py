"""GraphQL over HTTP: a request that is not well-formed is a JSON GraphQL error with a code, a message
saying what to send, and the status the spec gives for application/json (gql/protocol.py)."""

from __future__ import annotations

import pytest

from tests.support.http import ADMIN, YIELD

QUERY = "{ indexes { code } }"
SEND = 'POST /graphql takes Content-Type: application/json with a JSON body such as {"query": "{ indexes { code } }", "variables": {}}'


def refusal(response, status: int, code: str) -> str:
    """The one error of a refused request (no data), after checking its status, type and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"] == {"code": code}
    return error["message"]


@pytest.mark.parametrize(
    "headers, body, found",
    [
        ({}, b'{"query": "{ indexes { code } }"}', "this request has no Content-Type"),
        ({"content-type": "text/plain"}, b'{"query": "{ indexes { code } }"}', 'this request has Content-Type "text/plain"'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"query=%7B%20indexes%20%7B%20code%20%7D%20%7D",
         'this request has Content-Type "application/x-www-form-urlencoded"'),
        ({"content-type": "application/graphql"}, QUERY.encode(),
         'application/graphql (the bare document as the body) is not accepted: put the document in the body\'s "query"'),
    ],
    ids=["no content type", "text/plain", "form", "application/graphql"],
)
def test_a_body_that_is_not_json_is_415(client, headers, body, found):
    response = client.post("/graphql", content=body, headers=headers)
    assert refusal(response, 415, "UNSUPPORTED_MEDIA_TYPE") == f"{SEND}; {found}"


def test_json_with_a_charset_is_json(client):
    response = client.post("/graphql", content=b'{"query": "{ indexes { code } }"}', headers={"content-type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 200 and response.json()["data"]["indexes"][0] == {"code": "000300"}


@pytest.mark.parametrize(
    "payload, message",
    [
        ({}, 'the request has no `query`: send the GraphQL document in it, as in {"query": "{ indexes { code } }", "variables": {}}'),
        ({"query": 5}, "`query` must be a string holding a GraphQL document; got a number 5"),
        ({"query": QUERY, "variables": [1]}, '`variables` must be a JSON object of variable values, e.g. {"codes": ["HSI"]}; got an array [1]'),
        ({"query": QUERY, "variables": "x"}, '`variables` must be a JSON object of variable values, e.g. {"codes": ["HSI"]}; got a string "x"'),
        ({"query": QUERY, "operationName": 3}, "`operationName` must be a string naming an operation of the document (or null); got a number 3"),
        ({"query": QUERY, "extensions": "x"}, '`extensions` must be a JSON object (or null); got a string "x"'),
    ],
    ids=["{}", "query not a string", "variables an array", "variables a string", "operationName a number", "extensions a string"],
)
def test_parameters_of_the_wrong_type_are_400(client, payload, message):
    assert refusal(client.post("/graphql", json=payload), 400, "BAD_REQUEST") == message


def test_a_body_that_is_not_an_operation_is_400(client):
    message = refusal(client.post("/graphql", json=[1]), 400, "BAD_REQUEST")
    assert message.startswith("the request body must be a JSON object such as") and message.endswith("got an array [1]")
    message = refusal(client.post("/graphql", content=b"{", headers={"content-type": "application/json"}), 400, "BAD_REQUEST")
    assert message.startswith("the request body is not valid JSON in UTF-8")


def test_an_unknown_operation_name_is_a_graphql_error(client):
    # A well-formed request: 200 under application/json, the error says which operations there are.
    response = client.post("/graphql", json={"query": "query A { indexes { code } } query B { indexes { name } }", "operationName": "C"})
    assert refusal(response, 200, "OPERATION_RESOLUTION_FAILURE") == 'the document has no operation named "C"; its operations: A, B'


def test_two_operations_without_an_operation_name_run_neither(client):
    response = client.post("/graphql", json={"query": "query A { indexes { code } } query B { indexes { name } }"})
    assert refusal(response, 200, "OPERATION_RESOLUTION_FAILURE") == (
        "the document holds 2 operations (A, B): name the one to run in `operationName`"
    )
    chosen = client.post("/graphql", json={"query": "query A { indexes { code } } query B { indexes { name } }", "operationName": "B"})
    assert chosen.json()["data"]["indexes"][0] == {"name": "CSI 300 (沪深300)"}


def test_two_cacheable_operations_without_a_name_are_refused_too(client):
    query = "query A { yieldThisYear { code } } query B { yieldThisYear { yieldPct } }"
    assert refusal(client.post("/graphql", json={"query": query}), 200, "OPERATION_RESOLUTION_FAILURE").startswith("the document holds 2")
    assert client.post("/graphql", json={"query": query, "operationName": "A"}).json()["extensions"]["cache"][0]["status"] in {"MISS", "HIT"}


def test_a_document_of_fragments_only_is_refused(client):
    response = client.post("/graphql", json={"query": "fragment F on Query { indexes { code } }"})
    assert refusal(response, 200, "OPERATION_RESOLUTION_FAILURE") == (
        "the document holds no operation (only fragments): add one, e.g. query { ...F }"
    )


def test_a_batch_over_the_limit_names_the_limit(make_client):
    client = make_client(max_batch=2)
    message = refusal(client.post("/graphql", json=[{"query": QUERY}] * 3), 400, "BATCH_TOO_LARGE")
    assert message == "a batch holds at most 2 operations (GQL_MAX_BATCH); this one holds 3: send the rest in another request"


def test_every_operation_of_a_batch_is_checked(client):
    response = client.post("/graphql", json=[{"query": QUERY}, {"query": QUERY, "variables": 1}])
    assert refusal(response, 400, "BAD_REQUEST").startswith("operation 2 of the batch: `variables` must be a JSON object")
    response = client.post("/graphql", json=[{"query": QUERY}, {"query": "query A { __typename } query B { __typename }"}])
    assert refusal(response, 200, "OPERATION_RESOLUTION_FAILURE").startswith("operation 2 of the batch: the document holds 2 operations")
    assert refusal(client.post("/graphql", json=[]), 400, "BAD_REQUEST").startswith("the batch is empty")


def test_a_mutation_over_get_is_405(client):
    response = client.get("/graphql", params={"query": "mutation { refreshCache { dataVersion } }"}, headers=ADMIN)
    assert refusal(response, 405, "METHOD_NOT_ALLOWED") == "a mutation is sent with POST; GET runs queries only"
    assert response.headers["allow"] == "POST"


def test_other_methods_are_405(client):
    response = client.put("/graphql", json={"query": QUERY})
    assert refusal(response, 405, "METHOD_NOT_ALLOWED") == '/graphql takes GET (queries) and POST (queries and mutations), not "PUT"'
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("name", ["extensions", "variables"])
@pytest.mark.parametrize("with_query", [True, False], ids=["with a query", "alone"])
def test_a_get_parameter_that_is_not_json_is_named(client, name, with_query):
    params = {name: "notjson", **({"query": QUERY} if with_query else {})}
    # As curl asks (Accept: */*): the GraphiQL page is only for a GET with no GraphQL parameter at all.
    message = refusal(client.get("/graphql", params=params, headers={"accept": "*/*"}), 400, "BAD_REQUEST")
    assert message.startswith(f'the `{name}` parameter is not JSON: "notjson"; send it as a URL-encoded JSON object, e.g. {name}=')


def test_a_get_without_a_query_says_how_to_ask(client):
    message = refusal(client.get("/graphql", headers={"accept": "application/json"}), 400, "BAD_REQUEST")
    assert message.startswith("GET /graphql needs a `query` parameter")
    page = client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


# --- what errors echo of the input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, shown",
    [("30/01/2021", '"30/01/2021"'), (20210130, "20210130"), ({"y": 1}, '{"y":1}'), ("20210130", '"20210130"')],
    ids=["day first", "integer", "object", "basic ISO format"],
)
def test_a_date_says_yyyy_mm_dd_and_shows_the_value_as_sent(client, value, shown):
    [error] = client.post("/graphql", json={"query": YIELD, "variables": {"asOf": value}}).json()["errors"]
    assert error["message"] == f"Variable '$asOf' has invalid value: a Date is a string \"YYYY-MM-DD\", e.g. \"2021-01-29\"; got {shown}"
    assert error["extensions"]["code"] == "BAD_USER_INPUT"


def test_a_date_literal_and_an_impossible_day(client):
    [error] = client.post("/graphql", json={"query": '{ yieldThisYear(asOf: "30/01/2021") { code } }'}).json()["errors"]
    assert error["message"] == 'a Date is a string "YYYY-MM-DD", e.g. "2021-01-29"; got "30/01/2021"'
    [error] = client.post("/graphql", json={"query": '{ yieldThisYear(asOf: "2026-02-30") { code } }'}).json()["errors"]
    assert error["message"] == '"2026-02-30" is not a day of the calendar; a Date is "YYYY-MM-DD", e.g. "2021-01-29"'


def test_a_wrong_variable_value_is_shown_as_json(client):
    query = "query($c: [String!]) { yieldThisYear(codes: $c) { code } }"
    [error] = client.post("/graphql", json={"query": query, "variables": {"c": [{"a": True}]}}).json()["errors"]
    assert error["message"] == "Variable '$c' has invalid value at [0]: String cannot represent a non string value: {\"a\":true}"


def test_a_long_unknown_code_is_cut_in_the_message(client):
    [error] = client.post("/graphql", json={"query": YIELD, "variables": {"codes": ["X" * 5000]}}).json()["errors"]
    assert error["message"].startswith(f'unknown index code "{"X" * 59}... (5002 characters); known codes: 000300')
    assert len(error["message"]) < 300
    message = refusal(client.post("/graphql", json={"query": QUERY, "operationName": "Y" * 5000}), 200, "OPERATION_RESOLUTION_FAILURE")
    assert len(message) < 200 and "(5002 characters)" in message
