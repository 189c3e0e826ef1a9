"""Executing one cacheable query into an encoded answer: the same code in the server and in its query workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from strawberry.schema.base import BaseSchema
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gql.data import PriceStore
from gql.encoding import dumps
from gql.schema import report as cache_report
from gql.schema.report import FieldReport
from gql.schema.resolvers import Context
from gql.service import Service
from gql.stored import StoredResponse


@dataclass(frozen=True)
class Operation:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


@dataclass(frozen=True)
class Answer:
    """An encoded answer: `prefix + tail` is the body; `prefix` is `{"data":...` when there are no errors."""

    prefix: bytes
    tail: bytes
    report: list[FieldReport]  # extensions.cache of the answer
    stored: StoredResponse | None  # what may be cached of it (without the compressed copy)

    @property
    def body(self) -> bytes:
        return self.prefix + self.tail


async def execute(schema: BaseSchema, service: Service, operation: Operation, snapshot: PriceStore) -> Answer:
    """Answer a query (never a mutation) from `snapshot`."""
    result = await schema.execute(
        operation.query,
        variable_values=operation.variables,
        context_value=Context(request=None, service=service, snapshot=snapshot),
        operation_name=operation.operation_name,
        allowed_operation_types={OperationType.QUERY},
    )
    return encode(result, snapshot)


def encode(result: ExecutionResult, snapshot: PriceStore) -> Answer:
    """The body in the order Strawberry writes it; storable when it has no errors and no stale value."""
    prefix = b'{"data":' + orjson.dumps(result.data)
    tail = b""
    if result.errors:
        tail += b',"errors":' + dumps([error.formatted for error in result.errors])
    extensions = result.extensions or {}
    if extensions:
        tail += b',"extensions":' + dumps(extensions)
    tail += b"}"
    report = cache_report.from_extensions(extensions)
    if result.errors or not cache_report.storable(report):
        return Answer(prefix, tail, report, None)
    return Answer(prefix, tail, report, StoredResponse.from_report(prefix, report, snapshot.version))
