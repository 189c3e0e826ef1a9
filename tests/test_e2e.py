"""The service as a user runs it: `python -m gql serve` in its own processes, over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.servers import ServerProcess, running_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "e2e-token"


@pytest.fixture
def server(redis_server) -> Iterator[str]:
    with running_server(redis_server.url, "--workers", "2", GQL_ADMIN_TOKEN=TOKEN) as base:
        yield base


def post(base: str, query: str, headers: dict | None = None) -> dict:
    response = httpx2.post(f"{base}/graphql", json={"query": query}, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_readme_flow_over_http(server):
    query = "{ yieldThisYear { code yieldPct baseDate lastDate } indexChart(frequency: WEEKLY) { series { code points { date normalized } } } }"
    first = post(server, query)
    assert [e["status"] for e in first["extensions"]["cache"]] == ["MISS", "MISS"]
    assert len(first["data"]["yieldThisYear"]) == 10
    # Two workers share Redis: whichever answers, the second request is a hit with the same data.
    for _ in range(4):
        again = post(server, query)
        assert [e["status"] for e in again["extensions"]["cache"]] == ["HIT", "HIT"]
        assert again["data"] == first["data"]
    refused = post(server, "mutation { refreshCache { refreshed { target } } }")
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    refreshed = post(server, "mutation { refreshCache { refreshed { target durationMs } } }", {"Authorization": f"Bearer {TOKEN}"})
    assert [r["target"] for r in refreshed["data"]["refreshCache"]["refreshed"]] == ["INDEX_CHART", "YIELD_THIS_YEAR"]
    after = post(server, query)
    # The default yield was warmed by the refresh; the weekly chart is a non-default variant.
    assert [e["status"] for e in after["extensions"]["cache"]] == ["HIT", "REFRESHED"]


def test_health_and_get_queries(server):
    health = httpx2.get(f"{server}/healthz").json()
    assert health["status"] == "ok" and health["data"]["indexes"] == 10
    response = httpx2.get(f"{server}/graphql", params={"query": "{ indexes { code source } }"})
    assert response.status_code == 200 and response.json()["data"]["indexes"][9]["code"] == "HSI"


def test_import_then_serve_real_layouts(tmp_path):
    fixtures = ROOT / "tests" / "fixtures"
    for file, code, name in [("sh000300.csv", "000300", "CSI 300"), ("HSI.csv", "HSI", "Hang Seng Index")]:
        result = subprocess.run(
            [sys.executable, "-m", "gql", "import", str(fixtures / file), "--code", code, "--name", name, "--data-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f'added {code} "{name}" (')
    bad = tmp_path / "bad.csv"
    bad.write_text("date,close\n2020-01-02,1\n2020-01-02,2\n")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.csv") if p != bad}
    result = subprocess.run(
        [sys.executable, "-m", "gql", "import", str(bad), "--code", "HSI", "--name", "x", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1 and "line 3" in result.stderr and "Traceback" not in result.stderr
    bad.unlink()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.csv")} == before


def test_stopping_the_server_stops_its_worker_processes(redis_server):
    import signal

    server = ServerProcess(redis_server.url, {})
    try:
        server.wait_ready(time.monotonic() + 60)
        children = _descendants(server.process.pid)
        assert children, "the server runs at least one query worker process"
        server.process.send_signal(signal.SIGTERM)  # the server alone, not its process group
        server.process.wait(30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "worker processes outlived the server"
    finally:
        server.terminate()
        server.reap()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            found += [int(c) for c in children]
            todo += [int(c) for c in children]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
