"""Command line: `python -m gql serve | import | warm | refresh | export-schema`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import logging.config
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path

from gql.config import ConfigError, Settings, without_password
from gql.schema.types import CacheTarget

DEFAULT_URL = "http://127.0.0.1:8000/graphql"
TARGETS = tuple(target.value for target in CacheTarget)
# prometheus-client's multiprocess directory (gql/metrics.py): `serve` makes one when it runs several workers.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_MUTATION = "mutation($t: [CacheTarget!]) { refreshCache(targets: $t) { refreshed { target durationMs } } }"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gql", description="Cached GraphQL API for market index charts and yields.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API with uvicorn (settings from GQL_* variables)")
    serve.add_argument("--host", help="address to listen on (default: GQL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: GQL_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: GQL_WORKERS or 1)")

    imp = commands.add_parser("import", help="normalize a CSV of daily closes into the data directory")
    imp.add_argument("file", type=Path, help="CSV file with a date column and a close column")
    imp.add_argument("--code", required=True, help="index code, e.g. 000300 or HSI")
    imp.add_argument("--name", required=True, help="index name, e.g. 'CSI 300 (沪深300)'")
    imp.add_argument("--data-dir", type=Path, help="where to write (default: GQL_DATA_DIR)")
    imp.add_argument("--date-column", help="name of the date column (default: found by name)")
    imp.add_argument("--close-column", help="name of the close column (default: found by name)")
    imp.add_argument("--date-format", help="strptime format of the dates, e.g. %%m/%%d/%%y (default: detected)")

    commands.add_parser(
        "warm",
        help="compute the default variants now, in this process, into Redis (settings from GQL_* variables)",
        description="Compute the default variant of each cached field (the full daily chart of every index, "
        "this year's yields) into the Redis cache, unless it is there already. Needs no running server.",
    )

    refresh = commands.add_parser(
        "refresh",
        help="ask a running server to refresh its cache (the refreshCache mutation)",
        description="Send the refreshCache mutation to a running server. The admin token comes from --token, "
        "else GQL_ADMIN_TOKEN, else the file named by GQL_ADMIN_TOKEN_FILE.",
    )
    refresh.add_argument("--target", action="append", choices=TARGETS, help="field to refresh; repeat for several (default: all)")
    refresh.add_argument("--url", help=f"GraphQL endpoint (default: GQL_URL or {DEFAULT_URL})")
    refresh.add_argument("--token", help="admin token (prefer GQL_ADMIN_TOKEN or GQL_ADMIN_TOKEN_FILE: arguments show in ps)")
    refresh.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer (default: 300)")

    db = commands.add_parser("db", help="the database source (GQL_DATABASE_URL)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser(
        "init", help="create the tables and the change tracking (idempotent)",
        description="Create market_index, index_close and this service's change tracking (a version row, a change log "
        "and triggers) in the database GQL_DATABASE_URL names, where they are missing. Safe to run again.",
    )
    prune = db_commands.add_parser(
        "prune", help="delete old change-log rows (for a daily cron job)",
        description="Delete the change-log rows (gql_change) of all but the newest versions. A server process that "
        "still holds an older version loads the data in full instead of picking up the change: correct, only slower.",
    )
    prune.add_argument("--keep-versions", type=int, default=100_000, help="versions to keep (default: 100000)")

    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", type=Path, help="write to this file instead of standard output")

    args = parser.parse_args(argv)
    if args.command == "refresh":
        # A client of another process: the server's settings are none of its business.
        return _refresh(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    handlers = {"serve": _serve, "import": _import, "warm": _warm, "export-schema": _export_schema, "db": _db}
    return handlers[args.command](args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from gql.data import DataError
    from gql.logs import logging_config
    from gql.sources import load_store

    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    config = logging_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    try:
        if settings.database_url is None:  # a database may be away at start: the server waits for it (see /readyz)
            load_store(settings.data_dir)  # fail fast with a clear message, before uvicorn starts workers
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Workers are separate processes: they rebuild the settings from the same environment.
    os.environ.update({"GQL_HOST": host, "GQL_PORT": str(port), "GQL_WORKERS": str(workers)})
    try:
        own_metrics_dir = _metrics_directory(workers)
    except OSError as exc:
        print(f"error: no directory for the metrics of the workers ({MULTIPROC_DIR}): {exc}", file=sys.stderr)
        return 2
    try:
        # A WebSocket message (a subscribe, gql/subscriptions.py) is bounded like a request body (uvicorn's own: 16 MiB).
        uvicorn.run("gql.app:app", host=host, port=port, workers=workers, log_config=config, ws_max_size=settings.max_body_bytes)
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0


def _metrics_directory(workers: int) -> str | None:
    """Set up prometheus-client's multiprocess mode, so that one scrape of /metrics counts every worker (each one
    keeps its values in files of PROMETHEUS_MULTIPROC_DIR; gql/metrics.py adds them up). With one worker there
    is nothing to add up: the ordinary registry, unless PROMETHEUS_MULTIPROC_DIR is set.

    A directory the user names is emptied of what an earlier run left; otherwise, with several workers, a
    private one is made, and returned to be removed when the server stops. Set before any worker imports
    prometheus-client (this process has not: the app is imported by uvicorn)."""
    named = os.environ.get(MULTIPROC_DIR)
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        # Counters of processes that are gone are added to every scrape: those of a previous run must not be.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    os.environ.pop(MULTIPROC_DIR, None)  # set but empty: prometheus-client would write into the working directory
    if workers <= 1:
        return None
    own = tempfile.mkdtemp(prefix="gql-metrics-")
    os.environ[MULTIPROC_DIR] = own
    return own


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from gql.data import DataError
    from gql.importer import import_csv

    data_dir = args.data_dir or settings.data_dir
    options = {"date_column": args.date_column, "close_column": args.close_column, "date_format": args.date_format}
    if settings.database_url is not None and args.data_dir is None:
        from gql.db.write import import_into_database

        importing = partial(import_into_database, settings.database_url, names=settings.database_names(),
                            timeout=settings.database_load_timeout)
    elif data_dir is None:
        print("error: say where to write: --data-dir DIR, GQL_DATA_DIR=DIR or GQL_DATABASE_URL=URL", file=sys.stderr)
        return 2
    else:
        importing = partial(import_csv, data_dir=data_dir)
    try:
        report = importing(args.file, code=args.code, name=args.name, **options)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    new = _index_summary(report.name, report.rows, report.first_date, report.last_date)
    old = report.replaced
    if old is None:
        print(f"added {report.code} {new} as {report.destination}")
    elif isinstance(old, DataError):
        print(f"replaced an unreadable file ({old}) with {report.code} {new} in {report.destination}")
    else:
        # The code is repeated only when it changes case (T1 -> t1).
        code = "" if old.meta.code == report.code else f"{report.code} "
        was = _index_summary(old.meta.name, len(old.closes), old.first_date, old.last_date)
        print(f"replaced {old.meta.code} {was} with {code}{new} in {report.destination}")
    n = report.dropped_duplicates
    dropped = f"; {n} repeated row{'s' if n > 1 else ''} dropped" if n else ""
    print(f"read column {report.date_column!r} as dates ({report.date_format}) and {report.close_column!r} as closes{dropped}")
    return 0


def _index_summary(name: str, rows: int, first: dt.date, last: dt.date) -> str:
    """`"CSI 300" (250 rows, 2020-01-02..2020-12-31)`: an index as the import's output shows it."""
    return f"{json.dumps(name, ensure_ascii=False)} ({rows} rows, {first}..{last})"


# --- db ------------------------------------------------------------------------------------------------


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from gql.data import DataError
    from gql.db.connect import redacted
    from gql.db.write import init_database

    if settings.database_url is None:
        print("error: GQL_DATABASE_URL is not set; e.g. GQL_DATABASE_URL=postgresql://user:password@host:5432/db", file=sys.stderr)
        return 2
    if args.db_command == "prune":
        from gql.db.write import prune_changes

        if args.keep_versions < 0:
            print("error: --keep-versions must be 0 or more", file=sys.stderr)
            return 2
        try:
            deleted, through = prune_changes(settings.database_url, args.keep_versions, settings.database_load_timeout)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{redacted(settings.database_url)}: deleted {deleted} change-log rows, through version {through}")
        return 0
    try:
        tables, started = init_database(settings.database_url, settings.database_names(), settings.database_load_timeout)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = tables.names
    print(f"{redacted(settings.database_url)}: tables {n.index_table} and {n.close_table}, change tracking "
          f"(gql_data_version, gql_change, triggers) {'created' if started else 'in place (triggers reinstalled)'}")
    return 0


# --- warm ------------------------------------------------------------------------------------------


def _warm(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from gql.logs import configure

    # Warnings (Redis unreachable, a result too large to cache) go to standard error.
    configure(settings.log_level, settings.log_json)
    if not settings.cache_enabled:
        print("error: caching is switched off (GQL_CACHE_ENABLED=false): there is nothing to warm", file=sys.stderr)
        return 2
    return asyncio.run(_warm_async(settings))


async def _warm_async(settings: Settings) -> int:
    from gql.cache import CacheState
    from gql.data import DataError
    from gql.schema.types import CHART_NAMESPACE, YIELD_NAMESPACE
    from gql.service import Service

    redis_at = f"Redis at {without_password(settings.redis_url)}"
    service = Service(settings)  # Settings.from_env has checked REDIS_URL, as for every command
    try:
        try:
            await service.load()  # no watcher: the run is over in seconds
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cache = service.cache
        if await cache.check() is not CacheState.OK:
            print(_no_effect(redis_at), file=sys.stderr)
            return 1
        data = service.data
        store = data.current
        print(
            f"warming {redis_at} (key prefix {settings.cache_prefix!r}) with {len(store)} indexes from "
            f"{data.description}, data version {store.version}"
        )
        targets = list(CacheTarget)
        namespaces = {CacheTarget.INDEX_CHART: CHART_NAMESPACE, CacheTarget.YIELD_THIS_YEAR: YIELD_NAMESPACE}
        durations = [t.duration_ms for t in (await service.refresh(targets, invalidate=False)).targets]
        await cache.drain()  # values are stored after they are returned
        computed = dict(cache.computations)
        # A value can be computed and yet not stored (over GQL_CACHE_MAX_ENTRY_BYTES, a failed write):
        # a second pass finds everything in Redis, or computes again what is not there.
        await service.refresh(targets, invalidate=False)
        await cache.drain()
        if cache.state is not CacheState.OK:  # Redis went away during the run
            print(_no_effect(redis_at), file=sys.stderr)
            return 1
        unstored = []
        for target, ms in zip(targets, durations, strict=True):
            namespace = namespaces[target]
            if not computed.get(namespace):
                done = "already cached, nothing to do"
            elif cache.computations[namespace] > computed[namespace]:
                done = "computed but NOT stored in Redis (see the log)"
                unstored.append(target.value)
            else:
                done = "computed and stored"
            print(f"{target.value}: {done} ({ms:.1f} ms)")
        if unstored:
            print(f"error: {', '.join(unstored)} could not be stored; requests will compute it themselves", file=sys.stderr)
            return 1
        return 0
    finally:
        await service.close()


def _no_effect(redis_at: str) -> str:
    return (
        f"error: {redis_at} is unreachable: warming had no effect beyond this process (its in-process cache "
        "dies with it). Start Redis or set REDIS_URL, then run warm again"
    )


# --- refresh -------------------------------------------------------------------------------------


def _refresh(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("GQL_URL", "").strip() or DEFAULT_URL
    if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
        print(f"error: {url!r} is not an http:// or https:// URL; e.g. {DEFAULT_URL}", file=sys.stderr)
        return 2
    try:
        token = _admin_token(args.token)
    except OSError as exc:
        print(f"error: GQL_ADMIN_TOKEN_FILE={os.environ['GQL_ADMIN_TOKEN_FILE']!r} cannot be read: {exc.strerror}", file=sys.stderr)
        return 2
    if not token:
        print("error: no admin token: pass --token, or set GQL_ADMIN_TOKEN or GQL_ADMIN_TOKEN_FILE", file=sys.stderr)
        return 2
    targets = list(dict.fromkeys(args.target)) if args.target else None
    body = json.dumps({"query": REFRESH_MUTATION, "variables": {"t": targets}}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with _NO_REDIRECTS.open(request, timeout=args.timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "elsewhere")
            print(f"error: {url} redirects (HTTP {exc.code}) to {where}; pass the final URL with --url", file=sys.stderr)
            return 1
        status, raw = exc.code, exc.read()
    except urllib.error.URLError as exc:
        print(f"error: could not reach {url}: {exc.reason}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: {url} did not answer within {args.timeout:g} s (--timeout)", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the connection was reset
        print(f"error: could not reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(raw)
    except ValueError:
        print(f"error: {url} answered HTTP {status} with no GraphQL response; is it the /graphql endpoint?", file=sys.stderr)
        return 1
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if errors:
        for error in errors:
            code = (error.get("extensions") or {}).get("code", "no code")
            print(f"error: {error.get('message')} ({code})", file=sys.stderr)
        return 1
    try:
        refreshed = answer["data"]["refreshCache"]["refreshed"]
    except (KeyError, TypeError):
        print(f"error: {url} answered HTTP {status} without a refreshCache result", file=sys.stderr)
        return 1
    for item in refreshed:
        print(f"{item['target']}: refreshed in {item['durationMs']:.1f} ms")
    return 0


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # Following a redirect would send the admin token on to wherever it points.
    def redirect_request(self, *args, **kwargs) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def _admin_token(given: str | None) -> str | None:
    """--token, else GQL_ADMIN_TOKEN, else the contents of GQL_ADMIN_TOKEN_FILE (as the server reads them)."""
    token = (given or os.environ.get("GQL_ADMIN_TOKEN") or "").strip()
    if token:
        return token
    path = os.environ.get("GQL_ADMIN_TOKEN_FILE", "").strip()
    if path:
        return Path(path).expanduser().read_text(encoding="utf-8").strip() or None
    return None


# --- export-schema -------------------------------------------------------------------------------


def _export_schema(args: argparse.Namespace, settings: Settings) -> int:
    from gql.schema.build import build_schema

    sdl = build_schema(settings).as_str() + "\n"
    if args.output:
        args.output.write_text(sdl, encoding="utf-8")
    else:
        sys.stdout.write(sdl)
    return 0
