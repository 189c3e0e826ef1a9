"""Redis faults and cache stampedes: the service's added latency while Redis is away, and how many computations
a burst of cold requests causes across several servers.

1. Redis down or frozen. One service (defaults, one worker) on a redis-server of its own (a free port, never the
   machine's Redis). Small cached queries (`yieldThisYear`, four variants in turn) are POSTed in phases, in one
   series per load: wrk with 8 connections, and one request at a time from a Python client (raw per-request times;
   wrk's percentiles are corrected for coordinated omission). The phases of a series:
     A  Redis healthy, defaults: answers from the whole-response cache (the usual hit path);
     B  Redis healthy, a second service with GQL_RESPONSE_CACHE=false and GQL_QUERY_PROCESSES=0: resolvers in the
        server, field cache in Redis -- the path a request takes while Redis is away, but with Redis;
     refusing: redis-server killed (its port refuses connections): first second, then the steady state;
     frozen: redis-server restarted, the service recovered and warmed again, then SIGSTOP (connections are
        accepted, never answered): first second (before and while the breaker opens), then steady state;
     recovered: SIGCONT, the service back on Redis and warm: A again.
   Added p99 = phase p99 - baseline p99, against A and against B. After the restart and after SIGCONT: the time
   until /healthz says `cache.state` "ok" again (polled every 20 ms).
2. Stampedes. N servers (default 4) on one Redis, sharing one GQL_CACHE_PREFIX, each with
   GQL_FAULT_COMPUTE_DELAY (default 0.5 s: every computation sleeps that long first, so requests overlap);
   R concurrent cold requests (default 200) spread over them, for 1 key and for K keys (default 10); the same
   with GQL_CACHE_ENABLED=false as the baseline. Computations: the sum of `gql_computations_total` over the
   servers' /metrics (before and after).

    python -m bench.faults             # full: about 2 minutes; writes bench/results/faults.md
    python -m bench.faults --quick     # smoke run: shorter phases, fewer requests
`make bench` runs it too (bench/run.py, `--faults full|quick|off`) and links the file from benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from bench import report
from bench.load import median, percentile
from bench.servers import ROOT, RedisProcess, Server, service, started_all

RESULTS = ROOT / "bench" / "results"

SMALL = "{ yieldThisYear { code yieldPct } }"
SMALL_AT = "query($asOf: Date) { yieldThisYear(asOf: $asOf) { code yieldPct } }"
FIELD = "yieldThisYear"

# wrk: POST the bodies of the files in $FAULTS_BODIES (';'-separated) in turn; an answer counts as failed when it
# is not HTTP 200 (wrk's own count) or carries no data or any GraphQL error (counted here).
CHECKED_LUA = r"""
local bodies = {}
for path in string.gmatch(os.getenv("FAULTS_BODIES"), "[^;]+") do
  local file = assert(io.open(path, "rb"))
  table.insert(bodies, file:read("*a"))
  file:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
local n = 0
gql_errors = 0
function request()
  n = n % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end
function response(status, headers, body)
  if status == 200 and (body == nil or not string.find(body, '{"data":{', 1, true) or string.find(body, '"errors"', 1, true)) then
    gql_errors = gql_errors + 1
  end
end
function done(summary, latency, requests)
  local g = 0
  for _, t in ipairs(threads) do g = g + (t:get("gql_errors") or 0) end
  local e = summary.errors
  io.write(string.format(
    'FAULTS_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "timeouts": %d, "non_2xx": %d, '
      .. '"gql_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.timeout, e.status, g,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Phase:
    key: str
    name: str
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failed: int  # socket errors, timeouts, non-200 answers and answers with GraphQL errors or no data
    failures: str  # what kind

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class DownResult:
    connections: int
    duration: float
    bodies: int
    phases: list[Phase] = field(default_factory=list)
    recovery: dict[str, float | None] = field(default_factory=dict)  # seconds until cache.state is "ok" again
    breaker_open_ms: dict[str, float | None] = field(default_factory=dict)  # first "unreachable" log line after the fault
    breaker_opened_total: float | None = None

    @property
    def load(self) -> str:
        return "1 at a time" if self.connections == 1 else f"wrk -c{self.connections}"

    def phase(self, key: str) -> Phase:
        return next(p for p in self.phases if p.key == key)


@dataclass(frozen=True)
class StampedeRun:
    caching: str
    keys: int
    requests: int
    servers: int
    answered: int
    errors: list[str]
    computations: float
    leases_acquired: float
    leases_waited: float
    statuses: Counter
    distinct_answers: int  # the most different `data` any one key got (1: everyone got the same answer)
    latencies: list[float]
    wall: float


@dataclass
class FaultsResult:
    down: list[DownResult]  # one series of phases per number of connections
    stampedes: list[StampedeRun]
    delay: float
    logs: dict[str, list[str]]
    elapsed: float = 0.0
    load_before: float = 0.0  # 1-minute load average when it began


def main(argv: list[str] | None = None) -> int:
    return report.run_standalone("faults", _parser().parse_args(argv), argv, run, resolve, render)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: wrk series only, 2 s phases, 40 cold requests over 4 keys (unless given explicitly); about 45 s")
    add("--phase-seconds", type=float, help="seconds of each steady-state phase (default 4; quick 2)")
    add("--connections", type=lambda v: [int(n) for n in v.split(",")],
        help="one series of phases per number: N > 1 is wrk with N connections, 1 is one request at a time from a "
             "Python client (default 8,1; quick 8)")
    add("--servers", type=int, default=4, help="servers sharing one Redis in the stampede runs (default 4)")
    add("--requests", type=int, help="concurrent cold requests per stampede run (default 200; quick 40)")
    add("--keys", type=int, help="distinct keys of the many-keys stampede run (default 10; quick 4)")
    add("--compute-delay", type=float, default=0.5, help="GQL_FAULT_COMPUTE_DELAY of the stampede servers, s (default 0.5)")
    add("--output", type=Path, default=RESULTS / "faults.md", help="report file (default bench/results/faults.md)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The settings, with the quick or full defaults filled in."""
    quick = args.quick
    return argparse.Namespace(
        quick=quick,
        phase_seconds=args.phase_seconds or (2.0 if quick else 4.0),
        connections=args.connections or ([8] if quick else [8, 1]),
        servers=args.servers,
        requests=args.requests or (40 if quick else 200),
        keys=args.keys or (4 if quick else 10),
        compute_delay=args.compute_delay,
    )


def settings(quick: bool) -> argparse.Namespace:
    """The defaults of a full (or quick) run, for bench/run.py."""
    return resolve(_parser().parse_args(["--quick"] if quick else []))


def run(opts: argparse.Namespace) -> FaultsResult:
    """Both measurements, in processes of their own under a temporary directory; all of them stopped at the end."""
    began, load_before = time.monotonic(), os.getloadavg()[0]
    run_id = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="gql-faults-"))
    try:
        down = redis_down(workdir, opts, run_id)
        stampedes = stampede_runs(workdir, opts, run_id)
        logs = {path.stem: path.read_text(errors="replace").splitlines() for path in sorted(workdir.glob("*.log"))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return FaultsResult(down, stampedes, opts.compute_delay, logs, time.monotonic() - began, load_before)


def _log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


# --- 1. Redis refusing connections, then frozen ----------------------------------------------------


def redis_down(workdir: Path, opts: argparse.Namespace, run_id: str) -> list[DownResult]:
    """One series of phases per number of connections, on the same two services and redis-server."""
    lua = workdir / "faults.lua"
    lua.write_text(CHECKED_LUA, encoding="utf-8")
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(RedisProcess(workdir))
        full_variant = service("faults-full", "service, defaults", store.url, run_id, "HIT")
        resolver_variant = service("faults-resolver", "service, resolvers in the server", store.url, run_id, "HIT",
                                   GQL_RESPONSE_CACHE="false", GQL_QUERY_PROCESSES="0")
        full, resolver = stack.enter_context(started_all([full_variant, resolver_variant], workdir))
        stack.callback(store.thaw)  # never stop the servers while their Redis is frozen
        _log(f"redis-server on port {store.port}; service at {full.url}, resolver-path service at {resolver.url}")
        bodies = _bodies(workdir, _last_date(full.url))
        env = {"FAULTS_BODIES": ";".join(str(b) for b in bodies)}
        return [_series(store, full, resolver, lua, env, bodies, workdir / f"{full_variant.key}.log", connections, opts)
                for connections in opts.connections]


def _series(store: RedisProcess, full: Server, resolver: Server, lua: Path, env: dict[str, str], bodies: list[Path],
            log_file: Path, connections: int, opts: argparse.Namespace) -> DownResult:
    result = DownResult(connections, opts.phase_seconds, len(bodies))
    url, resolver_url = full.url + "/graphql", resolver.url + "/graphql"

    def measure(key: str, name: str, target: str, seconds: float, settle: bool = False) -> None:
        if connections == 1:
            phase = _sequential(key, name, target, bodies, seconds)
        else:
            phase = checked_wrk(key, name, target, lua, env, connections, seconds)
        result.phases.append(phase)
        _log(f"c{connections} {name:56} {phase.requests:7,} req  p50 {phase.p50_ms:7.2f}  p99 {phase.p99_ms:7.2f}  "
             f"max {phase.max_ms:7.1f} ms  failed {phase.failed}")
        if settle:
            time.sleep(0.3)  # requests wrk left in flight end before the next phase begins

    opened_before = scrape_metrics(full.url).get(("gql_cache_breaker_opened_total", ""), 0.0)
    for server in (full, resolver):  # both on Redis (an earlier series may have left a breaker open)
        if _until_ok(server.url) is None:
            raise SystemExit(f"{server.variant.key} does not get back to Redis")
    _warm(full, bodies, response_hits=True)
    _warm(resolver, bodies, response_hits=False)
    _warmup(url, lua, env, connections, bodies)
    measure("A", "A. Redis healthy: whole-response cache (defaults)", url, opts.phase_seconds, settle=True)
    _warmup(resolver_url, lua, env, connections, bodies)
    measure("B", "B. Redis healthy: resolvers in the server, field cache in Redis", resolver_url, opts.phase_seconds,
            settle=True)

    store.kill()
    killed_at = time.time()
    measure("refusing-1s", "Redis refusing connections: first second", url, 1)
    measure("refusing", "Redis refusing connections: steady state", url, opts.phase_seconds, settle=True)
    result.breaker_open_ms["refusing"] = _first_unreachable_ms(log_file, killed_at)
    store.start()
    result.recovery["restart"] = _until_ok(full.url)
    _log(f"c{connections} Redis restarted (empty): cache state ok again after {_seconds(result.recovery['restart'])}")

    _warm(full, bodies, response_hits=True)
    store.freeze()
    frozen_at = time.time()
    measure("frozen-1s", "Redis frozen: first second (breaker opening)", url, 1)
    measure("frozen", "Redis frozen: breaker open (steady state)", url, opts.phase_seconds)
    result.breaker_open_ms["frozen"] = _first_unreachable_ms(log_file, frozen_at)
    store.thaw()
    result.recovery["thaw"] = _until_ok(full.url)
    _log(f"c{connections} Redis thawed: cache state ok again after {_seconds(result.recovery['thaw'])}")

    _warm(full, bodies, response_hits=True)
    _warmup(url, lua, env, connections, bodies)
    measure("recovered", "Redis back: whole-response cache again (A once more)", url, opts.phase_seconds, settle=True)
    result.breaker_opened_total = scrape_metrics(full.url).get(("gql_cache_breaker_opened_total", ""), 0.0) - opened_before
    return result


def _bodies(workdir: Path, last: dt.date) -> list[Path]:
    """Four small cached queries: the default and three `asOf` dates."""
    texts = [json.dumps({"query": SMALL})] + [
        json.dumps({"query": SMALL_AT, "variables": {"asOf": (last - dt.timedelta(days=days)).isoformat()}})
        for days in (30, 60, 90)
    ]
    paths = []
    for i, text in enumerate(texts):
        path = workdir / f"faults-body-{i}.json"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def checked_wrk(key: str, name: str, url: str, lua: Path, env: dict[str, str], connections: int, seconds: float) -> Phase:
    """One wrk run with `lua` (CHECKED_LUA, written to a file) POSTing the bodies named by env["FAULTS_BODIES"]: a
    phase whose failures include answers without data or with GraphQL errors (bench/fleet.py uses it too)."""
    binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("wrk is not on PATH (bench/setup.sh installs it)")
    command = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout=10s", "-s", str(lua), url]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("FAULTS_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = json.loads(line.removeprefix("FAULTS_JSON "))
    kinds = {"socket errors": out["socket_errors"], "timeouts": out["timeouts"], "non-200": out["non_2xx"],
             "GraphQL errors": out["gql_errors"]}
    return Phase(
        key, name, out["requests"], out["duration_us"] / 1e6, out["p50_us"] / 1000, out["p90_us"] / 1000,
        out["p99_us"] / 1000, out["max_us"] / 1000, sum(kinds.values()),
        ", ".join(f"{n} {k}" for k, n in kinds.items() if n),
    )


def _warmup(url: str, lua: Path, env: dict[str, str], connections: int, bodies: list[Path]) -> None:
    """A second of the load that follows, unmeasured."""
    if connections == 1:
        _sequential("warmup", "", url, bodies, 1)
    else:
        checked_wrk("warmup", "", url, lua, env, connections, 1)
        time.sleep(0.3)


def _sequential(key: str, name: str, url: str, bodies: list[Path], seconds: float) -> Phase:
    """One request at a time from this process (httpx), the bodies in turn: raw per-request times, no correction."""
    payloads = [b.read_bytes() for b in bodies]
    latencies: list[float] = []
    kinds: Counter = Counter()
    with httpx2.Client(timeout=10) as client:
        began = time.perf_counter()
        deadline = began + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                response = client.post(url, content=payloads[len(latencies) % len(payloads)],
                                       headers={"content-type": "application/json"})
                if response.status_code != 200:
                    kinds["non-200"] += 1
                elif not response.content.startswith(b'{"data":{') or b'"errors"' in response.content:
                    kinds["GraphQL errors"] += 1
            except httpx2.HTTPError:
                kinds["socket errors"] += 1
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - began
    ms = [x * 1000 for x in latencies]
    return Phase(key, name, len(ms), elapsed, percentile(ms, 0.5), percentile(ms, 0.9), percentile(ms, 0.99), max(ms),
                 sum(kinds.values()), ", ".join(f"{n} {k}" for k, n in kinds.items()))


def _post(client: httpx2.Client, body: bytes) -> dict:
    response = client.post("/graphql", content=body, headers={"content-type": "application/json"})
    response.raise_for_status()
    return response.json()


def _warm(server: Server, bodies: list[Path], response_hits: bool, seconds: float = 20) -> None:
    """Requests of every body until a whole round is answered from stored responses (or, without that layer, 3 rounds)."""
    payloads = [b.read_bytes() for b in bodies]
    deadline = time.monotonic() + seconds
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        for round_no in range(1, 1000):
            before = scrape_metrics(server.url).get(("gql_response_cache_total", 'outcome="hit"'), 0.0)
            for payload in payloads:
                answer = _post(client, payload)
                if "errors" in answer:
                    raise SystemExit(f"{server.variant.key} answered with errors while warming: {answer['errors']}")
            hits = scrape_metrics(server.url).get(("gql_response_cache_total", 'outcome="hit"'), 0.0) - before
            if (hits >= len(payloads) if response_hits else round_no >= 3):
                return
            if time.monotonic() > deadline:
                _log(f"warning: {server.variant.key} still not answering from stored responses after {seconds:g} s")
                return
            time.sleep(0.05)


def _until_ok(url: str, seconds: float = 30) -> float | None:
    """Seconds until /healthz reports the cache in Redis again (None: not within `seconds`)."""
    began = time.monotonic()
    with httpx2.Client(base_url=url, timeout=5) as client:
        while time.monotonic() - began < seconds:
            with contextlib.suppress(httpx2.HTTPError, ValueError, KeyError):
                if client.get("/healthz").json()["cache"]["state"] == "ok":
                    return time.monotonic() - began
            time.sleep(0.02)
    return None


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING .*gql\.cache: Redis at \S+ is unreachable")


def _first_unreachable_ms(log_file: Path, since: float) -> float | None:
    """Milliseconds from the fault to the first "Redis ... is unreachable" line logged after it (server or worker)."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        found = _LOG_TIME.match(line)
        if found:
            at = dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= since - 0.002:
                return max(0.0, (at - since) * 1000)
    return None


def _last_date(url: str) -> dt.date:
    with httpx2.Client(base_url=url, timeout=30) as client:
        return dt.date.fromisoformat(client.get("/healthz").json()["data"]["lastDate"])


_METRIC = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$")


def scrape_metrics(url: str) -> dict[tuple[str, str], float]:
    """The samples of a server's /metrics by (name, labels as written)."""
    text = httpx2.get(url + "/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        found = _METRIC.match(line)
        if found:
            samples[found.group(1), found.group(2) or ""] = float(found.group(3))
    return samples


def _total(samples: dict[tuple[str, str], float], name: str, label: str = "") -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and label in labels)


def _seconds(value: float | None) -> str:
    return "not within 30 s" if value is None else f"{value:.2f} s"


# --- 2. stampedes: many servers, one Redis, concurrent cold requests --------------------------------


def stampede_runs(workdir: Path, opts: argparse.Namespace, run_id: str) -> list[StampedeRun]:
    delay = str(opts.compute_delay)
    shared = f"bench-{run_id}-stampede"
    with RedisProcess(workdir) as store:
        variants = [
            service(f"stampede-cached-{i}", "cached", store.url, run_id, "MISS", GQL_CACHE_PREFIX=shared,
                    GQL_FAULT_COMPUTE_DELAY=delay)
            for i in range(opts.servers)
        ] + [
            service(f"stampede-nocache-{i}", "no cache", store.url, run_id, "BYPASS", GQL_CACHE_PREFIX=shared,
                    GQL_FAULT_COMPUTE_DELAY=delay, GQL_CACHE_ENABLED="false")
            for i in range(opts.servers)
        ]
        _log(f"starting {len(variants)} servers for the stampede runs (GQL_FAULT_COMPUTE_DELAY={delay})")
        with started_all(variants, workdir) as servers:
            cached, uncached = servers[:opts.servers], servers[opts.servers:]
            last = _last_date(cached[0].url)
            for server in servers:  # the first request of each server (imports, connections) is not measured
                with httpx2.Client(base_url=server.url, timeout=60) as client:
                    _post(client, json.dumps({"query": SMALL}).encode())
            days = iter(range(100, 10_000))  # each run gets dates no earlier run asked for: cold keys
            runs = []
            for caching, group in (("cached", cached), ("no cache", uncached)):
                for keys in (1, opts.keys):
                    dates = [last - dt.timedelta(days=next(days)) for _ in range(keys)]
                    run = _stampede(caching, group, dates, opts.requests)
                    runs.append(run)
                    _log(f"stampede {caching:8} {keys:3} key(s): {run.answered}/{run.requests} answered, "
                         f"{run.computations:g} computations, p50 {median(run.latencies):.2f} s, "
                         f"p99 {percentile(run.latencies, 0.99):.2f} s, errors {len(run.errors)}")
    return runs


def _stampede(caching: str, servers: list[Server], dates: list[dt.date], total: int) -> StampedeRun:
    before = [scrape_metrics(s.url) for s in servers]
    bodies = [json.dumps({"query": SMALL_AT, "variables": {"asOf": d.isoformat()}}).encode() for d in dates]
    # Request i goes to server i mod n, key (i div n) mod k: every key reaches every server.
    plan = [(i % len(servers), (i // len(servers)) % len(bodies)) for i in range(total)]
    began = time.perf_counter()
    outcomes = asyncio.run(_fire([s.url for s in servers], bodies, plan))
    wall = time.perf_counter() - began
    time.sleep(0.3)  # metrics of work that ended with the last answer
    after = [scrape_metrics(s.url) for s in servers]

    def delta(name: str, label: str = "") -> float:
        return sum(_total(a, name, label) - _total(b, name, label) for a, b in zip(after, before, strict=False))

    answers: dict[int, set[str]] = {}
    statuses: Counter = Counter()
    errors = []
    for (_, key), (_seconds, ok, detail, status) in zip(plan, outcomes, strict=False):
        if ok:
            answers.setdefault(key, set()).add(detail)
            statuses[status] += 1
        else:
            errors.append(detail)
    return StampedeRun(
        caching, len(dates), total, len(servers), total - len(errors), errors, delta("gql_computations_total"),
        delta("gql_cache_leases_total", 'outcome="acquired"'), delta("gql_cache_leases_total", 'outcome="waited"'),
        statuses, max((len(a) for a in answers.values()), default=0), [o[0] for o in outcomes], wall,
    )


async def _fire(urls: list[str], bodies: list[bytes], plan: list[tuple[int, int]]) -> list[tuple[float, bool, str, str]]:
    """All requests of the plan at once; each: (seconds, answered, data digest or error, cache status)."""
    limits = httpx2.Limits(max_connections=len(plan), max_keepalive_connections=len(plan))
    clients = [httpx2.AsyncClient(base_url=u, timeout=120, limits=limits) for u in urls]
    gate = asyncio.Event()

    async def one(server: int, key: int) -> tuple[float, bool, str, str]:
        await gate.wait()
        began = time.perf_counter()
        try:
            response = await clients[server].post("/graphql", content=bodies[key], headers={"content-type": "application/json"})
            seconds = time.perf_counter() - began
            if response.status_code != 200:
                return seconds, False, f"HTTP {response.status_code}", ""
            answer = response.json()
            if answer.get("errors") or not answer.get("data"):
                return seconds, False, f"GraphQL error: {json.dumps(answer.get('errors'))[:200]}", ""
            digest = hashlib.sha256(json.dumps(answer["data"], sort_keys=True).encode()).hexdigest()
            status = "/".join(sorted({e["status"] for e in answer.get("extensions", {}).get("cache", [])})) or "-"
            return seconds, True, digest, status
        except Exception as exc:  # noqa: BLE001  # any failure of a request is counted, not fatal
            return time.perf_counter() - began, False, repr(exc)[:200], ""

    try:
        tasks = [asyncio.create_task(one(server, key)) for server, key in plan]
        await asyncio.sleep(0.05)  # every task waits at the gate
        gate.set()
        return await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()


# --- the report ---------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _added(phase: Phase, base: Phase) -> tuple[str, str]:
    added = round(phase.p99_ms - base.p99_ms, 2) + 0.0  # no "-0.00"
    return f"{added:+.2f}" if abs(added) < 100 else f"{added:+.0f}", f"{phase.p99_ms / base.p99_ms:.1f}x" if base.p99_ms else "-"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _targets(down: DownResult) -> list[tuple[str, Phase, float]]:
    """(target, the phase it is judged on, limit in ms added to p99)."""
    refusing = max((down.phase("refusing-1s"), down.phase("refusing")), key=lambda p: p.p99_ms)
    return [
        ("Redis refusing connections adds < 5 ms p99 (worse of its two rows)", refusing, 5.0),
        ("Redis frozen adds < 50 ms p99 once the breaker is open", down.phase("frozen"), 50.0),
    ]


def down_section(series: list[DownResult]) -> list[str]:
    first = series[0]
    loads = "; ".join(
        "1: one request at a time from a Python client (httpx2), raw per-request times" if d.connections == 1
        else f"{d.connections}: `wrk -t1 -c{d.connections}`" for d in series
    )
    lines = [
        "## Added latency while Redis refuses connections or is frozen",
        "",
        ("One service (`python -m gql serve`, one worker, defaults: GQL_REDIS_TIMEOUT 0.1 s, breaker after "
        "GQL_REDIS_BREAKER_FAILURES 3 failed calls, GQL_REDIS_RETRY_SECONDS 5 s) on a redis-server of its own. "
        f"Each phase POSTs {first.bodies} small cached queries in turn (`{SMALL}`, and with 3 `asOf` dates); steady "
        f"phases {first.duration:g} s. One series of phases per load, the same method in every phase of a series "
        f"({loads}). Refusing: redis-server killed (its port refuses connections), restarted (empty) afterwards; "
        "frozen: SIGSTOP (connections accepted, never answered), SIGCONT afterwards; each fault's first second is "
        "measured on its own. Failed: socket errors, timeouts, non-200 answers, answers without data or with GraphQL "
        "errors."),
        "",
        ("With Redis healthy the service answers from its whole-response cache (A). While Redis is away (breaker "
        "open) it keeps whole responses in process memory instead, so a repeated query is answered from bytes again; "
        "a query it has not kept goes through the resolvers, in the server process, with the in-process field cache. "
        "B is that resolver path with a healthy Redis: a second service with GQL_RESPONSE_CACHE=false and "
        "GQL_QUERY_PROCESSES=0. p99 − A is what a client sees when Redis goes away."),
        "",
        ("Reading the percentiles: wrk corrects for coordinated omission (`stats_correct`: a request that took longer "
        "than the mean interval adds samples for the requests a steady client would have sent meanwhile), so a "
        "server-wide pause shows in its p99 as if traffic had kept arriving; with 8 connections one server process "
        "is also saturated (a closed loop), so its p99 is mostly queueing. The one-request-at-a-time series shows each "
        "request's own time instead."),
        "",
        ("| load | phase | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | failed | p99 − A ms | p99 ÷ A "
        "| p99 − B ms | p99 ÷ B |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for down in series:
        a, b = down.phase("A"), down.phase("B")
        for p in down.phases:
            vs_a, vs_b = _added(p, a), _added(p, b)
            failures = f"{p.failed} ({p.failures})" if p.failed else "0"
            lines.append(f"| {down.load} | {p.name} | {p.requests:,} | {p.rps:,.0f} | {_ms(p.p50_ms)} | {_ms(p.p90_ms)} "
                         f"| {_ms(p.p99_ms)} | {_ms(p.max_ms)} | {failures} | {vs_a[0]} | {vs_a[1]} | {vs_b[0]} | {vs_b[1]} |")
    failed = sum(p.failed for d in series for p in d.phases)
    requests = sum(p.requests for d in series for p in d.phases)
    lines += ["", "Targets (the timing verdicts are informational: one run on a shared machine):", ""]
    for down in series:
        a, b = down.phase("A"), down.phase("B")
        for target, phase, limit in _targets(down):
            lines.append(
                f"- {down.load}: {target}: p99 {_ms(phase.p99_ms)} ms, "
                f"{_added(phase, a)[0]} ms over A, {_verdict(phase.p99_ms - a.p99_ms < limit)}; "
                f"{_added(phase, b)[0]} ms over B, {_verdict(phase.p99_ms - b.p99_ms < limit)}."
            )
    lines += [f"- No request fails because of Redis: {failed} of {requests:,} requests failed, {_verdict(failed == 0)}.", ""]
    for down in series:
        lines.append(
            f"Breaker, {down.load}: the first \"Redis ... is "
            f"unreachable\" warning came {_after(down.breaker_open_ms.get('refusing'))} after the kill and "
            f"{_after(down.breaker_open_ms.get('frozen'))} after SIGSTOP; `gql_cache_breaker_opened_total` rose by "
            f"{down.breaker_opened_total or 0:g} (a failed probe, every 5 s, opens it again). Back on Redis "
            f"{_seconds(down.recovery.get('restart'))} after redis-server was restarted, "
            f"{_seconds(down.recovery.get('thaw'))} after SIGCONT."
        )
        lines.append("")
    slowest = max(d.phase("frozen-1s").max_ms for d in series)
    lines += [
        ("(Back on Redis: until /healthz, polled every 20 ms, says `cache.state` \"ok\"; that is the rest of the "
        "breaker's 5 s cool-down, so it depends on when the last probe failed, and is at most 5 s.)"),
        "",
        (f"The frozen Redis's first second: its slowest request took {_ms(slowest)} ms. Timeouts open the breaker only "
        "once they have gone on for 5 x GQL_REDIS_TIMEOUT (0.5 s) with no success, so that a busy event loop does not "
        "open it on a healthy Redis. Until then a request with a kept answer (these queries, answered a moment before) "
        "waits GQL_REDIS_SOFT_TIMEOUT (20 ms) at most and one Redis call at a time finds out whether Redis still hangs; "
        "a request without one can wait for a few 0.1 s timeouts (the stored-response read, the field lookup and its "
        "one retry)."),
        "",
    ]
    return lines


def _after(ms: float | None) -> str:
    return "(not found in the log)" if ms is None else f"{ms:.0f} ms"


def stampede_section(runs: list[StampedeRun], delay: float) -> list[str]:
    servers = runs[0].servers if runs else 0
    lines = [
        "## Stampedes: cold requests on several servers sharing one Redis",
        "",
        (f"{servers} servers (one worker each, defaults) on one redis-server, one GQL_CACHE_PREFIX, each with "
        f"GQL_FAULT_COMPUTE_DELAY={delay:g} (every computation sleeps {delay:g} s first, so requests overlap). "
        "All requests of a run are sent at once, spread round-robin over the servers (each key reaches every server), "
        f"each key a `yieldThisYear(asOf: ...)` no earlier run asked for. Computations: the sum over the servers of "
        "`gql_computations_total` (after − before); leases: `gql_cache_leases_total`. Baseline: the same servers "
        "with GQL_CACHE_ENABLED=false. Distinct answers: the most different `data` any key got (1 = all the same)."),
        "",
        ("| caching | keys × requests each | requests | answered | errors | computations | leases acquired / waited "
        "| cache statuses | distinct answers per key | p50 s | p99 s | max s | wall s |"),
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r.statuses.items())) or "-"
        per_key = r.requests // r.keys
        lines.append(
            f"| {r.caching} | {r.keys} × {per_key} | {r.requests} | {r.answered} | {len(r.errors)} | {r.computations:g} "
            f"| {r.leases_acquired:g} / {r.leases_waited:g} | {statuses} | {r.distinct_answers} "
            f"| {median(r.latencies):.2f} | {percentile(r.latencies, 0.99):.2f} | {max(r.latencies):.2f} | {r.wall:.2f} |"
        )
    lines += [
        "",
        ("With caching, each server runs its cold queries in its one query worker process (GQL_QUERY_PROCESSES=1), "
        "one query at a time: a query waiting for another server's computation holds up the queries queued behind "
        "it, which is most of the latency of the many-keys run. Without a cache every request computes, in the "
        "server's GQL_COMPUTE_THREADS=2 threads."),
        "",
        *[f"- {line}" for line in stampede_summary(runs)],
    ]
    errors = [e for r in runs for e in r.errors]
    if errors:
        lines += ["", "Errors (first few): " + "; ".join(f"`{e}`" for e in errors[:5])]
    return lines + [""]


def stampede_summary(runs: list[StampedeRun]) -> list[str]:
    by = {(r.caching, r.keys): r for r in runs}
    out = []
    for keys in dict.fromkeys(r.keys for r in runs):
        cached, plain = by.get(("cached", keys)), by.get(("no cache", keys))
        if cached and plain:
            out.append(
                f"{cached.requests} requests for {keys} key{'s' if keys > 1 else ''} -> {cached.computations:g} "
                f"computation{'s' if cached.computations != 1 else ''} cached vs {plain.computations:g} without a cache "
                f"(p99 {percentile(cached.latencies, 0.99):.2f} s vs {percentile(plain.latencies, 0.99):.2f} s); "
                f"single flight {_verdict(cached.computations <= keys)} ({keys} expected), "
                f"errors: {len(cached.errors)} cached, {len(plain.errors)} without."
            )
    return out


def logs_section(logs: dict[str, list[str]], per_server: int = 6) -> list[str]:
    noisy = {name: lines for name, lines in logs.items() if lines}
    if not noisy:
        return ["## Server logs (faults)", "", "No server logged anything at warning level or above.", ""]
    lines = ["## Server logs (faults)", "", ("What the servers logged (warning and above), first lines per server; "
             "a server's query worker process logs to the same file:"), "", "```"]
    for name, logged in noisy.items():
        lines += [f"{name}: {len(logged)} lines"] + [f"  {line[:240]}" for line in logged[:per_server]]
    return lines + ["```", ""]


def summary(result: FaultsResult, link: str = "faults.md") -> list[str]:
    """A short section for benchmark.md: the targets and stampede counts, with a link to the whole report."""
    lines = [
        "## Redis faults and stampedes",
        "",
        (f"Method, every phase and the server logs: [{link}]({link}) (`python -m bench.faults`, {result.elapsed:.0f} s). "
        "A: Redis healthy, whole-response cache (defaults); B: Redis healthy, resolvers in the server (the path "
        "that queries not kept in memory take while Redis is away)."),
        "",
        "| load | measurement | p99 ms | p99 − A ms | p99 − B ms | target | vs A | vs B |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for down in result.down:
        a, b = down.phase("A"), down.phase("B")
        lines.append(f"| {down.load} | A. Redis healthy, defaults | {_ms(a.p99_ms)} | - | - | | | |")
        lines.append(f"| {down.load} | B. Redis healthy, resolvers in the server | {_ms(b.p99_ms)} | - | - | | | |")
        for _target, phase, limit in _targets(down):
            name = "Redis refusing connections (worse of first second, steady)" if limit == 5 else "Redis frozen, breaker open"
            lines.append(
                f"| {down.load} | {name} | {_ms(phase.p99_ms)} | {_added(phase, a)[0]} | {_added(phase, b)[0]} "
                f"| < {limit:g} ms added | {'met' if phase.p99_ms - a.p99_ms < limit else 'missed'} "
                f"| {'met' if phase.p99_ms - b.p99_ms < limit else 'missed'} |"
            )
    failed = sum(p.failed for d in result.down for p in d.phases)
    requests = sum(p.requests for d in result.down for p in d.phases)
    recovery = "; ".join(
        f"{_seconds(d.recovery.get('restart'))} after a restart, {_seconds(d.recovery.get('thaw'))} after SIGCONT ({d.load})"
        for d in result.down
    )
    return lines + [
        "",
        f"- Failed requests in all phases: {failed} of {requests:,} (target 0: {'met' if failed == 0 else 'missed'}). "
        f"Back on Redis: {recovery}. wrk's percentiles are corrected for coordinated omission"
        + ("; the one-at-a-time rows are raw per-request times." if any(d.connections == 1 for d in result.down) else "."),
        *[f"- {line}" for line in stampede_summary(result.stampedes)],
        "",
    ]


def render(result: FaultsResult, command: str) -> str:
    head = [
        "# Redis faults and cache stampedes",
        "",
        f"Machine: {report.machine()}.",
        (f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `{command}`, {result.elapsed:.0f} s in all. "
        f"1-minute load average {result.load_before:.2f} before, {os.getloadavg()[0]:.2f} at the end (other work on the "
        "machine skews results). Every comparison is with a baseline measured in the same run."),
        "",
    ]
    sections = [down_section(result.down), stampede_section(result.stampedes, result.delay), logs_section(result.logs)]
    return "\n".join(head + [line for section in sections for line in section])


if __name__ == "__main__":
    raise SystemExit(main())
