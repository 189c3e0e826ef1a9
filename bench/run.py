"""Cold and hit timings of the cached fields over real HTTP, against a baseline from the same run.

Starts its own redis-server and one `python -m gql serve` worker on free ports, so it touches no
other data. Writes a Markdown table to bench/results/http-timings.md and prints it.

    make bench                      # defaults
    .venv/bin/python bench/run.py --hits 200 --colds 15
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

CHART = "query($end: Date) { indexChart(end: $end, frequency: DAILY) { series { code totalReturn points { date close normalized drawdown } } } }"
YIELD = "query($asOf: Date) { yieldThisYear(asOf: $asOf) { code yieldPct baseDate baseClose lastDate lastClose } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not come up within {seconds:.0f} s")


def timed(client: httpx2.Client, query: str, variables: dict) -> tuple[float, dict, int]:
    began = time.perf_counter()
    response = client.post("/graphql", json={"query": query, "variables": variables})
    elapsed = time.perf_counter() - began
    body = response.json()
    if "errors" in body:
        raise SystemExit(f"query failed: {body['errors']}")
    return elapsed, body, len(response.content)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=100, help="hit requests per field")
    parser.add_argument("--colds", type=int, default=10, help="cold (distinct-key) requests per field")
    args = parser.parse_args()

    redis_server = shutil.which("redis-server")
    if not redis_server:
        raise SystemExit("redis-server is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="gql-bench-"))
    redis_port, port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "GQL_CACHE_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
           "GQL_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "gql", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            wait_until(lambda: client.get("/healthz").status_code == 200, "the server")
            last = dt.date.fromisoformat(client.get("/healthz").json()["data"]["lastDate"])
            rows = run(client, last, args.hits, args.colds)
    finally:
        server.terminate()
        server.wait(15)
        redis_proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(rows, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http-timings.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


def run(client: httpx2.Client, last: dt.date, hits: int, colds: int) -> list[dict]:
    # Baseline: the same server answering a request that does no GraphQL and no cache work.
    for _ in range(20):
        client.get("/healthz")
    baseline, size = [], 0
    for _ in range(hits):
        began = time.perf_counter()
        size = len(client.get("/healthz").content)
        baseline.append(time.perf_counter() - began)
    rows = [{"name": "GET /healthz (baseline: one Redis PING, no GraphQL)", "cold": None, "hit": baseline, "bytes": size}]
    for name, query, arg in [("yieldThisYear, all 10", YIELD, "asOf"), ("indexChart, all 10, DAILY, 4 fields", CHART, "end")]:
        cold, size = [], 0
        # Distinct keys of the same size: each request is a real miss (pandas work and a Redis write).
        for k in range(colds):
            elapsed, body, size = timed(client, query, {arg: (last - dt.timedelta(days=k)).isoformat()})
            assert body["extensions"]["cache"][0]["status"] == "MISS", body["extensions"]
            cold.append(elapsed)
        hit = []
        variables = {arg: last.isoformat()}
        for _ in range(min(hits, 20 if "Chart" in name else hits)):
            elapsed, body, size = timed(client, query, variables)
            assert body["extensions"]["cache"][0]["status"] == "HIT", body["extensions"]
            hit.append(elapsed)
        rows.append({"name": name, "cold": cold, "hit": hit, "bytes": size})
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    base = statistics.median(rows[0]["hit"])
    lines = [
        "# HTTP timings: cold and hit",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; one uvicorn worker, its own redis-server, sequential requests (httpx, keep-alive).",
        f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `bench/run.py --hits {args.hits} --colds {args.colds}`.",
        "",
        "| request | response bytes | cold p50 ms | cold max ms | hit p50 ms | hit p99 ms | hit/cold (p50) | hit/baseline (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        hit50, hit99 = statistics.median(row["hit"]) * 1000, percentile(row["hit"], 0.99) * 1000
        if row["cold"]:
            cold50, cold_max = statistics.median(row["cold"]) * 1000, max(row["cold"]) * 1000
            cold_cells = f"{cold50:.1f} | {cold_max:.1f}"
            ratio = f"{hit50 / cold50:.2f}"
        else:
            cold_cells, ratio = "- | -", "-"
        lines.append(
            f"| {row['name']} | {row['bytes']:,} | {cold_cells} | {hit50:.1f} | {hit99:.1f} | {ratio} | {hit50 / (base * 1000):.1f}x |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
