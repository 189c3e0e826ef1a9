"""The report of bench/db.py: what each measurement keeps, and the Markdown of bench/results/database.md (and of
its section in benchmark.md). Every ratio is computed per round, from a measurement and its baseline of that round."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass, field

from bench import dbsetup
from bench.load import median, percentile

LIMIT_SQL = "SELECT code, trade_date, close FROM index_close ORDER BY code, trade_date"
LOAD_TARGET, PICKUP_TARGET = 2.0, 20.0  # at most 2x the COPY limit; at least 20x cheaper than read_sql
LATENCY_TARGETS = {"postgresql": 1.0, "mariadb": 2.0}  # seconds from COMMIT to answer


@dataclass(frozen=True)
class LoadRound:
    source: float  # seconds of DatabaseSource(url)
    psycopg: float  # COPY to /dev/null through psycopg
    psql: float | None  # the same with psql's \copy (None without psql)
    rows: int


@dataclass(frozen=True)
class Pickup:
    seconds: float  # of source.reload()
    rows: int  # change-log rows read (last_pickup.rows)
    full: bool
    change_seconds: float  # of DataChange.between(old, new): a server's next step, in its loader thread


@dataclass(frozen=True)
class PickupRound:
    new_day: Pickup
    past_update: Pickup
    delete: Pickup
    naive: float  # seconds of pandas.read_sql of the whole table
    naive_rows: int


@dataclass
class LatencyRun:
    kind: str
    indexes: int
    rows: int
    ready_seconds: float  # from the server's start to /readyz 200 (its full load)
    delays: list[float] = field(default_factory=list)  # commit return to first answer of the new version
    missed: int = 0  # commits never seen within 10 s
    events: int = 0  # dataChanged events the subscriber received


@dataclass
class DbResult:
    opts: argparse.Namespace
    rows: int = 0
    fill_seconds: dict[str, float] = field(default_factory=dict)
    loads: list[LoadRound] = field(default_factory=list)
    pickups: list[PickupRound] = field(default_factory=list)
    consistent: bool | None = None  # the picked-up snapshot equals a fresh full load
    profile: list[str] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)  # what the servers of section 3 logged (warnings and up)
    elapsed: float = 0.0
    load_before: float = 0.0


def _spread(values: list[float], digits: int = 2) -> str:
    """Median (min–max)."""
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def load_ratios(loads: list[LoadRound]) -> tuple[list[float], list[float]]:
    return [r.source / r.psycopg for r in loads], [r.source / r.psql for r in loads if r.psql]


def pickup_ratios(pickups: list[PickupRound]) -> list[float]:
    return [r.naive / r.new_day.seconds for r in pickups]


def cold_load_section(result: DbResult) -> list[str]:
    loads = result.loads
    vs_psycopg, vs_psql = load_ratios(loads)
    lines = [
        "## 1. Cold load: `DatabaseSource(url)` against COPY of the same rows",
        "",
        (f"{result.rows:,} closes ({result.opts.indexes:,} indexes x {result.opts.days:,} trading days) on PostgreSQL. "
         f"Source: the full load into a PriceStore a process does at start (engine, connection, version row, index rows, "
         f"the closes, {result.opts.indexes:,} IndexHistory objects). Limit: `COPY ({LIMIT_SQL}) TO STDOUT` to /dev/null, "
         f"through psycopg and through `psql -c \"\\copy ... to /dev/null\"`. One unmeasured COPY first, then "
         f"{len(loads)} rounds in a rotating order; ratios per round. psycopg hands over COPY data one row per Python "
         "call, so for millions of rows psql (libpq in C) is the real floor; the source's own COPY sends one row per "
         "index, its days and closes as arrays (gql/db/source.py), and may beat psycopg's COPY of the rows."),
        "",
        "| round | source s | psycopg COPY s | psql \\copy s | source ÷ psycopg | source ÷ psql |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for number, r in enumerate(loads, 1):
        psql, vs = (f"{r.psql:.2f}", f"{r.source / r.psql:.2f}") if r.psql else ("-", "-")
        lines.append(f"| {number} | {r.source:.2f} | {r.psycopg:.2f} | {psql} | {r.source / r.psycopg:.2f} | {vs} |")
    lines += ["", (f"**Source ÷ psycopg COPY: {_spread(vs_psycopg)}** (median, min–max over rounds): "
                   f"{_met(median(vs_psycopg) <= LOAD_TARGET)} the target of <= {LOAD_TARGET:g}x.")]
    if vs_psql:
        lines.append(f"Source ÷ psql \\copy: {_spread(vs_psql)}.")
    if result.profile:
        lines += ["", "cProfile of one cold load (`--profile`; profiling slows Python calls, so per-call costs are inflated):",
                  "", "```", *result.profile, "```"]
    return lines + [""]


def pickup_section(result: DbResult) -> list[str]:
    rounds = result.pickups
    ratios = pickup_ratios(rounds)
    lines = [
        "## 2. Pickups: a commit picked up by `source.reload()` against `pandas.read_sql` of the whole table",
        "",
        (f"The source of section 1, held across {len(rounds)} rounds. Each round a SQL client (psycopg) commits one new "
         f"trading day for all {result.opts.indexes:,} indexes (one `INSERT ... SELECT unnest(...)`), then an update of one "
         "close 15 years back, then a delete of one close 10 years back; each is followed by a timed `reload()`. "
         "Rows: change-log rows read (`last_pickup.rows`); full: whether it had to load everything. "
         "Naive: `pandas.read_sql(\"SELECT code, trade_date, close FROM index_close\", engine)` in the same round. "
         "Change: `DataChange.between(old, new)` after the new day's pickup, what a server does next (in its loader "
         "thread, off the event loop: it hashes every changed index, to tell subscribers which ones changed); not part "
         "of the ratio."),
        "",
        ("| round | new day ms | rows | change ms | update 15 y back ms | rows | delete ms | rows | any full | read_sql s | rows "
         "| read_sql ÷ new day |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for number, r in enumerate(rounds, 1):
        full = any(p.full for p in (r.new_day, r.past_update, r.delete))
        lines.append(f"| {number} | {r.new_day.seconds * 1000:.1f} | {r.new_day.rows:,} | {r.new_day.change_seconds * 1000:.1f} "
                     f"| {r.past_update.seconds * 1000:.1f} "
                     f"| {r.past_update.rows} | {r.delete.seconds * 1000:.1f} | {r.delete.rows} | {'yes' if full else 'no'} "
                     f"| {r.naive:.2f} | {r.naive_rows:,} | {r.naive / r.new_day.seconds:.0f}x |")
    update = [r.naive / r.past_update.seconds for r in rounds]
    delete = [r.naive / r.delete.seconds for r in rounds]
    lines += [
        "",
        (f"**read_sql ÷ new-day pickup: {_spread(ratios, 0)}x** (median, min–max): {_met(median(ratios) >= PICKUP_TARGET)} "
         f"the target of >= {PICKUP_TARGET:g}x. Update 15 years back: {_spread(update, 0)}x; delete: {_spread(delete, 0)}x."),
        (f"After the rounds the snapshot kept up by pickups "
         f"{'equals' if result.consistent else '**differs from**'} a fresh full load (every index's digest)."),
        "",
    ]
    return lines


def latency_section(result: DbResult) -> list[str]:
    lines = [
        "## 3. Commit to subscriber on a running server",
        "",
        ("`python -m gql serve --workers 1` with GQL_DATABASE_URL (and a Redis of its own). A SQL client commits a new "
         "trading day for every index at a random moment (0.05–0.6 s after the previous one was seen); a "
         "graphql-transport-ws client holds `subscription { dataChanged { version } }` open, as the dashboard does. "
         "Delay: from the COMMIT's return to the arrival of the event naming the committed version (the server has "
         "taken the version up for its answers by then; p99 is the nearest rank: with fewer than 100 commits, the "
         "slowest). PostgreSQL follows commits by LISTEN/NOTIFY; MariaDB by polling the version row every "
         "GQL_DATABASE_POLL_SECONDS = 0.5 s."),
        "",
        "| database | indexes | closes | server ready s | commits | p50 ms | p99 ms | max ms | target | p99 | events | missed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for run in result.latency:
        target = LATENCY_TARGETS[run.kind]
        if run.delays:
            p50, p99, top = median(run.delays), percentile(run.delays, 0.99), max(run.delays)
            cells = f"{p50 * 1000:.0f} | {p99 * 1000:.0f} | {top * 1000:.0f} | <= {target:g} s | {_met(p99 <= target)}"
        else:
            cells = f"- | - | - | <= {target:g} s | {_met(False)}"
        lines.append(f"| {run.kind} | {run.indexes:,} | {run.rows:,} | {run.ready_seconds:.1f} | {len(run.delays) + run.missed} "
                     f"| {cells} | {run.events:,} | {run.missed} |")
    small = [r for r in result.latency if r.kind == "mariadb" and r.rows != result.rows]
    if small:
        lines += ["", (f"MariaDB holds a smaller data set ({small[0].indexes:,} indexes): the source's full load there "
                       "selects rows through SQLAlchemy and PyMySQL, in pure Python (see 'server ready'), and every commit "
                       "of a day bumps the version once per row (row-level triggers).")]
    return lines + [""]


def setup_section(result: DbResult) -> list[str]:
    fills = ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in result.fill_seconds.items())
    return [
        "## Data",
        "",
        (f"Synthetic closes (bench/dbsetup.py: a random walk per index, numpy) over {result.opts.days:,} weekdays from "
         f"{dbsetup.FIRST_DAY}, in databases created for this run and dropped after it. Filled ({fills}) after "
         "`db init` with the triggers off: PostgreSQL by binary `COPY FROM STDIN` in one transaction under "
         "`SET LOCAL session_replication_role = replica` (no change-log rows, no per-row foreign-key check), MariaDB "
         "with its insert trigger dropped and `LOAD DATA LOCAL INFILE`, then the trigger reinstalled by `init_database`. "
         "Both then raise the version and set `pruned_through` to it, so a snapshot from before the bulk load would "
         "have been loaded in full, never from a change log that lacks those rows."),
        "",
    ]


def summary(result: DbResult, link: str = "database.md") -> list[str]:
    """The section of benchmark.md: each target's ratio, with a link to the whole report."""
    lines = ["## Database source", "",
             (f"Method, every round and the data set: [{link}]({link}) (`python -m bench.db`, {result.elapsed:.0f} s). "
              f"PostgreSQL: {result.rows:,} closes ({result.opts.indexes:,} indexes x {result.opts.days:,} days)."), "",
             "| measurement | median (min–max) | target | |", "|---|---|---|---|"]
    if result.loads:
        vs_psycopg, vs_psql = load_ratios(result.loads)
        lines.append(f"| cold load ÷ psycopg COPY of the rows ({len(result.loads)} rounds) | {_spread(vs_psycopg)}x "
                     f"| <= {LOAD_TARGET:g}x | {_met(median(vs_psycopg) <= LOAD_TARGET)} |")
        if vs_psql:
            lines.append(f"| cold load ÷ psql \\copy of the rows | {_spread(vs_psql)}x | | |")
    if result.pickups:
        ratios = pickup_ratios(result.pickups)
        lines.append(f"| read_sql of the table ÷ pickup of a new day ({len(result.pickups)} rounds, "
                     f"{result.pickups[0].new_day.rows:,} log rows) | {_spread(ratios, 0)}x | >= {PICKUP_TARGET:g}x "
                     f"| {_met(median(ratios) >= PICKUP_TARGET)} |")
    for run in result.latency:
        target = LATENCY_TARGETS[run.kind]
        if run.delays:
            p99 = percentile(run.delays, 0.99)
            lines.append(f"| commit to subscriber, {run.kind} ({run.indexes:,} indexes, {len(run.delays)} commits): p50, p99 "
                         f"| {median(run.delays) * 1000:.0f} ms, {p99 * 1000:.0f} ms | p99 <= {target:g} s "
                         f"| {_met(p99 <= target and not run.missed)} |")
    return lines + [""]


def render(result: DbResult, command: str) -> str:
    from bench import report

    head = [
        "# Database source: cold load, pickups, commit to subscriber",
        "",
        f"Machine: {report.machine()}.",
        (f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `{command}`, {result.elapsed:.0f} s in all. "
         f"1-minute load average {result.load_before:.2f} before, {os.getloadavg()[0]:.2f} at the end (other work on the "
         "machine skews results; every ratio is to a baseline measured in the same round)."),
        "",
    ]
    sections = [setup_section(result), cold_load_section(result), pickup_section(result), latency_section(result),
                report.logs_section(result.logs)]
    return "\n".join(head + [line for section in sections for line in section])
