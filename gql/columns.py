"""Columnar lists: long lists of leaf-only objects completed in one step instead of field by field.

graphql-core resolves and completes every field of every object: for a chart of 56,000 points that
is 220,000 field executions, about 0.8 s. A `ColumnarList` holds the points as columns of values
that are already in their serialized form (ISO dates, floats); `ColumnarExecutionContext` turns it
into the response list with one comprehension, honouring aliases, fragments, `@skip`/`@include` and
`__typename` through graphql-core's own field collection.

Why methods of graphql-core's ExecutionContext are overridden: graphql-core has no public hook for
completing a list (middleware and custom resolvers act per field, after the list is already being
completed item by item), and Strawberry's only door into execution is `execution_context_class`.
`complete_list_value` and `collect_subfields` are therefore overridden, against the graphql-core range
pinned in pyproject.toml (>=3.3.0,<3.4, the one tested). tests/test_columns.py checks both that the
answers equal graphql-core's own and that the columnar path is taken, so an upgrade that changes these
methods fails there instead of silently slowing charts down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any

from graphql import GraphQLList, get_nullable_type
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext


class ColumnarList:
    """Rows stored as named columns of serialized leaf values.

    Iterating it builds one object per row with `make_row`, so that any executor still gets a plain
    list of objects; `ColumnarExecutionContext` never iterates it.
    """

    __slots__ = ("columns", "length", "make_row")

    def __init__(self, columns: Mapping[str, Sequence[Any]], make_row: Callable[..., Any]) -> None:
        lengths = {len(column) for column in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self.columns = columns
        self.length = lengths.pop() if lengths else 0
        self.make_row = make_row

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        names = list(self.columns)
        for row in zip(*self.columns.values(), strict=True):
            yield self.make_row(**dict(zip(names, row, strict=True)))


class ColumnarExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def complete_list_value(self, return_type: GraphQLList, field_details_list, info, path, result, *args: Any) -> Any:
        if isinstance(result, ColumnarList):
            completed = self._complete_columns(return_type, field_details_list, result)
            if completed is not None:
                return completed
        return super().complete_list_value(return_type, field_details_list, info, path, result, *args)

    def _complete_columns(self, return_type: GraphQLList, field_details_list, result: ColumnarList) -> list | None:
        item_type = get_nullable_type(return_type.of_type)
        grouped = self.collect_subfields(item_type, field_details_list).grouped_field_set
        keys: list[str] = []
        columns: list[Iterable[Any]] = []
        for key, details in grouped.items():
            name = details[0].node.name.value
            if name == "__typename":
                columns.append(repeat(item_type.name, result.length))
            elif name in result.columns:
                columns.append(result.columns[name])
            else:
                return None  # a field that is not a column: let graphql-core do it the usual way
            keys.append(key)
        return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
