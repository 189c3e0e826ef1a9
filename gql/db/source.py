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
import io
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, ProgrammingError, SQLAlchemyError

from gql.data import DataError, IndexHistory, IndexMeta, PriceStore, SourceUnavailable, make_closes
from gql.db.connect import create, driver_reason, is_postgres, redacted
from gql.db.follow import follow
from gql.db.tables import Names, Tables

log = logging.getLogger(__name__)


class DatabaseUnavailable(SourceUnavailable):
    """The database cannot be read now (unreachable, too slow, not initialized); the message says which."""


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
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    return work(conn)
        except DataError:
            raise
        except ProgrammingError as exc:  # a table missing (PostgreSQL's UndefinedTable, MySQL's 1146)
            raise DatabaseUnavailable(f"{self.description}: {driver_reason(exc)}; create the tables with `python -m gql db init`") from None
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"{self.description}: {driver_reason(exc)}") from None
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"{self.description}: {exc}") from None

    def _position(self, conn: Connection) -> Position:
        row = conn.execute(select(self.tables.version.c.instance, self.tables.version.c.version)).first()
        if row is None:
            raise DatabaseUnavailable(f"{self.description} has no change tracking yet: run `python -m gql db init`")
        return Position(row.instance, row.version)

    def _load(self, conn: Connection) -> PriceStore:
        """Everything, in this transaction."""
        position = self._position(conn)
        metas = self._metas(conn, None)
        if self.postgres:
            codes, dates, closes = self._copy_closes(conn)
        else:
            codes, dates, closes = self._select_closes(conn)
        histories = []
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.array([], dtype=int)
        ends = np.r_[starts[1:], len(codes)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            meta = metas.get(codes[start])
            if meta is not None:
                histories.append(IndexHistory(meta, make_closes(dates[start:end], closes[start:end])))
        self.position, self.last_pickup = position, Pickup(len(codes), full=True)
        if not histories:
            # Not ready rather than broken: the server waits for the first import (or ETL run).
            raise DatabaseUnavailable(f"{self.description} holds no closes yet: add some with `python -m gql import` or any SQL client")
        return PriceStore(histories, version=position.label)

    def _copy_closes(self, conn: Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PostgreSQL: COPY TO STDOUT in the same transaction, parsed by pandas' C reader."""
        t = self.tables
        raw = conn.connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]  # psycopg's connection on PostgreSQL
        cursor.execute(f"SET LOCAL statement_timeout = {int(self.load_timeout * 1000)}")
        q = conn.dialect.identifier_preparer.quote
        n = t.names
        sql = (f"COPY (SELECT {q(n.close_code)}, {q(n.close_date)}, {q(n.close_value)} FROM {q(n.close_table)} "
               f"ORDER BY {q(n.close_code)}, {q(n.close_date)}) TO STDOUT")
        buffer = io.BytesIO()
        with cursor.copy(sql) as copy:
            for chunk in copy:
                buffer.write(chunk)
        buffer.seek(0)
        frame = pd.read_csv(buffer, sep="\t", header=None, names=["code", "date", "close"],
                            dtype={"code": str, "date": str, "close": "float64"}, engine="c")
        return frame["code"].to_numpy(dtype=object), pd.to_datetime(frame["date"], format="%Y-%m-%d").to_numpy(), \
            frame["close"].to_numpy(dtype="float64")

    def _select_closes(self, conn: Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.tables
        n = t.names
        columns = t.close.c
        code, day = columns[n.close_code], columns[n.close_date]
        rows = conn.execute(select(code, day, columns[n.close_value]).order_by(code, day)).all()
        if not rows:
            return np.array([], dtype=object), np.array([], dtype="datetime64[ns]"), np.array([], dtype="float64")
        codes, dates, closes = zip(*rows, strict=True)
        return np.array(codes, dtype=object), pd.to_datetime(list(dates)).to_numpy(), np.array(closes, dtype="float64")

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
        written: dict[str, dict[pd.Timestamp, float | None]] = defaultdict(dict)
        touched: set[str] = set()
        for kind, code, day, close in rows:
            touched.add(code)
            if kind == "C":
                written[code][pd.Timestamp(day)] = close  # in commit order: the last write of a day wins
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
            if closes is None or closes.empty:
                histories.pop(code, None)
            else:
                histories[code] = IndexHistory(meta, closes)
        self.position, self.last_pickup = position, Pickup(len(rows), full=False)
        if not histories:
            raise DataError(f"{self.description} holds no closes any more")
        return PriceStore(histories.values(), version=position.label)


def _applied(closes: pd.Series | None, writes: dict[pd.Timestamp, float | None]) -> pd.Series | None:
    """`closes` with the days written set (a close) or removed (None)."""
    if not writes:
        return closes
    upserts = {day: close for day, close in writes.items() if close is not None}
    deleted = [day for day, close in writes.items() if close is None]
    new = make_closes(list(upserts), list(upserts.values())) if upserts else None
    if closes is None:
        return new.sort_index() if new is not None else None
    if not deleted and new is not None and new.index.min() > closes.index[-1]:
        return pd.concat([closes, new.sort_index()])  # the usual case: new trading days at the end
    kept = closes[~closes.index.isin(deleted + list(upserts))]
    return pd.concat([kept, new]).sort_index() if new is not None else kept
