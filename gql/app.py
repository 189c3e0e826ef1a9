"""The Starlette application: routes, startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL

from gql import __version__
from gql.cache import CacheConfig, CacheState, ResultCache
from gql.config import Settings
from gql.data import PriceSource
from gql.schema import Backend, Context, schema

log = logging.getLogger(__name__)


class _GraphQLApp(GraphQL):
    async def get_context(self, request: Request, response: Response | None = None) -> Context:
        return Context(request=request, backend=request.app.state.backend)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; data, Redis and the compute pool are set up when it starts."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(max_workers=settings.compute_threads, thread_name_prefix="gql-compute")
        cache = ResultCache(
            CacheConfig(
                redis_url=settings.redis_url, prefix=settings.cache_prefix, timeout=settings.redis_timeout,
                retry_seconds=settings.redis_retry_seconds, local_entries=settings.local_cache_entries,
                enabled=settings.cache_enabled,
            )
        )
        try:
            prices = await _in_pool(pool, PriceSource, settings.data_dir)
            app.state.backend = Backend(settings=settings, prices=prices, cache=cache, pool=pool)
            state = await cache.check()
            log.info(
                "serving %d indexes from %s (data version %s); cache %s",
                len(prices.store), prices.description, prices.store.version, state.value,
            )
            yield
        finally:
            await cache.close()
            pool.shutdown(wait=False, cancel_futures=True)

    async def healthz(request: Request) -> JSONResponse:
        backend: Backend = request.app.state.backend
        state = await backend.cache.check()
        store = backend.prices.store
        return JSONResponse(
            {
                "status": "ok" if state is not CacheState.DEGRADED else "degraded",
                "version": __version__,
                "cache": {
                    "state": state.value,
                    "detail": {
                        CacheState.OK: "results are cached in Redis",
                        CacheState.DEGRADED: "Redis is unreachable: results are cached in this process only",
                        CacheState.DISABLED: "caching is switched off (GQL_CACHE_ENABLED=false)",
                    }[state],
                },
                "data": {
                    "source": backend.prices.description,
                    "version": store.version,
                    "indexes": len(store),
                    "firstDate": store.first_date.isoformat(),
                    "lastDate": store.last_date.isoformat(),
                },
            }
        )

    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse("/graphql")

    graphql = _GraphQLApp(schema, graphql_ide="graphiql" if settings.graphiql else None)
    return Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/graphql", graphql, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


async def _in_pool(pool: ThreadPoolExecutor, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def __getattr__(name: str) -> Starlette:
    # `uvicorn gql.app:app` builds the app from the environment on first use, not at import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
