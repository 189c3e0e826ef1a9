"""Ways of loading a server: wrk (throughput and latency percentiles) and sequential timed requests."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

LUA = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class WrkRun:
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # connect/read/write errors, timeouts and non-2xx/3xx answers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, body_file: Path, connections: int, seconds: float, timeout: float = 60, if_none_match: str = "") -> WrkRun:
    """One wrk run (one thread) POSTing the body in `body_file` to `url` (a revalidation with `if_none_match`)."""
    binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("wrk is not on PATH (bench/setup.sh installs it)")
    command = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={round(timeout)}s",
               "-s", str(LUA), url]
    done = subprocess.run(command, env={**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_IF_NONE_MATCH": if_none_match},
                          capture_output=True, text=True, timeout=seconds + timeout + 30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkRun(connections, out["requests"], out["duration_us"] / 1e6, out["p50_us"] / 1000, out["p99_us"] / 1000,
                  out["errors"] + out["non_2xx"])


def timed_post(client: httpx2.Client, body: bytes) -> tuple[float, httpx2.Response]:
    began = time.perf_counter()
    response = client.post("/graphql", content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - began
    response.raise_for_status()
    return elapsed, response


def sequential(client: httpx2.Client, body: bytes, seconds: float, at_least: int = 20) -> list[float]:
    """Latencies (s) of back-to-back requests for `seconds` (and at least `at_least` of them)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(latencies) < at_least:
        latencies.append(timed_post(client, body)[0])
    return latencies


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values)
