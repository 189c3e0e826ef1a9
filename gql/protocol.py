"""GraphQL over HTTP: what a well-formed request to /graphql is, and the coded error for one that is not.

Responses are `application/json`, and statuses follow the GraphQL-over-HTTP spec for that media type:
a request no GraphQL server could read is a 4xx (405 wrong method, 415 wrong content type, 400 the rest)
with a JSON GraphQL error; a well-formed request is answered 200, whatever GraphQL errors its document
or its execution raise (an unknown `operationName`, a parse or validation error, a bad argument).
Every refusal says what was wrong and what to send instead, under a stable `extensions.code`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson
from graphql import FieldNode, GraphQLError, OperationDefinitionNode, OperationType, parse, print_ast
from graphql.language import Visitor, visit
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gql.asgi import GraphQLRequest, error_body, send_json
from gql.errors import BAD_REQUEST, shown

METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
# A subscription sent as an HTTP request: it is served over the WebSocket at the same URL (gql/subscriptions.py).
WEBSOCKET_REQUIRED = "WEBSOCKET_REQUIRED"
# Apollo Server's code for a document whose operation to run cannot be chosen; clients know it.
OPERATION_RESOLUTION_FAILURE = "OPERATION_RESOLUTION_FAILURE"

_EXAMPLE = '{"query": "{ indexes { code } }", "variables": {}}'
_PARAMETERS = ("query", "variables", "operationName", "extensions")


class RequestError(Exception):
    """A request that is not a well-formed GraphQL-over-HTTP request: answered `status` with a coded error."""

    def __init__(self, message: str, code: str = BAD_REQUEST, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.headers = headers or {}


async def send_refusal(send: Send, refused: RequestError) -> None:
    await send_json(send, refused.status, error_body(refused.message, refused.code), {**refused.headers, "cache-control": "no-store"})


def refuse_method(method: str) -> RequestError:
    return RequestError(
        f"/graphql takes GET (queries) and POST (queries and mutations), not {shown(method)}",
        METHOD_NOT_ALLOWED, 405, {"allow": "GET, POST"},
    )


def refuse_subscription(where: str = "") -> RequestError:
    return RequestError(
        f"{where}a subscription is not served over HTTP: open a WebSocket to this URL (/graphql) with the graphql-transport-ws "
        "subprotocol and send it in a subscribe message (docs/api.md, Subscriptions); GET and POST run queries and mutations",
        WEBSOCKET_REQUIRED, 400,
    )


@dataclass(frozen=True)
class Batch:
    """A POST body holding an array of operations, each checked like a single one."""

    operations: list[dict[str, Any]]


async def read_request(scope: Scope, receive: Receive, *, max_batch: int, ide: bool) -> tuple[GraphQLRequest | Batch | None, bytes]:
    """The operation (or batch) of a request and the body read, or RequestError. None: a browser asking
    for the GraphiQL page (`ide`: the page is served)."""
    headers = Headers(scope=scope)
    if scope["method"] == "GET":
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        if not any(name in params for name in _PARAMETERS):
            if ide and any(kind in headers.get("accept", "") for kind in ("text/html", "*/*")):
                return None, b""
            raise RequestError(f"GET /graphql needs a `query` parameter (URL-encoded), e.g. /graphql?query={{indexes{{code}}}}; "
                               f"or POST a JSON body such as {_EXAMPLE}")
        data: dict[str, Any] = {name: params[name] for name in ("query", "operationName") if name in params}
        for name in ("variables", "extensions"):
            if name in params:
                try:
                    data[name] = orjson.loads(params[name])
                except orjson.JSONDecodeError:
                    raise RequestError(
                        f"the `{name}` parameter is not JSON: {shown(params[name])}; send it as a URL-encoded JSON object, "
                        f"e.g. {name}={_example_of(name)}"
                    ) from None
        check_parameters(data)
        return GraphQLRequest("GET", headers, data, None), b""
    body = await _body(receive)
    _check_content_type(headers.get("content-type"))
    data = _json(body)
    if isinstance(data, list):
        if not data:
            raise RequestError("the batch is empty: send an array of one or more operations, or a single operation object")
        if len(data) > max_batch:
            raise RequestError(f"a batch holds at most {max_batch} operations (GQL_MAX_BATCH); this one holds {len(data)}: "
                               "send the rest in another request", BATCH_TOO_LARGE)
        for number, operation in enumerate(data, 1):
            check_parameters(operation, f"operation {number} of the batch: ")
            if not isinstance(operation.get("query"), str):
                raise RequestError(f"operation {number} of the batch: persisted queries are not resolved inside a batch; send its `query`")
        return Batch(data), body
    check_parameters(data)
    return GraphQLRequest("POST", headers, data, body), body


def _example_of(name: str) -> str:
    return '{"codes":["HSI"]}' if name == "variables" else '{"persistedQuery":{"version":1,"sha256Hash":"<64 hex digits>"}}'


async def _body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return
    expected = f"POST /graphql takes Content-Type: application/json with a JSON body such as {_EXAMPLE}"
    if not media_type:
        found = "this request has no Content-Type"
    elif media_type == "application/graphql":
        found = "application/graphql (the bare document as the body) is not accepted: put the document in the body's \"query\""
    else:
        found = f"this request has Content-Type {shown(media_type)}"
    raise RequestError(f"{expected}; {found}", UNSUPPORTED_MEDIA_TYPE, 415)


def _json(body: bytes) -> Any:
    """The JSON of a POST body: an operation object or an array of them."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON in UTF-8 ({exc}); send a JSON object such as {_EXAMPLE}") from None
    if not isinstance(data, dict) and not (isinstance(data, list) and all(isinstance(op, dict) for op in data)):
        raise RequestError(f"the request body must be a JSON object such as {_EXAMPLE}, or an array of such objects; got {_kind(data)}")
    # Only a \uD800-\uDFFF escape can make a string that is not Unicode text; such bodies are rare.
    if b"\\ud" in body.lower():
        try:
            orjson.dumps(data)  # refuses lone surrogates
        except TypeError:
            raise RequestError("the request body holds a string that is not valid Unicode (a lone surrogate escape)") from None
    return data


def check_parameters(data: dict[str, Any], where: str = "") -> None:
    """The request parameters have the types the spec gives them; a persisted query may leave out `query`."""
    query, variables, name, extensions = (data.get(k) for k in _PARAMETERS)
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(f"{where}`extensions` must be a JSON object (or null); got {_kind(extensions)}")
    if query is None and not (extensions or {}).get("persistedQuery"):
        raise RequestError(f"{where}the request has no `query`: send the GraphQL document in it, as in {_EXAMPLE}")
    if query is not None and not isinstance(query, str):
        raise RequestError(f"{where}`query` must be a string holding a GraphQL document; got {_kind(query)}")
    if variables is not None and not isinstance(variables, dict):
        raise RequestError(f'{where}`variables` must be a JSON object of variable values, e.g. {{"codes": ["HSI"]}}; '
                           f"got {_kind(variables)}")
    if name is not None and not isinstance(name, str):
        raise RequestError(f"{where}`operationName` must be a string naming an operation of the document (or null); got {_kind(name)}")


def _kind(value: object) -> str:
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else f"{kind.get(type(value), 'a value')} {shown(value)}"


# --- what a document is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """What the HTTP layer needs to know of a document and operation name (computed once per pair)."""

    normalized: str  # whitespace and comments do not matter
    operation: OperationType | None  # of the operation that runs; None when it cannot be chosen
    problem: str | None  # why no operation can be chosen (an OPERATION_RESOLUTION_FAILURE)
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
    chosen, problem = _choose(operations, operation_name)
    fields = _Fields()
    visit(document, fields)
    namespaces = tuple(sorted(fields.names & cached_fields))
    cacheable = (
        chosen is not None
        and chosen.operation is OperationType.QUERY
        and not {"__schema", "__type"} & fields.names
        and bool(namespaces)
    )
    return QueryShape(print_ast(document), chosen.operation if chosen else None, problem, cacheable, namespaces)


def _choose(operations: list[OperationDefinitionNode], name: str | None) -> tuple[OperationDefinitionNode | None, str | None]:
    """The operation to run, as the spec's GetOperation chooses it, or why there is none."""
    names = ", ".join(o.name.value if o.name else "(anonymous)" for o in operations)
    if name is not None:
        named = [o for o in operations if o.name is not None and o.name.value == name]
        if named:
            return named[0], None
        held = f"its operations: {names}" if operations else "it holds no operation"
        return None, f"the document has no operation named {shown(name)}; {held}"
    if not operations:
        return None, "the document holds no operation (only fragments): add one, e.g. query { ...F }"
    if len(operations) > 1:
        return None, f"the document holds {len(operations)} operations ({names}): name the one to run in `operationName`"
    return operations[0], None
