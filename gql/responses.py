"""Whole-response cache and HTTP caching for /graphql.

A query whose cached fields are all answered from the cache is answered from stored response bytes,
without parsing, validating or executing it again. The stored entry records, per cached field, when
its value was computed and for how long it is fresh, and the generations of the field namespaces it
was built under: `refreshCache` (which bumps a generation) and data changes (the data version is in
the key) invalidate it exactly like the field entries.

The body is laid out as `{"data":...,"extensions":{"cache":[...]}}` with the per-request part, the
cache report (ages change with every request), last. The stored prefix is kept raw and as a deflate
stream ending on a byte boundary, so the gzip answer is that stream, a final *stored* (uncompressed)
block with the report, and a CRC continued over the report: nothing is compressed on a hit.

Also here: ETag / If-None-Match (304), Cache-Control and Age (what they say: gql/downstream.py); persisted queries
are in gql/apq.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import OperationType
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.schema.base import BaseSchema

from gql import metrics
from gql import stored as stored_entries
from gql.apq import known_queries, resolve_persisted_query
from gql.asgi import (
    GraphQLRequest,
    json_content_type,
    replaying,
    rewritten,
    send_encoded,
    send_json,
    send_response,
    with_default_headers,
)
from gql.cache import CacheState
from gql.cache.keys import digest
from gql.data import PriceStore
from gql.downstream import DownstreamHeaders
from gql.execution import Operation, execute
from gql.feed import DATA_EPOCH
from gql.logs import note, request_id
from gql.lru import LRU
from gql.protocol import (
    OPERATION_RESOLUTION_FAILURE,
    Batch,
    QueryShape,
    RequestError,
    query_shape,
    read_request,
    refuse_subscription,
    send_refusal,
)
from gql.schema.types import CACHED_FIELDS
from gql.service import Service
from gql.stored import DEFLATE, RAW, StoredResponse, body_tail, gzip_parts
from gql.versions import CODE_VERSION
from gql.workers import Job, QueryWorkers

log = logging.getLogger(__name__)

_NO_STORE = {b"cache-control": b"no-store"}
# Requests up to this size remember their response key (by their bytes and the data version).
_KEYED_BYTES = 4096


# --- what a query is ------------------------------------------------------------------------------


def response_key(shape: QueryShape, variables: Any, operation_name: str | None, snapshot: PriceStore) -> str:
    parts = {
        "q": shape.normalized, "v": variables, "op": operation_name, "data": snapshot.version,
        "code": CODE_VERSION,  # answers of older code are never served after a deploy
    }
    return digest(parts)


class ResponseKeys:
    """The response key of a request: the same request bytes name the same key on one snapshot, so its digest is
    worked out once, not on every hit (requests up to _KEYED_BYTES, by method, bytes, data and code version)."""

    def __init__(self) -> None:
        self._known: LRU[tuple[str, bytes, str, str], str] = LRU(max_entries=2048)

    def of(self, request: GraphQLRequest, scope: Scope, shape: QueryShape, operation: Operation, snapshot: PriceStore) -> str:
        asked = request.replay_body if request.method == "POST" else scope.get("query_string", b"")
        remembered = (request.method, asked, snapshot.version, CODE_VERSION) if asked and len(asked) <= _KEYED_BYTES else None
        key = self._known.get(remembered) if remembered else None
        if key is None:
            key = response_key(shape, operation.variables, operation.operation_name, snapshot)
            if remembered:
                self._known.put(remembered, key)
        return key


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return etag in tags or f"{etag}-gz" in tags


def _stored_size(stored: StoredResponse) -> int:
    return len(stored.raw) + len(stored.deflated)


@dataclass(frozen=True)
class _Remembered:
    meta: bytes  # the meta bytes stored with it in Redis
    stored: StoredResponse
    generations: dict[str, int]
    local: dict[str, int]  # this process's own generations when it was read or written (see `_kept`)


@dataclass(frozen=True)
class _Kept:
    """An answer kept while Redis is away, with this process's generations it was built under."""

    stored: StoredResponse
    generations: dict[str, int]


# --- the ASGI layer ----------------------------------------------------------------------------------


class ResponseCacheApp:
    """Wraps the GraphQL ASGI app: answers cacheable queries itself (from stored bytes, or by executing
    them here or in a query worker) and stores what it can; everything else goes to the GraphQL app."""

    def __init__(self, app: ASGIApp, schema: BaseSchema, service: Service, *, workers: QueryWorkers | None = None) -> None:
        settings = service.settings
        self.app = app
        self.schema = schema
        self.service = service
        self.cache = service.cache
        self.raw = service.cache.raw
        self._view = service.cache.view
        self.workers = workers
        self.enabled = settings.response_cache
        self.max_entry_bytes = settings.cache_max_entry_bytes
        self.apq_ttl = settings.apq_ttl
        self._persisted = known_queries()
        self._keys = ResponseKeys()
        self.max_batch = settings.max_batch
        self.ide = settings.graphiql
        self.downstream = DownstreamHeaders.of(settings)
        clock = service.cache.policy.clock
        self._now = clock.now
        self._memory: LRU[str, _Remembered] = LRU(max_bytes=settings.response_memory_bytes, size=lambda r: _stored_size(r.stored))
        # While Redis is away (within the same budget as the hot-response memory, which is not used meanwhile).
        self._degraded: LRU[str, _Kept] = LRU(max_bytes=settings.response_memory_bytes, size=lambda k: _stored_size(k.stored))
        self._pending: set[asyncio.Task] = set()
        self.hits = 0  # answers served from stored bytes

    async def drain(self) -> None:
        """Wait for responses still being stored (for tests and shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        if self.service.feed is None:  # a database that was away at start: the data is not loaded yet
            await send_refusal(send, RequestError("the data is not loaded yet (the data source is unreachable; see /readyz); "
                                                  "try again in a few seconds", "DATA_UNAVAILABLE", 503, {"retry-after": "5"}))
            return
        with self.cache.link.request():
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request, body = await read_request(scope, receive, max_batch=self.max_batch, ide=self.ide)
            if isinstance(request, Batch):
                for number, item in enumerate(request.operations, 1):
                    self._check_operation("POST", item, f"operation {number} of the batch: ")
        except RequestError as refused:
            await send_refusal(send, refused)
            return
        if not isinstance(request, GraphQLRequest):  # a batch, or GraphiQL
            scope = json_content_type(scope) if request is not None else scope
            await self.app(scope, replaying(receive, body), with_default_headers(send, _NO_STORE))
            return
        refusal = await resolve_persisted_query(request, self.raw, self.apq_ttl, self._persisted)
        if refusal is not None:
            await send_json(send, 200, refusal, {"cache-control": "no-store"})
            return
        try:
            shape = self._check_operation(request.method, request.data)
        except RequestError as refused:
            await send_refusal(send, refused)
            return
        operation = Operation(request.data["query"], request.data.get("variables"), request.data.get("operationName"))
        note(operation=operation.operation_name)
        if shape is None or not shape.cacheable:
            # Only here is the request handed on: a copy of the scope with the persisted query filled in.
            await self.app(*rewritten(scope, receive, request), with_default_headers(send, _NO_STORE))
            return
        if not self.enabled or self.cache.state is CacheState.DISABLED:
            await self._execute(send, request, operation, await self.service.snapshot())
            return
        feed = self.service.data
        snapshot = feed.current
        key = self._keys.of(request, scope, shape, operation, snapshot)
        local = self.raw.local_generations(shape.namespaces)
        if self._view.trusted() and self.cache.state is CacheState.OK:
            viewed = self._viewed(key, local, feed.epoch)
            if viewed is not None:
                metrics.VIEW_HITS.inc()
                await self._answer(send, request, viewed, snapshot.version)
                return
        # An answer in hand: Redis gets a soft bound only, and when it is late or fails that answer goes out.
        kept = self._kept(key, local)
        # (available() lets one request probe Redis once the breaker's cool-down is over; one with an answer in
        # hand does not wait for the probe.)
        if self.cache.state is CacheState.DEGRADED and not await self.raw.available(wait=kept is None):
            await self._serve_degraded(send, request, operation, snapshot, key, local, kept)
            return
        if self._degraded:
            # Redis is back: what was kept meanwhile may predate refreshes made through other processes.
            self._degraded.clear()
        # The data epoch comes in the same round trip as the stored answer's meta.
        looked_up = await self.raw.read((DATA_EPOCH, *shape.namespaces), [self.raw.keys.response_meta(key)], soft=kept is not None)
        if looked_up is None and kept is not None:
            await self._answer(send, request, kept, snapshot.version)
            return
        if looked_up is not None:
            generations, _ = looked_up
            latest = await feed.catch_up(generations.pop(DATA_EPOCH))
            if latest.version != snapshot.version:  # the data changed: the key names the new version
                snapshot, key = latest, response_key(shape, operation.variables, operation.operation_name, latest)
                looked_up = await self.raw.read(shape.namespaces, [self.raw.keys.response_meta(key)])
        if looked_up is None:
            await self._execute(send, request, operation, snapshot)
            return
        generations, (raw_meta,) = looked_up
        stored = await self._stored(key, raw_meta, generations, local)
        if stored is not None:
            await self._answer(send, request, stored, snapshot.version)
            return
        await self._execute(send, request, operation, snapshot, store_as=(key, generations, local))

    def _viewed(self, key: str, local: dict[str, int], epoch: int | None) -> StoredResponse | None:
        """The answer for `key` that this process's view (trusted: its lease holds) says is current: the one `_kept`
        would give, once the feed has caught up with the latest data epoch the view knows."""
        if epoch is None or self._view.known(DATA_EPOCH) != epoch:
            return None
        return self._kept(key, local)

    def _kept(self, key: str, local: dict[str, int]) -> StoredResponse | None:
        """The answer this process served for `key` a moment ago, if nothing it knows of has changed it since: no
        refresh through this process (its own generations), none heard of from others (the generations it knows),
        and still fresh. (The data version is in the key.)"""
        remembered = self._memory.get(key)
        if remembered is None or remembered.local != local or remembered.stored.expires <= self._now():
            return None
        known = self.cache.generations.known
        if any(known(namespace) != generation for namespace, generation in remembered.generations.items()):
            return None
        return remembered.stored

    # -- while Redis is away ----------------------------------------------------------------------------

    async def _serve_degraded(
        self, send: Send, request: GraphQLRequest, operation: Operation, snapshot: PriceStore, key: str,
        generations: dict[str, int], remembered: StoredResponse | None,
    ) -> None:
        """Whole responses kept in this process, under its own generations, while the breaker is open:
        answers stay as fast as with Redis (they would otherwise all go through the resolvers). `remembered`:
        the one served with Redis a moment before it went away, not refreshed through this process since."""
        kept = self._degraded.get(key)
        if kept is not None and kept.generations == generations and kept.stored.expires > self._now():
            await self._answer(send, request, kept.stored, snapshot.version)
            return
        if remembered is not None:
            await self._answer(send, request, remembered, snapshot.version)
            return
        await self._execute(send, request, operation, snapshot, keep_locally=(key, generations))

    async def _keep_locally(self, key: str, generations: dict[str, int], stored: StoredResponse) -> None:
        if len(stored.raw) > (self._degraded.max_bytes or 0) // 4:
            return
        try:
            stored = await asyncio.get_running_loop().run_in_executor(None, stored.compressed)
        except Exception:
            log.exception("compressing a response failed")
            return
        self._degraded.put(key, _Kept(stored, generations))

    # -- hits ---------------------------------------------------------------------------------------

    async def _stored(
        self, key: str, raw_meta: bytes | None, generations: dict[str, int], local: dict[str, int]
    ) -> StoredResponse | None:
        if raw_meta is None:
            return None
        remembered = self._memory.get(key)
        if remembered is not None and remembered.meta == raw_meta:
            # The same entry as last time: nothing to decode, but it must still be of these generations.
            stored = remembered.stored
            return stored if remembered.generations == generations and stored.expires > self._now() else None
        try:
            meta = orjson.loads(raw_meta)
            if meta.get("generations") != generations:
                return None
            described = StoredResponse.from_meta(meta, b"", b"")
        except (ValueError, KeyError, TypeError):
            log.warning("stored response %s cannot be decoded; answering without it", key)
            return None
        if not described.fields or described.expires <= self._now():
            return None
        body_keys = [self.raw.keys.response_body(key, described.etag, part) for part in (RAW, DEFLATE)]
        bodies = await self.raw.read_bulk(body_keys)
        if bodies is None or bodies[0] is None or bodies[1] is None:
            return None
        stored = StoredResponse.from_meta(meta, bodies[0], bodies[1])
        self._memory.put(key, _Remembered(raw_meta, stored, generations, local))
        return stored

    async def _answer(self, send: Send, request: GraphQLRequest, stored: StoredResponse, data_version: str) -> None:
        self.hits += 1
        metrics.RESPONSE_HITS.inc()
        for _, field, _, _ in stored.fields:
            metrics.lookup(field, "hit")
        now = self._now()
        gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        etag = f'"{stored.etag}-gz"' if gzip else f'"{stored.etag}"'
        headers = self.downstream.encoded(stored.field_names, data_version, stored.expires, stored.created, now,
                                          etag.encode("latin-1"))
        if etag_matches(request.headers.get("if-none-match"), stored.etag):
            await send_encoded(send, 304, (), headers)
            return
        report = stored.report(now)
        note(cache=report)
        tail = body_tail(report, data_version)
        if gzip:
            parts: tuple[bytes, ...] = gzip_parts(stored.deflated, stored.crc, len(stored.raw), tail)
            headers.append((b"content-encoding", b"gzip"))
        else:
            parts = (stored.raw, tail)
        headers.append((b"content-type", b"application/json"))
        await send_encoded(send, 200, parts, headers)

    # -- misses ---------------------------------------------------------------------------------------

    async def _execute(
        self, send: Send, request: GraphQLRequest, operation: Operation, snapshot: PriceStore,
        store_as: tuple[str, dict[str, int], dict[str, int]] | None = None, keep_locally: tuple[str, dict[str, int]] | None = None,
    ) -> None:
        """Execute the query on `snapshot`, add HTTP caching headers to the answer, store it when it may be stored."""
        answer, in_worker = None, False
        # Only while Redis is in use: then a refresh reaches the workers (through Redis generations).
        if self.workers is not None and self.cache.state is CacheState.OK and not self.cache.link.failed_in_this_request():
            job = Job(operation, request_id.get(), snapshot.version)
            answer = await self.workers.execute(job, snapshot)
            in_worker = answer is not None
        if answer is None:
            answer = await execute(self.schema, self.service, operation, snapshot)
        note(cache=answer.report)
        stored = answer.stored
        headers = {"content-type": "application/json"}
        if stored is None:
            headers["cache-control"] = "no-store"
            await send_response(send, 200, answer.body, headers)
            return
        headers.update(self._cache_headers(stored, snapshot.version, self._now(), f'"{stored.etag}"'))
        if etag_matches(request.headers.get("if-none-match"), stored.etag):
            await send_response(send, 304, b"", headers)
        else:
            await send_response(send, 200, answer.body, headers)
        if keep_locally is not None:
            self._background(self._keep_locally(*keep_locally, stored))
        if store_as is not None and self._may_store(stored):
            key, generations, local = store_as
            # After the answer is sent: compressing megabytes is the worker's job, or a thread's here.
            if in_worker and self.workers is not None:
                self._background(self.workers.store(key, generations, stored))
            else:
                self._background(self._store(key, generations, local, stored))

    def _cache_headers(self, stored: StoredResponse, data_version: str, now: float, etag: str) -> dict[str, str]:
        """The HTTP caching headers of a cacheable answer, for downstream caches (gql/downstream.py)."""
        return self.downstream.headers(stored.field_names, data_version, stored.expires, stored.created, now, etag)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _may_store(self, stored: StoredResponse) -> bool:
        if len(stored.raw) > self.max_entry_bytes:
            metrics.oversize("response")
            return False
        metrics.RESPONSE_MISSES.inc()
        return True

    async def _store(self, key: str, generations: dict[str, int], local: dict[str, int], stored: StoredResponse) -> None:
        try:
            # Compressing megabytes takes a while; zlib lets go of the GIL, so a thread keeps the loop free.
            stored = await asyncio.get_running_loop().run_in_executor(None, stored.compressed)
            meta = await stored_entries.write(self.raw, key, generations, stored)
            if meta is not None:
                self._memory.put(key, _Remembered(meta, stored, generations, local))
        except Exception:
            # Storing is an optimization: the answer has been sent; the next request computes again.
            log.exception("storing a response failed")

    @staticmethod
    def _check_operation(method: str, data: dict[str, Any], where: str = "") -> QueryShape | None:
        """The document's shape (None: it does not parse, which execution reports), or RequestError when no
        operation can be chosen (a GraphQL request error: 200), a subscription came over HTTP (400) or a mutation
        over GET (405)."""
        name = data.get("operationName")
        shape = query_shape(data["query"], name, CACHED_FIELDS)
        if shape is None:
            return None
        if shape.problem is not None:
            raise RequestError(where + shape.problem, OPERATION_RESOLUTION_FAILURE, 200)
        if shape.operation is OperationType.SUBSCRIPTION:
            raise refuse_subscription(where)
        if method == "GET" and shape.operation is not OperationType.QUERY:
            raise RequestError(f"a {shape.operation.value if shape.operation else 'non-query'} is sent with POST; GET runs queries only",
                               "METHOD_NOT_ALLOWED", 405, {"allow": "POST"})
        return shape
