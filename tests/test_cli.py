"""The command line as an operator runs it: `python -m gql warm | refresh | export-schema` in processes of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.servers import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cli-test-token-4f1c"


def gql(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gql", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


# --- warm --------------------------------------------------------------------------------------------


def test_warm_stores_the_default_variants_in_redis(redis_server):
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_server.url, "GQL_CACHE_PREFIX": prefix}
    first = gql("warm", env=env)
    assert first.returncode == 0, first.stderr
    assert "INDEX_CHART: computed and stored" in first.stdout
    assert "YIELD_THIS_YEAR: computed and stored" in first.stdout
    keys = {k.decode() for k in redis_server.client().keys(f"{prefix}:*")}
    assert len([k for k in keys if k.startswith(f"{prefix}:entry:{{indexChart:")]) == 1
    assert len([k for k in keys if k.startswith(f"{prefix}:entry:{{yieldThisYear:")]) == 1

    again = gql("warm", env=env)
    assert again.returncode == 0, again.stderr
    assert "INDEX_CHART: already cached" in again.stdout and "YIELD_THIS_YEAR: already cached" in again.stdout
    assert {k.decode() for k in redis_server.client().keys(f"{prefix}:*")} == keys


def test_warmed_entries_are_what_the_server_serves(redis_server):
    """The keys warm writes are the server's: its first default query is a hit."""
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    assert gql("warm", env={"REDIS_URL": redis_server.url, "GQL_CACHE_PREFIX": prefix}).returncode == 0
    with running_server(redis_server.url, GQL_CACHE_PREFIX=prefix, GQL_ADMIN_TOKEN=TOKEN) as base:
        answer = httpx2.post(f"{base}/graphql", json={"query": "{ yieldThisYear { code } indexChart { start } }"}, timeout=60).json()
    assert [e["status"] for e in answer["extensions"]["cache"]] == ["HIT", "HIT"]


def test_warm_without_redis_says_it_had_no_effect():
    result = gql("warm", env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "GQL_REDIS_TIMEOUT": "0.5"})
    assert result.returncode == 1
    assert "unreachable" in result.stderr and "no effect beyond this process" in result.stderr
    assert "Traceback" not in result.stderr


def test_warm_says_when_a_result_could_not_be_stored(redis_server):
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_server.url, "GQL_CACHE_PREFIX": prefix, "GQL_CACHE_MAX_ENTRY_BYTES": "100000"}
    result = gql("warm", env=env)
    assert result.returncode == 1
    assert "INDEX_CHART: computed but NOT stored" in result.stdout and "YIELD_THIS_YEAR: computed and stored" in result.stdout
    assert "over the cache entry limit" in result.stderr
    assert redis_server.client().keys(f"{prefix}:entry:{{indexChart:*") == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GQL_CHART_TTL": "soon"}, "GQL_CHART_TTL='soon' is not valid"),
        ({"GQL_DATA_DIR": "/nonexistent/gql-data"}, "data directory /nonexistent/gql-data does not exist"),
        ({"GQL_CACHE_ENABLED": "false"}, "nothing to warm"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL is not usable"),
    ],
)
def test_warm_refuses_a_bad_configuration(env, message):
    result = gql("warm", env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# --- bad settings: one line naming the variable, for every command that reads them --------------------


def refused(result: subprocess.CompletedProcess, returncode: int) -> str:
    """The one line a refused command writes to standard error: no traceback, no usage text."""
    assert result.returncode == returncode, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


BAD_SETTINGS = [
    ({"REDIS_URL": "bogus://"}, ("error: REDIS_URL is not usable: Redis URL must specify one of the following schemes "
                                 "(redis://, rediss://, unix://); expected e.g. redis://127.0.0.1:6379/0")),
    ({"REDIS_URL": "redis://127.0.0.1:99999/0"}, "error: REDIS_URL is not usable: Port out of range 0-65535"),
    ({"REDIS_URL": "redis://127.0.0.1:6379/0?no_such_option=1"}, "error: REDIS_URL is not usable: "),
    ({"GQL_PORT": "eighty"}, "error: GQL_PORT='eighty' is not valid: expected a whole number"),
    ({"GQL_MAX_DEPTH": "1.5"}, "error: GQL_MAX_DEPTH='1.5' is not valid: expected a whole number"),
    ({"GQL_REDIS_TIMEOUT": "fast"}, "error: GQL_REDIS_TIMEOUT='fast' is not valid: expected a finite number"),
    ({"GQL_REDIS_BREAKER_FAILURES": "0"}, "error: GQL_REDIS_BREAKER_FAILURES must be at least 1"),
    ({"GQL_LOG_LEVEL": "loud"}, "error: GQL_LOG_LEVEL must be one of critical, error, warning, info, debug"),
    ({"GQL_DATA_DIR": "/nonexistent/gql-data"}, "error: data directory /nonexistent/gql-data does not exist"),
]


@pytest.mark.parametrize(("env", "message"), BAD_SETTINGS)
def test_serve_refuses_a_bad_setting_in_one_line(env, message):
    result = gql("serve", "--port", str(free_port()), env=env, timeout=60)
    assert refused(result, 2).startswith(message)


def test_serve_says_when_the_data_directory_is_a_file(tmp_path):
    regular = tmp_path / "data"
    regular.write_text("not a directory\n")
    result = gql("serve", "--port", str(free_port()), env={"GQL_DATA_DIR": str(regular)}, timeout=60)
    assert refused(result, 2) == f"error: data directory {regular} is not a directory"


@pytest.mark.parametrize(
    "command",
    [("serve", "--port", "1"), ("warm",), ("export-schema",), ("import", "prices.csv", "--code", "X", "--name", "X")],
)
def test_every_command_reading_settings_refuses_a_bad_redis_url_alike(command):
    assert refused(gql(*command, env={"REDIS_URL": "bogus://"}, timeout=60), 2).startswith("error: REDIS_URL is not usable: ")


# --- import: what is wrong with the data directory, in one line -------------------------------------


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text("Date,Close\n2024-01-02,10\n2024-01-03,11\n")
    return path


def import_into(prices: Path, data_dir: Path | str, code: str = "T1", name: str = "Test index") -> subprocess.CompletedProcess:
    return gql("import", str(prices), "--code", code, "--name", name, "--data-dir", str(data_dir), timeout=60)


def test_import_into_a_regular_file_says_it_is_not_a_directory(prices, tmp_path):
    regular = tmp_path / "data"
    regular.write_text("not a directory\n")
    assert refused(import_into(prices, regular), 1) == f"error: data directory {regular} is not a directory"
    assert regular.read_text() == "not a directory\n"


@pytest.mark.parametrize(
    ("where", "reason"),
    [("/proc/nope", "No such file or directory"), ("{file}/sub", "Not a directory")],
)
def test_import_into_a_directory_that_cannot_be_created_says_why(prices, tmp_path, where, reason):
    regular = tmp_path / "file"
    regular.write_text("")
    data_dir = where.format(file=regular)
    assert refused(import_into(prices, data_dir), 1) == f"error: data directory {data_dir} cannot be created: {reason}"


def test_import_says_what_it_added_and_then_what_it_replaced(prices, tmp_path):
    data_dir = tmp_path / "data"
    first = import_into(prices, data_dir, "T1", "Old name")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert first.stdout.splitlines() == [
        f'added T1 "Old name" (2 rows, 2024-01-02..2024-01-03) as {data_dir / "T1.csv"}',
        "read column 'Date' as dates (%Y-%m-%d) and 'Close' as closes",
    ]
    longer = tmp_path / "longer.csv"
    longer.write_text("Date,Close\n2024-01-02,10\n2024-01-03,11\n2024-01-03,11\n2024-03-01,12\n")
    again = import_into(longer, data_dir, "T1", "New name")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert again.stdout.splitlines() == [
        (f'replaced T1 "Old name" (2 rows, 2024-01-02..2024-01-03) with "New name" (3 rows, 2024-01-02..2024-03-01) '
         f'in {data_dir / "T1.csv"}'),
        "read column 'Date' as dates (%Y-%m-%d) and 'Close' as closes; 1 repeated row dropped",
    ]
    other_case = import_into(prices, data_dir, "t1", "CSI 300 (沪深300)")
    assert other_case.stdout.splitlines()[0] == (
        f'replaced T1 "New name" (3 rows, 2024-01-02..2024-03-01) with t1 "CSI 300 (沪深300)" (2 rows, 2024-01-02..2024-01-03) '
        f'in {data_dir / "t1.csv"}'
    )
    assert [p.name for p in data_dir.iterdir()] == ["t1.csv"]


def test_import_into_an_unwritable_directory_says_why(prices):
    # A directory no one may create files in, root included (the suite runs as root in CI: a chmod would not do).
    data_dir = Path("/sys/kernel")
    before = sorted(p.name for p in data_dir.iterdir())
    line = refused(import_into(prices, data_dir), 1)
    assert line.startswith("error: data directory /sys/kernel: cannot write T1.csv in it: ")
    assert line.removeprefix("error: data directory /sys/kernel: cannot write T1.csv in it: ") in {
        "Permission denied", "Operation not permitted", "Read-only file system", "No such file or directory",
    }
    assert sorted(p.name for p in data_dir.iterdir()) == before


# --- refresh -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url, GQL_ADMIN_TOKEN=TOKEN) as base:
        yield f"{base}/graphql"


def test_refresh_with_the_right_token(server):
    result = gql("refresh", "--url", server, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["INDEX_CHART", "YIELD_THIS_YEAR"]
    assert all(line.endswith(" ms") for line in lines)
    assert TOKEN not in result.stdout + result.stderr


def test_refresh_one_target_with_the_token_and_url_from_the_environment(server):
    result = gql("refresh", "--target", "YIELD_THIS_YEAR", env={"GQL_URL": server, "GQL_ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["YIELD_THIS_YEAR"]


def test_refresh_with_the_token_from_a_file(server, tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    result = gql("refresh", "--url", server, env={"GQL_ADMIN_TOKEN_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
    assert "INDEX_CHART: refreshed in" in result.stdout


def test_refresh_with_a_wrong_token(server):
    wrong = "not-the-token-9d2e"
    result = gql("refresh", "--url", server, "--token", wrong)
    assert result.returncode == 1
    assert "Authorization: Bearer" in result.stderr and "(UNAUTHENTICATED)" in result.stderr
    assert wrong not in result.stdout + result.stderr and TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_refresh_without_a_server_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/graphql"
    result = gql("refresh", "--url", url, "--token", TOKEN)
    assert result.returncode == 1
    assert f"could not reach {url}" in result.stderr
    assert TOKEN not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_refresh_without_a_token_says_where_to_put_one():
    result = gql("refresh", "--url", "http://127.0.0.1:1/graphql")
    assert result.returncode == 2
    assert "GQL_ADMIN_TOKEN" in result.stderr


# --- export-schema -----------------------------------------------------------------------------------


def test_export_schema_is_the_committed_schema():
    result = gql("export-schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "schema.graphql").read_text(encoding="utf-8")


def test_refresh_targets_are_the_schema_targets():
    from gql.cli import TARGETS
    from gql.schema.types import CacheTarget

    assert tuple(t.value for t in CacheTarget) == TARGETS
