"""Where the time of one cached hit goes, in process: the real app (gql.app.create_app) on a real redis-server,
driven through its lifespan and real ASGI scope/receive/send calls, no HTTP server and no client in between.

Prints, per request:
  - the mean time of N hits (time.perf_counter around the ASGI calls, no profiler): a quick A/B measure;
  - under cProfile, the self time grouped by part of the work (middleware, request parsing, cache lookup,
    logging, metrics, request id, sending, the rest) and the functions of highest cumulative and self time.

    make profile                                                   # the small query, 5,000 hits, log level info
    .venv/bin/python -m bench.profile_hit --requests 20000 --log-level warning
    .venv/bin/python -m bench.profile_hit --log-json --repeat 5    # JSON access lines; best of 5 timed runs

The access line goes to --log-file (default /dev/null: the cost of formatting and writing it, not of a terminal).
GQL_* variables of the shell are ignored except those given with --env NAME=VALUE.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import logging.config
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.servers import redis_server

SMALL = "{ yieldThisYear { code name yieldPct baseDate baseClose lastDate lastClose } }"

# Parts of the work, by where a function is defined (the first match wins); self time is added up per part.
GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("request id", lambda file, func: file.endswith("gql/logs.py") and func in ("new_request_id",)),
    ("logging", lambda file, func: file.endswith("gql/logs.py") or "/logging/" in file),
    ("metrics", lambda file, func: file.endswith("gql/metrics.py") or "prometheus_client" in file),
    ("middleware", lambda file, func: file.endswith(("gql/middleware.py", "starlette/middleware/errors.py",
                                                      "starlette/applications.py")) or "starlette/middleware" in file),
    ("request parsing", lambda file, func: file.endswith(("gql/protocol.py", "gql/apq.py", "starlette/datastructures.py",
                                                          "urllib/parse.py")) or func in ("<built-in method orjson.loads>",)),
    ("sending", lambda file, func: file.endswith(("gql/stored.py",)) or func in ("send_response", "send_json", "send")),
    ("cache lookup", lambda file, func: "/gql/cache/" in file or file.endswith(("gql/lru.py", "gql/responses.py", "gql/feed.py",
                                                                               "gql/clock.py", "gql/asgi.py"))
                                        or "/redis/" in file or "hashlib" in func or "orjson.dumps" in func),
    ("asyncio", lambda file, func: "/asyncio/" in file or "uvloop" in file),
]


def _group(file: str, func: str) -> str:
    for name, matches in GROUPS:
        if matches(file, func):
            return name
    return "other"


_GENERIC = ("other", "asyncio")


def _attributed(entries: dict, key: tuple, seconds: float, depth: int = 0) -> dict[str, float]:
    """`seconds` of self time of the function `key`, by part: a builtin's or asyncio's time (a socket write, a
    timeout) goes to the part that called it, split by what each caller's calls took, up to a few levels up."""
    name = _group(key[0], key[2])
    callers = entries[key][4] if key in entries else {}
    edges = {caller: edge[2] for caller, edge in callers.items() if edge[2] > 0}
    if name not in _GENERIC or not edges or depth >= 6:
        return {name: seconds}
    total = sum(edges.values())
    shares: dict[str, float] = {}
    for caller, tt in edges.items():
        for part, value in _attributed(entries, caller, seconds * tt / total, depth + 1).items():
            shares[part] = shares.get(part, 0.0) + value
    return shares


class Harness:
    """The app started through its lifespan; `hit()` is one POST /graphql through the whole ASGI stack."""

    def __init__(self, app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.app, self.body = app, body
        self.scope_base = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/graphql", "raw_path": b"/graphql", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
        }
        self.status = 0
        self.sent = 0
        self._lifespan: asyncio.Task | None = None
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        async def receive() -> dict:
            return await self._to_app.get()

        async def send(message: dict) -> None:
            await self._from_app.put(message)

        self._lifespan = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self._from_app.get(), 300)
        if message["type"] != "lifespan.startup.complete":
            raise SystemExit(f"the app did not start: {message}")

    async def stop(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(self._from_app.get(), 60)
        if self._lifespan is not None:
            await asyncio.wait_for(self._lifespan, 60)

    async def hit(self) -> None:
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await asyncio.sleep(3600)  # a client that stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            else:
                self.sent += len(message.get("body", b""))

        await self.app(dict(self.scope_base, headers=list(self.scope_base["headers"])), receive, send)


async def _run(args: argparse.Namespace, redis_url: str) -> dict:
    from gql.app import create_app
    from gql.config import Settings
    from gql.logs import logging_config

    env = {"REDIS_URL": redis_url, "GQL_CACHE_PREFIX": f"profile-{uuid.uuid4().hex[:6]}", "GQL_LOG_LEVEL": args.log_level,
           "GQL_LOG_JSON": "true" if args.log_json else "false", "GQL_DATA_WATCH": "false"}
    env.update(dict(item.split("=", 1) for item in args.env))
    for name in [n for n in os.environ if n.startswith("GQL_")]:
        del os.environ[name]
    os.environ.update(env)
    settings = Settings.from_env()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))  # as `python -m gql serve` does
    log_stream = open(args.log_file, "a", encoding="utf-8")  # noqa: SIM115  # closed below
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_stream)
    app = create_app(settings)
    body = json.dumps({"query": args.query}).encode()
    headers = [(b"if-none-match", args.if_none_match.encode())] if args.if_none_match else []
    harness = Harness(app, body, headers)
    await harness.start()
    try:
        for _ in range(3):  # the miss that stores the answer, then hits that fill this process's memory
            await harness.hit()
        for _ in range(min(args.requests, 500)):  # warm-up
            await harness.hit()
        if harness.status not in (200, 304):
            raise SystemExit(f"the warm request answered {harness.status}")
        timed = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            for _ in range(args.requests):
                await harness.hit()
            timed.append((time.perf_counter() - began) / args.requests)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            await harness.hit()
        profiler.disable()
        status = harness.status
        parts = await _parts_alone(harness, args)
    finally:
        await harness.stop()
        log_stream.close()
    return {"timed": timed, "profile": profiler, "status": status, "bytes": harness.sent, "parts": parts}


async def _parts_alone(harness: Harness, args: argparse.Namespace) -> dict[str, float]:
    """The access line (gql.logs.log_request, with what a real hit passed it) and the hit's metrics
    (gql.metrics), each timed alone: seconds per request, best of --repeat runs of --requests calls."""
    import gql.middleware as middleware
    from gql import logs, metrics

    captured: dict[str, Any] = {}
    original = middleware.log_request

    def capture(scope: Any, summary: dict, seconds: float) -> None:
        captured.update(scope=scope, summary=dict(summary), seconds=seconds)
        original(scope, summary, seconds)

    middleware.log_request = capture  # for one request, to see what the middleware hands it
    try:
        await harness.hit()
    finally:
        middleware.log_request = original
    parts: dict[str, float] = {}

    def best(call: Callable[[], object]) -> float:
        runs = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            for _ in range(args.requests):
                call()
            runs.append((time.perf_counter() - began) / args.requests)
        return min(runs)

    if captured:
        scope, summary, seconds = captured["scope"], captured["summary"], captured["seconds"]
        parts["access line (log_request)"] = best(lambda: logs.log_request(scope, summary, seconds))
    fields = [entry.field for entry in captured.get("summary", {}).get("cache") or ()] or ["yieldThisYear"]

    def count_hit() -> None:  # what gql/responses.py counts for a hit
        metrics.RESPONSE_HITS.inc()
        for field in fields:
            metrics.lookup(field, "hit")

    parts[f"metrics of a hit ({len(fields)} field{'s' if len(fields) != 1 else ''})"] = best(count_hit)
    parts["request id (new_request_id)"] = best(lambda: logs.new_request_id(None))
    return parts


def report(result: dict, args: argparse.Namespace) -> str:
    n = args.requests
    stats = pstats.Stats(result["profile"])
    entries = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total_self = sum(e[2] for e in entries.values())
    groups: dict[str, float] = {}
    for key, (_, _, tt, _, _) in entries.items():
        for name, share in _attributed(entries, key, tt).items():
            groups[name] = groups.get(name, 0.0) + share
    best, spread = min(result["timed"]), max(result["timed"])
    lines = [
        f"query: {args.query}",
        f"status {result['status']}, log level {args.log_level}{' (JSON lines)' if args.log_json else ''}, {n:,} requests per run",
        "",
        f"per request, no profiler: {best * 1e6:.1f} µs (best of {len(result['timed'])} runs; worst {spread * 1e6:.1f} µs)",
        f"per request, under cProfile: {total_self / n * 1e6:.1f} µs (the profiler's overhead included)",
        "",
        "parts timed alone, no profiler, µs per request:",
        *[f"  {name:32} {seconds * 1e6:8.2f}" for name, seconds in result["parts"].items()],
        "",
        "self time by part, µs per request (under cProfile; builtins and asyncio counted in the part that called them):",
    ]
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:16} {seconds / n * 1e6:8.2f}  {seconds / total_self * 100:5.1f} %")
    for title, column in (("cumulative", 3), ("self", 2)):
        lines += ["", f"top {args.top} functions by {title} time, µs per request (calls per request):"]
        ranked = sorted(entries.items(), key=lambda kv: -kv[1][column])[: args.top]
        for (file, line, func), values in ranked:
            where = f"{_short(file)}:{line}" if line else _short(file)
            lines.append(f"  {values[column] / n * 1e6:8.2f}  ({values[1] / n:5.1f})  [{_group(file, func)}] {func}  {where}")
    return "\n".join(lines)


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", str(Path(__file__).resolve().parent.parent) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_hit", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--requests", type=int, default=5000, help="hits per timed run and under the profiler (default 5000)")
    add("--repeat", type=int, default=3, help="timed runs, the best is reported (default 3)")
    add("--query", default=SMALL, help="the GraphQL query (default: the bench's small yieldThisYear query)")
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="GQL_LOG_LEVEL: info logs the access line of every request, warning does not (default info)")
    add("--log-json", action="store_true", help="GQL_LOG_JSON=true: JSON lines")
    add("--log-file", default=os.devnull, help="where log lines go (default /dev/null)")
    add("--if-none-match", default="", help="send this If-None-Match header (the ETag, quoted, for 304 answers)")
    add("--env", action="append", default=[], metavar="NAME=VALUE", help="another setting of the app (repeatable)")
    add("--top", type=int, default=25, help="functions listed per ranking (default 25)")
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.repeat < 1:
        print("error: --requests and --repeat must be at least 1", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gql-profile-"))
    try:
        # uvicorn's loop when uvloop is installed (its "auto"), as under `python -m gql serve`.
        with redis_server(workdir) as redis_url, asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(_run(args, redis_url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
