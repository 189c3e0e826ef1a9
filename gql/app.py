"""The Starlette application: routes, startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import time
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from gql import __version__
from gql.cache import CacheState, ResultCache, cache_config
from gql.config import Settings
from gql.feed import DataFeed
from gql.logs import (
    REQUEST_ID_HEADER,
    access_log,
    install_record_factory,
    log_request,
    new_request_id,
    request_id,
    request_summary,
)
from gql.responses import SNAPSHOT_SCOPE_KEY, ResponseCacheApp, record_result, replaying
from gql.schedule import parse_time_of_day, run_daily
from gql.schema import CACHED_FIELDS, Backend, CacheTarget, Context, build_schema, refresh
from gql.workers import QueryWorkers

log = logging.getLogger(__name__)

# The dashboard: plain HTML, CSS and JavaScript shipped in the package, nothing from other hosts.
STATIC_DIR = Path(__file__).resolve().parent / "static"


class _GraphQLApp(GraphQL):
    async def get_context(self, request: Request, response: Response | None = None) -> Context:
        backend: Backend = request.app.state.backend
        # The snapshot the response layer took for this request (it named it in the cache key).
        snapshot = request.scope.get(SNAPSHOT_SCOPE_KEY) or backend.feed.current
        return Context(request=request, backend=backend, snapshot=snapshot)

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        record_result(request.scope, bool(result.errors), response)
        return response

    def encode_json(self, data: object) -> bytes:
        # Chart responses are megabytes of floats: orjson encodes them several times faster than json.
        try:
            return orjson.dumps(data)
        except TypeError:
            # orjson refuses lone surrogates, which graphql-core may echo from a variable into an error.
            return json.dumps(data, separators=(",", ":")).encode()


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; data, Redis and the compute pool are set up when it starts."""
    settings = settings or Settings.from_env()
    install_record_factory()

    cache = ResultCache(cache_config(settings))
    workers = QueryWorkers(settings, settings.query_processes) if settings.query_processes else None

    def feed() -> DataFeed:
        return app.state.backend.feed

    graphql = ResponseCacheApp(
        _GraphQLApp(build_schema(settings), graphql_ide="graphiql" if settings.graphiql else None),
        cache, feed, CACHED_FIELDS, workers=workers,
        enabled=settings.response_cache, max_entry_bytes=settings.cache_max_entry_bytes, memory_bytes=settings.response_memory_bytes, apq_ttl=settings.apq_ttl,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(max_workers=settings.compute_threads, thread_name_prefix="gql-compute")
        tasks: list[asyncio.Task] = []
        data: DataFeed | None = None
        try:
            data = await DataFeed.open(settings.data_dir)
            app.state.backend = Backend(settings=settings, feed=data, cache=cache, pool=pool)
            app.state.responses = graphql
            state = await cache.check()
            await cache.warm()
            # The loaded data and the imported modules are long-lived: keep them out of the collector's
            # full passes, which otherwise pause a busy server for tens of milliseconds (Python's gc.freeze).
            gc.collect()
            gc.freeze()
            if workers is not None:
                await workers.warm()
            if settings.refresh_at:
                tasks.append(asyncio.create_task(_scheduled_refresh(app.state.backend, settings)))
            if settings.data_watch:
                data.start()
            log.info(
                "serving %d indexes from %s (data version %s); cache %s",
                len(data.current), data.description, data.current.version, state.value,
            )
            yield
        finally:
            for task in tasks:
                task.cancel()
            if data is not None:
                await data.close()
            await graphql.drain()
            # Recomputations and stores under way get a moment to finish; close() cancels the rest.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cache.drain(), timeout=2.0)
            if workers is not None:
                workers.close()
            await cache.close()
            pool.shutdown(wait=False, cancel_futures=True)

    async def healthz(request: Request) -> JSONResponse:
        backend: Backend = request.app.state.backend
        state = await backend.cache.check()
        data = backend.feed
        store = data.current
        return JSONResponse(
            {
                "status": "ok" if state is not CacheState.DEGRADED else "degraded",
                "version": __version__,
                "process": os.getpid(),
                "cache": {
                    "state": state.value,
                    "detail": {
                        CacheState.OK: "results are cached in Redis",
                        CacheState.DEGRADED: "Redis is unreachable: results are cached in this process only",
                        CacheState.DISABLED: "caching is switched off (GQL_CACHE_ENABLED=false)",
                    }[state],
                },
                "data": {
                    "source": data.description,
                    "version": store.version,
                    "indexes": len(store),
                    "firstDate": store.first_date.isoformat(),
                    "lastDate": store.last_date.isoformat(),
                    # Why the latest change of the data could not be loaded (the version above is still served).
                    "problem": data.problem,
                },
            }
        )

    async def readyz(request: Request) -> JSONResponse:
        """Ready once the data is loaded; Redis being away makes the cache degraded, not the service unready."""
        backend: Backend | None = getattr(request.app.state, "backend", None)
        if backend is None:
            return JSONResponse({"ready": False, "reason": "starting: the data is not loaded yet"}, status_code=503)
        state = await backend.cache.check()
        store = backend.feed.current
        return JSONResponse({
            "ready": True,
            "process": os.getpid(),
            "data": {"source": backend.feed.description, "version": store.version, "indexes": len(store),
                     "lastDate": store.last_date.isoformat()},
            "cache": state.value,
        })

    async def metrics_endpoint(request: Request) -> Response:
        await request.app.state.backend.cache.check()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def home(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    middleware = [Middleware(RequestIdMiddleware)]
    if settings.trusted_host_list != ["*"]:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_host_list))
    if settings.cors_origin_list:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Age", "ETag"],
                max_age=600,
            )
        )
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    # /graphql is dispatched before Starlette's router: a cached answer is the hot path, and each layer
    # it skips is time the ceiling (a bare endpoint returning stored bytes) does not spend either.
    middleware.append(Middleware(PathDispatch, path="/graphql", endpoint=graphql))
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    return app


_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class PathDispatch:
    """Send requests for one path straight to its ASGI endpoint; anything else to the app."""

    def __init__(self, app: ASGIApp, path: str, endpoint: ASGIApp) -> None:
        self.app = app
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            if scope["method"] not in ("GET", "POST"):
                await PlainTextResponse("Method Not Allowed", 405, headers={"Allow": "GET, POST"})(scope, receive, send)
                return
            await self.endpoint(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Give each request an id (the `X-Request-ID` header, every log line it causes) and log one line for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        incoming = _header(scope, _REQUEST_ID_BYTES)
        rid = new_request_id(incoming.decode("latin-1") if incoming else None)
        token = request_id.set(rid)
        summary: dict = {"status": 500}
        summary_token = request_summary.set(summary)
        header = (_REQUEST_ID_BYTES, rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
                summary["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                log_request(scope, summary, time.perf_counter() - began)
            request_summary.reset(summary_token)
            request_id.reset(token)


class BodyLimitMiddleware:
    """Answer 413 to a request body over the limit, before the app reads or parses any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # the server delivers no more than the declared length
            return
        # Read the body here (it is at most max_bytes) so that a body without a length is bounded too.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, replaying(receive, b"".join(chunks)), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"errors": [{"message": f"request body is larger than {self.max_bytes} bytes, the limit",
                         "extensions": {"code": "PAYLOAD_TOO_LARGE"}}]},
            status_code=413,
        )
        await response(scope, receive, send)


async def _scheduled_refresh(backend: Backend, settings: Settings) -> None:
    async def job(slot: dt.datetime) -> None:
        # Every worker process of the fleet wakes up; the first to claim the slot refreshes.
        if not await backend.cache.claim(backend.cache.key("scheduled-refresh", slot.isoformat()), 3600):
            return
        store, done = await refresh(backend, list(CacheTarget))
        log.warning("scheduled refresh for %s done: data_version=%s durations_ms=%s", slot.isoformat(), store.version,
                    ",".join(f"{d:.1f}" for d, _ in done))

    await run_daily(parse_time_of_day(settings.refresh_at), ZoneInfo(settings.timezone), job)


def __getattr__(name: str) -> Starlette:
    # `uvicorn gql.app:app` builds the app from the environment on first use, not at import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
