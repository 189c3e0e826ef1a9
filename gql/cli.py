"""Command line: `python -m gql serve | import | export-schema`."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from pathlib import Path

from gql.config import ConfigError, Settings


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

    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", type=Path, help="write to this file instead of standard output")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return {"serve": _serve, "import": _import, "export-schema": _export_schema}[args.command](args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from gql.data import DataError, load_store
    from gql.logs import logging_config

    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    config = logging_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    try:
        load_store(settings.data_dir)  # fail fast with a clear message, before uvicorn starts workers
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Workers are separate processes: they rebuild the settings from the same environment.
    os.environ.update({"GQL_HOST": host, "GQL_PORT": str(port), "GQL_WORKERS": str(workers)})
    uvicorn.run("gql.app:app", host=host, port=port, workers=workers, log_config=config)
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from gql.data import DataError
    from gql.importer import import_csv

    data_dir = args.data_dir or settings.data_dir
    if data_dir is None:
        print("error: say where to write: --data-dir DIR or GQL_DATA_DIR=DIR", file=sys.stderr)
        return 2
    try:
        report = import_csv(
            args.file, data_dir, args.code, args.name,
            date_column=args.date_column, close_column=args.close_column, date_format=args.date_format,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dropped = f", {report.dropped_duplicates} repeated rows dropped" if report.dropped_duplicates else ""
    print(
        f"imported {report.rows} closes of {report.code} ({report.first_date} to {report.last_date}) into {report.path}"
        f"{dropped}; read column {report.date_column!r} as dates ({report.date_format}) and {report.close_column!r} as closes"
    )
    return 0


def _export_schema(args: argparse.Namespace, settings: Settings) -> int:
    from gql.schema import schema

    sdl = schema.as_str() + "\n"
    if args.output:
        args.output.write_text(sdl, encoding="utf-8")
    else:
        sys.stdout.write(sdl)
    return 0
