"""The data set in a database, as snapshots: a full load, then incremental pickups of what changed.

Each read is one REPEATABLE READ transaction, so a snapshot is of one version: the version row and the
rows read with it are of the same moment. A pickup reads the change-log rows after the version this
process holds (gql/db/tables.py) and applies them to its snapshot: a new trading day for 1,000 indexes
reads 1,000 rows, and an update or delete far in the past is applied where it belongs. A change log this
process cannot follow (pruned past its version, a TRUNCATE, another database) means a full load.

Every call runs in the feed's loader thread, never on the event loop, bounded by the engine's timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, ProgrammingError, SQLAlchemyError

from gql.data import DataError, IndexHistory, IndexMeta, PriceStore, SourceUnavailable
from gql.db.connect import create, driver_reason, is_postgres, redacted
from gql.db.follow import follow
from gql.db.tables import Names, Tables

log = logging.getLogger(__name__)


class DatabaseUnavailable(SourceUnavailable):
    """The database cannot be read now (unreachable, too slow, not initialized); the message says which."""


@contextlib.contextmanager
def database_errors(description: str) -> Iterator[None]:
    """A driver's or SQLAlchemy's error as DatabaseUnavailable, saying what is wrong with `description` (the
    database as messages show it: never the password)."""
    try:
        yield
    except DataError:
        raise
    except ProgrammingError as exc:  # a table missing (PostgreSQL's UndefinedTable, MySQL's 1146)
        raise DatabaseUnavailable(f"{description}: {driver_reason(exc)}; create the tables with `python -m gql db init`") from None
    except DBAPIError as exc:
        raise DatabaseUnavailable(f"{description}: {driver_reason(exc)}") from None
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"{description}: {exc}") from None


@dataclass(frozen=True)
class Position:
    """The version of the database a snapshot is of."""

    instance: str
    version: int

    @property
    def label(self) -> str:
        return f"db-{self.instance[:8]}-{self.version}"


@dataclass(frozen=True)
class Pickup:
    """What the last reload read: how many change-log rows, and whether it had to load everything."""

    rows: int
    full: bool


class DatabaseSource:
    """The current PriceStore of a database; `changed()` is one tiny query, `reload()` a pickup."""

    data_dir: Path | None = None  # no files to watch: gql/db/follow.py listens or polls instead

    def __init__(self, url: str, *, names: Names | None = None, timeout: float = 5.0, load_timeout: float = 600.0,
                 poll_seconds: float = 0.5) -> None:
        self.url = url
        self.tables = Tables(names)
        self.engine = create(url, timeout)
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.poll_seconds = poll_seconds
        self.description = f"database {redacted(url)}"
        self.postgres = is_postgres(self.engine)
        self.position: Position | None = None
        self.last_pickup: Pickup | None = None
        self.store = self._read(self._load)

    def changed(self) -> bool:
        """Whether the database holds another version than the snapshot (one indexed single-row read)."""
        return self._read(lambda conn: self._position(conn)) != self.position

    def reload(self) -> PriceStore:
        self.store = self._read(self._pickup)
        return self.store

    async def follow(self, sync: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
        """Call `sync` whenever a commit may have changed the data, until `stop` (gql/db/follow.py)."""
        await follow(self.engine.url, self.postgres, sync, stop, poll_seconds=self.poll_seconds, timeout=self.timeout)

    def close(self) -> None:
        self.engine.dispose()

    # --- reading ------------------------------------------------------------------------------------

    def _read(self, work):
        with database_errors(self.description), self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                return work(conn)

    def _position(self, conn: Connection) -> Position:
        row = conn.execute(select(self.tables.version.c.instance, self.tables.version.c.version)).first()
        if row is None:
            raise DatabaseUnavailable(f"{self.description} has no change tracking yet: run `python -m gql db init`")
        return Position(row.instance, row.version)

    def _load(self, conn: Connection) -> PriceStore:
        """Everything, in this transaction."""
        position = self._position(conn)
        metas = self._metas(conn, None)
        histories, rows = [], 0
        for code, days, values in (self._copy_closes(conn) if self.postgres else self._select_closes(conn)):
            rows += len(values)
            meta = metas.get(code)
            if meta is not None:
                histories.append(IndexHistory(meta, _series(days, values)))
        self.position, self.last_pickup = position, Pickup(rows, full=True)
        if not histories:
            # Not ready rather than broken: the server waits for the first import (or ETL run).
            raise DatabaseUnavailable(f"{self.description} holds no closes yet: add some with `python -m gql import` or any SQL client")
        return PriceStore(histories, version=position.label)

    def _copy_closes(self, conn: Connection) -> list[Closes]:
        """PostgreSQL: one row per index, its days and closes as two arrays, by binary COPY TO STDOUT in the same
        transaction. A few thousand rows instead of millions: reading each row costs Python calls in psycopg
        (5 million of them took longer than the whole load takes now), and arrays parse with numpy in one go."""
        t = self.tables
        raw = conn.connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]  # psycopg's connection on PostgreSQL
        cursor.execute(f"SET LOCAL statement_timeout = {int(self.load_timeout * 1000)}")
        q = conn.dialect.identifier_preparer.quote
        n = t.names
        code, day, close = q(n.close_code), q(n.close_date), q(n.close_value)
        # Cast to the types parsed below, whatever the columns' own (an existing table may hold numeric closes).
        sql = (f"COPY (SELECT {code}::text, array_agg({day}::date ORDER BY {day}), array_agg({close}::float8 ORDER BY {day}) "
               f"FROM {q(n.close_table)} GROUP BY {code} ORDER BY {code}) TO STDOUT (FORMAT BINARY)")
        with cursor.copy(sql) as copy:
            data = b"".join(copy)
        return list(_binary_groups(memoryview(data), self.description))

    def _select_closes(self, conn: Connection) -> list[Closes]:
        t = self.tables
        n = t.names
        columns = t.close.c
        code, day = columns[n.close_code], columns[n.close_date]
        rows = conn.execute(select(code, day, columns[n.close_value]).order_by(code, day)).all()
        if not rows:
            return []
        codes, dates, closes = zip(*rows, strict=True)
        keys = np.array(codes, dtype=object)
        days = pd.to_datetime(list(dates)).to_numpy().astype("datetime64[ns]")
        values = np.array(closes, dtype="float64")
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        return [(keys[a], days[a:b], values[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]

    def _metas(self, conn: Connection, codes: set[str] | None) -> dict[str, IndexMeta]:
        t = self.tables
        n = t.names
        c = t.index.c
        query = select(c[n.index_code], c[n.index_name], c[n.index_source])
        if codes is not None:
            query = query.where(c[n.index_code].in_(sorted(codes)))
        return {code: IndexMeta(code, name, source) for code, name, source in conn.execute(query)}

    # --- pickup -------------------------------------------------------------------------------------

    def _pickup(self, conn: Connection) -> PriceStore:
        """What changed since the snapshot's version, applied to it; everything when the log cannot tell."""
        position = self._position(conn)
        held = self.position
        if held is not None and position == held:
            return self.store
        t = self.tables.version.c
        pruned_through = conn.execute(select(t.pruned_through)).scalar_one()
        if held is None or position.instance != held.instance or pruned_through > held.version:
            return self._load(conn)
        change = self.tables.change.c
        rows = conn.execute(
            select(change.kind, change.code, change.trade_date, change.close)
            .where(change.version > held.version, change.version <= position.version)
            .order_by(change.seq)
        ).all()
        if any(kind == "R" for kind, *_ in rows):
            return self._load(conn)
        written: dict[str, dict[int, float | None]] = defaultdict(dict)  # code -> day (ns since 1970) -> close
        touched: set[str] = set()
        for kind, code, day, close in rows:
            touched.add(code)
            if kind == "C":
                written[code][pd.Timestamp(day).value] = close  # in commit order: the last write of a day wins
        histories = {h.meta.code: h for h in self.store}
        renamed = {code for kind, code, *_ in rows if kind == "I"}  # an index row inserted, updated or deleted
        metas = self._metas(conn, renamed | {c for c in touched if c not in histories})
        for code in touched:
            history = histories.get(code)
            meta = metas.get(code) or (history.meta if history is not None and code not in renamed else None)
            if meta is None:  # the index row is gone (its closes went first: the foreign key)
                histories.pop(code, None)
                continue
            closes = _applied(history.closes if history is not None else None, written.get(code, {}))
            if closes is None:
                histories.pop(code, None)
            else:
                histories[code] = IndexHistory(meta, closes)
        self.position, self.last_pickup = position, Pickup(len(rows), full=False)
        if not histories:
            raise DataError(f"{self.description} holds no closes any more")
        return PriceStore(histories.values(), version=position.label)


Closes = tuple[str, np.ndarray, np.ndarray]  # one index: its code, days (datetime64[ns]) and closes, ascending

_NS_PER_DAY = 86_400 * 10**9
_PG_EPOCH_NS = 10_957 * _NS_PER_DAY  # PostgreSQL's binary dates count days from 2000-01-01
_DATES = np.dtype([("length", ">i4"), ("value", ">i4")])  # binary array elements: a length, then the value
_FLOATS = np.dtype([("length", ">i4"), ("value", ">f8")])


def _series(days: np.ndarray, values: np.ndarray) -> pd.Series:
    """A closes series in the store's canonical form (gql.data.make_closes), from arrays already in order. Not
    copied again: every caller made them for this series (or slices of one array made for the whole load)."""
    index = pd.DatetimeIndex(days.astype("datetime64[ns]", copy=False), name="date", copy=False)
    return pd.Series(np.asarray(values, dtype="float64"), index=index, name="close", copy=False)


def _binary_groups(data: memoryview, description: str) -> Iterator[Closes]:
    """The rows of a binary COPY of (text, date[], float8[]) (the format: PostgreSQL's COPY documentation)."""
    at = 19 + struct.unpack_from(">i", data, 15)[0]  # signature (11 bytes), flags, header extension (its length, then it)
    while True:
        (fields,) = struct.unpack_from(">h", data, at)
        if fields == -1:  # the trailer
            return
        (length,) = struct.unpack_from(">i", data, at + 2)
        code = bytes(data[at + 6:at + 6 + length]).decode()
        at += 6 + length
        days, at = _binary_array(data, at, _DATES, description, code)
        values, at = _binary_array(data, at, _FLOATS, description, code)
        yield code, (days.astype("int64") * _NS_PER_DAY + _PG_EPOCH_NS).view("datetime64[ns]"), values.astype("float64")


def _binary_array(data: memoryview, at: int, dtype: np.dtype, description: str, code: str) -> tuple[np.ndarray, int]:
    """One array field at `at` (its length first): its values, and where the next field starts."""
    length, dimensions, has_nulls = struct.unpack_from(">iii", data, at)
    if has_nulls:
        raise DataError(f"{description}: index {code!r} has a close or a trade date that is NULL; every close needs both")
    count = struct.unpack_from(">i", data, at + 16)[0] if dimensions else 0
    return np.frombuffer(data, dtype, count, at + 4 + 12 + 8 * dimensions)["value"], at + 4 + length


def _applied(closes: pd.Series | None, writes: dict[int, float | None]) -> pd.Series | None:
    """`closes` with the days written set (a close) or removed (None); None when no close is left. With numpy
    arrays, not pandas operations: a new day for 1,000 indexes is 1,000 of these calls."""
    if not writes:
        return closes
    days = np.fromiter(writes, dtype="int64", count=len(writes))
    kept = np.fromiter((close is not None for close in writes.values()), dtype=bool, count=len(writes))
    values = np.fromiter((np.nan if close is None else close for close in writes.values()), dtype="float64", count=len(writes))
    old_days = closes.index.as_unit("ns").asi8 if closes is not None else np.empty(0, dtype="int64")
    old_values = closes.to_numpy(dtype="float64") if closes is not None else np.empty(0, dtype="float64")
    if kept.all() and (not old_days.size or days.min() > old_days[-1]):
        order = np.argsort(days)  # the usual case: new trading days at the end
        merged_days, merged_values = np.concatenate([old_days, days[order]]), np.concatenate([old_values, values[order]])
    else:
        stay = ~np.isin(old_days, days)
        merged_days = np.concatenate([old_days[stay], days[kept]])
        merged_values = np.concatenate([old_values[stay], values[kept]])
        order = np.argsort(merged_days, kind="stable")
        merged_days, merged_values = merged_days[order], merged_values[order]
    return _series(merged_days.view("datetime64[ns]"), merged_values) if merged_days.size else None
