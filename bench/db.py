"""Database benchmarks: the cold load, incremental pickups and commit-to-answer delay of the database source.

Everything runs against databases of the bench's own (bench/dbsetup.py: `gql_bench_<random>`, created, filled
with synthetic closes and dropped at the end), and every figure is a ratio to a baseline measured in the same
run, round by round (the machine is shared and noisy): the report gives the median and the spread (min–max)
over the rounds.

1. Cold load (PostgreSQL). `DatabaseSource(url)`, the full load of every close into a PriceStore that a
   process does when it starts, against the limit of reading the same rows at all: `COPY (SELECT code,
   trade_date, close FROM index_close ORDER BY code, trade_date) TO STDOUT` read to /dev/null by psycopg
   (the driver the source uses) and by `psql`'s `\\copy` (libpq in C, no Python). Target: within 2x of psycopg.
2. Pickups (PostgreSQL). One new trading day for every index (one INSERT of N rows, one transaction, by a
   plain SQL client), then `source.reload()`: it should read about N change-log rows (`last_pickup.rows`), not
   the table. Against the naive way, `pandas.read_sql` of the whole close table. Target: at least 20x cheaper.
   Also one close updated 15 years back and one deleted 10 years back (each one row of the log or two). After
   the rounds the snapshot kept up by pickups is compared with a fresh full load.
3. Commit to subscriber, on a running server (`python -m gql serve`, one worker, Redis of its own). From the
   return of the COMMIT of a new day for every index to the arrival of the `dataChanged` event naming the
   committed version at a graphql-transport-ws subscriber (what an open dashboard hears; the server takes the
   version up for every answer before it tells subscribers). p50 and p99 over many commits, each at a random moment. PostgreSQL
   (LISTEN/NOTIFY; target within 1 s) and MariaDB (a version poll every GQL_DATABASE_POLL_SECONDS = 0.5 s;
   target within 2 s; a smaller data set: its full load reads rows through PyMySQL, about 20 µs each).

The databases and their data: bench/dbsetup.py; the result types and the Markdown: bench/dbreport.py.

    .venv/bin/python -m bench.db [--quick]          # alone: bench/results/database.md
    make bench BENCH_ARGS="--db quick"              # within make bench (--db full is the default, --db off skips)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import http.client
import io
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg

from bench import dbsetup
from bench.dbreport import LIMIT_SQL, DbResult, LatencyRun, LoadRound, Pickup, PickupRound, render
from bench.dbsetup import Dataset
from bench.report import run_standalone
from bench.servers import ROOT, Variant, redis_server, started, wait_until

RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    return run_standalone("db", _parser().parse_args(argv), argv, run, resolve, render)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.db", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: 100 indexes, 2 rounds, 10 commits (unless given); about 1 minute")
    add("--indexes", type=int, help="PostgreSQL: indexes (default 1000; quick 100)")
    add("--days", type=int, default=5040, help="trading days per index (default 5040: 20 years of 252)")
    add("--load-rounds", type=int, help="cold-load rounds (default 5; quick 2)")
    add("--pickup-rounds", type=int, help="pickup rounds, each with a read_sql of the whole table (default 3; quick 2)")
    add("--commits", type=int, help="commits per server in the commit-to-answer runs (default 30; quick 10)")
    add("--mariadb-indexes", type=int, help="MariaDB: indexes, 0 to skip MariaDB (default 100; quick 50)")
    add("--profile", action="store_true", help="add a cProfile of one cold load to the report")
    add("--output", type=Path, default=RESULTS / "database.md", help="report file (default bench/results/database.md)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The settings, with the quick or full defaults filled in."""
    quick = args.quick

    def pick(value, full, small):
        return value if value is not None else (small if quick else full)

    return argparse.Namespace(
        quick=quick, days=args.days, profile=args.profile,
        indexes=pick(args.indexes, 1000, 100), load_rounds=pick(args.load_rounds, 5, 2),
        pickup_rounds=pick(args.pickup_rounds, 3, 2), commits=pick(args.commits, 30, 10),
        mariadb_indexes=pick(args.mariadb_indexes, 100, 50),
    )


def settings(quick: bool) -> argparse.Namespace:
    """The defaults of a full (or quick) run, for bench/run.py."""
    return resolve(_parser().parse_args(["--quick"] if quick else []))


def _log(message: str) -> None:
    print(f"[db] {message}", file=sys.stderr, flush=True)


def run(opts: argparse.Namespace) -> DbResult:
    """PostgreSQL (all three measurements), then MariaDB (commit to subscriber); each database dropped at the end."""
    result = DbResult(opts, load_before=os.getloadavg()[0])
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gql-bench-db-"))
    try:
        with dbsetup.scratch_database("postgresql") as url:
            data = dbsetup.synthetic(opts.indexes, opts.days)
            result.rows = data.rows
            result.fill_seconds["postgresql"] = _filled(url, data)
            result.loads = cold_loads(url, opts.load_rounds)
            if opts.profile:
                result.profile = profile_load(url)
            result.pickups, result.consistent = pickups(url, data, opts.pickup_rounds)
            result.latency.append(commit_to_answer(url, data, opts.commits, workdir))
        if opts.mariadb_indexes > 0:
            with dbsetup.scratch_database("mariadb") as url:
                small = dbsetup.synthetic(opts.mariadb_indexes, opts.days)
                result.fill_seconds["mariadb"] = _filled(url, small)
                result.latency.append(commit_to_answer(url, small, opts.commits, workdir))
        result.logs = {path.stem: path.read_text(errors="replace").splitlines() for path in sorted(workdir.glob("*.log"))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.elapsed = time.monotonic() - began
    return result


def _filled(url: str, data: Dataset) -> float:
    _log(f"filling {dbsetup.database_name(url)}: {len(data.codes):,} indexes x {len(data.days):,} days = {data.rows:,} rows")
    seconds = dbsetup.fill(url, data)
    _log(f"filled in {seconds:.1f} s")
    return seconds


# --- 1. cold load ------------------------------------------------------------------------------------


def cold_loads(url: str, rounds: int) -> list[LoadRound]:
    """Rounds of the three reads, in a rotating order (none always first after the other's cache effects)."""
    from gql.db.source import DatabaseSource

    copy_psycopg(url)  # warm-up, unmeasured: the table in the page cache for all
    has_psql = shutil.which("psql") is not None
    results = []
    for number in range(rounds):
        times: dict[str, float] = {}
        rows = 0

        def source() -> None:
            nonlocal rows
            loaded = DatabaseSource(url)
            rows = loaded.last_pickup.rows if loaded.last_pickup else 0
            loaded.close()

        steps: list[tuple[str, Callable[[], object]]] = [("source", source), ("psycopg", lambda: copy_psycopg(url))]
        if has_psql:
            steps.append(("psql", lambda: copy_psql(url)))
        for name, step in steps[number % len(steps):] + steps[:number % len(steps)]:
            began = time.perf_counter()
            step()
            times[name] = time.perf_counter() - began
        results.append(LoadRound(times["source"], times["psycopg"], times.get("psql"), rows))
        _log(f"cold load {number + 1}/{rounds}: source {times['source']:.2f} s, psycopg COPY {times['psycopg']:.2f} s"
             + (f", psql \\copy {times['psql']:.2f} s" if "psql" in times else ""))
    return results


def copy_psycopg(url: str) -> int:
    """The rows in COPY text form, through psycopg, to /dev/null; returns the bytes read."""
    read = 0
    with (psycopg.connect(url) as conn, open(os.devnull, "wb") as sink,
          conn.cursor().copy(f"COPY ({LIMIT_SQL}) TO STDOUT") as copy):
        for chunk in copy:
            read += sink.write(chunk)
    return read


def copy_psql(url: str) -> None:
    subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", f"\\copy ({LIMIT_SQL}) to /dev/null"],
                   check=True, timeout=600)


def profile_load(url: str, top: int = 18) -> list[str]:
    """cProfile of one DatabaseSource(url): the functions taking the most time, cumulative."""
    from gql.db.source import DatabaseSource

    profiler = cProfile.Profile()
    profiler.enable()
    DatabaseSource(url).close()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative").print_stats(top)
    return [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]


# --- 2. pickups --------------------------------------------------------------------------------------


class Writer:
    """A plain SQL client of the database (psycopg or PyMySQL, not this service's code): each call is one
    transaction, and returns the version label it committed (what `/healthz` shows once picked up)."""

    def __init__(self, url: str) -> None:
        self.postgres = url.startswith("postgresql")
        self.conn = psycopg.connect(url) if self.postgres else dbsetup.mariadb_connect(dbsetup.database_name(url))
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT instance FROM gql_data_version WHERE id = 1")
            self.instance = cursor.fetchone()[0]  # type: ignore[index]
        self.conn.commit()

    def last_day(self) -> pd.Timestamp:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT max(trade_date) FROM index_close")
            day = cursor.fetchone()[0]  # type: ignore[index]
        self.conn.commit()
        return pd.Timestamp(day)

    def add_day(self, day: pd.Timestamp, codes: list[str], closes: list[float]) -> str:
        with self.conn.cursor() as cursor:
            if self.postgres:  # one statement: one version, one notification
                cursor.execute("INSERT INTO index_close (code, trade_date, close) "
                               "SELECT * FROM unnest(%s::text[], %s::date[], %s::float8[])",
                               (codes, [day.date()] * len(codes), closes))
            else:  # PyMySQL sends one multi-row INSERT
                cursor.executemany("INSERT INTO index_close (code, trade_date, close) VALUES (%s, %s, %s)",
                                   [(code, day.date(), close) for code, close in zip(codes, closes, strict=True)])
            return self._commit(cursor)

    def update(self, code: str, day: pd.Timestamp) -> str:
        with self.conn.cursor() as cursor:
            cursor.execute("UPDATE index_close SET close = close * 1.01 WHERE code = %s AND trade_date = %s", (code, day.date()))
            return self._commit(cursor)

    def delete(self, code: str, day: pd.Timestamp) -> str:
        with self.conn.cursor() as cursor:
            cursor.execute("DELETE FROM index_close WHERE code = %s AND trade_date = %s", (code, day.date()))
            return self._commit(cursor)

    def _commit(self, cursor) -> str:
        cursor.execute("SELECT version FROM gql_data_version WHERE id = 1")
        version = cursor.fetchone()[0]
        self.conn.commit()
        return f"db-{self.instance[:8]}-{version}"

    def close(self) -> None:
        self.conn.close()


def pickups(url: str, data: Dataset, rounds: int) -> tuple[list[PickupRound], bool]:
    """Rounds of: a new day for every index, an update 15 years back and a delete 10 years back, each picked up by
    `reload()`; and a read_sql of the whole table. Then the snapshot against a fresh full load."""
    from gql.db.connect import create
    from gql.db.source import DatabaseSource

    source = DatabaseSource(url)
    writer = Writer(url)
    engine = create(url, 600.0)
    last = data.days[-1]
    results = []
    try:
        for number in range(rounds):
            last = data.next_day(last)
            closes = (data.closes[:, -1] * (1 + 0.001 * (number + 1))).tolist()
            new_day = _picked_up(source, functools.partial(writer.add_day, last, data.codes, closes))
            code = data.codes[number % len(data.codes)]
            past = data.days[data.days.searchsorted(last - pd.DateOffset(years=15))]
            past_update = _picked_up(source, functools.partial(writer.update, code, past))
            gone = data.days[data.days.searchsorted(last - pd.DateOffset(years=10))]
            delete = _picked_up(source, functools.partial(writer.delete, code, gone))
            began = time.perf_counter()
            frame = pd.read_sql("SELECT code, trade_date, close FROM index_close", engine)
            naive = time.perf_counter() - began
            results.append(PickupRound(new_day, past_update, delete, naive, len(frame)))
            del frame
            _log(f"pickup {number + 1}/{rounds}: new day {new_day.seconds * 1000:.1f} ms ({new_day.rows} rows; "
                 f"DataChange.between {new_day.change_seconds * 1000:.1f} ms), "
                 f"update 15 y back {past_update.seconds * 1000:.1f} ms ({past_update.rows}), delete {delete.seconds * 1000:.1f} ms "
                 f"({delete.rows}); read_sql {naive:.2f} s")
        fresh = DatabaseSource(url)
        consistent = fresh.store.codes == source.store.codes and all(
            fresh.store[c].digest == source.store[c].digest for c in fresh.store.codes)
        fresh.close()
    finally:
        engine.dispose()
        writer.close()
        source.close()
    return results, consistent


def _picked_up(source, write: Callable[[], str]) -> Pickup:
    """Commit with `write`, then time the source's pickup of it (it must reach the committed version), and what a
    server does next on its event loop: DataChange.between, which tells subscribers the indexes that changed."""
    from gql.feed import DataChange

    version, old = write(), source.store
    began = time.perf_counter()
    store = source.reload()
    seconds = time.perf_counter() - began
    if store.version != version:
        raise SystemExit(f"the pickup reached version {store.version}, not the committed {version}")
    began = time.perf_counter()
    DataChange.between(old, store)
    return Pickup(seconds, source.last_pickup.rows, source.last_pickup.full, time.perf_counter() - began)


# --- 3. commit to subscriber -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    sent: float
    received: float
    version: str


class Subscriber:
    """One `dataChanged` subscription over graphql-transport-ws, noting when each new version's event arrives:
    what an open dashboard hears."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/graphql"
        self.seen: list[Seen] = []
        self.listening = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        with connect(self.url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=10, proxy=None) as socket:
            socket.send(json.dumps({"type": "connection_init"}))
            assert json.loads(socket.recv(10))["type"] == "connection_ack"
            socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "subscription { dataChanged { version } }"}}))
            self.listening.set()
            while not self.stop.is_set():
                try:
                    message = json.loads(socket.recv(0.5))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                if message.get("type") == "ping":
                    socket.send(json.dumps({"type": "pong"}))
                elif message.get("type") == "next":
                    received = time.monotonic()
                    self.seen.append(Seen(received, received, message["payload"]["data"]["dataChanged"]["version"]))

    def has_seen(self, version: str) -> bool:
        return any(s.version == version for s in self.seen[-50:])

    def __enter__(self) -> Subscriber:
        self.thread.start()
        if not self.listening.wait(30):
            raise SystemExit("the dataChanged subscription did not start")
        time.sleep(0.2)  # the server registers the subscription on the feed after the subscribe message
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def commit_to_answer(url: str, data: Dataset, commits: int, workdir: Path) -> LatencyRun:
    """A server on the database; `commits` new days, each at a random moment, each timed to its first answer."""
    kind = "postgresql" if url.startswith("postgresql") else "mariadb"
    _log(f"commit to subscriber on {kind}: {commits} commits of {len(data.codes):,} rows each")
    with redis_server(workdir) as redis_url:
        env = {"GQL_DATABASE_URL": url, "REDIS_URL": redis_url, "GQL_CACHE_PREFIX": f"bench-db-{uuid.uuid4().hex[:6]}",
               "GQL_LOG_LEVEL": "warning", "GQL_DATABASE_POLL_SECONDS": "0.5"}
        variant = Variant(f"db-{kind}", f"server on {kind}", lambda port: [sys.executable, "-m", "gql", "serve", "--port", str(port),
                                                                           "--workers", "1"], env)
        began = time.monotonic()
        with started(variant, workdir) as server:
            port = int(server.url.rsplit(":", 1)[1])
            wait_until(lambda: _ready(port), f"the server on {kind} ready", 900)
            run = LatencyRun(kind, len(data.codes), data.rows, time.monotonic() - began)
            writer = Writer(url)
            landed: list[tuple[float, str]] = []
            try:
                with Subscriber(port) as poller:
                    last = writer.last_day()  # section 2 may have added days
                    for number in range(commits):
                        time.sleep(random.uniform(0.05, 0.6))  # a random moment against the server's poll
                        last = data.next_day(last)
                        closes = (data.closes[:, -1] * (1 + 0.001 * (number + 1))).tolist()
                        version = writer.add_day(last, data.codes, closes)
                        landed.append((time.monotonic(), version))
                        with contextlib.suppress(SystemExit):  # counted as missed below
                            wait_until(functools.partial(poller.has_seen, version), f"version {version}", 10)
            finally:
                writer.close()
    _analyse(run, landed, poller.seen)
    return run


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _analyse(run: LatencyRun, landed: list[tuple[float, str]], seen: list[Seen]) -> None:
    for committed, version in landed:
        # An answer received after the commit returned; one sent just before it counts from the return.
        firsts = [s.received for s in seen if s.version == version and s.received >= committed]
        if firsts:
            run.delays.append(max(0.0, min(firsts) - committed))
        else:
            run.missed += 1
    run.events = len(seen)


if __name__ == "__main__":
    raise SystemExit(main())
