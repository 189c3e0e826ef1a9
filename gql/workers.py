"""Query execution in worker processes, so that cold computations never hold the server's event loop.

pandas work already runs in threads, but the rest of a cold answer (completing and encoding a
megabyte result, compressing it for storage) is Python that holds the GIL; on the server's process
it makes every cache hit behind it wait. A cacheable query that misses the response cache is sent
here instead: a worker process runs the same schema with its own Redis connection and in-process
cache, and returns the encoded answer (plus its compressed copy and the metrics it recorded).

A worker never loads data itself: it answers from the very snapshot the server chose for the request
(and named in the response key). It keeps the last few it was sent; a job for a version it does not
hold comes back as `Wanted.SNAPSHOT`, and the server sends it again with the snapshot.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

from gql import metrics
from gql import stored as stored_entries
from gql.cache import ResultCache
from gql.config import Settings
from gql.data import PriceStore
from gql.execution import Answer, Operation, execute
from gql.logs import configure, install_record_factory, request_id
from gql.lru import LRU
from gql.schema.build import build_schema
from gql.service import Service
from gql.stored import StoredResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    operation: Operation
    request_id: str
    data_version: str  # the snapshot to answer from
    snapshot: PriceStore | None = None  # sent along only when the worker does not hold that version


class Wanted(enum.Enum):
    SNAPSHOT = "snapshot"  # a worker's answer to a job for a data version it does not hold


@dataclass(frozen=True)
class _Reply:
    answer: Answer
    metric_events: list[tuple]  # what the worker recorded, counted by the server


# Snapshots a worker keeps: the current one and the one before (requests that began before a change).
_KEPT_SNAPSHOTS = 2


class QueryWorkers:
    """A pool of worker processes executing queries; `None` from `execute` means run it here instead."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: a fresh interpreter inherits neither the server's threads and event loop nor
        # uvicorn's signal handlers (with those a forked worker ignored SIGTERM and outlived the server).
        return ProcessPoolExecutor(
            max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(self.settings,),
        )

    async def execute(self, job: Job, snapshot: PriceStore) -> Answer | None:
        """Answer `job` from `snapshot` (its `data_version`) in a worker process."""
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self._pool, _run_job, job)
            if reply is Wanted.SNAPSHOT:
                # Pickled by the pool's feeder thread, not on the event loop.
                reply = await loop.run_in_executor(self._pool, _run_job, replace(job, snapshot=snapshot))
            if not isinstance(reply, _Reply):
                raise RuntimeError(f"a query worker answered {reply!r}")
        except BrokenProcessPool:
            log.error("a query worker process died; starting new ones and answering this request in the server")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return None
        except Exception:
            log.exception("a query worker failed; answering this request in the server")
            return None
        metrics.apply(reply.metric_events)
        return reply.answer

    async def store(self, key: str, generations: dict[str, int], stored: StoredResponse) -> bool:
        """Compress and store an answer already sent, in a worker (the server's loop only hands it over)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _store_job, key, generations, stored)
        except Exception:
            log.exception("storing an answer in a query worker failed; the next request computes it again")
            return False

    async def warm(self) -> None:
        """Start the processes now rather than on the first cold query."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(self._pool, _ping) for _ in range(self.processes)])

    def close(self) -> None:
        """Stop the worker processes (waits for a computation in progress to end)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- inside a worker process ------------------------------------------------------------------------

_worker: _Worker | None = None


def _start_worker(settings: Settings) -> None:
    global _worker
    # Cold work is background work: when both want a core, the serving process should get it.
    os.nice(10)
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the server shuts the pool down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure(settings.log_level, settings.log_json)
    install_record_factory()
    metrics.capture()  # counted by the server: events go back with each answer
    _worker = _Worker(settings)


def _die_with_parent() -> None:
    """Linux: have the kernel end this process when the server dies without shutting the pool down."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a worker left behind exits when its call queue breaks
    if os.getppid() == 1:
        os._exit(0)  # the parent is already gone


def _ping() -> bool:
    return _worker is not None


def _store_job(key: str, generations: dict[str, int], stored: StoredResponse) -> bool:
    assert _worker is not None, "worker not started"
    return _worker.store(key, generations, stored)


def _run_job(job: Job) -> _Reply | Wanted:
    assert _worker is not None, "worker not started"
    return _worker.run(job)


class _Worker:
    def __init__(self, settings: Settings) -> None:
        # The loop runs in its own thread, all the time: background work (a stale value's recomputation,
        # storing a value after it was returned) goes on between jobs.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="gql-worker-loop", daemon=True).start()
        self.schema = build_schema(settings)
        self.snapshots: LRU[str, PriceStore] = LRU(max_entries=_KEPT_SNAPSHOTS)
        self.service = Service(
            settings,
            # No in-process fallback here: the server sends work to workers only while Redis is in use,
            # and a worker's private cache would not see a refresh made through the server.
            cache=ResultCache(settings, local_entries=0),
            pool=ThreadPoolExecutor(max_workers=1, thread_name_prefix="gql-compute"),
        )
        asyncio.run_coroutine_threadsafe(self.service.cache.warm(), self.loop).result()

    def run(self, job: Job) -> _Reply | Wanted:
        if job.snapshot is not None:
            self.snapshots.put(job.data_version, job.snapshot)
        snapshot = self.snapshots.get(job.data_version)
        if snapshot is None:
            return Wanted.SNAPSHOT
        return asyncio.run_coroutine_threadsafe(self._execute(job, snapshot), self.loop).result()

    async def _execute(self, job: Job, snapshot: PriceStore) -> _Reply:
        request_id.set(job.request_id)
        with self.service.cache.link.request():
            answer = await execute(self.schema, self.service, job.operation, snapshot)
        return _Reply(answer, metrics.take())

    def store(self, key: str, generations: dict[str, int], stored: StoredResponse) -> bool:
        return asyncio.run_coroutine_threadsafe(self._store(key, generations, stored), self.loop).result()

    async def _store(self, key: str, generations: dict[str, int], stored: StoredResponse) -> bool:
        return await stored_entries.write(self.service.cache.raw, key, generations, stored.compressed()) is not None
