"""The data of the database benchmarks (bench/db.py): a database of their own, filled fast with synthetic closes.

- `scratch_database(kind)`: a new database `gql_bench_<random>` on the machine's PostgreSQL or MariaDB, dropped
  when the block ends. No other database is read or written.
- `synthetic(indexes, days)`: a geometric random walk per index over weekdays, made with numpy in one go.
- `fill(url, data)`: `python -m gql db init`'s tables (gql.db.write.init_database), then the closes in bulk.

Bulk loading and the change log: the triggers `db init` installs would write one change-log row per close
(5 million of them on PostgreSQL; on MariaDB one version bump per row, far slower). No snapshot exists yet
that could need them, so the closes go in with the triggers off. PostgreSQL: in one transaction,
`SET LOCAL session_replication_role = replica` (superuser; for this transaction only), then binary
`COPY FROM STDIN`. That turns off the user triggers like `ALTER TABLE ... DISABLE TRIGGER USER` would, and
also the foreign key's per-row check, which alone made the load 5x slower (64 s instead of 8 s for 5 million
rows); the codes are the ones inserted just before, in the same transaction. MariaDB: the insert trigger is
dropped, the closes go in with `LOAD DATA LOCAL INFILE`, and `init_database` runs again (it reinstalls it).
Both then raise the version and set `pruned_through` to
it: a process holding an older version (none here) would do a full load rather than trust a change log
that lacks those rows. The index rows are written with the triggers on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pymysql  # type: ignore[import-untyped]  # no stubs installed (gql uses it through SQLAlchemy only)

from gql.db.write import init_database

POSTGRES = "postgresql://postgres@127.0.0.1:5432/"
MARIADB = "mysql://root@127.0.0.1:3306/"
FIRST_DAY = "2006-01-02"  # a Monday
_PG_EPOCH = np.datetime64("2000-01-01", "D")  # binary COPY dates are days since this


@dataclass(frozen=True)
class Dataset:
    codes: list[str]
    days: pd.DatetimeIndex  # trading days (weekdays), ascending
    closes: np.ndarray  # float64, shape (len(codes), len(days))

    @property
    def rows(self) -> int:
        return self.closes.size

    def next_day(self, after: pd.Timestamp) -> pd.Timestamp:
        """The trading day after `after` (the next weekday)."""
        return after + pd.offsets.BDay(1)


def synthetic(indexes: int, days: int, seed: int = 20260101) -> Dataset:
    """Closes from 1000 moving by about 1.2 % a day, the same for the same sizes and seed."""
    rng = np.random.default_rng(seed)
    width = len(str(indexes))
    codes = [f"B{i:0{width}d}" for i in range(1, indexes + 1)]  # one length: fixed-width binary COPY rows
    trading_days = pd.bdate_range(FIRST_DAY, periods=days, name="date")
    steps = rng.standard_normal((indexes, days)) * 0.012
    closes = 1000.0 * np.exp(np.cumsum(steps, axis=1))
    return Dataset(codes, trading_days, closes)


# --- a database of our own ---------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """A new empty database on `kind` ("postgresql" or "mariadb"); yields its URL as users write it, drops it after."""
    name = f"gql_bench_{uuid.uuid4().hex[:12]}"
    _admin(kind, f"CREATE DATABASE {name}")
    try:
        yield (POSTGRES if kind == "postgresql" else MARIADB) + name
    finally:
        _admin(kind, f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "postgresql" else ""))


def _admin(kind: str, statement: str) -> None:
    if kind == "postgresql":
        with psycopg.connect(POSTGRES + "postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)  # our own text, not user input
        return
    conn = mariadb_connect(None)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


def mariadb_connect(database: str | None, **options) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", database=database, connect_timeout=5, **options)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


# --- filling it --------------------------------------------------------------------------------------


def fill(url: str, data: Dataset) -> float:
    """`db init`, the indexes, then every close in bulk (see the module docstring); returns the seconds it took."""
    began = dt.datetime.now()
    init_database(url)
    if url.startswith("postgresql"):
        _fill_postgres(url, data)
    else:
        _fill_mariadb(url, data)
    return (dt.datetime.now() - began).total_seconds()


def _fill_postgres(url: str, data: Dataset) -> None:
    # One transaction: no client ever sees closes that bypassed the triggers.
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy("COPY market_index (code, name, source) FROM STDIN") as copy:
            for code in data.codes:
                copy.write_row((code, f"Bench index {code}", "synthetic (bench/dbsetup.py)"))
        cursor.execute("SET LOCAL session_replication_role = replica")  # no triggers, no per-row foreign key check
        with cursor.copy("COPY index_close (code, trade_date, close) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            for start in range(0, len(data.codes), 50):
                copy.write(_binary_rows(data, start, start + 50))
            copy.write((-1).to_bytes(2, "big", signed=True))
        cursor.execute("SET LOCAL session_replication_role = origin")
        cursor.execute("UPDATE gql_data_version SET version = version + 1, pruned_through = version + 1 WHERE id = 1")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) index_close")  # hint bits and statistics set once, not by the first measured read


def _binary_rows(data: Dataset, first: int, last: int) -> bytes:
    """COPY BINARY tuples of indexes first..last: (code text, trade_date date, close float8), fixed width."""
    codes = data.codes[first:last]
    width = len(codes[0])
    row = np.dtype([("fields", ">i2"), ("code_len", ">i4"), ("code", f"S{width}"), ("date_len", ">i4"), ("date", ">i4"),
                    ("close_len", ">i4"), ("close", ">f8")])
    days = (data.days.values.astype("datetime64[D]") - _PG_EPOCH).astype(np.int32)
    out = np.empty((len(codes), len(days)), dtype=row)
    out["fields"], out["code_len"], out["date_len"], out["close_len"] = 3, width, 4, 8
    out["code"] = np.array(codes, dtype=f"S{width}")[:, None]
    out["date"] = days[None, :]
    out["close"] = data.closes[first:last]
    return out.tobytes()


def _fill_mariadb(url: str, data: Dataset) -> None:
    conn = mariadb_connect(database_name(url), local_infile=True, autocommit=False)
    try:
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO market_index (code, name, source) VALUES (%s, %s, %s)",
                               [(code, f"Bench index {code}", "synthetic (bench/dbsetup.py)") for code in data.codes])
            conn.commit()
            cursor.execute("DROP TRIGGER IF EXISTS gql_close_insert")
            with tempfile.TemporaryDirectory(prefix="gql-bench-db-") as workdir:
                path = Path(workdir) / "closes.tsv"
                _long_frame(data).to_csv(path, sep="\t", header=False, index=False)
                cursor.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE index_close (code, trade_date, close)")
            # MySQL assigns left to right with the new values: pruned_through gets the raised version.
            cursor.execute("UPDATE gql_data_version SET version = version + 1, pruned_through = version WHERE id = 1")
            conn.commit()
    finally:
        conn.close()
    init_database(url)  # the insert trigger back


def _long_frame(data: Dataset) -> pd.DataFrame:
    return pd.DataFrame({
        "code": np.repeat(np.array(data.codes, dtype=object), len(data.days)),
        "trade_date": np.tile(data.days.strftime("%Y-%m-%d").to_numpy(dtype=object), len(data.codes)),
        "close": data.closes.ravel(),
    })
