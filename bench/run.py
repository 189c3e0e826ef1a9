"""The benchmark suite of `make bench`: the service against its ceiling and the Flask original, and more.

Starts one redis-server and the HTTP variants on free ports (bench/servers.py: a bare ASGI app serving the
bytes from memory, the Starlette ceiling, Flask, the service in four setups, one of them with two workers), so it
touches no other data, then measures, in order:
  1. throughput and latency of a small and a large query on every variant, and of a 304 revalidation on those
     that give ETags (wrk, round-robin rounds); the Targets section puts the ratios side by side;
  2. cold vs hit timings over HTTP on the service with all caches (sequential requests);
  3. hit latency at rest and during concurrent cold computations;
  4. in-process scaling of the cold chart computation with the number of indexes;
  5. partial hits: chart variants from the cached daily series against from prices;
  6. Redis faults and stampedes (bench/faults.py, on servers and redis-servers of its own): added latency while
     Redis refuses connections or is frozen, and computations per burst of cold requests on several servers;
  7. data pickup (bench/pickup.py, servers of its own): from an import's return to the first answer of the new
     data version on each process, with file system events and with forced polling;
  8. the database source (bench/db.py, on databases of its own on the machine's PostgreSQL and MariaDB): the cold
     load of 5 million closes against COPY of the same rows, pickups of a commit against read_sql of the table,
     and from a COMMIT to the first answer of a running server;
  9. Redis topologies (bench/fleet.py, on a Redis Cluster and a Sentinel group of its own): hit throughput on
     standalone, Cluster and Sentinel, a master killed under load (errors, refreshes lost, time without Redis),
     and the connections and subscriptions each server process holds on every node.
Writes a Markdown report to bench/results/benchmark.md (and bench/results/faults.md, database.md and fleet.md,
linked from it) and prints it.

    make bench                                                           # defaults: about 16 minutes
    make bench BENCH_ARGS="--duration 2 --rounds 1 --faults quick --pickup-imports 5 --db quick --fleet quick"   # quicker
    .venv/bin/python -m bench.run --help
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx2
import redis

from bench import db, dbreport, faults, fleet, fleetreport, pickup, report
from bench.ceiling_app import key_for as ceiling_key
from bench.flask_app import key_for as flask_key
from bench.load import sequential, timed_post, wrk
from bench.scaling import cold_scaling, partial_hits
from bench.servers import ROOT, Server, all_variants, redis_server, started

RESULTS = ROOT / "bench" / "results"

SMALL = "{ yieldThisYear { code name yieldPct baseDate baseClose lastDate lastClose } }"
LARGE = "{ indexChart(frequency: DAILY) { series { code points { date close } } } }"
# Cold work for the loaded-latency section: the large query at a distinct end date misses the cache.
CHART_AT = "query($end: Date) { indexChart(end: $end, frequency: DAILY) { series { code points { date close } } } }"
# The cold-vs-hit section (kept from the first bench/run.py).
CHART_4 = ("query($end: Date) { indexChart(end: $end, frequency: DAILY) "
           "{ series { code totalReturn points { date close normalized drawdown } } } }")
YIELD_AT = "query($asOf: Date) { yieldThisYear(asOf: $asOf) { code yieldPct baseDate baseClose lastDate lastClose } }"

# Days back from the last date, never used twice in a run: every query built from one is a cache miss.
_distinct_days = itertools.count(1)


@dataclass(frozen=True)
class Payload:
    key: str
    body: bytes
    file: Path  # the body, for wrk
    # A revalidation of the answer to `revalidates` (If-None-Match: its ETag), on the variants that give ETags.
    revalidates: str | None = None


# The variants that answer a revalidation with a 304, as browsers and CDNs ask (the others have no ETag).
REVALIDATING = ("bare", "full", "full2")


@dataclass(frozen=True)
class Probe:
    """A warm request: what measured requests will get."""

    seconds: float
    content: bytes
    cache_status: str
    etag: str


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    began, load_before = time.monotonic(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="gql-bench-"))
    small = _payload(workdir, "small", SMALL)
    payloads = [small, _payload(workdir, "large", LARGE), Payload("small 304", small.body, small.file, revalidates="small")]
    try:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(redis_server(workdir))
            servers = {}
            for variant in all_variants(redis_url, uuid.uuid4().hex[:6]):
                servers[variant.key] = stack.enter_context(started(variant, workdir))
                _log(f"started {variant.title} at {servers[variant.key].url}")
            probes = warm_and_seed(servers, payloads, redis_url)
            cells = throughput(servers, payloads, probes, args)
            full = servers["full"].url
            last = _last_date(full)
            cold_hit = cold_vs_hit(full, last, args)
            loaded = hit_latency_during_cold(full, payloads[0].body, last, args)
            load_during = os.getloadavg()[0]
        server_logs = {path.stem: path.read_text(errors="replace").splitlines() for path in sorted(workdir.glob("*.log"))}
        faulted = None
        if args.faults != "off":
            _log(f"Redis faults and stampedes ({args.faults})")
            faulted = faults.run(faults.settings(quick=args.faults == "quick"))
        picked = None
        if args.pickup_imports > 0:
            _log(f"data pickup ({args.pickup_imports} imports per watcher mode)")
            picked = pickup.run(args.pickup_imports, 1.0)
        databases = None
        if args.db != "off":
            _log(f"database source ({args.db})")
            databases = db.run(db.settings(quick=args.db == "quick"))
        fleeted = None
        if args.fleet != "off":
            _log(f"Redis topologies ({args.fleet})")
            fleeted = fleet.run(fleet.settings(quick=args.fleet == "quick"))
        _log("timing index_chart in process")
        scaling = cold_scaling(args.scaling_sizes, args.scaling_runs)
        partial = partial_hits(max(args.scaling_runs, 5))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    slow = f" Cells whose warm request took over {args.slow_ms:g} ms run with 1 connection for {args.slow_duration:g} s and no wrk warm-up."
    settings = (f"One worker per variant, one shared redis-server, every variant warmed first. "
                f"Per run: `wrk -t1 -c{args.connections} -d{args.duration:g}s` with bench/post.lua, "
                + (f"after a {args.warmup:g} s warm-up; " if args.warmup > 0 else "no warm-up; ")
                + f"{args.rounds} round(s), variants alternated round-robin; req/s, p50, p99: median of the rounds.{slow} "
                "Ratios: this row's value over the ceiling's or Flask's for the same payload "
                "(req/s: higher is better; p99: lower is better). Cache: the status a request got after each run.")
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    faults_file = args.output.parent / "faults.md"
    if faulted is not None:
        faults_file.write_text(faults.render(faulted, command.strip()), encoding="utf-8")
        _log(f"wrote {faults_file}")
    database_file = args.output.parent / "database.md"
    if databases is not None:
        database_file.write_text(dbreport.render(databases, command.strip()), encoding="utf-8")
        _log(f"wrote {database_file}")
    fleet_file = args.output.parent / "fleet.md"
    if fleeted is not None:
        fleet_file.write_text(fleetreport.render(fleeted, command.strip()), encoding="utf-8")
        _log(f"wrote {fleet_file}")
    text = report.render(
        [report.targets_section(cells, loaded), report.throughput_section(cells, settings), report.cold_hit_section(cold_hit),
         report.loaded_section(loaded, args.cold_clients, args.latency_seconds),
         report.scaling_section(scaling, args.scaling_runs), report.partial_hits_section(partial, max(args.scaling_runs, 5)),
         faults.summary(faulted, faults_file.name) if faulted is not None else [],
         pickup.section(picked) if picked is not None else [],
         dbreport.summary(databases, database_file.name) if databases is not None else [],
         fleetreport.summary(fleeted, fleet_file.name) if fleeted is not None else [],
         report.logs_section(server_logs)],
        command.strip(), time.monotonic() - began, (load_before, load_during),
    )
    args.output.write_text(text, encoding="utf-8")
    print(text)
    _log(f"wrote {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--duration", type=float, default=5, help="seconds per measured wrk run (default 5)")
    add("--warmup", type=float, default=1, help="seconds of wrk warm-up before each run, 0 for none (default 1)")
    add("--connections", type=int, default=8, help="wrk connections (default 8)")
    add("--rounds", type=int, default=3, help="round-robin rounds over the variants (default 3)")
    add("--slow-ms", type=float, default=100, help="a warm request slower than this runs with 1 connection (default 100)")
    add("--slow-duration", type=float, default=5, help="seconds per run of such slow cells (default 5)")
    add("--hits", type=int, default=100, help="cold-vs-hit: hit requests per small field (default 100)")
    add("--chart-hits", type=int, default=10, help="cold-vs-hit: hit requests of the large chart (default 10)")
    add("--colds", type=int, default=5, help="cold-vs-hit: cold requests per field (default 5)")
    add("--latency-seconds", type=float, default=5, help="hit-latency sampling time, at rest and under load (default 5)")
    add("--cold-clients", type=int, default=4, help="concurrent cold-computation clients (default 4)")
    add("--scaling-sizes", type=lambda s: [int(n) for n in s.split(",")], default=[10, 100, 1000],
        help="index counts for the in-process scaling (default 10,100,1000)")
    add("--scaling-runs", type=int, default=3, help="runs per size, the median is reported (default 3)")
    add("--faults", choices=("full", "quick", "off"), default="full",
        help="Redis faults and stampedes (bench/faults.py): full (about 2 minutes), quick (a smoke run) or off (default full)")
    add("--pickup-imports", type=int, default=20,
        help="data pickup (bench/pickup.py): imports per watcher mode, 0 to skip (default 20, about 1 minute)")
    add("--db", choices=("full", "quick", "off"), default="full",
        help="the database source (bench/db.py): full (1,000 indexes x 5,040 days, about 4 minutes), quick (100 indexes, "
             "a smoke run) or off (default full)")
    add("--fleet", choices=("full", "quick", "off"), default="full",
        help="Redis topologies (bench/fleet.py): full (about 4.5 minutes), quick (a smoke run, about 70 s) or off (default full)")
    add("--output", type=Path, default=RESULTS / "benchmark.md",
        help="report file (default bench/results/benchmark.md; faults.md, database.md and fleet.md are written next to it)")
    return parser


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _payload(workdir: Path, key: str, query: str) -> Payload:
    body = json.dumps({"query": query}).encode()
    file = workdir / f"{key}.json"
    file.write_bytes(body)
    return Payload(key, body, file)


def _graphql_body(query: str, variables: dict) -> bytes:
    return json.dumps({"query": query, "variables": variables}).encode()


def _last_date(url: str) -> dt.date:
    with httpx2.Client(base_url=url, timeout=30) as client:
        return dt.date.fromisoformat(client.get("/healthz").json()["data"]["lastDate"])


# --- warming and seeding ----------------------------------------------------------------------------


def probe(server: Server, payload: Payload, fill: bool = True) -> Probe:
    """A warm request, its answer kept, after one that fills the caches when `fill`: the fastest of three when
    filling (the first after a miss may still be catching up, and must not send a cached cell to one connection)."""
    with httpx2.Client(base_url=server.url, timeout=300) as client:
        if fill:
            timed_post(client, payload.body)
        seconds, response = min((timed_post(client, payload.body) for _ in range(3 if fill else 1)), key=lambda t: t[0])
    body = response.json()
    if "errors" in body:
        raise SystemExit(f"{server.variant.key} answered {payload.key} with errors: {body['errors']}")
    statuses = sorted({entry["status"] for entry in body.get("extensions", {}).get("cache", [])})
    status = "/".join(statuses) or "-"
    expect = server.variant.expect
    if expect and statuses != [expect]:
        _log(f"warning: {server.variant.key} {payload.key}: cache status {status}, expected {expect}")
    return Probe(seconds, response.content, status, response.headers.get("etag", ""))


def warm_and_seed(servers: dict[str, Server], payloads: list[Payload], redis_url: str) -> dict[tuple[str, str], Probe]:
    """Warms every variant; the ceiling and Flask get what the full service answers, so all serve the same data."""
    payloads = [p for p in payloads if p.revalidates is None]  # the same requests as the answer they revalidate
    probes = {("full", p.key): probe(servers["full"], p) for p in payloads}
    store = redis.Redis.from_url(redis_url)
    for p in payloads:
        served = probes["full", p.key].content
        store.set(ceiling_key(p.body), served)
        # The Flask view cached the dict of the GraphQL response data and returned it with jsonify.
        store.set(flask_key(p.body), json.dumps({"data": json.loads(served)["data"]}))
    store.close()
    for key, server in servers.items():
        for p in payloads:
            if key != "full":
                probes[key, p.key] = probe(server, p)
            _log(f"warm {key:9} {p.key}: {len(probes[key, p.key].content):,} bytes, "
                 f"{probes[key, p.key].seconds * 1000:.1f} ms, cache {probes[key, p.key].cache_status}")
    return probes


# --- measurements -----------------------------------------------------------------------------------


def throughput(servers: dict[str, Server], payloads: list[Payload], probes: dict, args) -> list[report.Cell]:
    """wrk on every (variant, payload), round-robin over the variants for `args.rounds` rounds."""
    cells = [(p, key, server) for p in payloads for key, server in servers.items()
             if p.revalidates is None or key in REVALIDATING]
    for p, key, server in cells:
        if p.revalidates is not None:
            probes[key, p.key] = probes[key, p.revalidates]
            with httpx2.Client(base_url=server.url, timeout=60) as client:
                asked = client.post("/graphql", content=p.body, headers={
                    "content-type": "application/json", "if-none-match": probes[key, p.key].etag})
            if asked.status_code != 304:
                _log(f"warning: {key} answered a revalidation with {asked.status_code}, not 304")
    runs: dict[tuple[str, str], list] = {(key, p.key): [] for p, key, _ in cells}
    statuses: dict[tuple[str, str], set] = {(key, p.key): {probes[key, p.key].cache_status} for p, key, _ in cells}
    for round_no in range(1, args.rounds + 1):
        for p, key, server in cells:
            url = server.url + "/graphql"
            etag = probes[key, p.key].etag if p.revalidates else ""
            if probes[key, p.key].seconds * 1000 > args.slow_ms:
                result = wrk(url, p.file, 1, args.slow_duration, if_none_match=etag)
            else:
                if args.warmup > 0:
                    wrk(url, p.file, args.connections, args.warmup, if_none_match=etag)
                result = wrk(url, p.file, args.connections, args.duration, if_none_match=etag)
            runs[key, p.key].append(result)
            # What the requests of this run were answered with (the cache may have changed under load).
            statuses[key, p.key].add(probe(server, p, fill=False).cache_status)
            _log(f"round {round_no}/{args.rounds} {p.key:5} {key:9} {result.rps:9,.1f} req/s  "
                 f"p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  errors {result.errors}")
    return [
        report.Cell(key, server.variant.title, p.key, 0 if p.revalidates else len(probes[key, p.key].content),
                    ("304" if p.revalidates else ", ".join(sorted(statuses[key, p.key]))) if server.variant.expect else "-",
                    runs[key, p.key])
        for p, key, server in cells
    ]


def cold_vs_hit(url: str, last: dt.date, args) -> list[dict]:
    """Sequential cold (distinct-key) and hit requests of both fields, and a baseline request."""
    with httpx2.Client(base_url=url, timeout=300) as client:
        for _ in range(20):
            client.get("/healthz")
        baseline = []
        for _ in range(args.hits):
            began = time.perf_counter()
            size = len(client.get("/healthz").content)
            baseline.append(time.perf_counter() - began)
        rows = [{"name": "GET /healthz (baseline)", "cold": None, "hit": baseline, "bytes": size}]
        for name, query, arg, hits in [("yieldThisYear, all 10", YIELD_AT, "asOf", args.hits),
                                       ("indexChart, all 10, DAILY, 4 fields", CHART_4, "end", args.chart_hits)]:
            _log(f"cold vs hit: {name}")
            cold = []
            for _ in range(args.colds):
                day = last - dt.timedelta(days=next(_distinct_days))
                cold.append(timed_post(client, _graphql_body(query, {arg: day.isoformat()}))[0])
            body = _graphql_body(query, {arg: last.isoformat()})
            timed_post(client, body)  # the first may be a miss
            hit, size = [], 0
            for _ in range(hits):
                seconds, response = timed_post(client, body)
                hit.append(seconds)
                size = len(response.content)
            rows.append({"name": name, "cold": cold, "hit": hit, "bytes": size})
    return rows


def _cold_loader(url: str, last: dt.date, first_offset: int, stride: int, stop, results) -> None:
    """In its own process (so its work never shares the sampler's GIL): cold chart queries until told to stop."""
    colds: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    k = first_offset
    with httpx2.Client(base_url=url, timeout=600) as client:
        while not stop.is_set():
            day = last - dt.timedelta(days=k)
            k += stride
            try:
                seconds, response = timed_post(client, _graphql_body(CHART_AT, {"end": day.isoformat()}))
                # The report is at the end of the body: read the status without parsing megabytes.
                tail = response.content[-300:]
                statuses["MISS" if b'"status":"MISS"' in tail else "other"] += 1
                colds.append(seconds)
            except Exception as exc:  # noqa: BLE001  # reported, not fatal: the section says how many ran
                errors.append(repr(exc))
                break
    results.put((colds, dict(statuses), errors))


def hit_latency_during_cold(url: str, small: bytes, last: dt.date, args) -> dict:
    """Small-query hit latency at rest, then while `args.cold_clients` processes keep cold chart queries running."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    start = next(_distinct_days)
    with httpx2.Client(base_url=url, timeout=300) as client:
        _log("hit latency at rest")
        at_rest = sequential(client, small, args.latency_seconds)
        loaders = [
            context.Process(target=_cold_loader, args=(url, last, start + i, args.cold_clients, stop, results), daemon=True)
            for i in range(args.cold_clients)
        ]
        for process in loaders:
            process.start()
        time.sleep(2.0)  # the loaders have started (spawn imports) and each has a request in flight
        _log(f"hit latency during {args.cold_clients} cold computations")
        under_load = sequential(client, small, args.latency_seconds)
        stop.set()
        gathered = [results.get(timeout=600) for _ in loaders]
        for process in loaders:
            process.join(60)
    colds = [c for g in gathered for c in g[0]]
    statuses = sum((Counter(g[1]) for g in gathered), Counter())
    errors = [e for g in gathered for e in g[2]]
    return {"at_rest": at_rest, "under_load": under_load, "colds": colds, "statuses": statuses, "errors": errors}


if __name__ == "__main__":
    raise SystemExit(main())
