"""The cache report: one `extensions.cache` entry per cached field, in one typed shape.

`FieldReport` is what every layer reads (the response cache, the query workers, the access log); its
JSON form, with the key names clients see, is made and read here only.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.types import Info
from strawberry.types.graphql import OperationType

from gql.cache import CacheResult, CacheStatus


@dataclass(frozen=True, slots=True)
class FieldReport:
    path: str  # response path of the field, e.g. "yieldThisYear" or an alias
    field: str  # the cached field (its cache namespace)
    status: CacheStatus
    age_seconds: float
    ttl_seconds: float
    error: str | None = None  # why a stale value stands in (fail-safe)

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "path": self.path,
            "field": self.field,
            "status": self.status.value,
            "ageSeconds": round(self.age_seconds, 3),
            "ttlSeconds": round(self.ttl_seconds, 3),
        }
        if self.error is not None:
            entry["error"] = f"recomputing failed ({self.error}); this is the last good value, kept by the fail-safe"
        return entry

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> FieldReport:
        return cls(
            str(entry["path"]), str(entry["field"]), CacheStatus(entry["status"]), float(entry["ageSeconds"]),
            float(entry["ttlSeconds"]), entry.get("error"),
        )


CacheReport = Sequence[FieldReport]


def as_json(report: CacheReport) -> list[dict[str, Any]]:
    return [entry.as_json() for entry in report]


def from_extensions(extensions: dict[str, Any] | None) -> list[FieldReport]:
    """The cache report of a GraphQL response's extensions."""
    return [FieldReport.from_json(entry) for entry in (extensions or {}).get("cache") or ()]


def storable(report: CacheReport) -> bool:
    """Whether an answer with this cache report may be stored: not one with a stale value in it,
    which is being recomputed (or stands in for a failed computation) and must not be replayed."""
    return bool(report) and all(entry.status is not CacheStatus.STALE for entry in report)


# The cache entries of the operation being executed. A context variable rather than a Context
# attribute: the operations of a batch share one Context but each runs in its own task.
_cache_report: contextvars.ContextVar[list[FieldReport] | None] = contextvars.ContextVar("cache_report", default=None)


def record(info: Info, result: CacheResult) -> None:
    """Report how a cached field of the operation being executed was answered."""
    report = _cache_report.get()
    if report is None:
        return
    path = ".".join(str(p) for p in info.path.as_list())
    report.append(FieldReport(path, info.field_name, result.status, result.age_seconds, result.ttl_seconds, result.error))


class CacheReportExtension(SchemaExtension):
    """Puts one `extensions.cache` entry per cached field into every response, in query order, and
    `extensions.dataVersion`: the version of the data that every field of the response comes from."""

    def on_operation(self) -> Iterator[None]:
        token = _cache_report.set([])
        yield
        self._report = _cache_report.get() or []
        _cache_report.reset(token)

    def get_results(self) -> dict[str, Any]:
        if _is_subscription(self.execution_context):
            # A subscription's events carry their data version in their data; the connection's snapshot
            # (taken when it opened) would name an older one. No event has a cached field.
            return {}
        report = list(getattr(self, "_report", None) or _cache_report.get() or [])
        result = self.execution_context.result
        data = getattr(result, "data", None)
        if isinstance(data, dict):
            order = {name: i for i, name in enumerate(data)}
            report.sort(key=lambda entry: order.get(entry.path.split(".")[0], len(order)))
        return {"cache": as_json(report), "dataVersion": self.execution_context.context.snapshot.version}


def _is_subscription(context: Any) -> bool:
    try:
        return context.operation_type is OperationType.SUBSCRIPTION
    except RuntimeError:  # no document, or no operation to run in it
        return False
