"""The service through the clients frontends use: Apollo Client and urql, in Node, against `python -m gql serve`.

The scripts in tests/clients (packages pinned in its package-lock.json, installed by `make test`) run four
scenarios each and print what they saw; this file asserts on it. See scenarios() in tests/clients/common.mjs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx2
import pytest

from gql import errors
from tests.support.node import INSTALL, run_client, without_typename
from tests.support.servers import running_server

TOKEN = "clients-token"
# Apollo Client sends the query of a persisted-query miss in a POST body (its "#7456"); urql keeps to GET.
REGISTERED_BY = {"apollo": "POST", "urql": "GET"}
ERROR_WRAPPER = {"apollo": "CombinedGraphQLErrors", "urql": "CombinedError"}
SERVICE_CODES = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url, GQL_ADMIN_TOKEN=TOKEN) as base:
        yield base


@pytest.fixture(scope="module", params=["apollo", "urql"])
def seen(request, server) -> dict:
    """What tests/clients/<client>.mjs saw, run once per client."""
    return run_client(request.param, server, GQL_ADMIN_TOKEN=TOKEN)


def only_hash(sent: dict) -> str:
    """The hash of a request that names its persisted query by hash alone."""
    assert "query" not in sent, sent
    digest = sent["extensions"]["persistedQuery"]["sha256Hash"]
    assert len(digest) == 64 and int(digest, 16) >= 0
    return digest


def test_queries_with_variables_answer_as_a_plain_post(seen, server):
    for name in ("yield", "chart"):
        scenario = seen["variables"][name]
        [request] = scenario["requests"]
        assert request["sent"]["variables"] == scenario["variables"] and request["errors"] == []
        plain = httpx2.post(f"{server}/graphql", json={"query": scenario["query"], "variables": scenario["variables"]}, timeout=60)
        assert plain.status_code == 200 and "errors" not in plain.json()
        assert without_typename(scenario["data"]) == plain.json()["data"]
    [hsi] = seen["variables"]["yield"]["data"]["yieldThisYear"]
    assert hsi["code"] == "HSI" and hsi["lastDate"] == "2026-06-30" and isinstance(hsi["yieldPct"], float)
    chart = seen["variables"]["chart"]["data"]["indexChart"]
    assert (chart["start"], chart["end"]) == ("2024-01-01", "2024-03-31")
    assert [s["code"] for s in chart["series"]] == ["000300", "HSI"] and all(len(s["points"]) == 13 for s in chart["series"])


def test_automatic_persisted_queries_over_get(seen):
    client, persisted = seen["client"], seen["persisted"]
    assert len(persisted["first"]["requests"]) == 2, persisted["first"]["requests"]
    miss, registered = persisted["first"]["requests"]
    assert miss["method"] == "GET" and not miss["hasData"]
    assert miss["errors"] == [{"message": "PersistedQueryNotFound", "code": "PERSISTED_QUERY_NOT_FOUND"}]
    assert miss["cacheControl"] == "no-store"  # a CDN must not keep the miss
    digest = only_hash(miss["sent"])
    # The client sends the query (as it printed it, __typename added) with the same hash, and gets data.
    assert registered["method"] == REGISTERED_BY[client]
    assert hashlib.sha256(registered["sent"]["query"].encode()).hexdigest() == digest
    assert registered["sent"]["extensions"]["persistedQuery"]["sha256Hash"] == digest
    assert registered["hasData"] and registered["errors"] == [] and persisted["first"]["error"] is None
    # Run again: one GET by hash alone, answered with data that a CDN may cache.
    assert len(persisted["second"]["requests"]) == 1, persisted["second"]["requests"]
    [by_hash] = persisted["second"]["requests"]
    assert by_hash["method"] == "GET" and only_hash(by_hash["sent"]) == digest
    assert by_hash["hasData"] and by_hash["errors"] == [] and by_hash["cacheControl"] == "public, no-cache"
    assert persisted["second"]["data"] == persisted["first"]["data"]
    assert [y["code"] for y in persisted["first"]["data"]["yieldThisYear"]] == ["HSI"]


@pytest.mark.parametrize(("case", "mentioned"), [("badDate", "not-a-date"), ("unknownCode", '"NOPE"')])
def test_bad_arguments_surface_a_readable_code(seen, case, mentioned):
    error = seen["errors"][case]
    assert error["wrapper"] == ERROR_WRAPPER[seen["client"]]
    assert error["code"] in SERVICE_CODES and error["code"] == errors.BAD_USER_INPUT
    assert mentioned in error["message"]
    [request] = error["requests"]
    assert request["status"] == 200 and request["errors"][0]["code"] == error["code"]


def test_after_refresh_cache_the_client_gets_fresh_answers(seen):
    refresh = seen["refresh"]
    [mutation] = refresh["mutation"]["requests"]
    assert mutation["method"] == "POST" and mutation["errors"] == []
    assert [r["target"] for r in refresh["mutation"]["data"]["refreshCache"]["refreshed"]] == ["INDEX_CHART", "YIELD_THIS_YEAR"]
    before, after = refresh["before"], refresh["after"]
    for policy in ("networkOnly", "cacheAndNetwork"):
        # Over a second old before the refresh; recomputed (age reset) after it, read through the client.
        [old] = before[policy]["extensions"]["cache"]
        [new] = after[policy]["extensions"]["cache"]
        assert old["status"] == "HIT" and old["ageSeconds"] >= 1.0, old
        assert new["status"] in {"REFRESHED", "MISS"} and new["ageSeconds"] < old["ageSeconds"], new
        assert len(after[policy]["requests"]) == 1
    assert after["networkOnly"]["data"] == before["networkOnly"]["data"]
    # cache-first answers from the client's own cache without asking: why a refresh needs the policies above.
    assert after["cacheFirst"]["requests"] == []
    assert after["cacheFirst"]["data"] == before["cacheAndNetwork"]["data"]
    # cache-and-network: the cached result first, then the network's (the synthetic data is the same).
    results = after["cacheAndNetwork"]["results"]
    assert results[0] == {"data": before["cacheAndNetwork"]["data"], "settled": False}
    assert results[-1] == {"data": before["cacheAndNetwork"]["data"], "settled": True}


def test_missing_packages_fail_with_what_to_do(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="npm ci --prefix tests/clients \\(make test does it\\)") as failure:
        run_client("apollo", "http://127.0.0.1:9", clients=tmp_path)
    assert INSTALL in str(failure.value)
