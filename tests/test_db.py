"""The database source on real PostgreSQL and MariaDB: `db init`, imports into the database, full loads and
incremental pickups of what any SQL client committed, and a server that follows commits on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gql.db.source import DatabaseSource
from gql.db.tables import Names
from tests.support.databases import Database, fresh_database
from tests.support.realdata import FIXTURES
from tests.support.servers import running_server
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request) -> Iterator[Database]:
    with fresh_database(request.param) as db:
        yield db


def gql_cli(db: Database, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gql", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "GQL_DATABASE_URL": db.url, **env},
    )


def initialized(db: Database) -> Database:
    done = gql_cli(db, "db", "init")
    assert done.returncode == 0, done.stderr
    return db


def seeded(db: Database) -> Database:
    """Two indexes and a few days, written by the database's own client."""
    initialized(db).sql(
        "INSERT INTO market_index (code, name, source) VALUES ('A', 'Alpha', 'etl'), ('B', 'Beta', 'etl');"
        "INSERT INTO index_close (code, trade_date, close) VALUES "
        "('A', '2024-01-02', 100), ('A', '2024-01-03', 101), ('A', '2024-01-04', 102),"
        "('B', '2024-01-02', 50), ('B', '2024-01-03', 49.5);"
    )
    return db


def closes(store, code: str) -> dict[str, float]:
    return {day.date().isoformat(): value for day, value in store[code].closes.items()}


def assert_same_as_a_full_load(source: DatabaseSource, db: Database) -> None:
    fresh = DatabaseSource(db.url)
    try:
        assert fresh.store.version == source.store.version and fresh.store.codes == source.store.codes
        assert all(fresh.store[c].digest == source.store[c].digest for c in fresh.store.codes)
    finally:
        fresh.close()


# --- db init ------------------------------------------------------------------------------------------


def test_db_init_creates_the_tables_once_and_can_run_again(database):
    first = gql_cli(database, "db", "init")
    assert first.returncode == 0, first.stderr
    assert "tables market_index and index_close, change tracking (gql_data_version, gql_change, triggers) created" in first.stdout
    assert "password" not in first.stdout
    again = gql_cli(database, "db", "init")
    assert again.returncode == 0 and "in place (triggers reinstalled)" in again.stdout
    assert database.sql("SELECT version FROM gql_data_version") == "0"


def test_the_tables_refuse_what_the_data_must_not_hold(database):
    db = seeded(database)
    for bad in ("INSERT INTO index_close VALUES ('A', '2024-02-01', 0)", "INSERT INTO index_close VALUES ('Z', '2024-02-01', 1)",
                "INSERT INTO market_index (code, name) VALUES ('C', 'no source')"):
        assert db.client(bad).returncode != 0, bad


def test_without_db_init_the_source_says_what_to_run(database):
    database.sql("CREATE TABLE unrelated (x int)")
    with pytest.raises(Exception, match="create the tables with `python -m gql db init`"):
        DatabaseSource(database.url)


def test_tables_that_exist_under_other_names_are_used_where_they_are(database):
    # The ETL's own tables, made before this service: db init leaves them as they are and tracks them.
    database.sql("CREATE TABLE indexes (ticker VARCHAR(20) PRIMARY KEY, title TEXT NOT NULL, origin TEXT NOT NULL);"
                 "CREATE TABLE daily (ticker VARCHAR(20) NOT NULL REFERENCES indexes (ticker), day DATE NOT NULL, "
                 "px DOUBLE PRECISION NOT NULL, PRIMARY KEY (ticker, day));"
                 "INSERT INTO indexes VALUES ('X', 'Ex', 'etl'); INSERT INTO daily VALUES ('X', '2024-01-02', 5)")
    names = {"GQL_DATABASE_INDEX_TABLE": "indexes:ticker,title,origin", "GQL_DATABASE_CLOSE_TABLE": "daily:ticker,day,px"}
    done = gql_cli(database, "db", "init", **names)
    assert done.returncode == 0 and "tables indexes and daily" in done.stdout, done.stderr
    source = DatabaseSource(database.url, names=Names.parse(names["GQL_DATABASE_INDEX_TABLE"], names["GQL_DATABASE_CLOSE_TABLE"]))
    try:
        assert source.store.codes == ("X",) and source.store["X"].meta.name == "Ex"
        database.sql("INSERT INTO daily VALUES ('X', '2024-01-03', 6)")
        assert closes(source.reload(), "X") == {"2024-01-02": 5.0, "2024-01-03": 6.0} and not source.last_pickup.full
    finally:
        source.close()
    assert database.sql("SELECT count(*) FROM daily") == "2"  # nothing of theirs was recreated


# --- import into the database ---------------------------------------------------------------------------


def test_import_writes_into_the_database_in_one_transaction(database):
    db = initialized(database)
    added = gql_cli(db, "import", str(FIXTURES / "sh000300.csv"), "--code", "000300", "--name", "CSI 300")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0].startswith('added 000300 "CSI 300" (3846 rows, 2005-04-08..2021-01-27) as database ')
    assert db.sql("SELECT count(*) FROM index_close WHERE code = '000300'") == "3846"
    replaced = gql_cli(db, "import", str(FIXTURES / "sh000300.csv"), "--code", "000300", "--name", "CSI 300 (沪深300)")
    assert replaced.stdout.splitlines()[0].startswith(
        'replaced 000300 "CSI 300" (3846 rows, 2005-04-08..2021-01-27) with "CSI 300 (沪深300)" (3846 rows, 2005-04-08..2021-01-27) in database'
    )
    bad = Path(db.name + ".csv")
    bad.write_text("date,close\n2020-01-02,1\n2020-01-03,-5\n")
    try:
        before = db.sql("SELECT version FROM gql_data_version")
        refused = gql_cli(db, "import", str(bad), "--code", "000300", "--name", "broken")
    finally:
        bad.unlink()
    assert refused.returncode == 1 and "line 3" in refused.stderr and "Traceback" not in refused.stderr
    assert db.sql("SELECT version FROM gql_data_version") == before
    assert db.sql("SELECT name FROM market_index") == "CSI 300 (沪深300)"


# --- snapshots and pickups ------------------------------------------------------------------------------


def test_a_pickup_reads_only_what_changed_and_equals_a_full_load(database):
    db = seeded(database)
    source = DatabaseSource(db.url)
    try:
        assert closes(source.store, "A") == {"2024-01-02": 100.0, "2024-01-03": 101.0, "2024-01-04": 102.0}
        assert not source.changed()
        # A new trading day for both indexes: two change-log rows, not the history.
        db.sql("INSERT INTO index_close VALUES ('A', '2024-01-05', 103), ('B', '2024-01-05', 51)")
        assert source.changed()
        store = source.reload()
        assert source.last_pickup is not None and (source.last_pickup.rows, source.last_pickup.full) == (2, False)
        assert closes(store, "A")["2024-01-05"] == 103.0 and closes(store, "B")["2024-01-05"] == 51.0
        assert_same_as_a_full_load(source, db)
        # Far in the past: an update, a delete, a day inserted between others; a rename; a new index.
        db.sql("UPDATE index_close SET close = 100.5 WHERE code = 'A' AND trade_date = '2024-01-02'")
        db.sql("DELETE FROM index_close WHERE code = 'B' AND trade_date = '2024-01-03'")
        db.sql("INSERT INTO index_close VALUES ('A', '2023-12-29', 99)")
        db.sql("UPDATE market_index SET name = 'Alpha Index' WHERE code = 'A'")
        db.sql("INSERT INTO market_index VALUES ('C', 'Gamma', 'etl'); INSERT INTO index_close VALUES ('C', '2024-01-05', 7)")
        store = source.reload()
        assert not source.last_pickup.full
        assert closes(store, "A") == {"2023-12-29": 99.0, "2024-01-02": 100.5, "2024-01-03": 101.0, "2024-01-04": 102.0, "2024-01-05": 103.0}
        assert closes(store, "B") == {"2024-01-02": 50.0, "2024-01-05": 51.0}
        assert store["A"].meta.name == "Alpha Index" and store.codes == ("A", "B", "C")
        assert_same_as_a_full_load(source, db)
        # An index deleted (its closes first), and a change of the key of a close.
        db.sql("DELETE FROM index_close WHERE code = 'C'; DELETE FROM market_index WHERE code = 'C'")
        db.sql("UPDATE index_close SET trade_date = '2024-01-08' WHERE code = 'B' AND trade_date = '2024-01-05'")
        store = source.reload()
        assert store.codes == ("A", "B") and closes(store, "B") == {"2024-01-02": 50.0, "2024-01-08": 51.0}
        assert_same_as_a_full_load(source, db)
    finally:
        source.close()


def test_a_version_is_one_committed_state(database):
    db = seeded(database)
    source = DatabaseSource(db.url)
    try:
        version = source.store.version
        # Rolled back: no new version, nothing to pick up.
        db.sql("BEGIN; INSERT INTO index_close VALUES ('A', '2024-01-05', 103); ROLLBACK")
        assert not source.changed() and source.reload().version == version
        # Several statements in one transaction: picked up together.
        db.sql("BEGIN; INSERT INTO index_close VALUES ('A', '2024-01-05', 103); "
               "UPDATE index_close SET close = 104 WHERE code = 'A' AND trade_date = '2024-01-05'; COMMIT")
        assert closes(source.reload(), "A")["2024-01-05"] == 104.0
        assert_same_as_a_full_load(source, db)
    finally:
        source.close()


def test_a_truncate_or_a_pruned_log_means_a_full_load(database):
    db = seeded(database)
    source = DatabaseSource(db.url)
    try:
        # The log pruned past the version this process holds: it cannot tell what changed.
        db.sql("INSERT INTO index_close VALUES ('A', '2024-01-05', 103); UPDATE gql_data_version SET pruned_through = version")
        store = source.reload()
        assert source.last_pickup.full and closes(store, "A")["2024-01-05"] == 103.0
        if db.kind == "postgresql":  # MariaDB fires no trigger on TRUNCATE (documented: delete instead)
            db.sql("TRUNCATE index_close; INSERT INTO index_close VALUES ('B', '2024-02-01', 60)")
            store = source.reload()
            assert source.last_pickup.full and store.codes == ("B",) and closes(store, "B") == {"2024-02-01": 60.0}
    finally:
        source.close()


def test_db_prune_keeps_the_newest_versions_and_a_process_behind_reloads_in_full(database):
    db = seeded(database)
    behind, current = DatabaseSource(db.url), None
    try:
        db.sql("INSERT INTO index_close VALUES ('A', '2024-01-05', 103)")
        current = DatabaseSource(db.url)
        db.sql("INSERT INTO index_close VALUES ('B', '2024-01-05', 51)")
        done = gql_cli(db, "db", "prune", "--keep-versions", "1")
        assert done.returncode == 0 and "deleted" in done.stdout and "change-log rows, through version" in done.stdout, done.stderr
        assert db.sql("SELECT count(DISTINCT version) FROM gql_change") == "1"
        assert closes(current.reload(), "B")["2024-01-05"] == 51.0 and not current.last_pickup.full
        assert closes(behind.reload(), "B")["2024-01-05"] == 51.0 and behind.last_pickup.full
        assert_same_as_a_full_load(behind, db)
    finally:
        behind.close()
        if current is not None:
            current.close()


# --- the server follows commits ---------------------------------------------------------------------------


YIELD = "{ yieldThisYear(codes: [\"A\"]) { code lastDate lastClose } }"


def ask(base: str, query: str) -> dict:
    return httpx2.post(f"{base}/graphql", json={"query": query}, timeout=30).json()


def test_the_server_answers_from_the_database_and_follows_commits_without_a_refresh(database, redis_server):
    db = seeded(database)
    with running_server(redis_server.url, GQL_DATABASE_URL=db.url) as base:
        health = httpx2.get(f"{base}/healthz", timeout=10).json()
        assert health["data"]["source"] == f"database {db.url}" and health["data"]["state"] == "ok"
        assert ask(base, YIELD)["data"]["yieldThisYear"] == [{"code": "A", "lastDate": "2024-01-04", "lastClose": 102.0}]
        before = computations(base)
        old_version = health["data"]["version"]
        db.sql("INSERT INTO index_close VALUES ('A', '2024-01-05', 103)")
        # No refreshCache: the NOTIFY (PostgreSQL) or the version poll (MariaDB) brings it (bench/ measures how fast),
        # and the default variants are computed for the new version before anyone asks (no GraphQL request meanwhile).
        version = wait_until(lambda: (v := httpx2.get(f"{base}/healthz", timeout=10).json()["data"]["version"]) != old_version and v,
                             "the new version is taken up", timeout=15)
        wait_until(lambda: all(computations(base)[f] > before[f] for f in before), "the defaults are recomputed", timeout=30)
        for query in ("{ yieldThisYear { code lastDate } }", "{ indexChart { start end } }"):
            body = ask(base, query)
            assert [e["status"] for e in body["extensions"]["cache"]] == ["HIT"] and body["extensions"]["dataVersion"] == version
        assert ask(base, YIELD)["data"]["yieldThisYear"][0]["lastDate"] == "2024-01-05"


def computations(base: str) -> dict[str, float]:
    """gql_computations_total per cached field, from /metrics."""
    counts = {"indexChart": 0.0, "yieldThisYear": 0.0}
    for line in httpx2.get(f"{base}/metrics", timeout=10).text.splitlines():
        for field in counts:
            if line.startswith(f'gql_computations_total{{field="{field}"}}'):
                counts[field] = float(line.split()[-1])
    return counts
