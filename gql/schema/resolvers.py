"""The resolvers: check the arguments, ask the service for the cached value, report how it was answered."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import strawberry
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.types import Info

from gql import analytics, metrics
from gql.data import PriceStore
from gql.errors import FORBIDDEN, AuthError
from gql.schema import report
from gql.schema.arguments import chart_arguments, yield_arguments
from gql.schema.types import (
    CacheTarget,
    DataChanged,
    Frequency,
    IndexChart,
    IndexInfo,
    IndexYield,
    RefreshedField,
    RefreshResult,
)
from gql.service import Service

log = logging.getLogger("gql.schema")  # the name operators filter on (as before the split)


@dataclass
class Context:
    # The WebSocket of a subscription's connection (gql/subscriptions.py); None in a query worker process
    # (gql/workers.py), which serves only queries.
    request: Request | WebSocket | None
    service: Service
    snapshot: PriceStore  # the data of this request: every field is answered from it (for a connection: when it opened)


@strawberry.type
class Query:
    @strawberry.field(description="Every index in the data set, in data-set order.")
    async def indexes(self, info: Info) -> list[IndexInfo]:
        store = info.context.snapshot
        return [
            IndexInfo(code=h.meta.code, name=h.meta.name, source=h.meta.source, first_date=h.first_date, last_date=h.last_date)
            for h in store
        ]

    @strawberry.field(
        description="Chart data per index (cached). codes: null means all, in data-set order; start/end default to the "
        "whole history and are clipped to the data. An index with no close in the range has no series: asked for by "
        "code it is an error, and codes: null leaves it out."
    )
    async def index_chart(
        self,
        info: Info,
        codes: list[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
        frequency: Frequency = Frequency.DAILY,
    ) -> IndexChart:
        service: Service = info.context.service
        store = info.context.snapshot
        resolved, lo, hi = chart_arguments(store, codes, start, end, service.settings.max_codes)
        result = await service.chart(resolved, lo, hi, analytics.Frequency[frequency.value], store)
        report.record(info, result)
        return IndexChart.from_value(result.value)

    @strawberry.field(
        description="Year-to-date change per index (cached), within asOf's calendar year. asOf defaults to the latest "
        "date in the data; a later date in the same year means the latest close. An index with no close in that year "
        "up to asOf has no row: asked for by code it is an error, and codes: null leaves it out."
    )
    async def yield_this_year(
        self, info: Info, codes: list[str] | None = None, as_of: dt.date | None = None
    ) -> list[IndexYield]:
        service: Service = info.context.service
        store = info.context.snapshot
        resolved, date = yield_arguments(store, codes, as_of, service.settings.max_codes)
        result = await service.yields(resolved, date, store)
        report.record(info, result)
        return [IndexYield.from_value(row) for row in result.value]


def _check_admin(info: Info) -> None:
    token = info.context.service.settings.admin_token
    client = _client(info)
    if not token:
        log.warning("refreshCache refused: no admin token configured; client=%s", client)
        raise AuthError(
            "refreshCache is disabled: no admin token is configured. Start the server with GQL_ADMIN_TOKEN "
            "(or GQL_ADMIN_TOKEN_FILE) set, then send 'Authorization: Bearer <token>'",
            code=FORBIDDEN,
        )
    scheme, _, given = info.context.request.headers.get("authorization", "").partition(" ")
    # Digests of equal length compared in constant time: neither the token's length nor how much of
    # a guess matches shows in the timing. Every kind of wrong header gets the same answer.
    matches = hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest())
    if not (matches and scheme.lower() == "bearer"):
        reason = "no Authorization header" if not scheme else "not a Bearer token" if scheme.lower() != "bearer" else "wrong token"
        log.warning("refreshCache refused: %s; client=%s", reason, client)
        raise AuthError("refreshCache needs the header 'Authorization: Bearer <admin token>'; the token given is missing or wrong")


def _client(info: Info) -> str:
    client = info.context.request.client if info.context.request else None
    return client.host if client else "unknown"


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Recompute cached fields now (all when targets is null). Needs 'Authorization: Bearer <GQL_ADMIN_TOKEN>'. "
        "Loads what the data source holds first and makes every process of the fleet answer from it; afterwards "
        "no answer holds a value computed before the call, or from older data."
    )
    async def refresh_cache(self, info: Info, targets: list[CacheTarget] | None = None) -> RefreshResult:
        _check_admin(info)
        chosen = list(dict.fromkeys(targets)) if targets else list(CacheTarget)
        done = await info.context.service.refresh(chosen)
        info.context.snapshot = done.snapshot  # what the response reports as its data version
        log.warning(
            "cache refreshed: targets=%s client=%s data_version=%s durations_ms=%s coalesced=%s",
            ",".join(t.value for t in chosen), _client(info), done.snapshot.version,
            ",".join(f"{t.duration_ms:.1f}" for t in done.targets), ",".join(str(t.coalesced).lower() for t in done.targets),
        )
        return RefreshResult(
            refreshed=[RefreshedField(target=t.target, duration_ms=t.duration_ms, coalesced=t.coalesced) for t in done.targets],
            data_version=done.snapshot.version,
        )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="One event for every new data version this server process takes up from now on, whatever the data "
        "source: an import its file watcher sees, or a refreshCache made through any process of the fleet. Over "
        "WebSocket only (graphql-transport-ws at /graphql); a client that reconnects should ask again what it shows, "
        "since changes made while it was away are not replayed."
    )
    async def data_changed(self, info: Info) -> AsyncGenerator[DataChanged, None]:
        changes = info.context.service.data.changes()
        # Counted in the same step as the feed registers the listener (on the first `anext`, with no await
        # in between): a subscription in the gauge hears every change from then on.
        metrics.SUBSCRIPTIONS.inc()
        try:
            async for change in changes:
                yield DataChanged.of(change)
        finally:
            metrics.SUBSCRIPTIONS.dec()
            await changes.aclose()
