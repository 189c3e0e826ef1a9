"""gql/logs.py: request ids (kept or made, on every response and every log line of a request), the one
access-log line per request with its fields, and JSON lines, in-process and from `python -m gql serve`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import httpx2
import pytest

from gql.cache import CacheStatus
from gql.logs import JsonFormatter, RequestIdFilter, access_log, log_request, logging_config, request_id
from gql.schema.report import FieldReport
from tests.support.http import REFRESH
from tests.support.servers import running_server

GENERATED_ID = re.compile(r"[0-9a-f]{24}")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gql.access"]


# --- request ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["a", "req-1", "proxy.host:8080_x-1", "A" * 64])
def test_a_plain_short_incoming_request_id_is_kept(client, incoming):
    assert client.get("/healthz", headers={"X-Request-ID": incoming}).headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["A" * 65, "two words", "semi;colon", "slash/y", "quote\"d", "ünïcode"])
def test_any_other_incoming_request_id_is_replaced(client, incoming):
    given = client.get("/healthz", headers={"X-Request-ID": incoming.encode("utf-8")}).headers["x-request-id"]
    assert GENERATED_ID.fullmatch(given)


def test_every_line_logged_during_a_request_carries_its_id_and_none_outside(client, caplog):
    with caplog.at_level(logging.INFO):
        client.post("/graphql", json={"query": REFRESH}, headers={"X-Request-ID": "refused-1"})
        logging.getLogger("gql.test").warning("outside any request")
    [refusal] = [r for r in caplog.records if "refreshCache refused" in r.getMessage()]
    assert refusal.name == "gql.schema" and refusal.request_id == "refused-1"
    [access] = access_lines(caplog)
    assert access.request_id == "refused-1"
    [outside] = [r for r in caplog.records if r.getMessage() == "outside any request"]
    assert outside.request_id == "-"


# --- the access line ---------------------------------------------------------------------------------


def test_the_access_line_says_method_path_status_time_operation_and_cache(client, caplog):
    with caplog.at_level(logging.INFO, logger="gql.access"):
        client.post("/graphql", json={"query": "query Dash { yieldThisYear { code } }", "operationName": "Dash"})
        client.post("/graphql", json={"query": "{ indexes { code } }"})
        client.get("/nope")
    dash, anonymous, missing = access_lines(caplog)
    assert re.fullmatch(r"POST /graphql 200 \d+(\.\d+)?ms operation=Dash cache=yieldThisYear:MISS", dash.getMessage())
    assert re.fullmatch(r"POST /graphql 200 \d+(\.\d+)?ms operation=- cache=-", anonymous.getMessage())
    assert missing.fields["status"] == 404 and missing.fields["path"] == "/nope" and missing.fields["method"] == "GET"
    assert missing.getMessage().startswith("GET /nope 404 ")


def test_a_refused_body_gets_its_access_line_too(client, caplog):
    with caplog.at_level(logging.INFO, logger="gql.access"):
        client.post("/graphql", content=b"x" * 1_100_000, headers={"X-Request-ID": "too-big"})
    [line] = access_lines(caplog)
    assert line.request_id == "too-big" and line.fields["status"] == 413 and line.fields["path"] == "/graphql"


# --- JSON lines ----------------------------------------------------------------------------------------


def test_json_lines_have_the_fixed_keys_and_the_fields():
    record = logging.LogRecord("gql.cache", logging.WARNING, __file__, 1, "Redis %s: %d tries", ("unreachable", 3), None)
    record.request_id, record.fields = "rid-1", {"status": 200, "cache": [{"path": "a", "status": "HIT"}]}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "gql.cache" and entry["request_id"] == "rid-1"
    assert entry["message"] == "Redis unreachable: 3 tries"
    assert entry["status"] == 200 and entry["cache"] == [{"path": "a", "status": "HIT"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", entry["time"])
    assert "exception" not in entry


def test_a_json_line_without_a_request_id_or_fields_and_with_an_exception():
    try:
        raise ValueError("the detail")
    except ValueError:
        record = logging.LogRecord("gql.x", logging.ERROR, __file__, 1, "failed: 沪深300", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "沪深300" in line  # one line, text as it is
    entry = json.loads(line)
    assert entry["request_id"] == "-" and entry["message"] == "failed: 沪深300"
    assert "Traceback" in entry["exception"] and "ValueError: the detail" in entry["exception"]


def test_the_server_writes_json_lines_with_request_ids_when_asked(redis_server, tmp_path):
    """GQL_LOG_JSON=true: every line of `python -m gql serve` is JSON, and the lines a request causes
    (here a computation failing, in the query worker that runs it, and the access line) carry its id."""
    log = tmp_path / "serve.log"
    fail = tmp_path / "fail"
    fail.touch()  # computations raise while this file exists
    with running_server(redis_server.url, log=log, GQL_LOG_JSON="true", GQL_LOG_LEVEL="info",
                        GQL_FAULT_COMPUTE_FAIL_FILE=str(fail)) as base:
        failed = httpx2.post(f"{base}/graphql", json={"query": "query Ytd { yieldThisYear { code } }", "operationName": "Ytd"},
                             headers={"X-Request-ID": "json-1"}, timeout=30)
        assert failed.json()["errors"][0]["extensions"]["code"] == "COMPUTATION_FAILED"
        httpx2.get(f"{base}/healthz", headers={"X-Request-ID": "json-2"}, timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, uvicorn's included, is one JSON object
    assert {"time", "level", "logger", "request_id", "message"} <= set(entries[0])
    [computation] = [e for e in entries if e["message"].startswith("computing yieldThisYear failed")]
    assert computation["request_id"] == "json-1" and computation["level"] == "error" and "exception" in computation
    access = {e["request_id"]: e for e in entries if e["logger"] == "gql.access"}
    assert access["json-1"]["operation"] == "Ytd" and access["json-1"]["status"] == 200 and access["json-1"]["path"] == "/graphql"
    assert access["json-2"]["path"] == "/healthz" and access["json-2"]["method"] == "GET"
    startup = [e for e in entries if re.match(r"serving \d+ indexes from", e["message"])]
    assert startup and all(e["request_id"] == "-" for e in startup)  # outside any request


# --- moved from tests/test_security.py ------------------------------------------------------------


def test_every_response_has_a_request_id(client):
    ids = set()
    for response in (client.get("/healthz"), client.get("/nope"), client.post("/graphql", json={"query": "{ indexes { code } }"}),
                     client.post("/graphql", content=b"x" * 1_100_000)):
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 4 and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    junk = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 100})
    assert re.fullmatch(r"[0-9a-f]{24}", junk.headers["x-request-id"])


def test_one_structured_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="gql.access"):
        client.post("/graphql", json={"query": "query Dash { yieldThisYear { code } }", "operationName": "Dash"},
                    headers={"X-Request-ID": "line-1"})
        client.post("/graphql", json={"query": "query Dash { yieldThisYear { code } }", "operationName": "Dash"},
                    headers={"X-Request-ID": "line-2"})
        client.get("/healthz", headers={"X-Request-ID": "line-3"})
    lines = [r for r in caplog.records if r.name == "gql.access"]
    assert [r.request_id for r in lines] == ["line-1", "line-2", "line-3"]
    first, second, health = (r.fields for r in lines)
    assert first["operation"] == "Dash" and [e["status"] for e in first["cache"]] == ["MISS"]
    assert [e["status"] for e in second["cache"]] == ["HIT"]
    assert first["status"] == 200 and first["method"] == "POST" and first["duration_ms"] > 0
    assert health["path"] == "/healthz" and "cache" not in health


def test_json_log_lines():
    record = logging.LogRecord("gql.access", logging.INFO, __file__, 1, "POST /graphql 200", None, None)
    record.request_id, record.fields = "abc", {"status": 200, "operation": "Dash"}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "abc" and entry["status"] == 200 and entry["operation"] == "Dash"


# --- the access line written directly ------------------------------------------------------------------


@contextlib.contextmanager
def access_handler(formatter: logging.Formatter) -> Iterator[tuple[io.StringIO, list[logging.LogRecord]]]:
    """gql.access writing to a StringIO through one handler as logging_config() makes it (a StreamHandler with
    RequestIdFilter), with every gql.access LogRecord made meanwhile counted; all as before afterwards."""
    stream, made = io.StringIO(), []
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    previous_factory = logging.getLogRecordFactory()

    def counting(*args, **kwargs) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)
        if record.name == "gql.access":
            made.append(record)
        return record

    saved = access_log.handlers[:], access_log.level, access_log.propagate
    access_log.handlers, access_log.propagate = [handler], False
    access_log.setLevel(logging.INFO)
    logging.setLogRecordFactory(counting)
    try:
        yield stream, made
    finally:
        logging.setLogRecordFactory(previous_factory)
        access_log.handlers, access_log.propagate = saved[0], saved[2]
        access_log.setLevel(saved[1])


def log_one(request: str) -> None:
    token = request_id.set(request)
    try:
        summary = {"status": 200, "operation": "Dash", "cache": [FieldReport("ytd", "yieldThisYear", CacheStatus.HIT, 1.23456, 60.0)]}
        log_request({"method": "POST", "path": "/graphql"}, summary, 0.000512)
    finally:
        request_id.reset(token)


def through_logging(request: str) -> None:
    """The same line through logging's own machinery: any filter on the logger takes the direct path away."""
    access_log.addFilter(lambda record: True)
    try:
        log_one(request)
    finally:
        access_log.filters.clear()


def test_the_text_access_line_written_directly_is_the_line_logging_writes():
    formatter = logging.Formatter(logging_config("info")["formatters"]["default"]["format"])
    with access_handler(formatter) as (stream, made):
        log_one("direct-1")
        assert made == []  # written without a LogRecord
        through_logging("direct-1")
        assert len(made) == 1
    direct, standard = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.fullmatch(stamp + r"INFO \[direct-1\] gql\.access: POST /graphql 200 0\.51ms operation=Dash cache=ytd:HIT", direct)
    assert re.sub(stamp, "", direct) == re.sub(stamp, "", standard)


def test_the_json_access_line_written_directly_is_the_line_logging_writes():
    with access_handler(JsonFormatter()) as (stream, made):
        log_one("direct-2")
        assert made == []
        through_logging("direct-2")
        assert len(made) == 1
    direct, standard = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(direct) == list(standard)  # the same keys in the same order
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", direct.pop("time")) and standard.pop("time")
    assert direct == standard
    assert direct["request_id"] == "direct-2" and direct["level"] == "info" and direct["duration_ms"] == 0.51
    assert direct["cache"] == [{"path": "ytd", "field": "yieldThisYear", "status": "HIT", "ageSeconds": 1.235, "ttlSeconds": 60.0}]


def test_a_format_of_its_own_gets_the_access_line_through_logging():
    with access_handler(logging.Formatter("%(levelname)s %(message)s")) as (stream, made):
        log_one("other-1")
    assert len(made) == 1
    assert stream.getvalue() == "INFO POST /graphql 200 0.51ms operation=Dash cache=ytd:HIT\n"


class CountingStream(io.StringIO):
    """A stream that counts its writes (each one a system call on a real file)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_on_the_event_loop_access_lines_go_out_in_one_write_per_iteration_and_in_order():
    """Lines logged during one iteration of the loop wait and are written together once it ends; a record of any
    other logger through the same handler writes the waiting lines first, so the order of events is kept."""
    formatter = logging.Formatter(logging_config("info")["formatters"]["default"]["format"])
    with access_handler(formatter) as (stream, _):
        counting = CountingStream()
        handler = access_log.handlers[0]
        handler.setStream(counting)
        other = logging.getLogger("gql.test-order")
        other.addHandler(handler)
        other.propagate = False

        async def requests() -> None:
            for number in range(3):
                log_one(f"batch-{number}")
            assert counting.getvalue() == ""  # waiting for the end of this iteration
            await asyncio.sleep(0)
            assert counting.writes == 1 and counting.getvalue().count("\n") == 3
            log_one("before-warning")
            other.warning("something else happened")
            log_one("after-warning")
            await asyncio.sleep(0)

        try:
            asyncio.run(requests())
        finally:
            other.removeHandler(handler)
    lines = counting.getvalue().splitlines()
    assert [next(w for w in ("batch-0", "batch-1", "batch-2", "before-warning", "something else", "after-warning") if w in line)
            for line in lines] == ["batch-0", "batch-1", "batch-2", "before-warning", "something else", "after-warning"]


def test_off_the_event_loop_an_access_line_is_written_at_once():
    formatter = logging.Formatter(logging_config("info")["formatters"]["default"]["format"])
    with access_handler(formatter) as (stream, _):
        log_one("no-loop")
        assert "no-loop" in stream.getvalue()


def test_a_loop_closed_before_its_flush_does_not_hold_the_next_loops_lines():
    formatter = logging.Formatter(logging_config("info")["formatters"]["default"]["format"])
    with access_handler(formatter) as (stream, _):
        async def log_and_stop() -> None:
            log_one("closed-loop")
            asyncio.get_running_loop().stop()  # the flush scheduled by the line never runs
            await asyncio.sleep(1)

        # asyncio's own loop: a stop() leaves what the current iteration scheduled unrun (uvloop's, installed as
        # the policy by some tests before, runs it first).
        loop = asyncio.SelectorEventLoop()
        with pytest.raises(RuntimeError, match="stopped before"):
            loop.run_until_complete(log_and_stop())
        loop.close()
        assert "closed-loop" not in stream.getvalue()

        async def next_request() -> None:
            log_one("next-loop")
            await asyncio.sleep(0)

        asyncio.run(next_request())
        assert "closed-loop" in stream.getvalue() and "next-loop" in stream.getvalue()
