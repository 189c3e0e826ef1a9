"""The assembled service: data feed, result cache, compute pool, TTL policy, fault drills and refresh.

Built once per process from the settings, and used alike by the server (gql/app.py), its query worker
processes (gql/workers.py, with no feed of their own) and the CLI (`warm`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gql import analytics
from gql.cache import CacheResult, CacheState, CacheStatus, ComputationError, ResultCache
from gql.config import Settings
from gql.data import PriceStore
from gql.downstream import REPEAT_AFTER_SECONDS, Purger
from gql.errors import COMPUTATION_FAILED, REDIS_UNAVAILABLE, ApiError, UserInputError
from gql.feed import DATA_EPOCH, DataChange, DataFeed
from gql.logs import request_id
from gql.schedule import parse_time_of_day, seconds_until_publication
from gql.schema.arguments import chart_arguments, yield_arguments
from gql.schema.types import CACHED_FIELDS, CHART_NAMESPACE, TARGET_FIELDS, YIELD_NAMESPACE, CacheTarget
from gql.versions import CODE_VERSION

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by computations while GQL_FAULT_COMPUTE_FAIL_FILE exists (drills and tests)."""


@dataclass(frozen=True)
class RefreshedTarget:
    target: CacheTarget
    duration_ms: float
    coalesced: bool  # joined a refresh of the same data already under way


@dataclass(frozen=True)
class Refreshed:
    snapshot: PriceStore  # the data the targets were recomputed from
    targets: list[RefreshedTarget]


class Service:
    """What every request needs. Resolvers read the data from their request's snapshot, never from the feed."""

    def __init__(
        self, settings: Settings, *, feed: DataFeed | None = None, cache: ResultCache | None = None,
        pool: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache if cache is not None else ResultCache(settings, view_namespaces=(DATA_EPOCH, *sorted(CACHED_FIELDS)))
        # None in a query worker process, which gets its snapshots from the server.
        self.feed = feed
        self.pool = pool if pool is not None else ThreadPoolExecutor(
            max_workers=settings.compute_threads, thread_name_prefix="gql-compute"
        )
        # Purges of downstream caches (GQL_PURGE_URLS; None: there are none to purge).
        self.purger = Purger.of(settings)

    async def load(self) -> None:
        """Load the data (DataError when it cannot be used); the file watcher is started apart (`feed.start`)."""
        self.feed = await DataFeed.configured(self.settings)

    async def close(self) -> None:
        if self.feed is not None:
            await self.feed.close()
        # Recomputations and stores under way get a moment to finish; close() cancels the rest.
        try:
            await asyncio.wait_for(self.cache.drain(), timeout=2.0)
        except TimeoutError:
            pass
        if self.purger is not None:
            await self.purger.drain(self.settings.purge_timeout)
        await self.cache.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def data(self) -> DataFeed:
        assert self.feed is not None, "only the server and the CLI have a data feed"
        return self.feed

    async def snapshot(self) -> PriceStore:
        """The data to answer from: the feed's current snapshot, once it has caught up with the fleet's data
        epoch (one bounded Redis read; without Redis, the file watcher alone keeps the feed current)."""
        feed = self.data
        if self.cache.state is CacheState.OK:
            looked_up = await self.cache.raw.read((DATA_EPOCH,), [])
            if looked_up is not None:
                return await feed.catch_up(looked_up[0][DATA_EPOCH])
        return feed.current

    def follow_refreshes(self) -> None:
        """Take up a refresh made through any process as soon as Redis announces the new data epoch, so that
        this process's feed (and its subscribers) has the new data with no request of its own."""
        if self.cache.state is CacheState.DISABLED:
            return
        feed = self.data

        async def epoch_moved(epoch: int | None) -> None:
            if epoch is None:  # listening (again): a bump may have been missed meanwhile, so read it
                await self.snapshot()
            else:
                await feed.catch_up(epoch)

        self.cache.on_invalidated(DATA_EPOCH, epoch_moved)

    # --- computing ------------------------------------------------------------------------------

    def ttl(self, fixed: float) -> float:
        """How long a result stays fresh: `fixed` seconds, or until the next data publication."""
        settings = self.settings
        if not settings.ttl_until_publication:
            return fixed
        return seconds_until_publication(
            dt.datetime.now(dt.UTC), parse_time_of_day(settings.publication_time), ZoneInfo(settings.timezone)
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

    # --- the cached fields ----------------------------------------------------------------------

    async def chart(
        self, codes: tuple[str, ...], start: dt.date, end: dt.date, frequency: analytics.Frequency, store: PriceStore,
        refresh: bool = False,
    ) -> CacheResult:
        parts = {
            "codes": codes, "start": start.isoformat(), "end": end.isoformat(), "frequency": frequency.value,
            "data": store.version, "code": CODE_VERSION,
        }
        compute = partial(self.compute, analytics.index_chart, store, codes, start, end, frequency)
        return await self._cached(CHART_NAMESPACE, parts, self.ttl(self.settings.chart_ttl), compute, refresh)

    async def yields(self, codes: tuple[str, ...], as_of: dt.date, store: PriceStore, refresh: bool = False) -> CacheResult:
        parts = {"codes": codes, "asOf": as_of.isoformat(), "data": store.version, "code": CODE_VERSION}
        compute = partial(self.compute, analytics.yields_this_year, store, codes, as_of)
        return await self._cached(YIELD_NAMESPACE, parts, self.ttl(self.settings.yield_ttl), compute, refresh)

    async def _cached(self, namespace: str, parts: dict[str, Any], ttl: float, compute: Callable, refresh: bool) -> CacheResult:
        lookup = self.cache.refresh if refresh else self.cache.get_or_compute
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

    async def refresh(self, targets: Sequence[CacheTarget], invalidate: bool = True) -> Refreshed:
        """Load what the data source holds now, invalidate every variant of the targets, recompute their defaults.

        Bumping the data epoch makes every process that reads Redis look at the source before its next
        answer. With `invalidate=False` it only computes the default variants that are not cached yet (warming).
        Then downstream caches are purged of the targets' answers (and of the data replaced, if it was).
        """
        previous = self.data.current.version
        store = await self.data.sync()
        reached = True
        if invalidate:
            reached = await self.cache.invalidate(DATA_EPOCH)
        done = []
        for target in targets:
            began = time.perf_counter()
            if target is CacheTarget.INDEX_CHART:
                # The default variants: what a query without arguments asks for.
                codes, lo, hi = chart_arguments(store, None, None, None)
                result = await self.chart(codes, lo, hi, analytics.Frequency.DAILY, store, refresh=invalidate)
            else:
                codes, as_of = yield_arguments(store, None, None)
                result = await self.yields(codes, as_of, store, refresh=invalidate)
            if invalidate and result.status is CacheStatus.STALE:
                # Fail-safe kept the old value for readers; the operator must hear that recomputing failed.
                raise ApiError(
                    f"recomputing {target.value} failed ({result.error}); clients keep getting the previous result, marked "
                    f"STALE, until a computation succeeds (request id {request_id.get()})",
                    code=COMPUTATION_FAILED,
                )
            reached = reached and result.reached_fleet
            done.append(RefreshedTarget(target, (time.perf_counter() - began) * 1000.0, result.coalesced))
        if not reached:
            # Done here, but the other processes keep answering what they cached before: the caller must know.
            raise ApiError(
                "the refresh reached only the server process that received it: Redis is unreachable from it (see "
                "/healthz), so the other processes keep their cached values until it is back, when this one applies "
                "the refresh there first. Send it again once /healthz says the cache is ok",
                code=REDIS_UNAVAILABLE,
            )
        if invalidate and self.purger is not None:
            await self._purge_refreshed(targets, previous if previous != store.version else None)
        return Refreshed(store, done)

    async def _purge_refreshed(self, targets: Sequence[CacheTarget], replaced: str | None) -> None:
        """After a refresh is done, everywhere: downstream caches then fetch what every process answers now.
        The caller waits for the first attempts (GQL_PURGE_TIMEOUT at most); retries go on in the background."""
        assert self.purger is not None
        keys = self.purger.keys
        names = [keys.field(TARGET_FIELDS[t]) for t in targets] + ([keys.data(replaced)] if replaced is not None else [])
        await self.purger.purge(names, wait=self.settings.purge_timeout)


# Warming waits until the data has been quiet this long: an ETL job committing index after index (or day
# after day) costs one recomputation of the defaults at its end, not one per commit, and the first ones
# are not computed for versions already gone.
WARM_QUIET_SECONDS = 1.0


async def warm_after_changes(service: Service, quiet: float = WARM_QUIET_SECONDS) -> None:
    """After new data versions this process takes up (whatever the source), compute the default variants as a
    refresh does, so the next dashboard load is a hit: once the changes have stopped for `quiet` seconds, and
    one computation per key for the whole fleet (the cache's lease), however many processes hear of them."""
    heard: asyncio.Queue[DataChange] = asyncio.Queue()

    async def listen() -> None:  # (waiting on a queue, unlike on the feed's generator, may time out safely)
        async for change in service.data.changes():
            heard.put_nowait(change)

    listener = asyncio.create_task(listen(), name="gql-warm-listener")
    try:
        while True:
            change = await heard.get()
            while True:  # the newest of a burst
                try:
                    change = await asyncio.wait_for(heard.get(), quiet)
                except TimeoutError:
                    break
            try:
                await service.refresh(list(CacheTarget), invalidate=False)
            except Exception:
                log.exception("computing the default variants of data version %s failed; they are computed on first use", change.version)
    finally:
        listener.cancel()


# Claims of a data change's purge live this long: every process takes up a change within about a second.
PURGE_CLAIM_SECONDS = 60.0


async def purge_after_changes(service: Service) -> None:
    """After each new data version this process takes up, purge downstream caches of the version it replaced: once
    for the fleet (the first process to claim the change in Redis; each, while Redis is away), in the background,
    and once more a moment later for answers of the old version given meanwhile by processes slower to take it up."""
    purger, raw = service.purger, service.cache.raw
    assert purger is not None
    async for change in service.data.changes():
        try:
            if not await raw.claim(raw.keys.downstream_purge(change.previous, change.version), PURGE_CLAIM_SECONDS):
                continue
            replaced = [purger.keys.data(change.previous)]
            await purger.purge(replaced)
            purger.purge_later(replaced, REPEAT_AFTER_SECONDS)
        except Exception:
            log.exception("purging downstream caches of data version %s failed", change.previous)


def _with_faults(delay: float, fail_file: Path | None, fn: Callable[..., Any], *args: Any) -> Any:
    if delay:
        time.sleep(delay)  # in a pool thread, like the computation it stands for
    if fail_file is not None and fail_file.exists():
        raise InjectedFault(f"injected failure: {fail_file} exists")
    return fn(*args)
