"""Downstream caches (gql/downstream.py): the Cache-Control computed for them, surrogate keys, the purge settings and
purge requests, and a real Varnish (deploy/varnish.vcl, vmod xkey) in front of a real server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gql import metrics
from gql.config import ConfigError, Settings, parse_headers
from gql.data import IndexHistory, IndexMeta, make_closes, write_index_file
from gql.downstream import DownstreamHeaders, Freshness, PurgeConfig, Purger, PurgeStyle, PurgeTarget, SurrogateKeys
from tests.support.http import ADMIN, ADMIN_TOKEN, REFRESH
from tests.support.servers import free_port, running_server
from tests.support.varnish import VARNISHD, Varnish
from tests.support.waiting import wait_until

# --- Cache-Control ---------------------------------------------------------------------------------------


def test_by_default_caches_store_answers_but_revalidate_them_every_time():
    assert Freshness().cache_control(left=3600, age=10) == "public, no-cache"


@pytest.mark.parametrize(
    ("freshness", "left", "age", "expected"),
    [
        # Configured seconds, counted from now: the directive adds the Age sent beside it (HTTP subtracts it again).
        (Freshness(max_age=60), 3600, 0, "public, max-age=60"),
        (Freshness(max_age=60), 3600, 100, "public, max-age=160"),
        # Never past what the entry has left of its TTL.
        (Freshness(max_age=60), 30, 100, "public, max-age=130"),
        (Freshness(max_age=60), 0, 5, "public, max-age=5"),
        (Freshness(shared_max_age=3600), 7200, 0, "public, max-age=0, s-maxage=3600"),
        (Freshness(max_age=10, shared_max_age=3600), 600, 20, "public, max-age=30, s-maxage=620"),
        (Freshness(max_age=10, shared_max_age=3600, stale_while_revalidate=120), 600, 0,
         "public, max-age=10, s-maxage=600, stale-while-revalidate=120"),
        (Freshness(stale_while_revalidate=120), 50, 0, "public, max-age=0, stale-while-revalidate=50"),
    ],
)
def test_freshness_directives_are_capped_at_what_the_entry_has_left(freshness, left, age, expected):
    assert freshness.cache_control(left, age) == expected


def test_headers_name_the_fields_and_the_data_version_as_surrogate_keys():
    headers = DownstreamHeaders(Freshness(shared_max_age=600), SurrogateKeys("gql"))
    got = headers.headers(("indexChart", "yieldThisYear"), "v1", expires=1300.0, created=1000.0, now=1100.0, etag='"e"')
    assert got == {
        "cache-control": "public, max-age=100, s-maxage=300", "age": "100", "etag": '"e"', "vary": "Accept-Encoding",
        "surrogate-key": "gql:indexChart gql:yieldThisYear gql:data:v1",
        "cache-tag": "gql:indexChart,gql:yieldThisYear,gql:data:v1",
    }
    default = DownstreamHeaders.of(Settings(cache_prefix="p"))
    got = default.headers(("yieldThisYear",), "v2", expires=2000.0, created=1000.0, now=1100.9, etag='"e"')
    assert got["cache-control"] == "public, no-cache" and got["age"] == "100" and got["cache-tag"] == "p:yieldThisYear,p:data:v2"


@pytest.mark.parametrize("freshness", [Freshness(), Freshness(shared_max_age=600), Freshness(30, 600, 60)])
def test_the_hit_paths_encoded_headers_are_the_same_headers(freshness):
    """The hit path sends DownstreamHeaders.encoded (constant parts encoded once): the same as `headers`, as bytes."""
    headers = DownstreamHeaders(freshness, SurrogateKeys("gql"))
    for now in (1100.0, 1100.5, 1250.0, 1400.0):  # the second call of a kind comes from the encoded cache
        args = (("indexChart", "yieldThisYear"), "v1", 1300.0, 1000.0, now)
        expected = [(k.encode(), v.encode()) for k, v in headers.headers(*args, etag='"e"').items()]
        assert headers.encoded(*args, etag=b'"e"') == expected


# --- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GQL_HTTP_MAX_AGE": "-1"}, "GQL_HTTP_MAX_AGE must be a whole number of seconds from 0 to 31536000 (0: not sent)"),
        ({"GQL_HTTP_MAX_AGE": "1.5"}, "GQL_HTTP_MAX_AGE='1.5' is not valid: expected a whole number"),
        ({"GQL_HTTP_SHARED_MAX_AGE": "99999999"}, "GQL_HTTP_SHARED_MAX_AGE must be a whole number of seconds from 0 to 31536000"),
        ({"GQL_HTTP_STALE_WHILE_REVALIDATE": "-5"}, "GQL_HTTP_STALE_WHILE_REVALIDATE must be a whole number of seconds"),
        ({"GQL_PURGE_URLS": "varnish:6081"}, "GQL_PURGE_URLS: 'varnish:6081' is not an http:// or https:// URL with a host"),
        ({"GQL_PURGE_URLS": "http://a:99999/"}, "GQL_PURGE_URLS: 'http://a:99999/' has no valid port"),
        ({"GQL_PURGE_URLS": "http://a/", "GQL_PURGE_METHOD": "DELETE"},
         "GQL_PURGE_METHOD='DELETE' is not allowed; expected one of PURGE, BAN, POST"),
        ({"GQL_PURGE_URLS": "http://a/", "GQL_PURGE_STYLE": "akamai"},
         "GQL_PURGE_STYLE='akamai' is not a style; expected one of surrogate, cloudflare"),
        ({"GQL_PURGE_URLS": "http://a/", "GQL_PURGE_HEADERS": "Fastly-Key"},
         "GQL_PURGE_HEADERS: 'Fastly-Key' is not 'Name: value'; expected 'Name: value; Name2: value2'"),
        ({"GQL_PURGE_TIMEOUT": "0"}, "GQL_PURGE_TIMEOUT must be a number of seconds above 0, at most 30"),
        ({"GQL_PURGE_TIMEOUT": "60"}, "GQL_PURGE_TIMEOUT must be a number of seconds above 0, at most 30"),
    ],
)
def test_bad_downstream_settings_are_refused_with_a_message(env, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_purge_settings_are_read_once():
    settings = Settings.from_env({
        "GQL_PURGE_URLS": "http://127.0.0.1:6081/, https://api.cloudflare.com/client/v4/zones/z1/purge_cache",
        "GQL_PURGE_METHOD": "ban", "GQL_PURGE_STYLE": "Cloudflare",
        "GQL_PURGE_HEADERS": "Authorization: Bearer abc:def; X-Extra: 1", "GQL_PURGE_TIMEOUT": "0.5",
    })
    config = PurgeConfig.of(settings)
    assert config is not None and config.method == "BAN" and config.style is PurgeStyle.CLOUDFLARE and config.timeout == 0.5
    assert [(t.host, t.port, t.tls, t.target) for t in config.targets] == [
        ("127.0.0.1", 6081, False, "/"), ("api.cloudflare.com", 443, True, "/client/v4/zones/z1/purge_cache"),
    ]
    assert config.headers == (("Authorization", "Bearer abc:def"), ("X-Extra", "1"))
    assert PurgeConfig.of(Settings()) is None and Purger.of(Settings()) is None
    assert parse_headers("A: 1\nB: two words") == (("A", "1"), ("B", "two words"))
    assert PurgeTarget.parse("http://[::1]:8080/x?y=1").host_header == "[::1]:8080"


# --- purge requests, against a listener of the test's own -------------------------------------------------


class _Listener:
    """An HTTP server that records each request and answers with the next status given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def __aenter__(self) -> _Listener:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        headers = {}
        while (header := (await reader.readline()).decode().strip()):
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((line, headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


def _purges(outcome: str) -> float:
    return metrics.DOWNSTREAM_PURGES.labels(outcome)._value.get()


def _purger(port: int, **changes) -> Purger:
    settings = Settings(purge_urls=f"http://127.0.0.1:{port}/purge", **changes)
    purger = Purger.of(settings)
    assert purger is not None
    return purger


@pytest.mark.anyio
async def test_a_surrogate_purge_names_the_keys_in_headers_and_is_retried(monkeypatch):
    monkeypatch.setattr("gql.downstream.PURGE_BACKOFF", (0.01, 0.01))
    ok = _purges("ok")
    async with _Listener([503, 200]) as listener:
        purger = _purger(listener.port, purge_headers="X-Token: t1")
        await purger.purge(["p:yieldThisYear", "p:data:v1"], wait=2.0)
        await purger.drain(2.0)
    assert [line for line, _, _ in listener.requests] == ["PURGE /purge HTTP/1.1"] * 2
    _, headers, body = listener.requests[-1]
    assert headers["xkey-purge"] == headers["surrogate-key"] == "p:yieldThisYear p:data:v1"
    assert headers["x-token"] == "t1" and headers["host"] == f"127.0.0.1:{listener.port}" and body == b""
    assert _purges("ok") == ok + 1


@pytest.mark.anyio
async def test_a_cloudflare_purge_posts_the_tags_as_json():
    async with _Listener([200]) as listener:
        purger = _purger(listener.port, purge_style="cloudflare", purge_headers="Authorization: Bearer cf")
        await purger.purge(["p:indexChart"], wait=2.0)
    [(line, headers, body)] = listener.requests
    assert line == "POST /purge HTTP/1.1" and headers["authorization"] == "Bearer cf" and headers["content-type"] == "application/json"
    assert body == b'{"tags":["p:indexChart"]}'


@pytest.mark.anyio
async def test_a_purge_that_keeps_failing_is_logged_and_counted(monkeypatch, caplog):
    monkeypatch.setattr("gql.downstream.PURGE_BACKOFF", (0.01, 0.01))
    failed = _purges("failed")
    closed = free_port()
    purger = _purger(closed)
    with caplog.at_level(logging.WARNING, logger="gql.downstream"):
        await purger.purge(["p:data:v1"], wait=2.0)
        await purger.drain(2.0)
    assert _purges("failed") == failed + 1
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"http://127.0.0.1:{closed}/purge failed after 3 attempts" in record.getMessage()
    assert "p:data:v1" in record.getMessage()


# --- a real Varnish (deploy/varnish.vcl) in front of a real server ------------------------------------------

YIELDS = "{ yieldThisYear { code yieldPct lastDate } }"


def _write(data_dir: Path, last_close: float) -> None:
    dates = make_closes(["2023-12-29", "2024-01-02", "2024-01-03"], [100.0, 101.0, last_close])
    write_index_file(data_dir, IndexHistory(IndexMeta("AAA", "Index AAA", "test"), dates))


def _counter(base: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx2.get(f"{base}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _get(varnish: Varnish) -> httpx2.Response:
    answer = httpx2.get(f"{varnish.base}/graphql", params={"query": YIELDS}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer


def _refresh(base: str) -> httpx2.Response:
    answer = httpx2.post(f"{base}/graphql", json={"query": REFRESH}, headers=ADMIN, timeout=30)
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    return answer


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    _write(directory, 102.0)
    return directory


@pytest.fixture
def front(tmp_path: Path, own_redis, data_dir: Path):
    """`front(**env)`: a server (GQL_* settings `env`) with a varnishd of its own in front; returns (server base, Varnish).
    GQL_PURGE_URLS may name `{varnish}`, the Varnish's URL."""
    if VARNISHD is None:
        pytest.fail("varnishd is not installed: run sh tests/ensure-varnish.sh (make test and .ci/run do)")
    with contextlib.ExitStack() as stack:

        def start(**env: str) -> tuple[str, Varnish]:
            port = free_port()
            settings: dict[str, Any] = {k: v.format(varnish=f"http://127.0.0.1:{port}/") for k, v in env.items()}
            settings |= {"GQL_DATA_DIR": str(data_dir), "GQL_ADMIN_TOKEN": ADMIN_TOKEN}
            base = stack.enter_context(running_server(own_redis.url, **settings))
            varnish = Varnish(tmp_path / "varnish", int(base.rpartition(":")[2]), port)
            varnish.start()
            stack.callback(varnish.stop)
            return base, varnish

        yield start


def test_varnish_revalidates_the_default_no_cache_answers_with_a_304_each_time(front, data_dir):
    base, varnish = front()
    first = _get(varnish)
    assert first.headers["x-cache"] == "MISS" and first.headers["cache-control"] == "public, no-cache"
    assert "yieldThisYear" in first.headers["surrogate-key"] and "xkey" not in first.headers
    time.sleep(2.1)  # so that the answer's Age shows whether a refresh replaced it
    hits = _counter(base, "gql_response_cache_total", outcome="hit")
    second = _get(varnish)
    # Asked the service with If-None-Match, which answered from its stored response with a 304: Varnish kept the body.
    assert second.headers["x-cache"] == "REVALIDATED" and int(second.headers["age"]) >= 2
    assert second.json()["data"] == first.json()["data"]
    assert _counter(base, "gql_response_cache_total", outcome="hit") == hits + 1
    _refresh(varnish.base)  # POST is passed to the service
    after = _get(varnish)
    assert after.headers["x-cache"] == "REVALIDATED" and int(after.headers["age"]) <= 1  # the refreshed entry's age
    version = first.json()["extensions"]["dataVersion"]
    _write(data_dir, 150.0)  # new data: the service takes it up within a second, and Varnish asks it every time
    wait_until(lambda: _get(varnish).json()["extensions"]["dataVersion"] != version, "Varnish answering the new data")
    newest = _get(varnish).json()
    assert newest["data"]["yieldThisYear"][0]["lastDate"] == "2024-01-03" and newest["data"] != first.json()["data"]


def test_with_a_long_s_maxage_varnish_answers_alone_and_only_purges_make_it_fresh(front, data_dir):
    base, varnish = front(GQL_HTTP_SHARED_MAX_AGE="3600", GQL_PURGE_URLS="{varnish}")
    first = _get(varnish)
    assert first.headers["x-cache"] == "MISS" and first.headers["cache-control"].startswith("public, max-age=0, s-maxage=36")
    hits, misses = (_counter(base, "gql_response_cache_total", outcome=o) for o in ("hit", "miss"))
    second = _get(varnish)
    # Served by Varnish alone: a hit (two transaction ids), and the service saw no request.
    assert second.headers["x-cache"] == "HIT" and len(second.headers["x-varnish"].split()) == 2
    assert second.content == first.content
    assert (_counter(base, "gql_response_cache_total", outcome="hit"), _counter(base, "gql_response_cache_total", outcome="miss")) == (hits, misses)
    purged = _counter(base, "gql_downstream_purges_total", outcome="ok")
    _refresh(base)  # straight to the service: its purge (awaited, bounded) is what reaches Varnish
    assert _counter(base, "gql_downstream_purges_total", outcome="ok") == purged + 1
    refreshed = _get(varnish)
    assert refreshed.headers["x-cache"] == "MISS" and refreshed.json()["extensions"]["cache"][0]["ageSeconds"] < 1
    assert _get(varnish).headers["x-cache"] == "HIT"
    # New data, seen by the service's file watcher: the process that claims the change purges the old version.
    version = first.json()["extensions"]["dataVersion"]
    _write(data_dir, 150.0)
    wait_until(lambda: httpx2.get(f"{base}/healthz", timeout=5).json()["data"]["version"] != version, "the service taking up the new data")
    fresh = wait_until(lambda: (a := _get(varnish)).json()["extensions"]["dataVersion"] != version and a, "Varnish answering the new data", timeout=3)
    assert fresh.json()["data"]["yieldThisYear"][0]["yieldPct"] != first.json()["data"]["yieldThisYear"][0]["yieldPct"]


def test_a_purge_that_cannot_be_sent_does_not_fail_the_refresh_and_is_logged_and_counted(tmp_path, own_redis, data_dir):
    closed = free_port()
    log = tmp_path / "server.log"
    with running_server(own_redis.url, GQL_DATA_DIR=str(data_dir), GQL_ADMIN_TOKEN=ADMIN_TOKEN,
                        GQL_PURGE_URLS=f"http://127.0.0.1:{closed}/", log=log) as base:
        began = time.monotonic()
        answer = _refresh(base)
        took = time.monotonic() - began
        assert [r["target"] for r in answer.json()["data"]["refreshCache"]["refreshed"]] == ["INDEX_CHART", "YIELD_THIS_YEAR"]
        wait_until(lambda: _counter(base, "gql_downstream_purges_total", outcome="failed") == 1, "the failed purge counted")
        assert _counter(base, "gql_downstream_purges_total", outcome="ok") == 0
    assert took < 2 + 1.5  # waited for the purge at most GQL_PURGE_TIMEOUT (2 s), plus the refresh itself
    text = log.read_text()
    assert f"purging downstream caches at http://127.0.0.1:{closed}/ failed after 3 attempts" in text, text[-2000:]
