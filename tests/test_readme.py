"""The README's examples, run as a user runs them: its GraphQL queries and its curl commands against
`python -m gql serve` (the synthetic sample, as after `make run`), answers compared with the ones shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.servers import running_server
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
BLOCKS = [(lang, text) for lang, text in BLOCK.findall(README)]
TOKEN = "change-me"  # the README's refresh example starts the server with it


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url, GQL_ADMIN_TOKEN=TOKEN) as base:
        yield base


def blocks(lang: str, containing: str = "") -> list[str]:
    return [text for kind, text in BLOCKS if kind == lang and containing in text]


def shell(script: str, base: str) -> list[str]:
    """Run a README shell snippet against `base` (for http://127.0.0.1:8000); one output per curl command."""
    lines = script.replace("\\\n", " ").splitlines()
    commands = [line for line in lines if line.strip() and not line.startswith("#") and "make run" not in line]
    # Each curl's output on a line of its own (curl -s prints no newline), comments dropped.
    program = "set -eu\n" + "\n".join(
        f"{command.split('  #')[0]}; echo" if command.lstrip().startswith("curl") else command for command in commands
    ).replace("http://127.0.0.1:8000", base)
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def shown_outputs(script: str) -> list[str]:
    return [line[2:] for line in script.splitlines() if line.startswith("# {")]


def same_answer(got: object, shown: object, path: str = "") -> None:
    """Equal, except for what changes from one request to the next: ages and TTLs left (numbers)."""
    if path.endswith(("ageSeconds", "ttlSeconds")):
        assert isinstance(got, float) and got >= 0, (path, got)
    elif isinstance(shown, dict):
        assert isinstance(got, dict) and got.keys() == shown.keys(), (path, got, shown)
        for key in shown:
            same_answer(got[key], shown[key], f"{path}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), (path, got, shown)
        for i, (a, b) in enumerate(zip(got, shown, strict=True)):
            same_answer(a, b, f"{path}[{i}]")
    else:
        assert got == shown, (path, got, shown)


def test_the_readme_has_the_examples_this_file_runs():
    assert len(blocks("graphql")) >= 2 and blocks("sh", "curl -s http://127.0.0.1:8000/graphql -H") and blocks("sh", "persistedQuery")


@pytest.mark.parametrize("query", blocks("graphql"), ids=lambda q: q.split("{")[1].split("(")[0].strip())
def test_each_graphql_example_answers_without_errors(server, query):
    body = httpx2.post(f"{server}/graphql", json={"query": query}, timeout=60).json()
    assert "errors" not in body and all(body["data"].values())
    assert [entry["status"] for entry in body["extensions"]["cache"]] != []


def test_the_curl_example_answers_what_the_readme_shows(server):
    [script] = blocks("sh", "asOf")
    [shown] = shown_outputs(script)
    [got] = shell(script, server)
    answer, expected = json.loads(got), json.loads(shown)
    expected["extensions"]["cache"][0]["status"] = answer["extensions"]["cache"][0]["status"]  # MISS, or HIT when asked again
    same_answer(answer, expected)
    assert answer["extensions"]["cache"][0]["ttlSeconds"] <= 43200.0


def test_the_persisted_query_example_runs_as_its_comments_say(server):
    [script] = blocks("sh", "persistedQuery")
    first, registered, by_hash = (json.loads(line) for line in shell(script, server))
    assert first == {"errors": [{"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]}
    assert registered["data"]["yieldThisYear"] and by_hash["data"] == registered["data"]


def test_the_refresh_example_refreshes(server):
    [script] = blocks("sh", "refreshCache(targets: [YIELD_THIS_YEAR])")
    [got] = shell(script, server)
    assert [r["target"] for r in json.loads(got)["data"]["refreshCache"]["refreshed"]] == ["YIELD_THIS_YEAR"]


def test_the_health_fields_the_readme_names_are_there(server):
    health = httpx2.get(f"{server}/healthz", timeout=10).json()
    assert {"status", "process"} <= health.keys() and {"source", "version", "problem"} <= health["data"].keys()
    assert httpx2.get(f"{server}/readyz", timeout=10).json()["ready"] is True


def test_the_database_path_runs_as_written(redis_server):
    """From an empty PostgreSQL to a served dashboard: the README's commands in order, on a database of the
    test's own (dropped after), with the repository's copy of the real data (tests/fixtures)."""
    [script] = blocks("sh", "gql db init")
    name = f"gql_test_{uuid.uuid4().hex[:12]}"
    lines = [line.split("  #")[0] for line in script.splitlines() if line.strip() and not line.startswith("#")]
    serve = next(i for i, line in enumerate(lines) if line.strip() == "make run")

    def run(part: list[str]) -> None:
        program = "set -eu\n" + "\n".join(part).replace(" prices", f" {name}").replace("/prices", f"/{name}") \
            .replace("../shared/real-data/", "tests/fixtures/").replace(".venv/bin/python", sys.executable)
        done = subprocess.run(["bash", "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        run(lines[:serve])
        with running_server(redis_server.url, GQL_DATABASE_URL=url) as base:
            page = httpx2.get(f"{base}/", timeout=10)
            assert page.status_code == 200 and "dashboard.js" in page.text
            query = '{ yieldThisYear(codes: ["HSI"]) { lastDate } }'

            def last() -> str:
                return httpx2.post(f"{base}/graphql", json={"query": query}, timeout=30).json()["data"]["yieldThisYear"][0]["lastDate"]

            assert last() == "2026-07-24"
            run(lines[serve + 1:])
            wait_until(lambda: last() == "2026-07-27", "the row inserted with psql is answered", timeout=30)
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", name], capture_output=True, timeout=60)
