"""The data this process answers from: one immutable snapshot at a time, following its source.

Every request takes `DataFeed.current` once, when it begins, and answers every field from it; the
cache keys it builds name that snapshot's version. The feed replaces `current` as a whole when the
data changes, and finds out in two ways:

- a file watcher (watchfiles: inotify on Linux, polling with WATCHFILES_FORCE_POLLING=1 for network
  file systems) sees an import land, with no request needed;
- the *data epoch*, a counter in Redis that `refreshCache` increments after loading what is in the
  source at that moment. Requests read it in the same round trip as the cache; a process that sees a
  new epoch looks at its source before it answers. So once a refresh returns, no process that reads
  Redis answers from older data. The increment is also published, and every server process looks at its
  source when it hears it (`Service.follow_refreshes`), with no request needed.

A reload that fails (a corrupt or half-written file) keeps the whole previous snapshot: the data set
never mixes versions. The problem is logged once per change of the files and shown by /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gql.config import Settings
from gql.data import DataError, PriceStore, is_index_file
from gql.sources import PriceSource, Source

log = logging.getLogger(__name__)

# The generation namespace in Redis whose counter is the data epoch (see the module docstring).
DATA_EPOCH = "data"
# The watcher reports a batch of changes once no new one came for STEP ms, or after DEBOUNCE ms at most.
WATCH_STEP_MS = 30
WATCH_DEBOUNCE_MS = 200


@dataclass(frozen=True)
class DataChange:
    """A new data version this process answers from, as subscribers hear of it."""

    version: str
    previous: str
    codes: tuple[str, ...]  # indexes added, removed or changed, in data-set order (removed ones last)
    last_date: str

    @classmethod
    def between(cls, old: PriceStore, new: PriceStore) -> DataChange:
        changed = [c for c in new.codes if c not in old or old[c].digest != new[c].digest]
        removed = [c for c in old.codes if c not in new]
        return cls(new.version, old.version, tuple(changed + removed), new.last_date.isoformat())


def _index_file_changed(_change: object, path: str) -> bool:
    return is_index_file(Path(path).name)


class DataFeed:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.current: PriceStore = source.store
        self.problem: str | None = None  # why the latest change of the files could not be loaded
        # One thread of its own: looking at the files never waits behind pandas work in the compute pool,
        # and two reloads never run at once.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gql-data")
        self._closed = False
        self._epoch: int | None = None
        self._stop: asyncio.Event | None = None
        self._watcher: asyncio.Task | None = None
        self._listeners: set[asyncio.Queue[DataChange]] = set()

    @classmethod
    async def open(cls, data_dir: Path | None) -> DataFeed:
        """Load the data (in a thread); DataError when it cannot be used."""
        source = await asyncio.get_running_loop().run_in_executor(None, PriceSource, data_dir)
        return cls(source)

    @classmethod
    async def configured(cls, settings: Settings) -> DataFeed:
        """The feed of the settings' source: the database (GQL_DATABASE_URL), a data directory, or the sample."""
        if settings.database_url is None:
            return await cls.open(settings.data_dir)
        from gql.db.source import DatabaseSource

        url, names = settings.database_url, settings.database_names()

        def connect() -> DatabaseSource:
            return DatabaseSource(url, names=names, timeout=settings.database_timeout, load_timeout=settings.database_load_timeout,
                                  poll_seconds=settings.database_poll_seconds)

        return cls(await asyncio.get_running_loop().run_in_executor(None, connect))

    @property
    def description(self) -> str:
        return self.source.description

    @property
    def follows_a_database(self) -> bool:
        return getattr(self.source, "follow", None) is not None

    async def sync(self) -> PriceStore:
        """Look at the source now; load it if it changed. Returns the snapshot to answer from."""
        if self._closed:  # shutting down: a late notification's catch-up has nothing left to load with
            return self.current
        store, change, error = await asyncio.get_running_loop().run_in_executor(self._loader, self._load_if_changed)
        if error is not None:
            # Files: once per change of them (they are tried again only when they change again). A database
            # that is away is tried on every poll: once per outage, until it answers again.
            # The process is named: with several workers each reloads (and logs) for itself.
            if self.problem is None or not self.follows_a_database:
                log.error("data not reloaded from %s in process %d, still serving version %s: %s",
                          self.description, os.getpid(), self.current.version, error)
            self.problem = str(error)
        elif store is not None:
            if self.problem is not None and self.follows_a_database:
                log.warning("data source %s is back, in process %d", self.description, os.getpid())
            self.problem = None
            if change is not None and store.version != self.current.version:
                self.current = store
                for queue in self._listeners:
                    queue.put_nowait(change)
                log.info("data reloaded from %s in process %d: version %s, %d indexes, last close %s",
                         self.description, os.getpid(), store.version, len(store), store.last_date)
        return self.current

    def _load_if_changed(self) -> tuple[PriceStore | None, DataChange | None, DataError | None]:
        """In the loader thread: the new snapshot and what it changed (digesting the changed indexes is work
        the event loop must not do: 1,000 of them take about 0.1 s)."""
        try:
            if not self.source.changed():
                return (self.current if self.problem is not None else None), None, None
            store = self.source.reload()
        except DataError as exc:
            return None, None, exc
        current = self.current
        return store, (DataChange.between(current, store) if store.version != current.version else None), None

    async def changes(self) -> AsyncIterator[DataChange]:
        """Every new data version of this process from now on, as it is taken up (for subscriptions)."""
        queue: asyncio.Queue[DataChange] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    @property
    def epoch(self) -> int | None:
        """The fleet's data epoch `current` has caught up with (None: not read yet)."""
        return self._epoch

    async def catch_up(self, epoch: int) -> PriceStore:
        """The snapshot to answer from, given the fleet's data epoch as just read from Redis."""
        if epoch != self._epoch:
            await self.sync()
            self._epoch = epoch
        return self.current

    # --- the watcher --------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the source from now on: the files, or the database's commits (nothing for the built-in sample)."""
        if self._watcher is not None:
            return
        self._stop = asyncio.Event()
        follow = getattr(self.source, "follow", None)
        if follow is not None:
            self._watcher = asyncio.create_task(follow(self.sync, self._stop), name="gql-data-follower")
        elif self.source.data_dir is not None:
            self._watcher = asyncio.create_task(self._watch(self.source.data_dir, self._stop), name="gql-data-watcher")

    async def _watch(self, data_dir: Path, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        failing = False
        while not stop.is_set():
            try:
                # Changes between two watches (a restart after an error) are not lost: look once first.
                await self.sync()
                async for _ in awatch(
                    data_dir, watch_filter=_index_file_changed, step=WATCH_STEP_MS, debounce=WATCH_DEBOUNCE_MS,
                    stop_event=stop, rust_timeout=1000, recursive=False,
                ):
                    failing = False
                    await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  # the watcher must outlive any failure, and says so once
                if not failing:
                    log.warning("watching %s for data changes failed (%s); trying again every second, and "
                                "refreshCache still loads what is there", data_dir, exc)
                failing = True
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def close(self) -> None:
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None
        self._loader.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
