"""The dashboard as a person sees it: `python -m gql serve` over real HTTP, in the system Chromium (Playwright).

The browser (the `chromium` fixture of tests/conftest.py) is tests/support/browser.py's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2
import pytest

from gql.app import create_app
from gql.db.write import import_into_database, init_database
from gql.importer import import_csv
from tests.support.browser import Chromium, screenshot
from tests.support.databases import fresh_database
from tests.support.realdata import FIXTURES, REAL, import_real
from tests.support.servers import prefixed, running_server, serving
from tests.support.subscriptions import wait_for_subscribers

TOKEN = "dashboard-token"
DEFAULT_CODES = ["000300", "000905", "HSI"]
# REVALIDATED: the server answered 304 and the page shows the browser's copy (dashboard.js, API).
CACHE_TEXT = re.compile(r"^(HIT|MISS|STALE|REFRESHED|BYPASS|REVALIDATED), \d+(\.\d)? s old$")
# Cold computations run in the server's worker process; a first chart can take a few seconds on a busy machine.
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url, GQL_ADMIN_TOKEN=TOKEN) as base:
        yield base


@dataclass
class Visit:
    """A visit to the dashboard and what the page did: every request it made, every WebSocket it opened and
    every console error. `prepare(context)` runs before the page opens (to route its WebSockets, say)."""

    chromium: Chromium
    base: str
    page: object = None
    requests: list[str] = field(default_factory=list)
    sent: list = field(default_factory=list)  # the Playwright requests themselves (method, headers as sent)
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _context: object = None

    def open(self, path: str = "/", prepare=None):
        self._context = self.chromium.browser().new_context(viewport={"width": 1280, "height": 800})
        if prepare is not None:
            prepare(self._context)
        page = self.page = self._context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        def sent(request) -> None:
            self.requests.append(request.url)
            self.sent.append(request)

        page.on("request", sent)
        page.on("websocket", lambda socket: self.sockets.append(socket.url))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.goto(f"{self.base}{path}")
        wait_ready(page)
        return page

    def close(self) -> None:
        if self._context is not None:
            self._context.close()

    def assert_clean(self) -> None:
        host = urlsplit(self.base).netloc
        foreign = [url for url in self.requests if urlsplit(url).netloc != host or urlsplit(url).scheme != "http"]
        foreign += [url for url in self.sockets if urlsplit(url).netloc != host or urlsplit(url).scheme != "ws"]
        assert not foreign, f"the page made requests to other hosts: {foreign}"
        assert self.requests, "no request was recorded"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def visit(chromium, server) -> Iterator[Visit]:
    visit = Visit(chromium, server)
    yield visit
    visit.close()


def wait_ready(page) -> None:
    page.wait_for_selector('#chart[data-state="ready"]')
    page.wait_for_selector('#ytd[data-state="ready"]')


def generation(page, section: str) -> int:
    return int(page.get_attribute(f"#{section}", "data-generation"))


def wait_for_new_chart(page, previous: int) -> None:
    """Wait until the chart has drawn data newer than `previous` (each answer bumps data-generation)."""
    page.wait_for_function(
        "g => { const c = document.querySelector('#chart');"
        " return c.dataset.state === 'ready' && Number(c.dataset.generation) > g; }",
        arg=previous,
    )


def polyline(page, code: str) -> dict:
    line = page.locator(f'#chart svg polyline[data-code="{code}"]')
    assert line.count() == 1, f"no single polyline for {code}"
    points = line.get_attribute("points").split()
    coords = [tuple(map(float, p.split(","))) for p in points]
    return {
        "points": coords,
        "count": int(line.get_attribute("data-points")),
        "first": line.get_attribute("data-first-date"),
        "last": line.get_attribute("data-last-date"),
        "stroke": line.get_attribute("stroke"),
    }


def cache_entries(page, selector: str) -> list[tuple[str, str]]:
    entries = page.locator(f"{selector} .cache-entry")
    return [(entries.nth(i).get_attribute("data-status"), entries.nth(i).inner_text().strip()) for i in range(entries.count())]


def assert_cache_shown(page, selector: str, statuses: set[str] | None = None) -> None:
    entries = cache_entries(page, selector)
    assert len(entries) == 1, f"{selector}: {entries}"
    status, text = entries[0]
    assert CACHE_TEXT.match(text), f"{selector} shows {text!r}"
    assert text.startswith(status)
    if statuses is not None:
        assert status in statuses, f"{selector} shows {text!r}, expected one of {statuses}"


def post(base: str, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    response = httpx2.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# The page's poll for the data version (dashboard.js VERSION_QUERY), sent by its persisted-query hash.
VERSION_QUERY = "{ __typename }"


def is_poll(url: str) -> bool:
    params = dict(parse_qsl(urlsplit(url).query))
    return params.get("query") == VERSION_QUERY or hashlib.sha256(VERSION_QUERY.encode()).hexdigest() in params.get("extensions", "")


def percent(value: float) -> Decimal:
    # JavaScript's toFixed(2) rounds the exact binary value half away from zero: the same as this.
    return Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_dashboard_shows_chart_and_year_to_date_table(visit):
    page, base = visit.open(), visit.base
    indexes = post(base, "{ indexes { code name source firstDate lastDate } }")["data"]["indexes"]
    last_date = max(i["lastDate"] for i in indexes)

    # Header: where the data comes from and how recent it is.
    assert page.inner_text("#data-source") == ", ".join(dict.fromkeys(i["source"] for i in indexes))
    assert "synthetic sample" in page.inner_text("#data-source")
    assert page.inner_text("#data-last-date") == last_date

    # Chart: the default indexes, five years of weekly points, each its own colour, matching the API.
    checked = page.locator("#index-options input:checked")
    assert [checked.nth(i).get_attribute("data-code") for i in range(checked.count())] == DEFAULT_CODES
    assert page.locator("#chart svg polyline").count() == len(DEFAULT_CODES)
    svg = page.locator("#chart svg")
    start = svg.get_attribute("data-start")
    assert start == date.fromisoformat(last_date).replace(year=date.fromisoformat(last_date).year - 5).isoformat()
    expected = post(
        base,
        "query($c: [String!], $s: Date) { indexChart(codes: $c, start: $s, frequency: WEEKLY) { series { code points { date } } } }",
        {"c": DEFAULT_CODES, "s": start},
    )["data"]["indexChart"]["series"]
    width, height = map(float, svg.get_attribute("viewBox").split()[2:])
    strokes = set()
    for series in expected:
        line = polyline(page, series["code"])
        assert line["count"] == len(line["points"]) == len(series["points"]) > 200
        assert (line["first"], line["last"]) == (series["points"][0]["date"], series["points"][-1]["date"])
        assert all(0 <= x <= width and 0 <= y <= height for x, y in line["points"])
        assert len({y for _, y in line["points"]}) > 50, "a flat line: the values did not reach the chart"
        strokes.add(line["stroke"])
    assert len(strokes) == len(DEFAULT_CODES)
    assert page.locator("#chart-legend li").count() == len(DEFAULT_CODES)
    assert page.locator("#chart svg .x-axis text").count() >= 3
    assert page.locator("#chart svg .y-axis text").count() >= 3
    assert_cache_shown(page, "#chart-cache")

    # Year-to-date table: every index, highest yield first, the API's numbers to two decimals.
    rows = post(base, "{ yieldThisYear { code name yieldPct baseDate lastDate } }")["data"]["yieldThisYear"]
    assert len(rows) == 10
    rows.sort(key=lambda r: -r["yieldPct"])
    shown = page.locator("#ytd-table tbody tr[data-code]")
    assert shown.count() == 10
    for i, row in enumerate(rows):
        tr = shown.nth(i)
        assert tr.get_attribute("data-code") == row["code"]
        text = tr.locator("td.ytd").inner_text().strip()
        assert re.fullmatch(r"[+-]?\d+\.\d\d %", text), text
        assert Decimal(text.removesuffix(" %")) == percent(row["yieldPct"]), (row, text)
        assert tr.locator("td.base-date").inner_text() == row["baseDate"]
        assert tr.locator("td.last-date").inner_text() == row["lastDate"]
        colour = tr.locator("td.ytd").get_attribute("class")
        assert ("pos" in colour) == (row["yieldPct"] > 0) and ("neg" in colour) == (row["yieldPct"] < 0)
    assert_cache_shown(page, "#ytd-cache")

    screenshot(page, "dashboard.png")
    visit.assert_clean()


def test_range_frequency_view_and_index_controls(visit):
    page = visit.open()
    last_date = page.inner_text("#data-last-date")

    before = generation(page, "chart")
    page.click('#range-buttons button[data-range="ALL"]')
    wait_for_new_chart(page, before)
    everything = polyline(page, "000300")
    assert page.get_attribute("#chart svg", "data-frequency") == "WEEKLY"
    assert everything["first"] < "2006-01-01"
    assert_cache_shown(page, "#chart-cache")

    before = generation(page, "chart")
    page.click('#range-buttons button[data-range="1Y"]')
    wait_for_new_chart(page, before)
    one_year = polyline(page, "000300")
    year_ago = date.fromisoformat(last_date).replace(year=date.fromisoformat(last_date).year - 1).isoformat()
    assert page.get_attribute("#chart svg", "data-start") == year_ago
    assert one_year["first"] >= year_ago and one_year["first"] != everything["first"]
    assert one_year["last"] == last_date
    assert one_year["count"] != everything["count"] and 200 < one_year["count"] < 270, "1Y of trading days"
    assert page.get_attribute('#range-buttons button[data-range="1Y"]', "aria-pressed") == "true"
    assert page.input_value("#frequency") == "DAILY"
    assert_cache_shown(page, "#chart-cache")

    # The frequency stays the user's choice.
    before = generation(page, "chart")
    page.select_option("#frequency", "MONTHLY")
    wait_for_new_chart(page, before)
    assert page.get_attribute("#chart svg", "data-frequency") == "MONTHLY"
    assert 12 <= polyline(page, "000300")["count"] <= 13

    # Drawdown: the same answer drawn as percent below the running peak, no new request needed.
    before = generation(page, "chart")
    page.click('#view-buttons button[data-view="drawdown"]')
    page.wait_for_selector('#chart svg[data-view="drawdown"]')
    assert generation(page, "chart") == before
    labels = page.locator("#chart svg .y-axis text").all_text_contents()
    assert labels and all(label.endswith(" %") and float(label.removesuffix(" %")) <= 0 for label in labels), labels
    assert "Drawdown" in page.inner_text("#chart-subtitle")
    page.click('#view-buttons button[data-view="performance"]')
    page.wait_for_selector('#chart svg[data-view="performance"]')

    # Index checkboxes add and remove series.
    before = generation(page, "chart")
    page.uncheck('#index-options input[data-code="HSI"]')
    wait_for_new_chart(page, before)
    assert page.locator('#chart svg polyline[data-code="HSI"]').count() == 0
    before = generation(page, "chart")
    page.check('#index-options input[data-code="000922"]')
    wait_for_new_chart(page, before)
    codes = [page.locator("#chart svg polyline").nth(i).get_attribute("data-code") for i in range(3)]
    assert codes == ["000300", "000905", "000922"]
    assert page.locator("#chart-legend li").count() == 3

    # Asking the same question again is answered from the browser's copy the server confirmed (304), and the
    # page says so.
    before = generation(page, "chart")
    page.click('#range-buttons button[data-range="ALL"]')
    wait_for_new_chart(page, before)
    before = generation(page, "chart")
    page.click('#range-buttons button[data-range="1Y"]')
    wait_for_new_chart(page, before)
    assert_cache_shown(page, "#chart-cache", {"REVALIDATED"})
    assert page.get_attribute("#chart-cache .cache-entry", "data-first") in {"HIT", "MISS"}
    assert "304 Not Modified" in page.get_attribute("#chart-cache .cache-entry", "title")

    screenshot(page, "dashboard-controls.png")
    visit.assert_clean()


@pytest.fixture(scope="module")
def real_server(redis_server, tmp_path_factory) -> Iterator[str]:
    data = import_real(tmp_path_factory.mktemp("real-data"))
    with running_server(redis_server.url, GQL_DATA_DIR=str(data)) as base:
        yield base


def test_on_the_real_data_the_first_view_shows_what_it_can_per_index(chromium, real_server):
    # CSI 300 and CSI 500 end in 2021, HSI in 2026: the default 5Y chart and this year's table are HSI's,
    # and the page says per index why the other two are not drawn or ranked.
    visit = Visit(chromium, real_server)
    try:
        page = visit.open()
        assert page.inner_text("#data-last-date") == "2026-07-24"
        assert page.is_hidden("#chart-error") and page.is_hidden("#ytd-error")
        assert [page.locator("#chart svg polyline").nth(i).get_attribute("data-code") for i in range(1)] == ["HSI"]
        assert page.locator("#chart svg polyline").count() == 1
        for code, span in [("000300", "2005-04-08 to 2021-01-27"), ("000905", "2007-01-15 to 2021-02-05")]:
            legend = page.locator(f'#chart-legend li.no-data[data-code="{code}"]').inner_text()
            assert f"no closes in this range (data from {span})" in legend
            row = page.locator(f'#ytd-table tbody tr.no-data[data-code="{code}"]').inner_text()
            assert f"no close in 2026: data from {span}" in row
        ranked = page.locator("#ytd-table tbody tr[data-code]:not(.no-data)")
        assert [ranked.nth(i).get_attribute("data-code") for i in range(ranked.count())] == ["HSI"]

        # YTD on the chart is measured as in the table: the same figure, labelled with its first date.
        [hsi] = post(real_server, "{ yieldThisYear { code yieldPct baseDate } }")["data"]["yieldThisYear"]
        before = generation(page, "chart")
        page.click('#range-buttons button[data-range="YTD"]')
        wait_for_new_chart(page, before)
        legend = page.locator('#chart-legend li[data-code="HSI"] .stats').inner_text()
        table = page.locator('#ytd-table tbody tr[data-code="HSI"] td.ytd').inner_text().strip()
        assert legend.startswith(f"{table} since {hsi['baseDate']},"), (legend, table)

        # CSI 300 alone on YTD: no chart, no error, and why.
        page.uncheck('#index-options input[data-code="HSI"]')
        page.wait_for_selector('#chart[data-state="empty"]')
        page.uncheck('#index-options input[data-code="000905"]')
        page.wait_for_selector('#chart-legend li.no-data[data-code="000300"]')
        assert page.is_hidden("#chart-error") and page.locator("#chart-legend li").count() == 1
        screenshot(page, "dashboard-real-data.png")
        visit.assert_clean()
    finally:
        visit.close()


def test_the_dashboard_works_under_a_path_prefix(chromium, settings):
    # Every URL of the page is relative: mounted under /api (a bigger app, uvicorn --root-path, a proxy),
    # it loads its files and asks /api/graphql.
    with serving(prefixed(create_app(settings), "/api")) as base:
        visit = Visit(chromium, base)
        try:
            page = visit.open("/api/")
            assert page.locator("#chart svg polyline").count() == len(DEFAULT_CODES)
            page.wait_for_selector('#live-status[data-mode="live"]')  # the subscription's socket is below /api too
            paths = [urlsplit(url).path for url in visit.requests + visit.sockets]
            assert "/api/graphql" in paths and "/api/static/dashboard.js" in paths
            assert [urlsplit(url).path for url in visit.sockets] == ["/api/graphql"]
            assert all(path.startswith("/api/") for path in paths), paths
            visit.assert_clean()
        finally:
            visit.close()


def test_refresh_cache_needs_the_admin_token(visit):
    page, base = visit.open(), visit.base
    refused = post(base, "mutation { refreshCache { refreshed { target } } }")["errors"][0]["message"]

    page.click("#refresh-button")
    page.wait_for_selector("#refresh-token", state="visible")
    for token in ("", "not-the-token"):
        page.fill("#refresh-token", token)
        page.click("#refresh-submit")
        page.wait_for_selector('#refresh-status[data-state="error"]')
        status = page.inner_text("#refresh-status")
        assert "Refresh failed" in status and refused in status, status
        page.evaluate("document.querySelector('#refresh-status').dataset.state = ''")

    chart_before, ytd_before = generation(page, "chart"), generation(page, "ytd")
    sent_before = len(visit.sent)
    page.fill("#refresh-token", TOKEN)
    page.click("#refresh-submit")
    page.wait_for_function(
        "() => { const s = document.querySelector('#refresh-status');"
        " return s.dataset.state === 'ok' && s.textContent.includes('reloaded'); }"
    )
    status = page.inner_text("#refresh-status")
    assert page.get_attribute("#refresh-status", "data-targets") == "INDEX_CHART,YIELD_THIS_YEAR"
    assert re.search(r"INDEX_CHART in [\d.]+ ms, YIELD_THIS_YEAR in [\d.]+ ms", status), status
    assert page.locator("#refresh-form").is_hidden() and page.input_value("#refresh-token") == ""
    # The data was loaded again: the default yield was recomputed by the refresh, the page's chart on demand.
    assert generation(page, "chart") > chart_before and generation(page, "ytd") > ytd_before
    assert_cache_shown(page, "#ytd-cache", {"HIT"})
    assert_cache_shown(page, "#chart-cache", {"REFRESHED"})
    assert page.locator("#ytd-table tbody tr[data-code]").count() == 10
    # The mutation is a POST; the loads after it are GETs that ask for a new answer, not the browser's copy.
    calls = [r for r in visit.sent[sent_before:] if urlsplit(r.url).path == "/graphql"]
    assert [r.method for r in calls][:1] == ["POST"] and "refreshCache" in calls[0].post_data_json["query"]
    assert calls[1:] and all(r.method == "GET" and "if-none-match" not in r.all_headers() for r in calls[1:]), calls

    screenshot(page, "dashboard-refreshed.png")
    visit.assert_clean()


def test_api_errors_are_shown_to_the_user(visit):
    page = visit.open()

    def ask_for_an_unknown_code(route):
        url = urlsplit(route.request.url)
        params = dict(parse_qsl(url.query))
        if params.get("operationName") == "Chart":
            params["variables"] = json.dumps({**json.loads(params["variables"]), "codes": ["NOPE1"]})
        route.continue_(url=urlunsplit(url._replace(query=urlencode(params))))

    # The real server answers the bad question; the page must show its message, not swallow it.
    page.route(re.compile(r"/graphql\?"), ask_for_an_unknown_code)
    page.click('#range-buttons button[data-range="3Y"]')
    page.wait_for_selector('#chart[data-state="error"]')
    error = page.locator("#chart-error")
    assert error.is_visible()
    assert 'unknown index code "NOPE1"' in error.inner_text() and "BAD_USER_INPUT" in error.inner_text()
    assert page.locator("#chart svg polyline").count() == 0
    screenshot(page, "dashboard-error.png")

    page.unroute(re.compile(r"/graphql\?"))
    before = generation(page, "chart")
    page.click('#range-buttons button[data-range="5Y"]')
    wait_for_new_chart(page, before)
    assert error.is_hidden()
    assert page.locator("#chart svg polyline").count() == len(DEFAULT_CODES)
    visit.assert_clean()


# --- live updates: the dataChanged subscription, and polling without it -------------------------------------

NEW_DAY = ("2026-07-27", "07/27/26, 25100.00, 25400.00, 25050.00, 25312.45")  # the HSI fixture's layout, newest first


@pytest.fixture
def live_data(tmp_path) -> Path:
    return import_real(tmp_path / "data")


@pytest.fixture
def live_server(redis_server, live_data) -> Iterator[str]:
    with running_server(redis_server.url, GQL_DATA_DIR=str(live_data)) as base:
        yield base


def import_new_hsi_day(data_dir: Path) -> None:
    """One more trading day of the Hang Seng Index, imported as an operator would (the server's watcher sees it)."""
    header, *rows = (FIXTURES / "HSI.csv").read_text().splitlines()
    prices = data_dir.parent / "next-day" / "HSI.csv"
    prices.parent.mkdir()
    prices.write_text("\n".join([header, NEW_DAY[1], *rows]) + "\n")
    import_csv(prices, data_dir, "HSI", "Hang Seng Index")


def assert_shows_the_new_day(page, base: str) -> None:
    """The header, the chart and the year-to-date table show the imported day, as the API answers it now."""
    day = NEW_DAY[0]
    page.wait_for_function(f"() => document.querySelector('#data-last-date').textContent === '{day}'")
    page.wait_for_function(
        f"() => document.querySelector('#ytd-table tr[data-code=\"HSI\"] td.last-date')?.textContent === '{day}'"
    )
    wait_ready(page)
    page.wait_for_function(
        f"() => document.querySelector('#chart svg polyline[data-code=\"HSI\"]')?.dataset.lastDate === '{day}'"
    )
    [hsi] = post(base, '{ yieldThisYear(codes: ["HSI"]) { yieldPct lastDate } }')["data"]["yieldThisYear"]
    assert hsi["lastDate"] == day
    shown = page.locator('#ytd-table tbody tr[data-code="HSI"] td.ytd').inner_text().strip()
    assert Decimal(shown.removesuffix(" %")) == percent(hsi["yieldPct"])
    version = httpx2.get(f"{base}/healthz").json()["data"]["version"]
    assert page.get_attribute("#data-info", "data-version") == version


def test_new_data_reaches_the_open_page_without_a_reload(chromium, live_server, live_data):
    visit = Visit(chromium, live_server)
    try:
        page = visit.open()
        page.wait_for_selector('#live-status[data-mode="live"]')
        wait_for_subscribers(live_server, 1)
        assert page.inner_text("#data-last-date") == "2026-07-24"
        page.evaluate("window.notReloaded = 'the same page'")  # gone if the page navigated or reloaded
        chart, ytd = generation(page, "chart"), generation(page, "ytd")

        import_new_hsi_day(live_data)
        assert_shows_the_new_day(page, live_server)
        assert generation(page, "chart") > chart and generation(page, "ytd") > ytd
        assert page.evaluate("window.notReloaded") == "the same page"
        assert page.inner_text("#live-status") == "live"
        assert [urlsplit(url).path for url in visit.sockets] == ["/graphql"]
        assert not any(is_poll(url) for url in visit.requests), "the page polled while live"
        screenshot(page, "dashboard-live.png")
        visit.assert_clean()
    finally:
        visit.close()


def test_a_row_inserted_by_a_plain_sql_client_shows_up_on_the_open_page(chromium, redis_server, tmp_path):
    # Prices in PostgreSQL (a database of the test's own), written by psql as an ETL job would: NOTIFY reaches the
    # server, the subscription the page, and the page shows the new day with no reload and no refresh.
    with fresh_database("postgresql") as db:
        init_database(db.url)
        for file, code, name in REAL:
            import_into_database(db.url, FIXTURES / file, code, name)
        with running_server(redis_server.url, GQL_DATABASE_URL=db.url) as base:
            visit = Visit(chromium, base)
            try:
                page = visit.open()
                page.wait_for_selector('#live-status[data-mode="live"]')
                wait_for_subscribers(base, 1)
                page.evaluate("window.notReloaded = 'the same page'")
                db.sql(f"INSERT INTO index_close (code, trade_date, close) VALUES ('HSI', '{NEW_DAY[0]}', 25312.45)")
                assert_shows_the_new_day(page, base)
                assert page.evaluate("window.notReloaded") == "the same page"
                assert httpx2.get(f"{base}/healthz", timeout=10).json()["data"]["source"] == f"database {db.url}"
                screenshot(page, "dashboard-database.png")
                visit.assert_clean()
            finally:
                visit.close()


def test_without_websockets_the_page_polls_and_still_picks_up_new_data(chromium, live_server, live_data):
    # Every WebSocket the page opens fails at once, as behind a proxy without WebSocket support (the browser
    # reports an error and a close, code 1006): the page falls back to polling, and keeps trying the socket
    # with backoff. (Done in the page: Playwright's WebSocket routes hang when closed from a handler before 1.5x.)
    def block(context) -> None:
        context.add_init_script("""
            window.__refusedSockets = [];
            window.WebSocket = class extends EventTarget {
                constructor(url) {
                    super();
                    this.url = String(url);
                    this.readyState = 0;
                    window.__refusedSockets.push(this.url);
                    setTimeout(() => {
                        this.readyState = 3;
                        this.dispatchEvent(new Event("error"));
                        this.dispatchEvent(new CloseEvent("close", { code: 1006, wasClean: false }));
                    }, 20);
                }
                send() { throw new DOMException("not open", "InvalidStateError"); }
                close() {}
            };
        """)

    visit = Visit(chromium, live_server)
    try:
        page = visit.open(prepare=block)
        page.wait_for_selector('#live-status[data-mode="polling"]')
        page.evaluate("window.notReloaded = 'the same page'")
        import_new_hsi_day(live_data)
        assert_shows_the_new_day(page, live_server)  # within one polling period (10 s)
        assert page.evaluate("window.notReloaded") == "the same page"
        assert page.get_attribute("#live-status", "data-mode") == "polling"
        polls = [url for url in visit.requests if is_poll(url)]
        assert polls and all(urlsplit(url).path == "/graphql" for url in polls)
        refused = page.evaluate("window.__refusedSockets")
        assert len(refused) >= 2 and all(urlsplit(url).path == "/graphql" for url in refused), "the socket is tried again"
        visit.assert_clean()
    finally:
        visit.close()


# --- how the page asks: GET with persisted-query hashes, revalidated through the browser's HTTP cache -------

ACCESS_LINE = re.compile(r"gql\.access: (?P<method>GET|POST) /graphql (?P<status>\d{3}) \S+ operation=(?P<operation>\S+)")


def graphql_calls(visit: Visit, since: int = 0) -> list[dict]:
    """The page's requests to /graphql from `since` on: method, parameters, headers as sent."""
    calls = []
    for request in visit.sent[since:]:
        url = urlsplit(request.url)
        if url.path != "/graphql":
            continue
        params = dict(parse_qsl(url.query))
        extensions = json.loads(params.get("extensions", "{}"))
        calls.append({
            "method": request.method,
            "operation": params.get("operationName"),
            "query": params.get("query"),
            "hash": extensions.get("persistedQuery", {}).get("sha256Hash"),
            "headers": request.all_headers(),
            "request": request,
        })
    return calls


def access_lines(log: Path) -> list[dict]:
    return [m.groupdict() for m in ACCESS_LINE.finditer(log.read_text(errors="replace"))]


def test_queries_go_as_get_with_persisted_hashes(chromium, redis_server, tmp_path):
    # A server of its own (its persisted queries start empty) with its access log on: what the page sent, and what
    # the server answered, each side seen from where it is.
    log = tmp_path / "serve.log"
    with running_server(redis_server.url, log=log, GQL_LOG_LEVEL="info") as base:
        visit = Visit(chromium, base)
        try:
            page = visit.open()
            first = graphql_calls(visit)
            assert first and all(call["method"] == "GET" for call in first), first
            operations = ["Indexes", "YearToDate", "Chart"]
            for operation in operations:
                mine = [call for call in first if call["operation"] == operation]
                # An unknown hash: refused with PERSISTED_QUERY_NOT_FOUND, then the text once, with the same hash.
                assert len(mine) == 2, mine
                hash_only, with_text = mine
                assert hash_only["query"] is None and re.fullmatch(r"[0-9a-f]{64}", hash_only["hash"])
                assert with_text["query"] and with_text["hash"] == hash_only["hash"]
                assert hashlib.sha256(with_text["query"].encode()).hexdigest() == hash_only["hash"]
                assert f"query {operation}" in with_text["query"]
                refused = hash_only["request"].response().json()
                assert refused["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", refused
            lines = access_lines(log)
            assert all(line["method"] == "GET" for line in lines), lines
            assert sum(line["operation"] == "-" for line in lines) >= len(operations)  # the refusals run no operation
            assert {"Indexes", "YearToDate", "Chart"} <= {line["operation"] for line in lines if line["status"] == "200"}

            # Later loads: the hash alone, answered at once.
            since, logged = len(visit.sent), len(access_lines(log))
            before = generation(page, "chart")
            page.click('#range-buttons button[data-range="1Y"]')
            wait_for_new_chart(page, before)
            [chart] = graphql_calls(visit, since)
            assert (chart["method"], chart["operation"], chart["query"]) == ("GET", "Chart", None) and chart["hash"]
            assert [(line["method"], line["status"], line["operation"]) for line in access_lines(log)[logged:]] == [("GET", "200", "Chart")]
            assert_cache_shown(page, "#chart-cache", {"MISS", "HIT"})

            visit.assert_clean()
        finally:
            visit.close()


def test_without_crypto_subtle_the_page_sends_the_query_text(chromium, server):
    # Outside a secure context (a plain-http host that is not localhost) there is no crypto.subtle: plain GETs
    # with the query text, which the server answers as any query.
    visit = Visit(chromium, server)
    try:
        page = visit.open(prepare=lambda context: context.add_init_script("delete Crypto.prototype.subtle;"))
        calls = graphql_calls(visit)
        assert calls and all(call["method"] == "GET" and call["query"] and call["hash"] is None for call in calls), calls
        assert {call["operation"] for call in calls} >= {"Indexes", "YearToDate", "Chart"}
        assert page.locator("#chart svg polyline").count() == len(DEFAULT_CODES)
        visit.assert_clean()
    finally:
        visit.close()
