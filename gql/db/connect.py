"""The database URLs users have, as SQLAlchemy engines whose every call is bounded."""

from __future__ import annotations

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

# Which driver serves each scheme users write: psycopg 3 for PostgreSQL, PyMySQL for MariaDB and MySQL.
DRIVERS = {
    "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql", "mysql+pymysql": "mysql+pymysql",
}
EXAMPLES = "postgresql://user:password@host:5432/db or mysql://user:password@host:3306/db"


class DatabaseUrlError(ValueError):
    """A GQL_DATABASE_URL this service cannot use; the message says which are."""


def database_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"GQL_DATABASE_URL is not a database URL; expected e.g. {EXAMPLES}") from None
    driver = DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"GQL_DATABASE_URL names {parsed.drivername!r}, which is not served; expected e.g. {EXAMPLES} (MariaDB too)"
        )
    if not parsed.database:
        raise DatabaseUrlError(f"GQL_DATABASE_URL names no database; expected e.g. {EXAMPLES}")
    return parsed.set(drivername=driver)


def redacted(url: str | URL) -> str:
    """The URL as logs and messages show it: never the password."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a URL>"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def create(url: str, timeout: float) -> Engine:
    """An engine whose connections give up after `timeout` seconds: to connect, and per statement (a load
    raises the statement bound for itself)."""
    parsed = database_url(url)
    if parsed.drivername.startswith("postgresql"):
        connect_args: dict[str, object] = {
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
            "application_name": "gql-index-cache",
        }
    else:
        connect_args = {"connect_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout, "charset": "utf8mb4"}
    # pre_ping: a connection the database dropped (a restart) is replaced before use, not failed on.
    return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2, pool_timeout=timeout, connect_args=connect_args)


def driver_reason(exc: DBAPIError) -> str:
    """The driver's own words, first line only (never the URL: it could hold the password)."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc.orig).__name__
