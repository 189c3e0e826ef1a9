"""Databases of the suite's own on the machine's PostgreSQL and MariaDB: each created for the tests that use
it, under a name no one else uses, and dropped afterwards. No other database is touched."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"


@dataclass(frozen=True)
class Database:
    kind: str  # "postgresql" or "mariadb"
    name: str

    @property
    def url(self) -> str:
        """As users write it (GQL_DATABASE_URL)."""
        if self.kind == "postgresql":
            return f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        return f"mysql://root@127.0.0.1:3306/{self.name}"

    def client(self, statement: str) -> subprocess.CompletedProcess:
        """Run SQL with the database's own command-line client, as any other client of it would."""
        if self.kind == "postgresql":
            command = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", self.name, "-v", "ON_ERROR_STOP=1", "-qAtc", statement]
        else:
            command = ["mariadb", "-h", "127.0.0.1", "-u", "root", "-D", self.name, "-N", "-B", "-e", statement]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def sql(self, statement: str) -> str:
        """`client`, which must succeed; its output."""
        done = self.client(statement)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@contextlib.contextmanager
def fresh_database(kind: str) -> Iterator[Database]:
    name = f"gql_test_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_ADMIN if kind == "postgresql" else MARIADB_ADMIN
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001  # the test fails with what to do
        pytest.fail(f"the {kind} server on this machine cannot be used for a test database ({exc}); the suite needs it running",
                    pytrace=False)
    try:
        yield Database(kind, name)
    finally:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
