"""GraphiQL at /graphql with no internet: its files ship in the package (gql/static/graphiql/) and the app
serves them, at URLs relative to the page, so it works under a path prefix too.

The browser tests block every request to another host and fail if the page made one; they type a query into
GraphiQL's editor, run it, and read the answer in its result pane, as a person does.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from starlette.testclient import TestClient

from gql.app import create_app
from gql.graphiql import GRAPHIQL_DIR, IMMUTABLE, PAGE
from tests.support.browser import Chromium, screenshot
from tests.support.servers import prefixed, running_server, serving

ROOT = Path(__file__).resolve().parent.parent
HTML = {"Accept": "text/html"}
QUERY = '{ yieldThisYear(codes: ["HSI"]) { code yieldPct } }'
# The folder's own files; everything else in it is a third-party file listed in SHA256SUMS.
OWN_FILES = {"graphiql.html", "fetch.sh", "README.md", "SHA256SUMS"}
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
TIMEOUT_MS = 60_000


def checksums() -> dict[str, str]:
    """SHA256SUMS: file name -> sha256, as `sha256sum` writes it."""
    sums = {}
    for line in (GRAPHIQL_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    return sums


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "a": "href"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def references(html: str) -> list[str]:
    """Every URL the page loads (scripts, stylesheets, icon)."""
    parser = _References()
    parser.feed(html)
    return parser.urls


# --- the files ----------------------------------------------------------------------------------------


def test_the_release_files_are_the_ones_fetched_and_checked():
    """fetch.sh takes them from the npm registry and checks them against SHA256SUMS; nothing changed them since."""
    sums = checksums()
    present = {path.name for path in GRAPHIQL_DIR.iterdir() if path.is_file()}
    assert present - OWN_FILES == set(sums), "every third-party file, and only those, is in SHA256SUMS"
    changed = [name for name, digest in sums.items() if hashlib.sha256((GRAPHIQL_DIR / name).read_bytes()).hexdigest() != digest]
    assert not changed, f"differ from SHA256SUMS (run gql/static/graphiql/fetch.sh): {changed}"


def test_every_package_has_its_licence_and_is_listed_in_the_notice():
    notice = (GRAPHIQL_DIR / "README.md").read_text()
    sums = checksums()
    for name, digest in sums.items():
        assert f"`{name}`" in notice and digest in notice, f"README.md here does not list {name} with its sha256"
    for package in ("react", "react-dom", "graphiql", "plugin-explorer", "graphiql-explorer"):
        licence = GRAPHIQL_DIR / f"LICENSE.{package}"
        assert licence.is_file() and "MIT License" in licence.read_text() and f"LICENSE.{package}" in sums
    for url in references(PAGE.read_text()):
        name = url.removeprefix("static/graphiql/")
        assert name == "static/favicon.svg" or name in sums, f"the page loads {url}, which is not a checked release file"


def test_the_page_and_its_files_ship_in_the_package():
    """pyproject's package data takes the folder along (setuptools globs each pattern under gql/)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gql"]
    package = ROOT / "gql"
    shipped = {path.relative_to(package).as_posix() for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    needed = {f"static/graphiql/{name}" for name in [*checksums(), "graphiql.html", "README.md", "SHA256SUMS"]}
    assert needed <= shipped, f"not in the package data: {sorted(needed - shipped)}"
    # And they are found where the installed package has them, through the same directory the app serves.
    folder = resources.files("gql") / "static" / "graphiql"
    assert all((folder / name.removeprefix("static/graphiql/")).is_file() for name in needed)
    assert Path(str(folder)).resolve() == GRAPHIQL_DIR


# --- over HTTP ----------------------------------------------------------------------------------------


def assert_page_and_files_served(client: TestClient, page_path: str) -> list[str]:
    page = client.get(page_path, headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<div id="graphiql"' in page.text and "window.location.pathname" in page.text
    assert "http:" not in page.text and "https:" not in page.text, "no absolute URL: the page must need no other host"
    urls = references(page.text)
    assert len(urls) == 7, urls
    served = []
    for url in urls:
        assert not urlsplit(url).scheme and not urlsplit(url).netloc and not url.startswith("/"), f"{url} is not relative"
        path = urlsplit(urljoin(f"http://testserver{page_path}", url)).path
        response = client.get(path)
        assert response.status_code == 200, path
        kind = CONTENT_TYPES[Path(path).suffix]
        assert response.headers["content-type"].split(";")[0] == kind, (path, response.headers["content-type"])
        if path.startswith(page_path.removesuffix("graphql") + "static/graphiql/"):
            assert response.headers["cache-control"] == IMMUTABLE, path
            assert response.content == (GRAPHIQL_DIR / Path(path).name).read_bytes()
        served.append(path)
    return served


def test_graphiql_page_and_every_file_it_loads_are_served(client):
    served = assert_page_and_files_served(client, "/graphql")
    assert "/static/graphiql/graphiql-3.8.3.min.js" in served and "/static/favicon.svg" in served
    # The page itself is never cached: it names the versions of the files.
    assert client.get("/graphql", headers=HTML).headers["cache-control"] == "no-store"


def test_graphiql_under_a_path_prefix_over_http(settings):
    with TestClient(prefixed(create_app(settings), "/api")) as client:
        served = assert_page_and_files_served(client, "/api/graphql")
        assert all(path.startswith("/api/static/") for path in served)
        answer = client.post("/api/graphql", json={"query": QUERY}).json()
        assert answer["data"]["yieldThisYear"][0]["code"] == "HSI" and answer["extensions"]["cache"]


def test_graphiql_can_still_be_switched_off(make_client):
    client = make_client(graphiql=False)
    # No page: a browser gets the coded error of a GET without a query, which says how to ask.
    off = client.get("/graphql", headers=HTML)
    assert off.status_code == 400 and off.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert client.get("/graphql", params={"query": "{ indexes { code } }"}).status_code == 200


# --- in the browser ---------------------------------------------------------------------------------


@dataclass
class OfflineVisit:
    """A browser page that reaches only `base`'s host: every other request is aborted, and recorded."""

    chromium: Chromium
    base: str
    blocked: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _context: object = None

    def open(self, path: str):
        self._context = context = self.chromium.browser().new_context(viewport={"width": 1400, "height": 860})
        host = urlsplit(self.base).netloc

        def only_this_host(route) -> None:
            url = urlsplit(route.request.url)
            if url.scheme in ("http", "https", "ws", "wss") and url.netloc != host:
                self.blocked.append(route.request.url)
                route.abort("blockedbyclient")
            else:
                route.continue_()

        context.route("**/*", only_this_host)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.goto(f"{self.base}{path}")
        return page

    def close(self) -> None:
        if self._context is not None:
            self._context.close()

    def assert_offline_and_clean(self) -> None:
        assert not self.blocked, f"the page tried other hosts: {self.blocked}"
        assert self.requests, "no request was recorded"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def visit(chromium) -> Iterator[Callable]:
    visits: list[OfflineVisit] = []

    def make(base: str) -> OfflineVisit:
        visits.append(OfflineVisit(chromium, base))
        return visits[-1]

    yield make
    for made in visits:
        made.close()


def editor_text(page, selector: str) -> str:
    return page.evaluate("s => document.querySelector(s).CodeMirror.getValue()", f"{selector} .CodeMirror")


def run_typed_query(page, query: str, run_with: str) -> dict:
    """Type `query` into GraphiQL's query editor (replacing the example), run it, and return the result pane's JSON."""
    page.wait_for_selector(".graphiql-query-editor .CodeMirror")
    # The schema arrived (introspection through the page's fetcher): the explorer lists the fields.
    page.click('button[aria-label="Show GraphiQL Explorer"]')
    page.wait_for_selector(".graphiql-explorer-root :text('yieldThisYear')")
    page.click(".graphiql-query-editor .CodeMirror-lines")
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.type(query)
    page.keyboard.press("Escape")  # close the completion list, if one is open
    assert editor_text(page, ".graphiql-query-editor") == query
    if run_with == "button":
        page.click(".graphiql-execute-button")
    else:
        page.click(".graphiql-query-editor .CodeMirror-lines")
        page.keyboard.press(run_with)
    page.wait_for_function(
        "() => { const e = document.querySelector('.result-window .CodeMirror');"
        " return e && e.CodeMirror.getValue().includes('\"extensions\"'); }"
    )
    return json.loads(editor_text(page, ".result-window"))


def assert_yield_answer(answer: dict) -> None:
    assert "errors" not in answer, answer
    rows = answer["data"]["yieldThisYear"]
    assert [row["code"] for row in rows] == ["HSI"] and isinstance(rows[0]["yieldPct"], float)
    cache = answer["extensions"]["cache"]
    assert len(cache) == 1 and cache[0]["status"] in {"MISS", "HIT", "STALE", "REFRESHED", "BYPASS"}, cache


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url) as base:
        yield base


def test_graphiql_runs_a_typed_query_with_no_internet(visit, server):
    offline = visit(server)
    page = offline.open("/graphql")
    answer = run_typed_query(page, QUERY, run_with="button")
    assert_yield_answer(answer)
    # The explorer plugin follows the editor: the typed fields are ticked there (a checkmark in the circle).
    ticked = page.eval_on_selector_all(
        ".graphiql-explorer-root [data-field-name]:has(> svg path)", "spans => spans.map(s => s.dataset.fieldName)"
    )
    assert {"code", "yieldPct"} <= set(ticked) and "name" not in ticked, ticked
    page.click('button[aria-label^="Prettify query"]')
    page.wait_for_function("() => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.lineCount() > 3")
    screenshot(page, "graphiql.png")  # docs/graphiql.png is a copy of one
    offline.assert_offline_and_clean()
    assert {urlsplit(url).netloc for url in offline.requests} == {urlsplit(server).netloc}
    assert f"{server}/static/graphiql/graphiql-3.8.3.min.js" in offline.requests
    # And the guard does block: a request to another host fails in the page and is recorded.
    outcome = page.evaluate("() => fetch('https://unpkg.com/graphiql/graphiql.min.js').then(() => 'loaded', () => 'failed')")
    assert outcome == "failed" and offline.blocked == ["https://unpkg.com/graphiql/graphiql.min.js"]


def test_graphiql_under_a_path_prefix_in_the_browser(visit, settings):
    with serving(prefixed(create_app(settings), "/api")) as base:
        offline = visit(base)
        page = offline.open("/api/graphql")
        assert_yield_answer(run_typed_query(page, QUERY, run_with="Control+Enter"))
        offline.assert_offline_and_clean()
        paths = [urlsplit(url).path for url in offline.requests]
        assert all(re.match(r"^/api/(graphql|static/)", path) for path in paths), paths
        assert "/api/static/graphiql/graphiql-3.8.3.min.js" in paths and paths.count("/api/graphql") >= 3
        offline.close()
