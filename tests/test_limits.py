"""gql/limits.py and the other request limits: each refuses one over and accepts exactly at the limit,
with a message naming the limit. (tests/test_security.py checks that refusals come before any
computation or Redis call.)"""

from __future__ import annotations

import pytest
from graphql import FragmentDefinitionNode, OperationDefinitionNode, parse

from gql.limits import cached_field_nodes
from tests.support.http import error_of

CODES = ["000300", "000905", "000922", "000932", "000827", "000986", "399971", "000985", "000991", "HSI"]  # the sample's


def refused(response) -> str:
    """The message of a QUERY_TOO_COMPLEX refusal."""
    error = error_of(response)
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX", error
    return error["message"]


def accepted(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body


def test_tokens(make_client):
    client = make_client(max_tokens=30)

    def query(codes: int) -> dict:
        return {"query": "{ indexes { " + " ".join(["code"] * codes) + " } }"}  # codes + 5 tokens

    accepted(client.post("/graphql", json=query(25)))
    assert "more than 30 tokens" in refused(client.post("/graphql", json=query(26)))


def test_aliases(make_client):
    client = make_client(max_aliases=3)

    def query(aliases: int) -> dict:
        return {"query": "{ " + " ".join(f"a{i}: __typename" for i in range(aliases)) + " }"}

    accepted(client.post("/graphql", json=query(3)))
    assert refused(client.post("/graphql", json=query(4))) == "4 aliases found. Allowed: 3"


def test_depth(make_client):
    client = make_client(max_depth=2)
    accepted(client.post("/graphql", json={"query": "{ indexChart { series { code } } }"}))  # depth 2
    message = refused(client.post("/graphql", json={"query": "{ indexChart { series { points { date } } } }"}))
    assert "exceeds maximum operation depth of 2" in message


def test_cached_fields(make_client):
    client = make_client(max_cached_fields=3)

    def query(fields: int) -> dict:
        return {"query": "{ " + " ".join(f"y{i}: yieldThisYear(codes: [\"HSI\"]) {{ code }}" for i in range(fields)) + " }"}

    assert len(accepted(client.post("/graphql", json=query(3)))["extensions"]["cache"]) == 3
    message = refused(client.post("/graphql", json=query(4)))
    assert message.startswith("this operation asks for 4 cached fields (indexChart, yieldThisYear); the limit is 3 per operation")


@pytest.mark.parametrize("via_variable", [False, True])
def test_codes_per_field(make_client, via_variable):
    client = make_client(max_codes=5)

    def payload(codes: list[str]) -> dict:
        if via_variable:
            return {"query": "query($c: [String!]) { yieldThisYear(codes: $c) { code } }", "variables": {"c": codes}}
        return {"query": "{{ yieldThisYear(codes: [{}]) {{ code }} }}".format(", ".join(f'"{c}"' for c in codes))}

    body = accepted(client.post("/graphql", json=payload(CODES[:5])))
    assert [row["code"] for row in body["data"]["yieldThisYear"]] == CODES[:5]
    assert refused(client.post("/graphql", json=payload(CODES[:6]))) == "yieldThisYear asks for 6 codes; the limit is 5 per field"


def test_codes_left_out_or_null_are_not_counted_against_the_limit(make_client):
    client = make_client(max_codes=5)
    # No list asked for: all ten indexes, whatever the limit (it bounds what a client lists).
    assert len(accepted(client.post("/graphql", json={"query": "{ yieldThisYear { code } }"}))["data"]["yieldThisYear"]) == 10
    null = {"query": "query($c: [String!]) { yieldThisYear(codes: $c) { code } }", "variables": {"c": None}}
    assert len(accepted(client.post("/graphql", json=null))["data"]["yieldThisYear"]) == 10


def test_a_fragment_counts_once_per_place_it_is_spread(make_client):
    client = make_client(max_cached_fields=3)
    twice = "query { ...Y a: indexChart { start } ...Y } fragment Y on Query { yieldThisYear { code } }"
    # Spread twice: two invocations of the field (the answer merges them, the limit counts them).
    accepted(client.post("/graphql", json={"query": twice}))
    three = "query { ...Y ... on Query { b: yieldThisYear { code } } ...Y } fragment Y on Query { y: indexChart { start } }"
    accepted(client.post("/graphql", json={"query": three}))
    four = three.replace("...Y }", "...Y ...Y }", 1)
    assert "asks for 4 cached fields" in refused(client.post("/graphql", json={"query": four}))


def test_only_the_operation_asked_for_is_counted(make_client):
    client = make_client(max_cached_fields=1)
    document = "query Small { yieldThisYear { code } } query Big { a: yieldThisYear { code } b: indexChart { start } }"
    accepted(client.post("/graphql", json={"query": document, "operationName": "Small"}))
    assert "asks for 2 cached fields" in refused(client.post("/graphql", json={"query": document, "operationName": "Big"}))


def test_cached_field_nodes_finds_every_invocation():
    document = parse(
        "query { indexes { code } a: yieldThisYear { code } ... on Query { b: indexChart { start } } ...F ...F } "
        "fragment F on Query { c: yieldThisYear { code } }"
    )
    [operation] = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    found = list(cached_field_nodes(operation.selection_set, fragments, frozenset({"yieldThisYear", "indexChart"})))
    assert [(n.alias.value if n.alias else n.name.value) for n in found] == ["a", "b", "c", "c"]
    assert list(cached_field_nodes(None, fragments, frozenset({"yieldThisYear"}))) == []


# --- limits outside the GraphQL layer: batch size (Strawberry) and body size (gql/app.py) -----------------


def test_batch_size(make_client):
    client = make_client(max_batch=2)
    at = client.post("/graphql", json=[{"query": "{ __typename }"}] * 2)
    assert at.status_code == 200 and [answer["data"] for answer in at.json()] == [{"__typename": "Query"}] * 2
    over = client.post("/graphql", json=[{"query": "{ __typename }"}] * 3)
    assert over.status_code == 400
    assert over.json()["errors"] == [{
        "message": "a batch holds at most 2 operations (GQL_MAX_BATCH); this one holds 3: send the rest in another request",
        "extensions": {"code": "BATCH_TOO_LARGE"},
    }]


def test_body_size(make_client):
    client = make_client(max_body_bytes=2000)

    def body(size: int) -> bytes:
        start, end = b'{"query": "{ __typename }", "variables": {"pad": "', b'"}}'
        return start + b"x" * (size - len(start) - len(end)) + end

    at = client.post("/graphql", content=body(2000), headers={"content-type": "application/json"})
    assert at.status_code == 200 and at.json()["data"] == {"__typename": "Query"}
    over = client.post("/graphql", content=body(2001), headers={"content-type": "application/json"})
    assert over.status_code == 413
    assert over.json()["errors"][0] == {"message": "request body is larger than 2000 bytes, the limit",
                                        "extensions": {"code": "PAYLOAD_TOO_LARGE"}}
