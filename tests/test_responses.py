"""Whole-response cache, HTTP caching and persisted queries, through the app with a real Redis."""

from __future__ import annotations

import gzip
import hashlib
import time
import uuid

import httpx2
import orjson
import pytest
from starlette.testclient import TestClient

from gql.asgi import JOIN_BELOW
from tests.support.http import ADMIN, CHART, REFRESH, YIELD, data_version_of, statuses
from tests.support.servers import running_server
from tests.support.waiting import wait_until

SMALL = '{ yieldThisYear(codes: ["HSI", "000300"]) { code yieldPct lastDate } }'


def drain(client: TestClient) -> None:
    client.portal.call(client.app.state.responses.drain)


def post(client: TestClient, query: str, headers: dict | None = None, **variables):
    response = client.post("/graphql", json={"query": query, "variables": variables}, headers=headers or {})
    drain(client)
    return response


def response_hits(client: TestClient) -> int:
    return client.app.state.responses.hits


def field_lookups(client: TestClient) -> int:
    cache = client.app.state.service.cache
    return sum(cache.computations.values())


def test_second_request_is_answered_from_stored_bytes(client):
    first = post(client, SMALL)
    assert statuses(first.json()) == ["MISS"] and response_hits(client) == 0
    computed = field_lookups(client)
    second = post(client, SMALL)
    assert response_hits(client) == 1 and field_lookups(client) == computed
    assert second.json()["data"] == first.json()["data"]
    assert statuses(second.json()) == ["HIT"]


def test_cache_report_stays_truthful_on_stored_answers(client):
    post(client, SMALL)
    time.sleep(0.3)
    entry = post(client, SMALL).json()["extensions"]["cache"][0]
    assert entry["path"] == "yieldThisYear" and entry["status"] == "HIT"
    assert 0.3 <= entry["ageSeconds"] < 5
    assert entry["ttlSeconds"] == pytest.approx(43200 - entry["ageSeconds"], abs=0.01)


def test_whitespace_and_comments_do_not_matter_but_variables_do(client):
    post(client, YIELD, codes=["HSI"])
    spaced = "# a comment\n" + YIELD.replace("{", " {\n  ").replace("}", "\n} ")
    assert statuses(post(client, spaced, codes=["HSI"]).json()) == ["HIT"] and response_hits(client) == 1
    post(client, YIELD, codes=["000300"])
    assert response_hits(client) == 1


def test_http_caching_headers_etag_and_304(client):
    first = post(client, SMALL)
    # Downstream caches may store it but must ask first (a 304 below); gql/downstream.py, tests/test_downstream.py.
    assert first.headers["cache-control"] == "public, no-cache"
    assert first.headers["surrogate-key"].split() == [f"{client.app.state.service.settings.cache_prefix}:yieldThisYear",
                                                      f"{client.app.state.service.settings.cache_prefix}:data:{first.json()['extensions']['dataVersion']}"]
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["age"] == "0"
    second = post(client, SMALL)  # a stored answer; the test client accepts gzip
    assert second.headers["etag"] == etag[:-1] + '-gz"' and second.headers["content-encoding"] == "gzip"
    assert post(client, SMALL, headers={"Accept-Encoding": "identity"}).headers["etag"] == etag
    not_modified = post(client, SMALL, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"].startswith(etag[:-1])
    assert post(client, SMALL, headers={"If-None-Match": '"something-else"'}).status_code == 200


def test_gzip_answers_are_valid_and_carry_the_same_data(client):
    post(client, CHART, codes=["HSI"], f="WEEKLY")
    plain = post(client, CHART, codes=["HSI"], f="WEEKLY")
    with client.stream("POST", "/graphql", json={"query": CHART, "variables": {"codes": ["HSI"], "f": "WEEKLY"}},
                       headers={"Accept-Encoding": "gzip"}) as streamed:
        assert streamed.headers["content-encoding"] == "gzip"
        assert streamed.headers["etag"].endswith('-gz"')
        raw = b"".join(streamed.iter_raw())
    body = orjson.loads(gzip.decompress(raw))
    assert body["data"] == plain.json()["data"]
    assert statuses(body) == ["HIT"]
    assert len(raw) < len(plain.content) / 2


def test_refresh_invalidates_stored_responses(client):
    variant = '{ yieldThisYear(asOf: "2024-06-28") { code yieldPct } }'
    post(client, SMALL)
    post(client, variant)
    assert post(client, REFRESH, headers=ADMIN).json()["data"]["refreshCache"]
    hits = response_hits(client)
    assert statuses(post(client, variant).json()) == ["REFRESHED"]
    assert statuses(post(client, SMALL).json()) == ["REFRESHED"]
    assert response_hits(client) == hits
    assert statuses(post(client, SMALL).json()) == ["HIT"] and response_hits(client) == hits + 1


def test_refresh_through_another_worker_invalidates_stored_responses(make_client):
    one = make_client()
    two = make_client()
    post(one, SMALL)
    post(two, SMALL)
    assert response_hits(two) == 1  # stored by one, served by two
    post(one, REFRESH, headers=ADMIN)
    assert statuses(post(two, SMALL).json()) == ["REFRESHED"]


def test_data_change_invalidates_stored_responses(make_client, tmp_path):
    from gql.data import IndexHistory, IndexMeta, make_closes, write_index_file

    def write(last: float) -> None:
        closes = make_closes(["2023-12-29", "2024-01-02"], [100.0, last])
        write_index_file(tmp_path, IndexHistory(IndexMeta("TEST", "Test", "imported"), closes))

    write(110.0)
    client = make_client(data_dir=tmp_path)
    query = "{ yieldThisYear { yieldPct } }"
    post(client, query)
    assert post(client, query).json()["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(10.0)
    before = data_version_of(client)
    write(120.0)
    wait_until(lambda: data_version_of(client) != before, "the server picks up the rewritten file")
    assert post(client, query).json()["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(20.0)


@pytest.mark.parametrize(
    "query",
    [
        '{ yieldThisYear(codes: ["NOPE"]) { code } }',  # errors
        "{ indexes { code } }",  # no cached field
        "{ __schema { queryType { name } } yieldThisYear { code } }",  # introspection
    ],
)
def test_what_is_never_stored(client, query):
    first = post(client, query)
    post(client, query)
    assert response_hits(client) == 0
    assert first.headers["cache-control"] == "no-store"


def test_mutations_are_never_stored(client):
    post(client, REFRESH, headers=ADMIN)
    second = post(client, REFRESH, headers=ADMIN)
    assert response_hits(client) == 0 and second.headers["cache-control"] == "no-store"


def test_get_queries_are_cached_too(client):
    params = {"query": SMALL}
    first = client.get("/graphql", params=params)
    drain(client)
    second = client.get("/graphql", params=params)
    assert second.status_code == 200 and response_hits(client) == 1
    assert second.json()["data"] == first.json()["data"]


def test_persisted_queries(client):
    digest = hashlib.sha256(SMALL.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    unknown = client.get("/graphql", params={"extensions": orjson.dumps(extensions).decode()})
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["message"] == "PersistedQueryNotFound"
    registered = client.post("/graphql", json={"query": SMALL, "extensions": extensions})
    assert registered.json()["data"]["yieldThisYear"]
    drain(client)
    by_hash = client.get("/graphql", params={"extensions": orjson.dumps(extensions).decode()})
    assert by_hash.status_code == 200 and by_hash.json()["data"] == registered.json()["data"]
    assert response_hits(client) == 1
    posted = client.post("/graphql", json={"extensions": extensions})
    assert posted.json()["data"] == registered.json()["data"]


def test_a_hash_this_process_has_seen_needs_no_redis_read(own_redis, make_client):
    """A hash names one text for ever: once a process has seen it, a hash-only GET (what the dashboard and Apollo
    send) resolves in the process; a hash it has not seen is still looked up in Redis."""
    client = make_client(redis_url=own_redis.url)
    seen, other = SMALL, "{ yieldThisYear { code } }"
    for text in (seen, other):  # both registered in Redis
        digest = hashlib.sha256(text.encode()).hexdigest()
        own_redis.client().set(client.app.state.responses.raw.keys.persisted_query(digest), text)
    asked = {"extensions": orjson.dumps({"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(seen.encode()).hexdigest()}}).decode()}
    first = client.get("/graphql", params=asked).json()  # read from Redis, then known here
    assert first["data"]["yieldThisYear"]
    own_redis.client().flushall()  # Redis forgot both
    again = client.get("/graphql", params=asked).json()
    assert again["data"] == first["data"]
    unseen = {"extensions": orjson.dumps({"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(other.encode()).hexdigest()}}).decode()}
    assert client.get("/graphql", params=unseen).json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_persisted_query_hash_must_match(client):
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}
    error = client.post("/graphql", json={"query": SMALL, "extensions": extensions}).json()["errors"][0]
    assert error["extensions"]["code"] == "PERSISTED_QUERY_HASH_MISMATCH"
    bad = client.post("/graphql", json={"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "x"}}})
    assert bad.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_INVALID"


def test_can_be_switched_off(make_client):
    client = make_client(response_cache=False)
    post(client, SMALL)
    second = post(client, SMALL)
    assert statuses(second.json()) == ["HIT"] and response_hits(client) == 0
    assert second.headers["cache-control"].startswith("public")


def test_without_redis_answers_come_from_execution(own_redis, make_client):
    client = make_client(redis_url=own_redis.url)
    post(client, SMALL)
    assert response_hits(client) == 0
    own_redis.stop()
    body = post(client, SMALL).json()
    assert "errors" not in body and body["data"]["yieldThisYear"]


def test_while_redis_is_away_answers_are_kept_in_process_and_a_refresh_still_holds(own_redis, make_client):
    client = make_client(redis_url=own_redis.url, redis_breaker_failures=1, redis_retry_seconds=0.3)
    post(client, SMALL)
    own_redis.stop()
    first = post(client, SMALL)  # Redis fails: the breaker opens; answered with the answer kept from before
    assert client.app.state.service.cache.state.value == "degraded" and "errors" not in first.json()
    post(client, SMALL)  # executed in this process, and kept
    hits = response_hits(client)
    second = post(client, SMALL)
    third = post(client, SMALL, headers={"accept-encoding": "gzip"})
    assert response_hits(client) == hits + 2  # from the bytes kept in this process
    assert second.json()["data"] == third.json()["data"] == first.json()["data"]
    assert third.headers["content-encoding"] == "gzip" and statuses(third.json()) == ["HIT"]
    # A refresh while Redis is away: the kept answer is not served any more.
    # Done in this process, and said to reach it alone.
    (refused,) = client.post("/graphql", json={"query": REFRESH}, headers=ADMIN).json()["errors"]
    assert refused["extensions"]["code"] == "REDIS_UNAVAILABLE" and "reached only the server process" in refused["message"]
    after = post(client, SMALL)
    # Computed again (MISS rather than REFRESHED: the kept answer stood in, so no entry of this process predates it).
    assert statuses(after.json()) in (["REFRESHED"], ["MISS"]) and response_hits(client) == hits + 2
    # Redis back: the kept answers are dropped (other processes may have refreshed meanwhile).
    own_redis.start()
    # The breaker's probe runs in the background too (the view's keeper): wait for it, bounded, rather than
    # guess how long it takes on a loaded machine.
    wait_until(lambda: client.app.state.service.cache.state.value == "ok", "the breaker closed again")
    back = post(client, SMALL)
    assert client.app.state.service.cache.state.value == "ok" and statuses(back.json()) == ["MISS"]
    assert not client.app.state.responses._degraded


def test_a_large_hit_sent_in_parts_arrives_whole_over_http(redis_server):
    """A stored body above gql.asgi.JOIN_BELOW goes out as several body messages (no copy of it per hit): uvicorn
    must still send one well-formed answer, its Content-Length the sum, plain and gzip."""
    body = {"query": CHART, "variables": {"f": "DAILY"}}
    prefix = f"parts-{uuid.uuid4().hex[:8]}"
    with running_server(redis_server.url, GQL_CACHE_PREFIX=prefix) as base, httpx2.Client(base_url=base, timeout=60) as http:
        missed = http.post("/graphql", json=body, headers={"accept-encoding": "identity"})
        wait_until(lambda: statuses(http.post("/graphql", json=body).json()) == ["HIT"], "a hit")
        plain = http.post("/graphql", json=body, headers={"accept-encoding": "identity"})
        zipped = http.post("/graphql", json=body, headers={"accept-encoding": "gzip"})
    assert len(plain.content) > JOIN_BELOW and statuses(plain.json()) == ["HIT"]
    assert int(plain.headers["content-length"]) == len(plain.content)
    assert plain.json()["data"] == missed.json()["data"]
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json()["data"] == missed.json()["data"]
    assert int(zipped.headers["content-length"]) == zipped.num_bytes_downloaded
