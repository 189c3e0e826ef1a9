"""The GraphQL API through the real Starlette app (in-process ASGI) with a real Redis."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from gql import analytics
from gql.app import create_app
from tests.support.http import ADMIN, CHART, REFRESH, YIELD, data_version_of, gql, statuses
from tests.support.servers import free_port
from tests.support.waiting import wait_until


def computations(client: TestClient) -> dict:
    return dict(client.app.state.service.cache.computations)


# --- queries and the cache ------------------------------------------------------------------------


def test_indexes_lists_the_ten_with_synthetic_source(client):
    body = gql(client, "{ indexes { code name source firstDate lastDate } }")
    indexes = body["data"]["indexes"]
    assert [i["code"] for i in indexes] == [
        "000300", "000905", "000922", "000932", "000827", "000986", "399971", "000985", "000991", "HSI"
    ]
    assert indexes[0]["name"] == "CSI 300 (沪深300)"
    assert all("synthetic" in i["source"] for i in indexes)
    assert body["extensions"]["cache"] == []


def test_second_query_is_a_hit_with_the_same_data(client):
    first = gql(client, CHART)
    second = gql(client, CHART)
    assert statuses(first) == ["MISS"] and statuses(second) == ["HIT"]
    assert second["data"] == first["data"]
    assert len(first["data"]["indexChart"]["series"]) == 10
    entry = second["extensions"]["cache"][0]
    assert entry["path"] == "indexChart" and 0 <= entry["ageSeconds"] < 60
    assert entry["ttlSeconds"] == pytest.approx(3600 - entry["ageSeconds"], abs=0.01)
    assert computations(client) == {"indexChart": 1}


def test_yield_hit_matches_miss_and_reports_ttl(client):
    first, second = gql(client, YIELD), gql(client, YIELD)
    assert statuses(first) == ["MISS"] and statuses(second) == ["HIT"]
    assert first["data"] == second["data"]
    assert first["extensions"]["cache"][0]["ttlSeconds"] == 43200


def test_cache_report_has_an_entry_per_field_with_aliases_in_query_order(client):
    body = gql(client, "{ b: yieldThisYear { code } a: indexChart(frequency: MONTHLY) { start } c: yieldThisYear(codes: [\"HSI\"]) { code } }")
    assert [e["path"] for e in body["extensions"]["cache"]] == ["b", "a", "c"]


def test_equivalent_arguments_share_one_entry(client):
    store = client.app.state.service.feed.current
    gql(client, CHART)
    # Defaults written out, dates beyond the data, lower case codes: all the same question.
    explicit = gql(client, CHART, codes=[c.lower() for c in store.codes], start="1990-01-01", end="2099-12-31", f="DAILY")
    assert statuses(explicit) == ["HIT"]
    gql(client, YIELD)
    same_year_later = store.last_date.replace(month=12, day=31).isoformat()
    assert statuses(gql(client, YIELD, asOf=store.last_date.isoformat())) == ["HIT"]
    assert statuses(gql(client, YIELD, asOf=same_year_later)) == ["HIT"]
    assert computations(client) == {"indexChart": 1, "yieldThisYear": 1}


def test_distinct_arguments_are_distinct_entries(client):
    variants = [
        {}, {"codes": ["HSI"]}, {"codes": ["HSI", "000300"]}, {"codes": ["000300", "HSI"]},
        {"start": "2020-01-01"}, {"end": "2020-01-01"}, {"f": "WEEKLY"}, {"f": "MONTHLY"},
    ]
    for variables in variants:
        assert statuses(gql(client, CHART, **variables)) == ["MISS"], variables
    assert computations(client) == {"indexChart": len(variants)}


def test_codes_come_back_in_the_order_asked(client):
    body = gql(client, YIELD, codes=["HSI", "000905", "000300"])
    assert [r["code"] for r in body["data"]["yieldThisYear"]] == ["HSI", "000905", "000300"]


def test_chart_values_are_the_analytics_of_the_data(client):
    store = client.app.state.service.feed.current
    body = gql(client, CHART, codes=["000905"], start="2015-06-01", end="2015-12-31", f="WEEKLY")
    series = body["data"]["indexChart"]["series"][0]
    expected = analytics.series_chart(store["000905"].closes, store.first_date.replace(2015, 6, 1), store.first_date.replace(2015, 12, 31), analytics.Frequency.WEEKLY)
    assert [p["date"] for p in series["points"]] == expected["dates"]
    assert [p["close"] for p in series["points"]] == expected["close"]
    assert series["points"][0]["normalized"] == 100
    assert series["maxDrawdown"] == expected["max_drawdown"] <= 0
    assert body["data"]["indexChart"]["start"] == "2015-06-01"


def test_pandas_runs_off_the_event_loop(client, monkeypatch):
    threads = []
    original = analytics.index_chart

    def recording(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(analytics, "index_chart", recording)
    gql(client, CHART, codes=["HSI"])
    assert threads and all(name.startswith("gql-compute") for name in threads)
    gql(client, CHART, codes=["HSI"])
    assert len(threads) == 1  # the hit did no pandas work


def test_ttl_expiry_recomputes(make_client):
    client = make_client(yield_ttl=0.3)
    assert statuses(gql(client, YIELD)) == ["MISS"]
    assert statuses(gql(client, YIELD)) == ["HIT"]
    import time

    time.sleep(0.45)
    # Past its TTL, within the stale period: answered at once, recomputed in the background.
    stale = gql(client, YIELD)
    assert statuses(stale) == ["STALE"] and stale["extensions"]["cache"][0]["ttlSeconds"] == 0
    client.portal.call(client.app.state.service.cache.drain)
    assert statuses(gql(client, YIELD)) == ["HIT"]
    assert computations(client) == {"yieldThisYear": 2}


def test_past_the_stale_period_a_result_is_recomputed_before_answering(make_client):
    client = make_client(yield_ttl=0.2, cache_stale_seconds=0.1)
    assert statuses(gql(client, YIELD)) == ["MISS"]
    import time

    time.sleep(0.4)
    assert statuses(gql(client, YIELD)) == ["MISS"]
    assert computations(client) == {"yieldThisYear": 2}


def test_disabled_cache_reports_bypass(make_client):
    client = make_client(cache_enabled=False)
    assert statuses(gql(client, YIELD)) == ["BYPASS"]
    assert statuses(gql(client, YIELD)) == ["BYPASS"]


# --- refreshCache ---------------------------------------------------------------------------------


def test_refresh_recomputes_every_variant_and_warms_the_defaults(client):
    gql(client, CHART)
    gql(client, CHART, codes=["HSI"], f="MONTHLY")  # a non-default variant
    gql(client, YIELD, asOf="2024-06-28")
    before = computations(client)
    body = gql(client, REFRESH, headers=ADMIN)
    refreshed = body["data"]["refreshCache"]["refreshed"]
    assert [r["target"] for r in refreshed] == ["INDEX_CHART", "YIELD_THIS_YEAR"]
    assert all(r["durationMs"] > 0 for r in refreshed)
    # The defaults were recomputed by the refresh itself, so the next dashboard load is a hit ...
    assert computations(client) == {k: v + 1 for k, v in before.items()}
    assert statuses(gql(client, CHART)) == ["HIT"]
    assert statuses(gql(client, YIELD)) == ["HIT"]
    # ... and every other variant is recomputed on its next use, never served from before the refresh.
    assert statuses(gql(client, CHART, codes=["HSI"], f="MONTHLY")) == ["REFRESHED"]
    assert statuses(gql(client, YIELD, asOf="2024-06-28")) == ["REFRESHED"]


def test_refresh_of_one_target_leaves_the_other(client):
    gql(client, CHART, codes=["HSI"])
    gql(client, YIELD, codes=["HSI"])
    body = gql(client, REFRESH, headers=ADMIN, t=["YIELD_THIS_YEAR"])
    assert [r["target"] for r in body["data"]["refreshCache"]["refreshed"]] == ["YIELD_THIS_YEAR"]
    assert statuses(gql(client, CHART, codes=["HSI"])) == ["HIT"]
    assert statuses(gql(client, YIELD, codes=["HSI"])) == ["REFRESHED"]


def test_refresh_reaches_other_workers_sharing_redis(make_client):
    # Two app instances (as two uvicorn workers) on one Redis: a refresh through one is seen by the other.
    one = make_client()
    two = make_client()
    gql(one, YIELD, asOf="2023-03-01")
    assert statuses(gql(two, YIELD, asOf="2023-03-01")) == ["HIT"]
    gql(one, REFRESH, headers=ADMIN)
    assert statuses(gql(two, YIELD, asOf="2023-03-01")) == ["REFRESHED"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer test-admin-toke"},
        {"Authorization": "Bearer test-admin-token-and-more"},
        {"Authorization": "Basic test-admin-token"},
        {"Authorization": "test-admin-token"},
        {"Authorization": "Bearer"},
    ],
)
def test_refresh_refused_without_the_right_token(client, headers):
    gql(client, YIELD)
    body = gql(client, REFRESH, headers=headers)
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in error["message"] and "test-admin-token" not in error["message"]
    assert statuses(gql(client, YIELD)) == ["HIT"]  # nothing was refreshed


def test_refresh_disabled_without_a_configured_token(make_client):
    client = make_client(admin_token=None)
    body = gql(client, REFRESH, headers={"Authorization": "Bearer anything"})
    [error] = body["errors"]
    assert "GQL_ADMIN_TOKEN" in error["message"] and error["extensions"]["code"] == "FORBIDDEN"


def test_refresh_picks_up_changed_data_files(make_client, tmp_path):
    from gql.data import IndexHistory, IndexMeta, make_closes, write_index_file

    def write(last_close: float) -> None:
        closes = make_closes(["2023-12-29", "2024-01-02", "2024-01-03"], [100.0, 101.0, last_close])
        write_index_file(tmp_path, IndexHistory(IndexMeta("TEST", "Test index", "imported from test.csv"), closes))

    write(110.0)
    client = make_client(data_dir=tmp_path)
    assert gql(client, YIELD)["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(10.0)
    write(120.0)
    gql(client, REFRESH, headers=ADMIN)
    body = gql(client, YIELD)
    assert statuses(body) == ["HIT"]
    assert body["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(20.0)


# --- Redis going away -----------------------------------------------------------------------------


def test_redis_stopped_mid_test_then_back(own_redis, make_client):
    client = make_client(redis_url=own_redis.url)
    first = gql(client, YIELD)
    assert client.get("/healthz").json()["cache"]["state"] == "ok"
    own_redis.stop()
    during = gql(client, YIELD)
    assert during["data"] == first["data"] and "errors" not in during
    assert statuses(gql(client, YIELD)) == ["HIT"]  # from the in-process cache
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["cache"]["state"] == "degraded"
    own_redis.start()
    # The probe may run in the background (the view's keeper) as well as on this request: bounded wait.
    wait_until(lambda: client.get("/healthz").json()["cache"]["state"] == "ok", "the breaker closed again")
    assert statuses(gql(client, YIELD)) == ["MISS"]  # the restarted Redis is empty: used again
    assert statuses(gql(client, YIELD)) == ["HIT"]


def test_starts_and_answers_with_no_redis_at_all(make_client):
    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert client.get("/healthz").json()["cache"]["state"] == "degraded"
    assert statuses(gql(client, YIELD)) == ["MISS"]
    assert statuses(gql(client, YIELD)) == ["HIT"]


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        (CHART, {"codes": ["NOPE1", "000300", "NOPE2"]}, ["unknown index codes \"NOPE1\", \"NOPE2\"", "known codes: 000300, 000905"]),
        (YIELD, {"codes": ["XYZ"]}, ["unknown index code \"XYZ\"", "HSI"]),
        (CHART, {"codes": []}, ["empty list", "null"]),
        (CHART, {"codes": ["HSI", "hsi"]}, ["twice"]),
        (CHART, {"start": "2020-02-01", "end": "2020-01-01"}, ["start 2020-02-01 is after end 2020-01-01"]),
        (CHART, {"start": "2099-01-01"}, ["no close on or after start 2099-01-01: the data runs from 2005-01-04 to 2026-11-20"]),
        (CHART, {"end": "1999-01-01"}, ["no close on or before end 1999-01-01: the data runs from 2005-01-04"]),
        (YIELD, {"asOf": "1999-12-31"}, ["no index has a close in 1999 up to 1999-12-31; the data runs from 2005-01-04 to 2026-11-20"]),
        (YIELD, {"asOf": "2099-06-30"}, ["no data yet", "latest close"]),
    ],
)
def test_bad_arguments_get_clear_errors(client, query, variables, expected):
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    for text in expected:
        assert text in error["message"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "Traceback" not in response.text


@pytest.mark.parametrize("value", ["2020-13-01", "yesterday", "2020/01/01", "", "2020-02-30"])
def test_malformed_dates_get_clear_errors(client, value):
    response = client.post("/graphql", json={"query": CHART, "variables": {"start": value}})
    assert response.status_code < 500
    body = response.json()
    assert body["errors"] and "Traceback" not in response.text
    message = body["errors"][0]["message"]
    assert "Date" in message and value in message


def test_malformed_date_literal_in_the_query(client):
    response = client.post("/graphql", json={"query": '{ yieldThisYear(asOf: "2024-02-31") { code } }'})
    assert response.status_code < 500
    assert "2024-02-31" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "payload",
    [
        {"query": "{ nope }"},
        {"query": "{ indexChart(frequency: HOURLY) { start } }"},
        {"query": "{ yieldThisYear { "},
        {"query": ""},
        {},
        {"query": CHART, "variables": {"codes": "000300", "f": 3}},
    ],
)
def test_malformed_requests_never_give_a_500(client, payload):
    response = client.post("/graphql", json=payload)
    assert 400 <= response.status_code < 500 or (response.status_code == 200 and response.json()["errors"])
    assert "Traceback" not in response.text


def test_not_json_body_is_a_400(client):
    response = client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "Traceback" not in response.text


# --- HTTP surface ---------------------------------------------------------------------------------


def test_queries_over_get(client):
    response = client.get("/graphql", params={"query": "{ yieldThisYear(codes: [\"HSI\"]) { code yieldPct } }"})
    assert response.status_code == 200
    assert response.json()["data"]["yieldThisYear"][0]["code"] == "HSI"


def test_mutations_are_refused_over_get(client):
    response = client.get("/graphql", params={"query": "mutation { refreshCache { refreshed { target } } }"}, headers=ADMIN)
    assert 400 <= response.status_code < 500


def test_graphiql_for_browsers(client):
    response = client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200 and "graphiql" in response.text.lower()
    assert client.get("/").status_code == 200 and 'src="static/dashboard.js"' in client.get("/").text


def test_healthz_reports_data_and_cache(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["cache"]["state"] == "ok"
    assert health["data"]["indexes"] == 10 and health["data"]["source"] == "synthetic sample"
    assert len(health["data"]["version"]) == 16


def test_changed_data_files_are_served_without_a_refresh(make_client, tmp_path):
    from gql.data import IndexHistory, IndexMeta, make_closes, write_index_file

    def write(last_close: float) -> None:
        closes = make_closes(["2023-12-29", "2024-01-02"], [100.0, last_close])
        write_index_file(tmp_path, IndexHistory(IndexMeta("TEST", "Test index", "imported from test.csv"), closes))

    write(105.0)
    client = make_client(data_dir=tmp_path)
    assert gql(client, YIELD)["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(5.0)
    before = data_version_of(client)
    write(95.0)
    after = wait_until(lambda: (v := data_version_of(client)) != before and v, "the server picks up the rewritten file")
    body = gql(client, YIELD)
    # New data, new version, new key: computed afresh (by this request, or by the warming that follows a change:
    # a HIT of the new version), never the old value.
    assert statuses(body) in (["MISS"], ["HIT"]) and body["extensions"]["dataVersion"] == after
    assert body["data"]["yieldThisYear"][0]["yieldPct"] == pytest.approx(-5.0)


def test_serve_refuses_a_bad_data_dir_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "GQL_DATA_DIR": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "gql", "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "python -m gql import" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_is_not_logged_as_a_server_error_but_failures_are(client, caplog, monkeypatch):
    import logging

    with caplog.at_level(logging.ERROR):
        gql(client, YIELD, codes=["NOPE"])
        gql(client, REFRESH)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    def broken(*args):
        raise RuntimeError("boom in analytics")

    monkeypatch.setattr(analytics, "yields_this_year", broken)
    with caplog.at_level(logging.ERROR):
        gql(client, YIELD, asOf="2020-05-05")
    assert any("boom in analytics" in (r.getMessage() + str(r.exc_info)) for r in caplog.records)


def test_redis_outage_logs_one_warning(own_redis, make_client, caplog):
    import logging

    client = make_client(redis_url=own_redis.url, redis_retry_seconds=0)
    gql(client, YIELD)
    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="gql.cache"):
        for day in ("2020-01-06", "2020-01-07", "2020-01-08", "2020-01-09"):
            assert "errors" not in gql(client, YIELD, asOf=day)
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


def test_readyz_reports_data_and_cache(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["data"]["indexes"] == 10 and body["cache"] == "ok"


def test_readyz_before_the_data_is_loaded(settings):
    app = create_app(settings)  # not started: no lifespan has run
    response = TestClient(app).get("/readyz")  # no `with`: the lifespan does not run
    assert response.status_code == 503 and response.json()["ready"] is False
