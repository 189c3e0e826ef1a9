"""Columnar completion gives exactly what graphql-core's field-by-field execution gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import strawberry

from gql.columns import ColumnarExecutionContext, ColumnarList


@strawberry.type
class Point:
    date: dt.date
    close: float
    label: str

    @strawberry.field
    def doubled(self) -> float:
        return self.close * 2


COLUMNS: dict[str, list[Any]] = {"date": ["2024-01-02", "2024-01-03", "2024-01-04"], "close": [1.5, 2.25, -3.0], "label": ["a", "b", "c"]}


def make_point(date: str, close: float, label: str) -> Point:
    return Point(date=dt.date.fromisoformat(date), close=close, label=label)


@strawberry.type
class Query:
    @strawberry.field
    def points(self) -> list[Point]:
        return ColumnarList(COLUMNS, make_point)  # type: ignore[return-value]

    @strawberry.field
    def empty(self) -> list[Point]:
        return ColumnarList({"date": [], "close": [], "label": []}, make_point)  # type: ignore[return-value]


plain = strawberry.Schema(query=Query)
columnar = strawberry.Schema(query=Query, execution_context_class=ColumnarExecutionContext)


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("{ points { date close label } }", None),
        ("{ points { close date } }", None),
        ("{ points { d: date c: close again: close } }", None),
        ("{ points { __typename date } }", None),
        ("{ points { ...F } } fragment F on Point { date ... on Point { close } }", None),
        ("query($s: Boolean!) { points { date close @skip(if: $s) label @include(if: $s) } }", {"s": True}),
        ("query($s: Boolean!) { points { date close @skip(if: $s) label @include(if: $s) } }", {"s": False}),
        ("{ points { date doubled } }", None),  # a field that is not a column: the usual way
        ("{ empty { date } }", None),
        ("{ a: points { date } b: points { close } }", None),
    ],
)
def test_same_result_as_field_by_field_execution(query, variables):
    expected = plain.execute_sync(query, variable_values=variables)
    got = columnar.execute_sync(query, variable_values=variables)
    assert expected.errors is None and got.errors is None
    assert got.data == expected.data
    assert list(got.data.values())[0] is not None


def test_key_order_follows_the_query():
    data = columnar.execute_sync("{ points { label close date } }").data
    assert list(data["points"][0]) == ["label", "close", "date"]


def test_columns_must_have_one_length():
    with pytest.raises(ValueError, match="different lengths"):
        ColumnarList({"a": [1, 2], "b": [1]}, dict)


def test_iterating_builds_rows():
    assert [p.label for p in ColumnarList(COLUMNS, make_point)] == ["a", "b", "c"]


def test_columns_are_completed_without_building_a_row():
    """The fast path is taken at all: if graphql-core stops calling the overridden methods (they are not
    a public hook; see gql/columns.py), answers stay right but every row is built again. This catches it."""
    built = []

    def counting_point(date: str, close: float, label: str) -> Point:
        built.append(date)
        return make_point(date, close, label)

    @strawberry.type
    class Counting:
        @strawberry.field
        def points(self) -> list[Point]:
            return ColumnarList(COLUMNS, counting_point)  # type: ignore[return-value]

    result = strawberry.Schema(query=Counting, execution_context_class=ColumnarExecutionContext).execute_sync(
        "{ points { date close label } }"
    )
    assert result.errors is None and len(result.data["points"]) == 3
    assert built == []  # no row object was made: completed from the columns
