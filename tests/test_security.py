"""Safe to expose: auth, cost limits before any work, error codes, request ids, production switches."""

from __future__ import annotations

import logging
import re

import pytest
from starlette.testclient import TestClient

from gql.app import create_app
from gql.config import ConfigError, Settings
from tests.support.http import ADMIN, ADMIN_TOKEN, REFRESH, YIELD, error_of, gql, statuses
from tests.support.settings import with_settings

TOKEN = ADMIN_TOKEN


def redis_keys(redis_server, settings: Settings) -> list[bytes]:
    return redis_server.client().keys(f"{settings.cache_prefix}:*")


def computations(client: TestClient) -> int:
    return sum(client.app.state.service.cache.computations.values())


# --- refreshCache auth ----------------------------------------------------------------------------


def test_token_from_a_file(make_client, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("file-token\n")
    loaded = Settings.from_env({"GQL_ADMIN_TOKEN_FILE": str(secret)})
    assert loaded.admin_token == "file-token"
    client = make_client(admin_token=loaded.admin_token)
    body = gql(client, REFRESH, headers={"Authorization": "Bearer file-token"})
    assert body["data"]["refreshCache"]["refreshed"]


def test_unreadable_token_file_stops_the_start(tmp_path):
    with pytest.raises(ConfigError, match="GQL_ADMIN_TOKEN_FILE"):
        Settings.from_env({"GQL_ADMIN_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        Settings.from_env({"GQL_ADMIN_TOKEN_FILE": str(tmp_path / "empty")})


def test_refusals_are_alike_and_logged_without_the_token(client, caplog):
    wrong = [{}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer guess-1234"}]
    with caplog.at_level(logging.WARNING, logger="gql.schema"):
        messages = {error_of(client.post("/graphql", json={"query": REFRESH}, headers=h))["message"] for h in wrong}
    assert len(messages) == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == len(wrong)
    assert all("client=" in m for m in refusals)
    assert not any(TOKEN[:8] in m or "guess-1234" in m for m in caplog.messages)


def test_each_refresh_is_logged_with_targets_and_client(client, caplog):
    with caplog.at_level(logging.WARNING, logger="gql.schema"):
        gql(client, REFRESH, headers=ADMIN, t=["YIELD_THIS_YEAR"])
    [line] = [m for m in caplog.messages if m.startswith("cache refreshed")]
    assert "targets=YIELD_THIS_YEAR" in line and "client=testclient" in line and TOKEN not in line


# --- cost limits: refused before any computation or Redis call -------------------------------------


def test_alias_bomb_starts_zero_computations(settings, redis_server):
    # Token limit raised so that the alias limit is the one that answers.
    with TestClient(create_app(with_settings(settings, max_tokens=100_000))) as client:
        fields = " ".join(f'a{i}: indexChart(codes: ["HSI"], end: "2020-{1 + i % 12:02d}-{1 + i % 28:02d}") {{ start }}' for i in range(300))
        error = error_of(client.post("/graphql", json={"query": f"{{ {fields} }}"}))
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX" and "Allowed: 20" in error["message"]
        assert computations(client) == 0
    assert redis_keys(redis_server, settings) == []


def test_too_many_cached_fields_is_refused_before_work(settings, redis_server):
    with TestClient(create_app(with_settings(settings, max_cached_fields=3))) as client:
        query = "query { a: yieldThisYear { code } b: yieldThisYear(codes: [\"HSI\"]) { code } ...more } fragment more on Query { c: indexChart { start } d: indexChart(frequency: WEEKLY) { start } }"
        error = error_of(client.post("/graphql", json={"query": query}))
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        assert "4 cached fields" in error["message"] and "limit is 3" in error["message"]
        assert computations(client) == 0
        assert statuses(gql(client, "{ a: yieldThisYear { code } b: yieldThisYear(codes: [\"HSI\"]) { code } }")) == ["MISS", "MISS"]
    assert all(k.startswith(settings.cache_prefix.encode()) for k in redis_keys(redis_server, settings))


@pytest.mark.parametrize("via_variable", [False, True])
def test_too_many_codes_is_refused_before_work(settings, redis_server, via_variable):
    codes = [f"C{i}" for i in range(8)]
    with TestClient(create_app(with_settings(settings, max_codes=5))) as client:
        if via_variable:
            payload = {"query": "query($c: [String!]) { yieldThisYear(codes: $c) { code } }", "variables": {"c": codes}}
        else:
            payload = {"query": "{{ yieldThisYear(codes: [{}]) {{ code }} }}".format(", ".join(f'"{c}"' for c in codes))}
        error = error_of(client.post("/graphql", json=payload))
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX" and "8 codes" in error["message"]
        assert computations(client) == 0
    assert redis_keys(redis_server, settings) == []


def test_depth_limit(make_client):
    client = make_client(max_depth=2)
    error = error_of(client.post("/graphql", json={"query": "{ indexChart { series { points { date } } } }"}))
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX" and "depth of 2" in error["message"]
    assert computations(client) == 0


def test_token_limit(client):
    query = "{ indexes { " + " ".join(["code"] * 1200) + " } }"
    error = error_of(client.post("/graphql", json={"query": query}))
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX" and "1000 tokens" in error["message"]


def test_body_over_the_limit_is_413(client):
    big = {"query": "{ indexes { code } }", "variables": {"pad": "x" * 1_100_000}}
    response = client.post("/graphql", json=big)
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert computations(client) == 0


def test_body_without_a_length_is_bounded_too(client):
    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    response = client.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_batches_up_to_the_limit_with_a_cache_report_each(client):
    batch = [{"query": '{ a: yieldThisYear(codes: ["HSI"]) { code } }'}, {"query": "{ b: yieldThisYear { code } c: indexes { code } }"}]
    response = client.post("/graphql", json=batch)
    assert response.status_code == 200
    first, second = response.json()
    assert [e["path"] for e in first["extensions"]["cache"]] == ["a"]
    assert [e["path"] for e in second["extensions"]["cache"]] == ["b"]


def test_batch_over_the_limit_is_refused(client):
    response = client.post("/graphql", json=[{"query": "{ indexes { code } }"}] * 6)
    assert response.status_code == 400 and response.json()["errors"][0]["extensions"]["code"] == "BATCH_TOO_LARGE"
    assert computations(client) == 0


# --- production switches --------------------------------------------------------------------------


def test_introspection_can_be_turned_off(make_client):
    query = {"query": "{ __schema { types { name } } }"}
    default = make_client()
    assert default.post("/graphql", json=query).json()["data"]["__schema"]["types"]
    client = make_client(introspection=False)
    response = client.post("/graphql", json=query)
    assert response.json()["data"] is None
    assert "introspection has been disabled" in response.json()["errors"][0]["message"]
    assert gql(client, "{ indexes { code } }")["data"]["indexes"]


def test_graphiql_can_be_turned_off(make_client):
    client = make_client(graphiql=False)
    response = client.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" not in response.text.lower()
    assert client.get("/graphql", params={"query": "{ indexes { code } }"}).status_code == 200


def test_cors_allows_only_configured_origins(make_client):
    default = make_client()
    response = default.post("/graphql", json={"query": "{ indexes { code } }"}, headers={"Origin": "https://dash.example"})
    assert "access-control-allow-origin" not in response.headers
    client = make_client(cors_origins="https://dash.example")
    preflight = client.options(
        "/graphql",
        headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
    other = client.post("/graphql", json={"query": "{ indexes { code } }"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_trusted_hosts(make_client):
    client = make_client(trusted_hosts="api.example,testserver")
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


# --- Redis hygiene ----------------------------------------------------------------------------------


def test_every_key_is_under_the_prefix_and_holds_no_user_text(client, redis_server, settings):
    gql(client, YIELD, codes=["hsi"], asOf="2024-03-04")
    gql(client, "{ indexChart(codes: [\"000300\"], start: \"2021-01-01\") { start } }")
    gql(client, REFRESH, headers=ADMIN)
    everything = redis_server.client().keys("*")
    ours = redis_keys(redis_server, settings)
    assert ours and all(not k.startswith(settings.cache_prefix.encode()) for k in set(everything) - set(ours))
    assert not any(b"hsi" in k.lower() or b"2024" in k or b"000300" in k for k in ours)


def test_oversize_entries_are_served_not_cached_and_counted(make_client, redis_server):
    client = make_client(cache_max_entry_bytes=4096)
    def oversize_count() -> float:
        text = client.get("/metrics").text
        match = re.search(r'gql_cache_oversize_total\{field="indexChart"\} (\S+)', text)
        return float(match.group(1)) if match else 0.0

    before = oversize_count()
    query = '{ indexChart(codes: ["HSI"], start: "2024-01-01") { series { points { close } } } }'
    first, second = gql(client, query), gql(client, query)
    assert first["data"] == second["data"] and len(first["data"]["indexChart"]["series"][0]["points"]) > 100
    assert statuses(first) == statuses(second) == ["MISS"]
    assert oversize_count() == before + 2
    small = '{ yieldThisYear(codes: ["HSI"]) { code } }'
    gql(client, small)
    assert statuses(gql(client, small)) == ["HIT"]
