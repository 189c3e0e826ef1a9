"""The tables of the database source and the change tracking `python -m gql db init` creates.

Data (names configurable, to use tables that already exist):

- `market_index (code primary key, name not null, source not null)`;
- `index_close (code references market_index, trade_date date, close double precision, primary key (code,
  trade_date))`, with `close > 0` checked.

Change tracking (this service's own):

- `gql_data_version`: one row. `version` goes up with every committed change of either data table, by any
  client: triggers update it in the changing transaction, so it holds the row locked until commit and
  versions become visible in order. `instance` is drawn once at `db init`, so that a recreated database
  never reuses a version that meant other data. `pruned_through`: change-log rows up to this version are gone.
- `gql_change`: what each version changed: `kind` C (a close written: `close` set; or deleted: `close`
  null), I (an index's name or source, or the index itself), R (everything: a TRUNCATE). A process that
  has seen version v reads the rows with version > v, not the whole table.

PostgreSQL: statement-level triggers with transition tables (one version per statement, one row per
changed close) and `pg_notify('gql_data', version)`, delivered on commit. MariaDB/MySQL: row-level
triggers (one version per changed row), found by polling the version row. TRUNCATE fires no trigger on
MariaDB/MySQL: delete rows instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    Double,
    Engine,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)

CHANNEL = "gql_data"  # PostgreSQL NOTIFY channel: the payload is the new version
CODE_LENGTH = 20


@dataclass(frozen=True)
class Names:
    """Where the data is: table and column names (settings GQL_DATABASE_INDEX_TABLE / GQL_DATABASE_CLOSE_TABLE
    as `table:code,name,source` and `table:code,date,close`)."""

    index_table: str = "market_index"
    index_code: str = "code"
    index_name: str = "name"
    index_source: str = "source"
    close_table: str = "index_close"
    close_code: str = "code"
    close_date: str = "trade_date"
    close_value: str = "close"

    @classmethod
    def parse(cls, index_spec: str | None, close_spec: str | None) -> Names:
        """From the two settings; ValueError saying the expected form."""
        names: dict[str, str] = {}
        for spec, prefix, columns in ((index_spec, "index", ("code", "name", "source")), (close_spec, "close", ("code", "date", "value"))):
            if not spec:
                continue
            table, sep, listed = spec.partition(":")
            parts = [p.strip() for p in listed.split(",")] if sep else []
            if not table.strip() or len(parts) != 3 or not all(parts):
                raise ValueError(f"{spec!r} is not TABLE:COLUMN,COLUMN,COLUMN, e.g. "
                                 + ("market_index:code,name,source" if prefix == "index" else "index_close:code,trade_date,close"))
            names[f"{prefix}_table"] = table.strip()
            names.update({f"{prefix}_{role}": part for role, part in zip(columns, parts, strict=True)})
        return cls(**names)


class Tables:
    """The tables as SQLAlchemy Core sees them, under the configured names."""

    def __init__(self, names: Names | None = None) -> None:
        n = self.names = names or Names()
        self.metadata = MetaData()
        self.index = Table(
            n.index_table, self.metadata,
            Column(n.index_code, String(CODE_LENGTH), primary_key=True),
            Column(n.index_name, Text, nullable=False),
            Column(n.index_source, Text, nullable=False),
        )
        self.close = Table(
            n.close_table, self.metadata,
            Column(n.close_code, String(CODE_LENGTH), nullable=False),
            Column(n.close_date, Date, nullable=False),
            Column(n.close_value, Double, nullable=False),
            PrimaryKeyConstraint(n.close_code, n.close_date),
            ForeignKeyConstraint([n.close_code], [f"{n.index_table}.{n.index_code}"]),
            CheckConstraint(f"{n.close_value} > 0", name=f"{n.close_table}_close_positive"),
        )
        self.version = Table(
            "gql_data_version", self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("instance", String(32), nullable=False),
            Column("version", BigInteger, nullable=False),
            Column("pruned_through", BigInteger, nullable=False),
        )
        self.change = Table(
            "gql_change", self.metadata,
            Column("seq", BigInteger, primary_key=True, autoincrement=True),
            Column("version", BigInteger, nullable=False, index=True),
            Column("kind", String(1), nullable=False),
            Column("code", String(CODE_LENGTH)),
            Column("trade_date", Date),
            Column("close", Double),
        )

    # --- db init ----------------------------------------------------------------------------------

    def create(self, engine: Engine) -> bool:
        """Create what is missing and (re)install the triggers; idempotent. True when the version row is new."""
        self.metadata.create_all(engine, checkfirst=True)
        with engine.begin() as conn:
            created = conn.execute(select(self.version.c.id).where(self.version.c.id == 1)).first() is None
            if created:
                conn.execute(insert(self.version).values(id=1, instance=uuid.uuid4().hex, version=0, pruned_through=0))
            for statement in self._tracking_ddl(engine):
                conn.execute(text(statement))
        return created

    def _tracking_ddl(self, engine: Engine) -> list[str]:
        q = engine.dialect.identifier_preparer.quote
        n = self.names
        close, index = q(n.close_table), q(n.index_table)
        c_code, c_date, c_value, i_code = q(n.close_code), q(n.close_date), q(n.close_value), q(n.index_code)
        if engine.dialect.name == "postgresql":
            return _postgres_ddl(close, index, c_code, c_date, c_value, i_code)
        return _mysql_ddl(close, index, c_code, c_date, c_value, i_code)


_BUMP_PG = "UPDATE gql_data_version SET version = version + 1 WHERE id = 1 RETURNING version INTO v;"


def _pg_tracking_function(name: str, kind: str, old_columns: str, new_columns: str, columns: str) -> str:
    """A statement-level trigger function: one version for the statement (none when it changed no row), one log
    row per row it removed (`old_columns`) and per row it wrote (`new_columns`), and the NOTIFY."""
    return f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF NOT EXISTS (SELECT 1 FROM gql_old) THEN RETURN NULL; END IF;
  ELSIF NOT EXISTS (SELECT 1 FROM gql_new) THEN RETURN NULL;
  END IF;
  {_BUMP_PG}
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    INSERT INTO gql_change (version, kind, {columns}) SELECT v, '{kind}', {old_columns} FROM gql_old o;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO gql_change (version, kind, {columns}) SELECT v, '{kind}', {new_columns} FROM gql_new n;
  END IF;
  PERFORM pg_notify('{CHANNEL}', v::text);
  RETURN NULL;
END $$"""


def _postgres_ddl(close: str, index: str, c_code: str, c_date: str, c_value: str, i_code: str) -> list[str]:
    statements = [
        _pg_tracking_function("gql_track_close", "C", f"o.{c_code}, o.{c_date}, NULL", f"n.{c_code}, n.{c_date}, n.{c_value}",
                              "code, trade_date, close"),
        _pg_tracking_function("gql_track_index", "I", f"o.{i_code}", f"n.{i_code}", "code"),
        f"""CREATE OR REPLACE FUNCTION gql_track_reset() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE v bigint;
BEGIN
  {_BUMP_PG}
  INSERT INTO gql_change (version, kind) VALUES (v, 'R');
  PERFORM pg_notify('{CHANNEL}', v::text);
  RETURN NULL;
END $$""",
    ]
    for table, function, prefix in ((close, "gql_track_close", "gql_close"), (index, "gql_track_index", "gql_index")):
        for event, referencing in (("INSERT", "NEW TABLE AS gql_new"), ("UPDATE", "OLD TABLE AS gql_old NEW TABLE AS gql_new"),
                                   ("DELETE", "OLD TABLE AS gql_old")):
            name = f"{prefix}_{event.lower()}"
            statements += [
                f"DROP TRIGGER IF EXISTS {name} ON {table}",
                (f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {referencing} "
                 f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"),
            ]
        statements += [
            f"DROP TRIGGER IF EXISTS {prefix}_truncate ON {table}",
            f"CREATE TRIGGER {prefix}_truncate AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION gql_track_reset()",
        ]
    return statements


def _mysql_ddl(close: str, index: str, c_code: str, c_date: str, c_value: str, i_code: str) -> list[str]:
    bump = "UPDATE gql_data_version SET version = version + 1 WHERE id = 1;"

    def log(kind: str, row: str, columns: str) -> str:
        return (f"INSERT INTO gql_change (version, kind, code, trade_date, close) "
                f"SELECT version, '{kind}', {columns} FROM gql_data_version WHERE id = 1;").replace("@", row)

    close_row = f"@.{c_code}, @.{c_date}, @.{c_value}"
    deleted_row = f"@.{c_code}, @.{c_date}, NULL"
    index_row = f"@.{i_code}, NULL, NULL"
    bodies = {
        ("gql_close", "INSERT", close): [log("C", "NEW", close_row)],
        ("gql_close", "UPDATE", close): [log("C", "OLD", deleted_row), log("C", "NEW", close_row)],
        ("gql_close", "DELETE", close): [log("C", "OLD", deleted_row)],
        ("gql_index", "INSERT", index): [log("I", "NEW", index_row)],
        ("gql_index", "UPDATE", index): [log("I", "OLD", index_row), log("I", "NEW", index_row)],
        ("gql_index", "DELETE", index): [log("I", "OLD", index_row)],
    }
    statements = []
    for (prefix, event, table), logs in bodies.items():
        name = f"{prefix}_{event.lower()}"
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW BEGIN {bump} {' '.join(logs)} END",
        ]
    return statements
