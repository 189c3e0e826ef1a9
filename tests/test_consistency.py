"""A consistency checker in the style of a Jepsen checker: answers follow the data, everywhere.

A writer imports a new version of the data about every 200 ms for about 10 s, through the real
importer, into a directory that two real server processes read: one with `--workers 2`, both with
query worker processes, one Redis between them. Meanwhile many readers ask mixed queries over HTTP
(whole-response hits, resolver hits, misses). Every answer is then checked:

- internally consistent: every field (the index list, the yields, the chart) and the response's
  `extensions.dataVersion` name one and the same data state;
- not stale: its state is at least the one that had landed 1 s before the request began;
- one version, one state: a data version never stands for two different data states.

The data states are told apart by their last dates: step k adds one trading day to one of the two
indexes (HSI on odd steps, HSX on even ones), so the last dates per index name the step.

The same checker runs on each data source: files written by the importer, and a PostgreSQL or MariaDB
database (a database of the test's own) written as an ETL job writes it, one committed INSERT per new day,
with the pickup bound of each (1 s for files and PostgreSQL's NOTIFY, 2 s for MariaDB's version poll).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from gql.db.connect import database_url
from gql.db.write import import_into_database, init_database
from gql.importer import import_csv
from tests.support.databases import fresh_database
from tests.support.servers import ServerProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WRITE_EVERY = 0.2
WRITE_FOR = 10.0
PICKUP_BOUND = 1.0
READERS = 8
FIRST_ROWS = 120  # of 2026 and the end of 2025: small answers, so the run is about the data, not the bytes

# Mixed queries. The first is the same text every time (answered from stored bytes after the first
# answer of each version); the chart starts vary (resolver hits and misses); yields in another order
# and a weekly chart make more keys over the same data.
_CHART_STARTS = [f"2026-01-{d:02d}" for d in range(2, 31)] + [f"2026-02-{d:02d}" for d in range(1, 28)]


def _queries(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return ("{ indexes { code lastDate } yieldThisYear { code lastDate } "
                'indexChart(start: "2026-01-01") { end series { code points { date } } } }')
    start = rng.choice(_CHART_STARTS)
    if kind == 1:
        return (f'{{ indexes {{ code lastDate }} indexChart(start: "{start}") {{ end series {{ code points {{ date }} }} }} }}')
    if kind == 2:
        return ('{ y: yieldThisYear(codes: ["HSX", "HSI"]) { code lastDate } indexes { code lastDate } '
                f'c: indexChart(codes: ["HSI", "HSX"], start: "{start}", frequency: WEEKLY) {{ series {{ code points {{ date }} }} }} }}')
    return '{ yieldThisYear(codes: ["HSI", "HSX"]) { code lastDate } indexes { code lastDate } }'


@dataclass
class Files:
    """Data landing as imports into a data directory."""

    data_dir: Path
    staging: Path

    def env(self) -> dict[str, str]:
        return {"GQL_DATA_DIR": str(self.data_dir)}

    def land(self, frame: pd.DataFrame, code: str, name: str) -> None:
        source = self.staging / f"{code}-{uuid.uuid4().hex[:6]}.csv"
        frame.to_csv(source, index=False)
        import_csv(source, self.data_dir, code, name)
        source.unlink()


@dataclass
class Database:
    """Data landing in a database: the first version imported, then each new day one committed INSERT, as an ETL
    job writes it (through its own connection, not the service's)."""

    url: str
    staging: Path
    written: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        init_database(self.url)
        self.engine = create_engine(database_url(self.url))

    def env(self) -> dict[str, str]:
        return {"GQL_DATABASE_URL": self.url}

    def land(self, frame: pd.DataFrame, code: str, name: str) -> None:
        if code not in self.written:
            source = self.staging / f"{code}.csv"
            frame.to_csv(source, index=False)
            import_into_database(self.url, source, code, name)
        else:
            with self.engine.begin() as conn:
                for _, row in frame.iloc[self.written[code]:].iterrows():
                    conn.execute(text("INSERT INTO index_close (code, trade_date, close) VALUES (:c, :d, :v)"),
                                 {"c": code, "d": row["date"], "v": float(row["close"])})
        self.written[code] = len(frame)


@dataclass
class Writer:
    """Lands step after step; records when each landing returned (the moment its data was committed)."""

    landing: Files | Database
    hsi: pd.DataFrame
    hsx: pd.DataFrame
    landed: list[tuple[float, tuple[str, str]]] = field(default_factory=list)  # (monotonic time, last dates)

    def rows(self, step: int) -> tuple[int, int]:
        return FIRST_ROWS + (step + 1) // 2, FIRST_ROWS + step // 2

    def state(self, step: int) -> tuple[str, str]:
        h, x = self.rows(step)
        return self.hsi["date"].iloc[h - 1], self.hsx["date"].iloc[x - 1]

    def write(self, step: int) -> None:
        h, x = self.rows(step)
        # Step 0 writes both files; after that each step changes one of them.
        if step == 0 or step % 2 == 1:
            self.landing.land(self.hsi.iloc[:h], "HSI", "Hang Seng Index")
        if step == 0 or step % 2 == 0:
            self.landing.land(self.hsx.iloc[:x], "HSX", "Hang Seng Index, halved")
        self.landed.append((time.monotonic(), self.state(step)))

    def required_step(self, began: float, bound: float) -> int:
        """The newest step that had landed `bound` seconds before `began` (-1: none)."""
        step = -1
        for k, (at, _) in enumerate(self.landed):
            if at <= began - bound:
                step = k
        return step


@dataclass
class Answer:
    began: float
    server: str
    query: str
    status: int
    body: dict | None
    error: str | None = None


def _states_in(body: dict) -> dict[str, set[str]]:
    """Per index code, the last dates that each part of the answer shows."""
    seen: dict[str, set[str]] = {}
    data = body.get("data") or {}
    for name, value in data.items():
        if name == "indexes" or isinstance(value, list):
            for row in value:
                seen.setdefault(row["code"], set()).add(row["lastDate"])
        elif isinstance(value, dict):  # a chart
            for series in value["series"]:
                seen.setdefault(series["code"], set()).add(series["points"][-1]["date"])
            if "end" in value:
                seen.setdefault("end", set()).add(value["end"])
    return seen


@dataclass
class Verdict:
    requests: int = 0
    versions: set[str] = field(default_factory=set)
    steps: set[int] = field(default_factory=set)
    violations: Counter = field(default_factory=Counter)
    first_bad: str | None = None

    def bad(self, kind: str, answer: Answer, detail: str) -> None:
        self.violations[kind] += 1
        if self.first_bad is None:
            self.first_bad = f"{kind}: {detail}; request to {answer.server} began at {answer.began:.3f}: {answer.query}"

    def summary(self) -> str:
        return (f"checker: {self.requests} requests, {len(self.versions)} data versions and {len(self.steps)} data states "
                f"seen, violations: {sum(self.violations.values())} {dict(self.violations)}")


def check(writer: Writer, answers: list[Answer], bound: float = PICKUP_BOUND) -> Verdict:
    verdict = Verdict()
    by_state = {state: k for k, (_, state) in enumerate(writer.landed)}
    version_state: dict[str, tuple[str, str]] = {}
    for answer in sorted(answers, key=lambda a: a.began):
        verdict.requests += 1
        if answer.status != 200 or answer.body is None or answer.body.get("errors"):
            verdict.bad("failed", answer, f"HTTP {answer.status}: {answer.error or answer.body}")
            continue
        seen = _states_in(answer.body)
        hsi, hsx = seen.get("HSI", set()), seen.get("HSX", set())
        if len(hsi) != 1 or len(hsx) != 1:
            verdict.bad("mixed", answer, f"the fields show HSI last dates {sorted(hsi)} and HSX last dates {sorted(hsx)}")
            continue
        state = (next(iter(hsi)), next(iter(hsx)))
        if "end" in seen and seen["end"] != {max(state)}:
            verdict.bad("mixed", answer, f"a chart ends on {sorted(seen['end'])} with last closes on {state}")
            continue
        step = by_state.get(state)
        if step is None:
            verdict.bad("unknown", answer, f"last dates {state} are no state the writer wrote")
            continue
        verdict.steps.add(step)
        version = (answer.body.get("extensions") or {}).get("dataVersion")
        if version is None:
            verdict.bad("no-version", answer, "the answer does not say its data version (extensions.dataVersion)")
        else:
            verdict.versions.add(version)
            if version_state.setdefault(version, state) != state:
                verdict.bad("version", answer, f"version {version} stands for {state} here and for {version_state[version]} before")
        required = writer.required_step(answer.began, bound)
        if step < required:
            verdict.bad("stale", answer, f"answered from step {step} {state}; step {required} had landed over {bound} s before")
    return verdict


def _read(servers: list[str], stop: threading.Event, out: list[Answer], seed: int) -> None:
    rng = random.Random(seed)
    with httpx2.Client(timeout=10) as client:
        while not stop.is_set():
            server, query = rng.choice(servers), _queries(rng)
            began = time.monotonic()
            try:
                response = client.post(f"{server}/graphql", json={"query": query})
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
                out.append(Answer(began, server, query, response.status_code, body))
            except (httpx2.HTTPError, ValueError) as exc:
                out.append(Answer(began, server, query, 0, None, repr(exc)))


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = pd.read_csv(FIXTURES / "HSI.csv", skipinitialspace=True)
    dates = pd.to_datetime(raw["Date"], format="%m/%d/%y")
    frame = pd.DataFrame({"date": dates.dt.strftime("%Y-%m-%d"), "close": raw["Close"]}).iloc[::-1].reset_index(drop=True)
    tail = len(frame) - (FIRST_ROWS + int(WRITE_FOR / WRITE_EVERY) + 5)
    hsi = frame.iloc[tail:].reset_index(drop=True)
    return hsi, hsi.assign(close=hsi["close"] / 2)


# The pickup bound of each source (README, docs/operations.md).
BOUNDS = {"files": PICKUP_BOUND, "postgresql": 1.0, "mariadb": 2.0}


@pytest.fixture(params=list(BOUNDS))
def landing(request, tmp_path) -> Iterator[Files | Database]:
    staging = tmp_path / "staging"
    staging.mkdir()
    if request.param == "files":
        yield Files(tmp_path / "data", staging)
        return
    with fresh_database(request.param) as db:
        landing = Database(db.url, staging)
        try:
            yield landing
        finally:
            landing.engine.dispose()


def test_answers_follow_the_data_across_a_fleet(redis_server, landing):
    bound = BOUNDS["files" if isinstance(landing, Files) else "postgresql" if landing.url.startswith("postgresql") else "mariadb"]
    hsi, hsx = _frames()
    writer = Writer(landing, hsi, hsx)
    writer.write(0)
    env = {**landing.env(), "GQL_CACHE_PREFIX": f"jepsen-{uuid.uuid4().hex[:8]}", "GQL_QUERY_PROCESSES": "1"}
    fleet = [ServerProcess(redis_server.url, env, ("--workers", "2")), ServerProcess(redis_server.url, env)]
    try:
        for server in fleet:
            server.wait_ready(time.monotonic() + 60)
        answers: list[Answer] = []
        stop = threading.Event()
        readers = [
            threading.Thread(target=_read, args=([s.base for s in fleet], stop, answers, seed), daemon=True)
            for seed in range(READERS)
        ]
        for reader in readers:
            reader.start()
        step, began = 0, time.monotonic()
        while time.monotonic() - began < WRITE_FOR:
            step += 1
            writer.write(step)
            time.sleep(max(0.0, began + step * WRITE_EVERY - time.monotonic()))
        time.sleep(bound + 0.5)  # answers after the last write must show it too
        stop.set()
        for reader in readers:
            reader.join(15)
    finally:
        for server in fleet:
            server.terminate()
        for server in fleet:
            server.reap()
    verdict = check(writer, answers, bound)
    print(f"\n{verdict.summary()}; {step} writes")
    assert verdict.requests > 200 and len(verdict.steps) > 10, verdict.summary()
    assert not verdict.violations, f"{verdict.summary()}\nfirst bad answer: {verdict.first_bad}"
