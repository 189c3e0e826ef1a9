"""GraphQL types and resolvers: argument checking, cache lookups, shaping cached values for GraphQL."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import enum
import hashlib
import hmac
import logging
import time
from zoneinfo import ZoneInfo
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from dataclasses import dataclass
from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from strawberry.extensions import DisableIntrospection, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from gql import analytics
from gql.cache import CacheResult, CacheStatus, ComputationError, ResultCache
from gql.columns import ColumnarExecutionContext, ColumnarList
from gql.config import Settings
from gql.data import PriceStore
from gql.feed import DATA_EPOCH, DataFeed
from gql.errors import COMPUTATION_FAILED, FORBIDDEN, ApiError, AuthError, ErrorPolicy, UserInputError, is_unexpected
from gql.logs import request_id
from gql.limits import limit_extensions
from gql.schedule import parse_time_of_day, seconds_until_publication
from gql.versions import CODE_VERSION

log = logging.getLogger(__name__)

CHART_NAMESPACE = "indexChart"
YIELD_NAMESPACE = "yieldThisYear"


# --- what resolvers work with -------------------------------------------------------------------


@dataclass
class Backend:
    """What the resolvers need: settings, the data feed, the cache and the pool for pandas work.

    Resolvers read the data from their request's snapshot (`Context.snapshot`), never from the feed.
    The feed is None in a query worker process, which gets its snapshots from the server.
    """

    settings: Settings
    feed: DataFeed | None
    cache: ResultCache
    pool: Executor

    def ttl(self, fixed: float) -> float:
        """How long a result stays fresh: `fixed` seconds, or until the next data publication."""
        settings = self.settings
        if not settings.ttl_until_publication:
            return fixed
        return seconds_until_publication(
            dt.datetime.now(dt.timezone.utc), parse_time_of_day(settings.publication_time), ZoneInfo(settings.timezone)
        )

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU-bound work in the pool, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args))

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a computation of a cached result in the pool (with the configured fault injection)."""
        settings = self.settings
        if settings.fault_compute_delay or settings.fault_compute_fail_file:
            return await self.run(_with_faults, settings.fault_compute_delay, settings.fault_compute_fail_file, fn, *args)
        return await self.run(fn, *args)


class InjectedFault(RuntimeError):
    """Raised by computations while GQL_FAULT_COMPUTE_FAIL_FILE exists (drills and tests)."""


def _with_faults(delay: float, fail_file: Path | None, fn: Callable[..., Any], *args: Any) -> Any:
    if delay:
        time.sleep(delay)  # in a pool thread, like the computation it stands for
    if fail_file is not None and fail_file.exists():
        raise InjectedFault(f"injected failure: {fail_file} exists")
    return fn(*args)


@dataclass
class Context:
    request: Request | None  # None in a query worker process (gql/workers.py), which serves only queries
    backend: Backend
    snapshot: PriceStore  # the data of this request: every field is answered from it


# The cache entries of the operation being executed. A context variable rather than a Context
# attribute: the operations of a batch share one Context but each runs in its own task.
_cache_report: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("cache_report", default=None)


def _report(info: Info, result: CacheResult) -> None:
    path = ".".join(str(p) for p in info.path.as_list())
    report = _cache_report.get()
    if report is None:
        return
    entry = {
        "path": path,
        "field": info.field_name,
        "status": result.status.value,
        "ageSeconds": round(result.age_seconds, 3),
        "ttlSeconds": round(result.ttl_seconds, 3),
    }
    if result.error is not None:
        entry["error"] = f"recomputing failed ({result.error}); this is the last good value, kept by the fail-safe"
    report.append(entry)


class CacheReportExtension(SchemaExtension):
    """Puts one `extensions.cache` entry per cached field into every response, in query order, and
    `extensions.dataVersion`: the version of the data that every field of the response comes from."""

    def on_operation(self):
        token = _cache_report.set([])
        yield
        self._report = _cache_report.get() or []
        _cache_report.reset(token)

    def get_results(self) -> dict[str, Any]:
        report = list(getattr(self, "_report", None) or _cache_report.get() or [])
        result = self.execution_context.result
        data = getattr(result, "data", None)
        if isinstance(data, dict):
            order = {name: i for i, name in enumerate(data)}
            report.sort(key=lambda entry: order.get(entry["path"].split(".")[0], len(order)))
        return {"cache": report, "dataVersion": self.execution_context.context.snapshot.version}


# --- types --------------------------------------------------------------------------------------


@strawberry.enum(description="Spacing of chart points: every trading day, or the last close of each week or month.")
class Frequency(enum.Enum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


@strawberry.enum(description="A cached field that refreshCache can recompute.")
class CacheTarget(enum.Enum):
    INDEX_CHART = "INDEX_CHART"
    YIELD_THIS_YEAR = "YIELD_THIS_YEAR"


@strawberry.type(description="A market index in the data set.")
class IndexInfo:
    code: str
    name: str
    source: str = strawberry.field(description="Where the prices come from: the synthetic sample or an imported file.")
    first_date: dt.date
    last_date: dt.date


@strawberry.type(description="One chart point.")
class PricePoint:
    date: dt.date
    close: float
    normalized: float = strawberry.field(description="Close relative to the first point of the range, which is 100.")
    drawdown: float = strawberry.field(description="Percent below the highest point so far in the range (<= 0).")


@strawberry.type(description="One index's chart over the range.")
class IndexSeries:
    code: str
    name: str
    total_return: float = strawberry.field(description="Percent change from the first point to the last.")
    annualized_volatility: float = strawberry.field(
        description="Standard deviation of daily log returns in the range x sqrt(252), in percent; 0 with fewer than three closes."
    )
    max_drawdown: float = strawberry.field(description="Lowest drawdown of the points, in percent (<= 0).")
    _value: strawberry.Private[dict[str, Any]]

    @strawberry.field(description="Points in date order.")
    def points(self) -> list[PricePoint]:
        v = self._value
        columns = {"date": v["dates"], "close": v["close"], "normalized": v["normalized"], "drawdown": v["drawdown"]}
        return ColumnarList(columns, _price_point)  # type: ignore[return-value]  # completed as a list, see gql.columns


def _price_point(date: str, close: float, normalized: float, drawdown: float) -> PricePoint:
    return PricePoint(date=dt.date.fromisoformat(date), close=close, normalized=normalized, drawdown=drawdown)


@strawberry.type(description="Chart data of several indexes over one range.")
class IndexChart:
    frequency: Frequency
    start: dt.date = strawberry.field(description="First day of the range (the argument, or the first data of the indexes).")
    end: dt.date = strawberry.field(description="Last day of the range (the argument, or the last data of the indexes).")
    series: list[IndexSeries]


@strawberry.type(description="Change of an index since the last close of the previous calendar year.")
class IndexYield:
    code: str
    name: str
    yield_pct: float = strawberry.field(description="Percent change from baseClose to lastClose (-8.08 means -8.08 %).")
    base_date: dt.date
    base_close: float
    last_date: dt.date = strawberry.field(
        description="Date of the last close on or before asOf (earlier when the index's data ends before asOf)."
    )
    last_close: float
    base_is_first_close_of_year: bool = strawberry.field(
        description="True when the index has no close in the previous year, so the base is its first close of this year."
    )


@strawberry.type
class RefreshedField:
    target: CacheTarget
    duration_ms: float
    coalesced: bool = strawberry.field(
        description="True when this call joined a refresh of the same data already under way (one recomputation for both)."
    )


@strawberry.type
class RefreshResult:
    refreshed: list[RefreshedField]
    data_version: str = strawberry.field(
        description="The data version the fields were recomputed from: what the data source held when the call began."
    )


# --- argument checking --------------------------------------------------------------------------


def resolve_codes(store: PriceStore, codes: Sequence[str] | None, max_codes: int = 100) -> tuple[str, ...]:
    """Codes to answer for, in the order asked; null means every index in data-set order."""
    if codes is None:
        return store.codes
    if not codes:
        raise UserInputError("codes is an empty list; pass null (or leave it out) for all indexes, or name some")
    if len(codes) > max_codes:
        raise UserInputError(f"{len(codes)} codes asked for; the limit is {max_codes} per field")
    known = {code.upper(): code for code in store.codes}
    resolved, unknown, seen = [], [], set()
    for raw in codes:
        # ASCII only: str.upper() maps lookalikes such as 'ſ' (long s) onto ASCII letters.
        typed = raw.strip()
        code = known.get(typed.upper()) if typed.isascii() else None
        if code is None:
            unknown.append(raw)
        elif code in seen:
            raise UserInputError(f"index code {raw!r} is asked for twice; list each code once")
        else:
            seen.add(code)
            resolved.append(code)
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise UserInputError(f"unknown index code{'s' if len(unknown) > 1 else ''} {names}; known codes: {', '.join(store.codes)}")
    return tuple(resolved)


def resolve_range(
    store: PriceStore, codes: Sequence[str], start: dt.date | None, end: dt.date | None
) -> tuple[dt.date, dt.date]:
    """The range to chart: the given bounds clipped to the data of these indexes (or the whole of it)."""
    if start is not None and end is not None and start > end:
        raise UserInputError(f"start {start} is after end {end}; start must be on or before end")
    first = min(store[c].first_date for c in codes)
    last = max(store[c].last_date for c in codes)
    lo = first if start is None else max(start, first)
    hi = last if end is None else min(end, last)
    if lo > hi:
        raise UserInputError(f"the range {start or first} to {end or last} holds no data; the data runs from {first} to {last}")
    empty = [c for c in codes if store[c].last_date < lo or store[c].first_date > hi]
    if empty:
        spans = "; ".join(f"{c} has data from {store[c].first_date} to {store[c].last_date}" for c in empty)
        raise UserInputError(f"no closes between {lo} and {hi} for {', '.join(empty)} ({spans})")
    return lo, hi


def resolve_as_of(store: PriceStore, codes: Sequence[str], as_of: dt.date | None) -> dt.date:
    """The date to measure at; a date after the data but in the same year means the latest close."""
    last = max(store[c].last_date for c in codes)
    if as_of is None:
        return last
    first = min(store[c].first_date for c in codes)
    if as_of < first:
        raise UserInputError(f"asOf {as_of} is before the first data ({first}); use a date from {first} on")
    if as_of > last:
        if as_of.year != last.year:
            raise UserInputError(
                f"asOf {as_of} is in a year with no data yet; the latest close is on {last}: use a date up to {dt.date(last.year, 12, 31)}"
            )
        return last
    missing = [c for c in codes if store[c].first_date > as_of]
    if missing:
        spans = "; ".join(f"{c} starts on {store[c].first_date}" for c in missing)
        raise UserInputError(f"no close on or before asOf {as_of} for {', '.join(missing)} ({spans})")
    return as_of


# --- resolvers ----------------------------------------------------------------------------------


async def _chart(
    backend: Backend, codes: tuple[str, ...], start: dt.date, end: dt.date, frequency: Frequency, store: PriceStore,
    refresh: bool = False,
) -> CacheResult:
    parts = {
        "codes": codes, "start": start.isoformat(), "end": end.isoformat(), "frequency": frequency.value,
        "data": store.version, "code": CODE_VERSION,
    }
    compute = partial(backend.compute, analytics.index_chart, store, codes, start, end, analytics.Frequency[frequency.value])
    return await _cached(backend, CHART_NAMESPACE, parts, backend.ttl(backend.settings.chart_ttl), compute, refresh)


async def _yields(backend: Backend, codes: tuple[str, ...], as_of: dt.date, store: PriceStore, refresh: bool = False) -> CacheResult:
    parts = {"codes": codes, "asOf": as_of.isoformat(), "data": store.version, "code": CODE_VERSION}
    compute = partial(backend.compute, analytics.yields_this_year, store, codes, as_of)
    return await _cached(backend, YIELD_NAMESPACE, parts, backend.ttl(backend.settings.yield_ttl), compute, refresh)


async def _cached(
    backend: Backend, namespace: str, parts: dict[str, Any], ttl: float, compute: Callable, refresh: bool
) -> CacheResult:
    lookup = backend.cache.refresh if refresh else backend.cache.get_or_compute
    try:
        return await lookup(namespace, parts, ttl, compute, refused=(analytics.NoDataError,))
    except analytics.NoDataError as exc:
        # Argument checks catch almost every case first; this is a gap inside one index's data.
        raise UserInputError(f"{exc}; choose other dates") from None
    except ComputationError as exc:
        raise ApiError(
            f"{exc}; the server log has the details under request id {request_id.get()}; try again later",
            code=COMPUTATION_FAILED,
        ) from None


def _chart_type(value: dict[str, Any]) -> IndexChart:
    return IndexChart(
        frequency=Frequency(value["frequency"]),
        start=dt.date.fromisoformat(value["start"]),
        end=dt.date.fromisoformat(value["end"]),
        series=[
            IndexSeries(
                code=s["code"], name=s["name"], total_return=s["total_return"],
                annualized_volatility=s["annualized_volatility"], max_drawdown=s["max_drawdown"], _value=s,
            )
            for s in value["series"]
        ],
    )


def _yield_type(row: dict[str, Any]) -> IndexYield:
    return IndexYield(
        code=row["code"], name=row["name"], yield_pct=row["yield_pct"],
        base_date=dt.date.fromisoformat(row["base_date"]), base_close=row["base_close"],
        last_date=dt.date.fromisoformat(row["last_date"]), last_close=row["last_close"],
        base_is_first_close_of_year=row["base_is_first_close_of_year"],
    )


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
        "whole history and are clipped to the data."
    )
    async def index_chart(
        self,
        info: Info,
        codes: list[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
        frequency: Frequency = Frequency.DAILY,
    ) -> IndexChart:
        backend: Backend = info.context.backend
        store = info.context.snapshot
        resolved = resolve_codes(store, codes, backend.settings.max_codes)
        lo, hi = resolve_range(store, resolved, start, end)
        result = await _chart(backend, resolved, lo, hi, frequency, store)
        _report(info, result)
        return _chart_type(result.value)

    @strawberry.field(
        description="Year-to-date change per index (cached). asOf defaults to the latest date in the data; a later "
        "date in the same year means the latest close."
    )
    async def yield_this_year(
        self, info: Info, codes: list[str] | None = None, as_of: dt.date | None = None
    ) -> list[IndexYield]:
        backend: Backend = info.context.backend
        store = info.context.snapshot
        resolved = resolve_codes(store, codes, backend.settings.max_codes)
        date = resolve_as_of(store, resolved, as_of)
        result = await _yields(backend, resolved, date, store)
        _report(info, result)
        return [_yield_type(row) for row in result.value]


def _check_admin(info: Info) -> None:
    token = info.context.backend.settings.admin_token
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
        store, done = await refresh(info.context.backend, chosen)
        info.context.snapshot = store  # what the response reports as its data version
        log.warning(
            "cache refreshed: targets=%s client=%s data_version=%s durations_ms=%s coalesced=%s",
            ",".join(t.value for t in chosen), _client(info), store.version, ",".join(f"{d:.1f}" for d, _ in done),
            ",".join(str(c).lower() for _, c in done),
        )
        return RefreshResult(
            refreshed=[RefreshedField(target=t, duration_ms=d, coalesced=c) for t, (d, c) in zip(chosen, done)],
            data_version=store.version,
        )


async def refresh(
    backend: Backend, targets: Sequence[CacheTarget], invalidate: bool = True
) -> tuple[PriceStore, list[tuple[float, bool]]]:
    """Load what the data source holds now, invalidate every variant of the targets, recompute their defaults.

    Returns the snapshot used and, per target, (milliseconds, whether it joined a refresh of the same data
    already under way). Bumping the data epoch makes every process that reads Redis look at the source
    before its next answer. With `invalidate=False` it only computes the default variants that are not
    cached yet (warming).
    """
    assert backend.feed is not None, "refresh runs in the server, which has the data feed"
    store = await backend.feed.sync()
    if invalidate:
        await backend.cache.invalidate(DATA_EPOCH)
    done = []
    for target in targets:
        began = time.perf_counter()
        if target is CacheTarget.INDEX_CHART:
            lo, hi = resolve_range(store, store.codes, None, None)
            result = await _chart(backend, store.codes, lo, hi, Frequency.DAILY, store, refresh=invalidate)
        else:
            result = await _yields(backend, store.codes, resolve_as_of(store, store.codes, None), store, refresh=invalidate)
        if invalidate and result.status is CacheStatus.STALE:
            # Fail-safe kept the old value for readers; the operator must hear that recomputing failed.
            raise ApiError(
                f"recomputing {target.value} failed ({result.error}); clients keep getting the previous result, marked "
                f"STALE, until a computation succeeds (request id {request_id.get()})",
                code=COMPUTATION_FAILED,
            )
        done.append(((time.perf_counter() - began) * 1000.0, result.coalesced))
    return store, done


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Bad input is the client's business, answered in the response; only our own failures are logged.
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


CACHED_FIELDS = frozenset({CHART_NAMESPACE, YIELD_NAMESPACE})


def build_schema(settings: Settings) -> strawberry.Schema:
    """The schema with the limits and switches of these settings (the types never change)."""
    extensions: list[Any] = [
        CacheReportExtension,
        *limit_extensions(
            max_aliases=settings.max_aliases, max_depth=settings.max_depth, max_tokens=settings.max_tokens,
            max_cached_fields=settings.max_cached_fields, max_codes=settings.max_codes, cached_fields=CACHED_FIELDS,
        ),
        ErrorPolicy,
    ]
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    return _Schema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        config=StrawberryConfig(batching_config={"max_operations": settings.max_batch}),
        execution_context_class=ColumnarExecutionContext,
    )


schema = build_schema(Settings())
