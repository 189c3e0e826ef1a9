"""GraphiQL at /graphql with its files served from the package (gql/static/graphiql/), so it needs no other host."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# GraphiQL, React and the explorer plugin as released on npm (fetch.sh there fetches and checks them), their
# licences, and the page. The page's URLs are all relative to it, so it works under any path prefix.
GRAPHIQL_DIR = Path(__file__).resolve().parent / "static" / "graphiql"
PAGE = GRAPHIQL_DIR / "graphiql.html"

# Release files carry their version in the name (graphiql-3.8.3.min.js): a new version is a new URL, so a
# browser may keep them for good. Everything else here is revalidated as usual.
VERSIONED_FILE = re.compile(r"-\d+\.\d+\.\d+(\.[^/]*)?\.(js|css)$")
IMMUTABLE = "public, max-age=31536000, immutable"


@functools.cache
def graphiql_html() -> str:
    """The page served for `GET /graphql` from a browser (in place of Strawberry's, which loads from CDNs)."""
    return PAGE.read_text(encoding="utf-8")


class GraphiQLFiles(StaticFiles):
    """gql/static/graphiql/ over HTTP: versioned release files with a year-long, immutable cache lifetime."""

    def __init__(self) -> None:
        super().__init__(directory=GRAPHIQL_DIR)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if VERSIONED_FILE.search(os.fspath(full_path)):
            response.headers["cache-control"] = IMMUTABLE
        return response
