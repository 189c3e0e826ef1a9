"""Schema-driven fuzzing of `python -m gql serve` over real HTTP: no generated request gets a 5xx or a traceback.

Schemathesis generates queries and mutations (valid ones and ones that break the schema's types) from
schema.graphql; a dictionary of real index codes, spelled the ways users type them, and dates around the
data make many of them reach the resolvers instead of stopping at the first unknown code. A few hand-written
requests cover what the generator never sends (broken JSON, lone surrogates, batches, GET mutations).

Run with `-s` to see the summary: requests sent, status codes and error codes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.graphql import nodes

from tests.support.servers import running_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-admin-token"
# Per operation (four: indexes, indexChart, yieldThisYear, refreshCache); the generator stops earlier
# when it runs out of distinct requests (as it does for `indexes`).
EXAMPLES_PER_OPERATION = 120

SAMPLE_CODES = ["000300", "000905", "000922", "000932", "000827", "000986", "399971", "000985", "000991", "HSI"]
# Known codes as users type them; the lookalikes are not codes and must be refused.
CODE_SPELLINGS = [*SAMPLE_CODES, "hsi", " HSI ", "Hsi\t", " 000300", "000905\n", "HS I", "000300.SH", "ＨＳＩ", "0"]
SAMPLE_FIRST, SAMPLE_LAST = dt.date(2005, 1, 4), dt.date(2026, 11, 20)
EDGE_DATES = [
    SAMPLE_FIRST, SAMPLE_FIRST - dt.timedelta(days=1), SAMPLE_LAST, SAMPLE_LAST + dt.timedelta(days=1),
    dt.date(2026, 12, 31), dt.date(2027, 1, 1), dt.date(2025, 12, 31), dt.date(2026, 1, 1),
    dt.date(2026, 11, 21), dt.date(2026, 11, 22),  # the weekend right after the last close
    dt.date(1, 1, 1), dt.date(9999, 12, 31),
]
# Dates mostly around the data, sometimes anywhere the Date scalar allows.
schemathesis.graphql.scalar(
    "Date",
    st.one_of(
        st.sampled_from(EDGE_DATES),
        st.dates(SAMPLE_FIRST - dt.timedelta(days=400), SAMPLE_LAST + dt.timedelta(days=400)),
        st.dates(),
    ).map(str).map(nodes.String),
)

# Python exception names that must never reach a client (outside text the request itself sent).
LEAKS = re.compile(
    r'Traceback|File "|\b(?:RuntimeError|KeyError|AttributeError|TypeError|ValueError|IndexError|AssertionError|'
    r'NameError|ZeroDivisionError|RecursionError|UnicodeEncodeError|UnicodeDecodeError|NotImplementedError|'
    r'OverflowError|NoDataError|DataError|RedisError|ConnectionError|TimeoutError|OSError|JSONDecodeError|'
    r'CancelledError|Exception)\b'
)
INTERNAL = ("INTERNAL_SERVER_ERROR", "Internal error")

STATS: Counter[str] = Counter()


class Server:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.url = f"{base}/graphql"
        self.log = log
        self._read = 0

    def new_log(self) -> str:
        """What the server logged since the last call."""
        with self.log.open("rb") as f:
            f.seek(self._read)
            data = f.read()
        self._read += len(data)
        return data.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with running_server(redis_server.url, log=log, GQL_ADMIN_TOKEN=TOKEN) as base:
        yield Server(base, log)


def _load_schema():
    config = SchemathesisConfig.from_dict(
        {
            "dictionaries": {"codes": {"values": CODE_SPELLINGS}},
            "parameters": {"Query.*.codes[*]": {"dictionary": "codes", "probability": 0.85}},
        }
    )
    # The committed SDL (kept in sync by test_schema): no server is needed to collect the tests, and the
    # run does not depend on introspection being switched on. The server's URL is given to each call.
    return schemathesis.graphql.from_path(ROOT / "schema.graphql", config=config)


# Not schemathesis.pytest.from_fixture: its lazy loader fails on pytest 9.2 ('Function' object has no
# attribute '_nodeid', schemathesis 4.32).
schema = _load_schema()


def check_response(request_text: str, status: int, body: str, server: Server) -> None:
    """The rules every response follows, whatever was sent."""
    if status >= 500:
        time.sleep(0.2)  # uvicorn logs an unhandled exception after it has sent the 500
    logged = server.new_log()
    assert "Traceback" not in logged, f"{status}; the server logged a traceback for {request_text!r}:\n{logged[-4000:]}"
    assert status < 500, f"{status} for {request_text!r}:\n{body[:2000]}"
    for match in LEAKS.finditer(body):
        assert match.group(0) in request_text, f"{match.group(0)!r} in the response to {request_text!r}:\n{body[:2000]}"
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"{status}, not JSON, for {request_text!r}:\n{body[:2000]}") from None
    if status >= 400:  # a request error: a JSON GraphQL error with a code (checked below), as the spec gives it
        assert isinstance(payload, dict) and payload.get("errors") and "data" not in payload, f"{status} for {request_text!r}: {body[:2000]}"
    results = payload if isinstance(payload, list) else [payload]
    for result in results:
        if not isinstance(result, dict):
            continue
        for error in result.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            STATS[f"error {code}"] += 1
            assert isinstance(code, str) and code, f"error without extensions.code for {request_text!r}: {error}"
            assert code not in INTERNAL and not error.get("message", "").startswith(INTERNAL[1]), (
                f"unexpected failure for {request_text!r}: {error}"
            )
        if result.get("data") and not result.get("errors"):
            STATS["answered without errors"] += 1


@settings(
    max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_generated_requests_never_fail_inside(case, server: Server):
    label = case.operation.label
    n = STATS[f"requests {label}"]
    headers = {}
    if label.startswith("Mutation."):
        # Mostly the right token, sometimes none or a wrong one.
        headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"}][min(n % 5, 2)]
    started = time.monotonic()
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    STATS["seconds in requests"] += time.monotonic() - started  # type: ignore[assignment]  # the one float in it
    STATS[f"requests {label}"] += 1
    STATS["requests"] += 1
    STATS[f"status {response.status_code}"] += 1
    check_response(case.body, response.status_code, response.text, server)
    if n % 4 == 0:
        # The same document over GET: answered for queries, refused (4xx) for mutations.
        response = httpx2.get(server.url, params={"query": case.body}, headers=headers, timeout=60)
        STATS["requests"] += 1
        STATS["requests GET"] += 1
        STATS[f"status {response.status_code}"] += 1
        check_response(case.body, response.status_code, response.text, server)
        if label.startswith("Mutation."):
            assert 400 <= response.status_code < 500


# Requests the generator never sends: (method, content type, body or GET query string).
_Q = "{ indexes { code } }"


def _json(value) -> bytes:
    return json.dumps(value).encode()  # escapes lone surrogates as \\udXXX, as a client would send them


def _post(body: bytes, content_type: str = "application/json") -> tuple[str, str, bytes]:
    return ("POST", content_type, body)


# The ids after a colon name the 500 each of those requests caused before 6236fd6 (Strawberry's request
# parsing, orjson and lone surrogates): regression cases now.
HAND_WRITTEN = [
    pytest.param(*_post(b"not json"), id="not json"),
    pytest.param(*_post(_json(_Q)), id="body a JSON string: AttributeError str.get"),
    pytest.param(*_post(b"5"), id="body a JSON number: AttributeError int.get"),
    pytest.param(*_post(b"null"), id="body JSON null: AttributeError NoneType.get"),
    pytest.param(*_post(b'["x", 1]'), id="batch of non-objects: AttributeError str.get"),
    pytest.param(
        *_post(_json({"query": _Q, "operationName": "\ud800"})),
        id="lone surrogate operationName: UnicodeEncodeError in PlainTextResponse",
    ),
    pytest.param(
        *_post(_json([{"query": _Q, "operationName": "\ud800"}])),
        id="lone surrogate operationName in a batch: UnicodeEncodeError",
    ),
    pytest.param(*_post(b"{}"), id="empty object"),
    pytest.param(*_post(b'{"query": 5}'), id="query not a string"),
    pytest.param(*_post(_json({"query": _Q, "variables": "x"})), id="variables not an object"),
    pytest.param(*_post(_json({"query": _Q, "extensions": 5})), id="extensions not an object"),
    pytest.param(*_post(b"[]"), id="empty batch"),
    pytest.param(*_post(_json([{"query": _Q}, {"query": "{ yieldThisYear { code } }"}])), id="batch"),
    pytest.param(*_post(_json([{"query": _Q}] * 50)), id="batch of 50"),
    pytest.param(*_post(_Q.encode(), "text/plain"), id="text/plain"),
    pytest.param(*_post(b"query=%7B%20indexes%20%7B%20code%20%7D%20%7D", "application/x-www-form-urlencoded"), id="form"),
    pytest.param(*_post(b"garbage", "multipart/form-data; boundary=x"), id="broken multipart"),
    pytest.param(
        *_post(b'{"query": "{ indexes { code } }\xff"}'), id="invalid UTF-8: UnicodeDecodeError in parse_json"
    ),
    pytest.param(*_post(_json({"query": '{ yieldThisYear(codes: ["\\ud800"]) { code } }'})), id="surrogate escape in a literal"),
    pytest.param(*_post(_json({"query": '{ yieldThisYear(codes: ["\ud800"]) { code } }'})), id="raw surrogate in a literal"),
    pytest.param(
        *_post(_json({"query": "query($c: [String!]) { indexChart(codes: $c) { start } }", "variables": {"c": ["\ud800"]}})),
        id="surrogate in a variable",
    ),
    pytest.param(
        *_post(_json({"query": "query($d: Date) { yieldThisYear(asOf: $d) { code } }", "variables": {"d": "\ud800"}})),
        id="surrogate in a Date variable: orjson TypeError",
    ),
    pytest.param(
        *_post(_json({"query": "query($f: Frequency!) { indexChart(frequency: $f) { start } }", "variables": {"f": "\ud800"}})),
        id="surrogate in an enum variable: orjson TypeError",
    ),
    pytest.param(*_post(_json({"query": '{ yieldThisYear(codes: ["\\u0000HSI"]) { code } }'})), id="NUL in a code"),
    pytest.param(*_post(_json({"query": '{ yieldThisYear(asOf: "2026-02-30") { code } }'})), id="impossible date"),
    pytest.param(*_post(_json({"query": '{ indexChart(start: "99999-01-01") { start } }'})), id="five-digit year"),
    pytest.param(
        *_post(_json({"query": "query($c: [String!]) { yieldThisYear(codes: $c) { code } }", "variables": {"c": "hsi"}})),
        id="code list as one string",
    ),
    pytest.param(*_post(_json({"query": '{ indexChart(start: "2026-11-14", end: "2026-11-15") { start } }'})), id="weekend range"),
    pytest.param(*_post(_json({"query": _Q, "operationName": "Nope"})), id="unknown operation name"),
    pytest.param(*_post(_json({"query": "subscription { indexes { code } }"})), id="subscription"),
    pytest.param(*_post(_json({"query": "{" * 200 + "}" * 200})), id="deep braces"),
    pytest.param(
        *_post(_json({"query": "{" + " ".join(f"a{i}: indexChart {{ start }}" for i in range(60)) + "}"})), id="60 aliases"
    ),
    pytest.param("GET", None, "query=mutation%7BrefreshCache%7Brefreshed%7Btarget%7D%7D%7D", id="GET mutation"),
    pytest.param("GET", None, "query=%7Bindexes%7Bcode%7D%7D&variables=%7B", id="GET bad variables"),
    pytest.param("GET", None, "query=%7Bindexes%7Bcode%7D%7D&operationName=%ED%A0%80", id="GET invalid UTF-8"),
    pytest.param("GET", None, "", id="GET without a query"),
]


@pytest.mark.parametrize("method, content_type, body", HAND_WRITTEN)
def test_hand_written_requests_never_fail_inside(server: Server, method, content_type, body):
    if method == "GET":
        response = httpx2.get(f"{server.url}?{body}", headers={"accept": "application/json"}, timeout=60)
    else:
        response = httpx2.post(server.url, content=body, headers={"content-type": content_type}, timeout=60)
    STATS["requests"] += 1
    STATS["requests hand-written"] += 1
    STATS[f"status {response.status_code}"] += 1
    check_response(repr(body), response.status_code, response.text, server)


def test_fuzz_summary(server: Server, capsys):
    """Runs last: says how much was sent, and nothing the server logged since was a traceback."""
    if not STATS["requests"]:
        pytest.skip("no fuzz test ran before this one")
    with capsys.disabled():
        print("\nfuzz summary:", ", ".join(f"{k}: {round(v, 1) if isinstance(v, float) else v}" for k, v in sorted(STATS.items())))
    assert STATS["requests"] >= 200
    assert "Traceback" not in server.new_log()
