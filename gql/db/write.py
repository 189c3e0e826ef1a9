"""Writing to the database: `python -m gql db init`, and `python -m gql import` with GQL_DATABASE_URL set.

An import is one transaction: what the database held for the code (in any case) is read, then replaced
by the file's index and closes. A refused import (a bad file, a database that refuses a row) changes
nothing. Any SQL client may write the same tables; the triggers track every change alike.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gql.data import IndexHistory, IndexMeta, make_closes
from gql.db.connect import create, redacted
from gql.db.source import DatabaseUnavailable, database_errors
from gql.db.tables import Names, Tables
from gql.importer import ImportReport, import_report, prepare_import

_BATCH = 5000  # closes per INSERT statement


def init_database(url: str, names: Names | None = None, timeout: float = 30.0) -> tuple[Tables, bool]:
    """Create the tables and change tracking where missing (idempotent); True when tracking starts now."""
    engine = create(url, timeout)
    try:
        tables = Tables(names)
        return tables, _guarded(url, lambda: tables.create(engine))
    finally:
        engine.dispose()


def prune_changes(url: str, keep_versions: int, timeout: float = 60.0) -> tuple[int, int]:
    """Delete change-log rows of all but the last `keep_versions` versions; (rows deleted, pruned through).
    A process still holding an older version then loads in full: correct, only slower."""
    engine = create(url, timeout)
    tables = Tables()
    version = tables.version.c

    def prune() -> tuple[int, int]:
        with engine.begin() as conn:
            current, pruned = conn.execute(select(version.version, version.pruned_through).with_for_update()).one()
            through = max(pruned, current - keep_versions)
            deleted = conn.execute(delete(tables.change).where(tables.change.c.version <= through)).rowcount
            conn.execute(update(tables.version).values(pruned_through=through))
            return deleted, through

    try:
        return _guarded(url, prune)
    finally:
        engine.dispose()


def import_into_database(url: str, path: Path, code: str, name: str, *, names: Names | None = None, timeout: float = 60.0,
                         **options: str | None) -> ImportReport:
    history, parsed = prepare_import(path, code, name, **options)
    engine = create(url, timeout)
    try:
        tables = Tables(names)
        replaced = _guarded(url, lambda: _replace(engine, tables, history))
    finally:
        engine.dispose()
    return import_report(history, parsed, replaced, destination=f"database {redacted(url)}")


def _guarded(url: str, work):
    with database_errors(f"database {redacted(url)}"):
        return work()


def _replace(engine: Engine, tables: Tables, history: IndexHistory) -> IndexHistory | None:
    n, index, close = tables.names, tables.index, tables.close
    code = history.meta.code
    with engine.begin() as conn:
        if conn.execute(select(tables.version.c.id)).first() is None:
            raise DatabaseUnavailable(f"database {redacted(engine.url)} has no tables for this service yet: run `python -m gql db init`")
        # Codes are one index whatever their case: T1 then t1 replaces T1.
        existing = conn.execute(
            select(index.c[n.index_code], index.c[n.index_name], index.c[n.index_source])
            .where(func.lower(index.c[n.index_code]) == code.lower()).with_for_update()
        ).first()
        replaced = _history(conn, tables, IndexMeta(*existing)) if existing is not None else None
        if existing is not None:
            conn.execute(delete(close).where(close.c[n.close_code] == existing[0]))
            if existing[0] != code:
                conn.execute(delete(index).where(index.c[n.index_code] == existing[0]))
                existing = None
        values = {n.index_code: code, n.index_name: history.meta.name, n.index_source: history.meta.source}
        if existing is None:
            conn.execute(insert(index).values(values))
        else:
            conn.execute(update(index).where(index.c[n.index_code] == code).values(values))
        rows = [
            {n.close_code: code, n.close_date: day.date(), n.close_value: value}
            for day, value in zip(history.closes.index, history.closes.to_numpy(dtype="float64").tolist(), strict=True)
        ]
        for start in range(0, len(rows), _BATCH):
            conn.execute(insert(close), rows[start:start + _BATCH])
    return replaced


def _history(conn: Connection, tables: Tables, meta: IndexMeta) -> IndexHistory | None:
    n, close = tables.names, tables.close
    rows = conn.execute(
        select(close.c[n.close_date], close.c[n.close_value]).where(close.c[n.close_code] == meta.code).order_by(close.c[n.close_date])
    ).all()
    if not rows:
        return None
    days, values = zip(*rows, strict=True)
    return IndexHistory(meta, make_closes(days, values))
