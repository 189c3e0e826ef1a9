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

Also here: ETag / If-None-Match (304), Cache-Control and Age, and Automatic Persisted Queries
(Apollo's protocol: `extensions.persistedQuery.sha256Hash`, `PersistedQueryNotFound`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from graphql import FieldNode, GraphQLError, OperationDefinitionNode, OperationType, parse, print_ast
from graphql.language import Visitor, visit
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql import metrics
from gql.cache import CacheState, ResultCache
from gql.data import PriceStore
from gql.feed import DATA_EPOCH, DataFeed
from gql.logs import note, request_id
from gql import stored as stored_entries
from gql.stored import DEFLATE, META, RAW, StoredResponse, body_tail, gzip_body
from gql.versions import CODE_VERSION
from gql.workers import Job, QueryWorkers

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# --- what a query is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """What the response cache needs to know of a query document (computed once per text)."""

    normalized: str  # whitespace and comments do not matter
    cacheable: bool  # a query (not a mutation), no introspection, at least one cached field
    namespaces: tuple[str, ...]  # the cached fields it invokes


class _Fields(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        self.names.add(node.name.value)


@lru_cache(maxsize=2048)
def query_shape(query: str, operation_name: str | None, cached_fields: frozenset[str]) -> QueryShape | None:
    """None when the text does not parse (GraphQL execution then reports why)."""
    try:
        document = parse(query)
    except GraphQLError:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name is not None and o.name.value == operation_name]
    fields = _Fields()
    visit(document, fields)
    namespaces = tuple(sorted(fields.names & cached_fields))
    cacheable = (
        len(operations) == 1
        and operations[0].operation is OperationType.QUERY
        and not {"__schema", "__type"} & fields.names
        and bool(namespaces)
    )
    return QueryShape(print_ast(document), cacheable, namespaces)


# --- the ASGI layer ----------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    headers: Headers
    data: dict[str, Any]
    replay_body: bytes | None  # POST body to hand to the GraphQL app (None: unchanged GET)


class ResponseCacheApp:
    """Wraps the GraphQL ASGI app: answers cached queries itself and stores what it can."""

    def __init__(
        self,
        app: ASGIApp,
        cache: ResultCache,
        feed: Callable[[], DataFeed],
        cached_fields: frozenset[str],
        *,
        workers: QueryWorkers | None = None,
        enabled: bool = True,
        max_entry_bytes: int = 32 * 1024 * 1024,
        memory_bytes: int = 64 * 1024 * 1024,
        apq_ttl: float = 7 * 86400,
    ) -> None:
        self.app = app
        self.workers = workers
        self.max_entry_bytes = max_entry_bytes
        self.cache = cache
        self.feed = feed
        self.cached_fields = cached_fields
        self.enabled = enabled
        self.apq_ttl = apq_ttl
        # Hot answers by response key: (the meta bytes stored with it, the answer, its generations).
        self._memory: OrderedDict[str, tuple[bytes, StoredResponse, dict[str, int]]] = OrderedDict()
        self._memory_bytes = memory_bytes
        self._memory_used = 0
        self._pending: set[asyncio.Task] = set()
        # While Redis is away: answers by response key, with this process's generations they were built under.
        self._degraded: OrderedDict[str, tuple[StoredResponse, dict[str, int]]] = OrderedDict()
        self.hits = 0  # answers served from stored bytes

    async def drain(self) -> None:
        """Wait for responses still being stored (for tests and shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        with self.cache.request():
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request, body = await _read(scope, receive)
        except _BadRequest as exc:
            await _send_json(send, 400, _error(str(exc), "BAD_REQUEST"), {"cache-control": "no-store"})
            return
        if request is None:  # not a single JSON operation (a batch, a form, GraphiQL)
            scope[SNAPSHOT_SCOPE_KEY] = await self._snapshot()
            await self.app(scope, replaying(receive, body), send)
            return
        refusal = await self._resolve_persisted_query(request)
        if refusal is not None:
            await _send_json(send, 200, refusal, {"cache-control": "no-store"})
            return
        scope, receive = _rewritten(scope, receive, request)
        query = request.data.get("query")
        operation_name = request.data.get("operationName")
        note(operation=operation_name if isinstance(operation_name, str) else None)
        shape = (
            query_shape(query, operation_name, self.cached_fields)
            if isinstance(query, str) and isinstance(operation_name, (str, type(None)))
            else None
        )
        cacheable = shape is not None and shape.cacheable
        if not cacheable or not self.enabled or self.cache.state is CacheState.DISABLED:
            await self._execute(scope, receive, send, request, cacheable, await self._snapshot(), None)
            return
        # (available() lets one request probe Redis once the breaker's cool-down is over.)
        if self.cache.state is CacheState.DEGRADED and not await self.cache.available():
            await self._serve_degraded(scope, receive, send, request, shape, operation_name)
            return
        if self._degraded:
            # Redis is back: what was kept meanwhile may predate refreshes made through other processes.
            self._degraded.clear()
        variables = request.data.get("variables")
        snapshot = self.feed().current
        key = self._key(shape, variables, operation_name, snapshot)
        # The data epoch comes in the same round trip as the stored answer's meta.
        looked_up = await self.cache.read((DATA_EPOCH, *shape.namespaces), [self._keys(key)[META]])
        if looked_up is not None:
            generations, (raw_meta,) = looked_up
            latest = await self.feed().catch_up(generations.pop(DATA_EPOCH))
            if latest.version != snapshot.version:  # the data changed: the key names the new version
                snapshot, key = latest, self._key(shape, variables, operation_name, latest)
                looked_up = await self.cache.read(shape.namespaces, [self._keys(key)[META]])
        if looked_up is None:
            await self._execute(scope, receive, send, request, cacheable, snapshot, None)
            return
        generations, (raw_meta,) = looked_up
        stored = await self._stored(key, raw_meta, generations)
        if stored is not None:
            await self._answer(send, request, stored, snapshot.version)
            return
        await self._execute(scope, receive, send, request, cacheable, snapshot, (key, generations))

    async def _snapshot(self) -> PriceStore:
        """The data to answer from: the feed's current snapshot, once it has caught up with the fleet's data
        epoch (one bounded Redis read; without Redis, the file watcher alone keeps the feed current)."""
        feed = self.feed()
        if self.cache.state is CacheState.OK:
            looked_up = await self.cache.read((DATA_EPOCH,), [])
            if looked_up is not None:
                return await feed.catch_up(looked_up[0][DATA_EPOCH])
        return feed.current

    # -- while Redis is away ----------------------------------------------------------------------------

    async def _serve_degraded(
        self, scope: Scope, receive: Receive, send: Send, request: _Request, shape: QueryShape, operation_name: str | None
    ) -> None:
        """Whole responses kept in this process, under its own generations, while the breaker is open:
        answers stay as fast as with Redis (they would otherwise all go through the resolvers)."""
        snapshot = self.feed().current
        key = self._key(shape, request.data.get("variables"), operation_name, snapshot)
        generations = self.cache.local_generations(shape.namespaces)
        kept = self._degraded.get(key)
        if kept is not None and kept[1] == generations and kept[0].expires > time.time():
            self._degraded.move_to_end(key)
            await self._answer(send, request, kept[0], snapshot.version)
            return
        await self._execute(scope, receive, send, request, True, snapshot, None, keep_locally=(key, generations))

    async def _keep_locally(self, key: str, generations: dict[str, int], stored: StoredResponse) -> None:
        if len(stored.raw) > self._memory_bytes // 4:
            return
        try:
            stored = await asyncio.get_running_loop().run_in_executor(None, stored.compressed)
        except Exception:
            log.exception("compressing a response failed")
            return
        self._degraded[key] = (stored, generations)
        self._degraded.move_to_end(key)
        # Within the same budget as the hot-response memory (which is not used meanwhile).
        while sum(len(s.raw) + len(s.deflated) for s, _ in self._degraded.values()) > self._memory_bytes:
            self._degraded.popitem(last=False)

    # -- hits ---------------------------------------------------------------------------------------

    async def _stored(self, key: str, raw_meta: bytes | None, generations: dict[str, int]) -> StoredResponse | None:
        if raw_meta is None:
            return None
        remembered = self._memory.get(key)
        if remembered is not None and remembered[0] == raw_meta:
            # The same entry as last time: nothing to decode, but it must still be of these generations.
            self._memory.move_to_end(key)
            _, stored, built_under = remembered
            return stored if built_under == generations and stored.expires > time.time() else None
        try:
            meta = orjson.loads(raw_meta)
            if meta.get("generations") != generations:
                return None
            described = StoredResponse.from_meta(meta, b"", b"")
        except (ValueError, KeyError, TypeError):
            log.warning("stored response %s cannot be decoded; answering without it", key)
            return None
        if not described.fields or described.expires <= time.time():
            return None
        keys = self._keys(key)
        bodies = await self.cache.read_bulk([keys[RAW], keys[DEFLATE]])
        if bodies is None or None in bodies:
            return None
        stored = StoredResponse.from_meta(meta, *bodies)
        self._remember(key, raw_meta, stored, generations)
        return stored

    async def _answer(self, send: Send, request: _Request, stored: StoredResponse, data_version: str) -> None:
        self.hits += 1
        metrics.RESPONSE_HITS.inc()
        for _, field, _, _ in stored.fields:
            metrics.lookup(field, "hit")
        now = time.time()
        gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        etag = f'"{stored.etag}-gz"' if gzip else f'"{stored.etag}"'
        headers = {
            "cache-control": f"public, max-age={max(0, int(stored.expires - now))}",
            "age": str(max(0, int(now - stored.created))),
            "etag": etag,
            "vary": "Accept-Encoding",
        }
        if _etag_matches(request.headers.get("if-none-match"), stored.etag):
            await _send(send, 304, b"", headers)
            return
        report = stored.report(now)
        note(cache=report)
        tail = body_tail(report, data_version)
        if gzip:
            body = gzip_body(stored.deflated, stored.crc, len(stored.raw), tail)
            headers["content-encoding"] = "gzip"
        else:
            body = stored.raw + tail
        headers["content-type"] = "application/json"
        await _send(send, 200, body, headers)

    def _remember(self, key: str, raw_meta: bytes, stored: StoredResponse, generations: dict[str, int]) -> None:
        size = len(stored.raw) + len(stored.deflated)
        if size > self._memory_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_used -= len(old[1].raw) + len(old[1].deflated)
        self._memory[key] = (raw_meta, stored, generations)
        self._memory_used += size
        while self._memory_used > self._memory_bytes:
            _, (_, evicted, _) = self._memory.popitem(last=False)
            self._memory_used -= len(evicted.raw) + len(evicted.deflated)

    # -- misses ---------------------------------------------------------------------------------------

    async def _execute(
        self, scope: Scope, receive: Receive, send: Send, request: _Request, cacheable: bool, snapshot: PriceStore,
        store_as: tuple[str, dict[str, int]] | None, keep_locally: tuple[str, dict[str, int]] | None = None,
    ) -> None:
        """Execute the query on `snapshot`, add HTTP caching headers to the answer, store it when it may be stored."""
        outcome, in_worker = None, False
        # Only while Redis is in use: then a refresh reaches the workers (through Redis generations).
        if cacheable and self.workers is not None and self.cache.state is CacheState.OK and not self.cache.failed_in_this_request():
            outcome = await self._in_worker(request, snapshot)
            in_worker = outcome is not None
        if outcome is None:
            scope[SNAPSHOT_SCOPE_KEY] = snapshot
            outcome = await self._in_server(scope, receive, cacheable, snapshot)
        status, headers, body, stored = outcome
        if stored is None:
            headers.setdefault("cache-control", "no-store")
            await _send(send, status, body, headers)
            return
        now = time.time()
        headers.update({
            "cache-control": f"public, max-age={max(0, int(stored.expires - now))}",
            "age": str(max(0, int(now - stored.created))),
            "etag": f'"{stored.etag}"',
            "vary": "Accept-Encoding",
        })
        if _etag_matches(request.headers.get("if-none-match"), stored.etag):
            await _send(send, 304, b"", headers)
        else:
            await _send(send, status, body, headers)
        if keep_locally is not None:
            task = asyncio.ensure_future(self._keep_locally(*keep_locally, stored))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        if store_as is not None and self._may_store(stored):
            key, generations = store_as
            # After the answer is sent: compressing megabytes is the worker's job, or a thread's here.
            storing = (
                self.workers.store(self._keys(key), generations, stored) if in_worker else self._store(key, generations, stored)
            )
            task = asyncio.ensure_future(storing)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _may_store(self, stored: StoredResponse) -> bool:
        if len(stored.raw) > self.max_entry_bytes:
            metrics.oversize("response")
            return False
        metrics.RESPONSE_MISSES.inc()
        return True

    async def _in_server(self, scope: Scope, receive: Receive, cacheable: bool, snapshot: PriceStore) -> _Outcome:
        status, headers, body = await _capture(self.app, scope, receive)
        results = scope.get(RESULTS_SCOPE_KEY, [])
        note(cache=[e for _, response in results for e in (response.get("extensions") or {}).get("cache") or ()])
        report = _cache_report(results) if status == 200 and cacheable else None
        if not report:
            return status, headers, body, None
        raw = b'{"data":' + orjson.dumps(results[0][1]["data"])
        return status, headers, body, StoredResponse.from_report(raw, report, snapshot.version)

    async def _in_worker(self, request: _Request, snapshot: PriceStore) -> _Outcome | None:
        variables = request.data.get("variables")
        if not isinstance(variables, (dict, type(None))):
            return None  # the GraphQL app answers that with its own error
        assert self.workers is not None
        job = Job(request.data["query"], variables, request.data.get("operationName"), request_id.get(), snapshot.version)
        answer = await self.workers.execute(job, snapshot)
        if answer is None:
            return None
        note(cache=answer.report)
        return 200, {"content-type": "application/json"}, answer.prefix + answer.tail, answer.stored

    async def _store(self, key: str, generations: dict[str, int], stored: StoredResponse) -> None:
        try:
            # Compressing megabytes takes a while; zlib lets go of the GIL, so a thread keeps the loop free.
            stored = await asyncio.get_running_loop().run_in_executor(None, stored.compressed)
            meta = await stored_entries.write(self.cache, self._keys(key), generations, stored)
            if meta is not None:
                self._remember(key, meta, stored, generations)
        except Exception:
            # Storing is an optimization: the answer has been sent; the next request computes again.
            log.exception("storing a response failed")

    # -- keys and persisted queries ------------------------------------------------------------------

    @staticmethod
    def _key(shape: QueryShape, variables: Any, operation_name: str | None, snapshot: PriceStore) -> str:
        parts = {
            "q": shape.normalized, "v": variables, "op": operation_name, "data": snapshot.version,
            "code": CODE_VERSION,  # answers of older code are never served after a deploy
        }
        return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]

    def _keys(self, key: str) -> dict[str, str]:
        return {part: self.cache.key("response", key, part) for part in (META, RAW, DEFLATE)}

    async def _resolve_persisted_query(self, request: _Request) -> dict | None:
        """Apollo's Automatic Persisted Queries; a refusal body, or None to go on."""
        extensions = request.data.get("extensions")
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if not isinstance(persisted, dict):
            return None
        digest = persisted.get("sha256Hash")
        if persisted.get("version") != 1 or not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            return _error("persistedQuery needs version 1 and a sha256Hash of 64 lower-case hex digits", "PERSISTED_QUERY_INVALID")
        query = request.data.get("query")
        apq_key = self.cache.key("apq", digest)
        if isinstance(query, str):
            if hashlib.sha256(query.encode()).hexdigest() != digest:
                return _error("provided sha256Hash does not match the query", "PERSISTED_QUERY_HASH_MISMATCH")
            await self.cache.write({}, {apq_key: query.encode()}, self.apq_ttl)
            return None
        found = await self.cache.read((), [apq_key])
        if found is None or found[1][0] is None:
            return _error("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")
        request.data["query"] = found[1][0].decode()
        request.replay_body = orjson.dumps(request.data) if request.method == "POST" else request.replay_body
        return None


# --- ASGI plumbing ----------------------------------------------------------------------------------


RESULTS_SCOPE_KEY = "gql.results"
# The data snapshot of the request, for the GraphQL app's context (every field is answered from it).
SNAPSHOT_SCOPE_KEY = "gql.snapshot"


def record_result(scope: Scope, has_errors: bool, response: dict[str, Any]) -> None:
    """Called by the GraphQL app for each operation it answers, so that this layer can store it."""
    scope.setdefault(RESULTS_SCOPE_KEY, []).append((has_errors, response))


async def _read(scope: Scope, receive: Receive) -> tuple[_Request | None, bytes]:
    headers = Headers(scope=scope)
    if scope["method"] == "GET":
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "query" not in params and "extensions" not in params:
            return None, b""  # GraphiQL, or a request the GraphQL app will answer with its own error
        data: dict[str, Any] = {"query": params.get("query"), "operationName": params.get("operationName")}
        for name in ("variables", "extensions"):
            if name in params:
                try:
                    data[name] = orjson.loads(params[name])
                except orjson.JSONDecodeError:
                    return None, b""
        return _Request("GET", headers, data, None), b""
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if "application/json" not in headers.get("content-type", ""):
        return None, body
    data = _checked_json(body)
    return (_Request("POST", headers, data, body) if isinstance(data, dict) else None), body


class _BadRequest(ValueError):
    """A request body that no GraphQL server could read; the message says what is expected."""


def _checked_json(body: bytes) -> Any:
    """The JSON of a POST body, refused unless it is an operation object or a batch of them."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"the request body is not valid JSON in UTF-8 ({exc})") from None
    if not isinstance(data, dict) and not (isinstance(data, list) and all(isinstance(op, dict) for op in data)):
        raise _BadRequest(
            'the request body must be a JSON object such as {"query": "{ indexes { code } }"}, or an array of such objects'
        )
    # Only a \uD800-\uDFFF escape can make a string that is not Unicode text; such bodies are rare.
    if b"\\ud" in body.lower():
        try:
            orjson.dumps(data)  # refuses lone surrogates
        except TypeError:
            raise _BadRequest("the request body holds a string that is not valid Unicode (a lone surrogate escape)") from None
    return data


def _rewritten(scope: Scope, receive: Receive, request: _Request) -> tuple[Scope, Receive]:
    """The request as the GraphQL app must see it (with a persisted query filled in)."""
    if request.method == "POST":
        return scope, replaying(receive, request.replay_body or b"")
    if request.data.get("query") is None:
        return scope, receive
    params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    params["query"] = request.data["query"]
    return {**scope, "query_string": urlencode(params).encode("latin-1")}, receive


def replaying(receive: Receive, body: bytes) -> Receive:
    """A receive that delivers `body` (already read) first, then whatever `receive` delivers."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], bytes]:
    status, headers, chunks = 500, {}, []

    async def keep(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return status, headers, b"".join(chunks)


_Outcome = tuple[int, dict[str, str], bytes, "StoredResponse | None"]


def _cache_report(results: list[tuple[bool, dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """The cache report of a single operation answered without errors, else None."""
    if len(results) != 1:
        return None
    has_errors, response = results[0]
    extensions = response.get("extensions") or {}
    if has_errors or "data" not in response or set(extensions) != {"cache", "dataVersion"}:
        return None
    return extensions["cache"] if stored_entries.storable(extensions["cache"]) else None


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return etag in tags or f"{etag}-gz" in tags


def _error(message: str, code: str) -> dict:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


async def _send_json(send: Send, status: int, payload: dict, headers: dict[str, str]) -> None:
    await _send(send, status, orjson.dumps(payload), {**headers, "content-type": "application/json"})


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    if status != 304:
        headers["content-length"] = str(len(body))
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    })
    await send({"type": "http.response.body", "body": body if status != 304 else b""})
