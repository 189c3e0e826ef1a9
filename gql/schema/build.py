"""The schema assembled from the types and resolvers, with the limits and switches of the settings."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection
from strawberry.schema.config import StrawberryConfig

from gql.columns import ColumnarExecutionContext
from gql.config import Settings
from gql.errors import ErrorPolicy, is_unexpected
from gql.limits import limit_extensions
from gql.schema.report import CacheReportExtension
from gql.schema.resolvers import Mutation, Query, Subscription
from gql.schema.types import CACHED_FIELDS, DATE


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Bad input is the client's business, answered in the response; only our own failures are logged.
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


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
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(batching_config={"max_operations": settings.max_batch}),
        execution_context_class=ColumnarExecutionContext,
        scalar_overrides={dt.date: DATE},
    )
