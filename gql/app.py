"""The Starlette application: routes, startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from gql import __version__, metrics
from gql.cache import CacheState
from gql.config import Settings
from gql.data import SourceUnavailable
from gql.encoding import dumps
from gql.graphiql import GraphiQLFiles, graphiql_html
from gql.logs import install_record_factory
from gql.middleware import BodyLimitMiddleware, PathDispatch, RequestIdMiddleware
from gql.responses import ResponseCacheApp
from gql.schedule import parse_time_of_day, run_daily
from gql.schema.build import build_schema
from gql.schema.resolvers import Context
from gql.schema.types import CacheTarget
from gql.service import Service, purge_after_changes, warm_after_changes
from gql.subscriptions import SocketLimits, SubscriptionsHandler, WebSocketAdapter
from gql.workers import QueryWorkers

log = logging.getLogger(__name__)

# The dashboard: plain HTML, CSS and JavaScript shipped in the package, nothing from other hosts.
STATIC_DIR = Path(__file__).resolve().parent / "static"


class _GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app, for what the response layer does not answer itself (mutations, batches, GraphiQL),
    and the WebSocket of subscriptions (graphql-transport-ws, with the limits of gql/subscriptions.py)."""

    graphql_transport_ws_handler_class = SubscriptionsHandler
    websocket_adapter_class = WebSocketAdapter

    def __init__(self, service: Service, **kwargs: object) -> None:
        settings = service.settings
        super().__init__(
            build_schema(settings),
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=dt.timedelta(seconds=settings.ws_init_timeout),
            max_subscriptions_per_connection=None,  # SubscriptionsHandler's, with a code
            # Pages of the CORS origins may open the socket too (Strawberry refuses other cross-origin handshakes).
            allowed_origins=settings.cors_origin_list,
            **kwargs,  # type: ignore[arg-type]
        )
        self.service = service
        self.socket_limits = SocketLimits.of(settings)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        # For a WebSocket, once per connection: its subscriptions follow the feed, not this snapshot.
        return Context(request=request, service=self.service, snapshot=await self.service.snapshot())

    def encode_json(self, data: object) -> bytes:
        return dumps(data)

    @property
    def graphql_ide_html(self) -> str:
        # Our GraphiQL page, whose files the app serves itself (gql/graphiql.py); Strawberry's loads them from CDNs.
        return graphiql_html()


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; data, Redis and the compute pool are set up when it starts."""
    settings = settings or Settings.from_env()
    install_record_factory()

    service = Service(settings)
    workers = QueryWorkers(settings, settings.query_processes) if settings.query_processes else None
    graphql_app = _GraphQLApp(service, graphql_ide="graphiql" if settings.graphiql else None)
    graphql = ResponseCacheApp(graphql_app, graphql_app.schema, service, workers=workers)

    async def started(app: Starlette, tasks: list[asyncio.Task]) -> None:
        """What follows loading the data: Redis, warming, the workers, the schedule, following the source."""
        # A refresh made through another process is taken up when Redis tells of it, not on the next request.
        service.follow_refreshes()
        # Hits answer from this process's view of the generations while it holds its lease (gql/cache/view.py).
        service.cache.start_view()
        app.state.service = service
        app.state.responses = graphql
        cache = service.cache
        state = await cache.check()
        await cache.warm()
        # The loaded data and the imported modules are long-lived: keep them out of the collector's
        # full passes, which otherwise pause a busy server for tens of milliseconds (Python's gc.freeze).
        gc.collect()
        gc.freeze()
        if workers is not None:
            await workers.warm()
        if settings.refresh_at:
            tasks.append(asyncio.create_task(_scheduled_refresh(service)))
        if settings.data_watch:
            service.data.start()
        if settings.cache_enabled:
            tasks.append(asyncio.create_task(warm_after_changes(service), name="gql-warm-after-changes"))
        if service.purger is not None:
            tasks.append(asyncio.create_task(purge_after_changes(service), name="gql-purge-after-changes"))
        data = service.data
        log.info(
            "serving %d indexes from %s (data version %s); cache %s",
            len(data.current), data.description, data.current.version, state.value,
        )

    async def load_later(app: Starlette, tasks: list[asyncio.Task]) -> None:
        """The source is away at start (a database): retry with backoff; /readyz says why until it loads."""
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            try:
                await service.load()
            except SourceUnavailable as exc:
                if str(exc) != app.state.starting:
                    log.error("data not loaded yet, retrying every %.0f s at most: %s", 30.0, exc)
                app.state.starting = str(exc)
                continue
            except Exception as exc:  # the data itself is wrong: say so, and keep trying
                log.exception("data not loaded yet (retrying every 30 s at most)")
                app.state.starting = f"the data cannot be used: {exc}"
                continue
            app.state.starting = None
            await started(app, tasks)
            return

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: list[asyncio.Task] = []
        app.state.starting = "starting: the data is not loaded yet"
        try:
            try:
                await service.load()
            except SourceUnavailable as exc:  # files and the sample fail the start; a database is waited for
                log.error("data not loaded, retrying with backoff (/readyz answers 503 until then): %s", exc)
                app.state.starting = str(exc)
                tasks.append(asyncio.create_task(load_later(app, tasks), name="gql-load-later"))
            else:
                app.state.starting = None
                await started(app, tasks)
            yield
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(TimeoutError):  # answers still being stored get a moment, not for ever
                await asyncio.wait_for(graphql.drain(), timeout=5.0)
            if workers is not None:
                workers.close()
            await service.close()

    async def healthz(request: Request) -> JSONResponse:
        service: Service | None = getattr(request.app.state, "service", None)
        if service is None:
            reason = getattr(request.app.state, "starting", None) or "starting: the data is not loaded yet"
            return JSONResponse({"status": "starting", "process": os.getpid(), "data": {"state": "unavailable", "problem": reason}},
                                status_code=503, headers={"retry-after": "5"})
        state = await service.cache.check()
        data = service.data
        store = data.current
        # A database that went away: answers go on from the last snapshot, and this says so.
        source_state = "degraded" if data.problem and data.follows_a_database else "ok"
        return JSONResponse(
            {
                "status": "ok" if state is not CacheState.DEGRADED and source_state == "ok" else "degraded",
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
                    "state": source_state,
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
        service: Service | None = getattr(request.app.state, "service", None)
        if service is None:
            reason = getattr(request.app.state, "starting", None) or "starting: the data is not loaded yet"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"retry-after": "5"})
        state = await service.cache.check()
        store = service.data.current
        return JSONResponse({
            "ready": True,
            "process": os.getpid(),
            "data": {"source": service.data.description, "version": store.version, "indexes": len(store),
                     "lastDate": store.last_date.isoformat()},
            "cache": state.value,
        })

    async def metrics_endpoint(request: Request) -> Response:
        await request.app.state.service.cache.check()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

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
            Mount("/static/graphiql", GraphiQLFiles(), name="graphiql"),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    return app


async def _scheduled_refresh(service: Service) -> None:
    settings = service.settings

    async def job(slot: dt.datetime) -> None:
        # Every worker process of the fleet wakes up; the first to claim the slot refreshes.
        raw = service.cache.raw
        if not await raw.claim(raw.keys.scheduled_refresh(slot.isoformat()), 3600):
            return
        done = await service.refresh(list(CacheTarget))
        log.warning("scheduled refresh for %s done: data_version=%s durations_ms=%s", slot.isoformat(), done.snapshot.version,
                    ",".join(f"{t.duration_ms:.1f}" for t in done.targets))

    await run_daily(parse_time_of_day(settings.refresh_at), ZoneInfo(settings.timezone), job)


def __getattr__(name: str) -> Starlette:
    # `uvicorn gql.app:app` builds the app from the environment on first use, not at import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
