"""The GraphQL types of the API, and how cached values become them."""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Any

import strawberry
from graphql import GraphQLError

from gql.columns import ColumnarList
from gql.errors import shown
from gql.feed import DataChange

# The cached fields: each is a namespace of the result cache (refreshCache invalidates it as a whole).
CHART_NAMESPACE = "indexChart"
YIELD_NAMESPACE = "yieldThisYear"
CACHED_FIELDS = frozenset({CHART_NAMESPACE, YIELD_NAMESPACE})


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(value: object) -> dt.date:
    """A Date argument: only "YYYY-MM-DD" (what Python's fromisoformat also takes, such as 20210130, is refused)."""
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise GraphQLError(f"{shown(value)} is not a day of the calendar; a Date is \"YYYY-MM-DD\", e.g. \"2021-01-29\"") from None
    raise GraphQLError(f"a Date is a string \"YYYY-MM-DD\", e.g. \"2021-01-29\"; got {shown(value)}")


# Strawberry's own Date takes whatever fromisoformat does and says "Invalid isoformat string" when it fails.
DATE = strawberry.scalar(
    name="Date", description='A calendar day as a string "YYYY-MM-DD".', serialize=dt.date.isoformat, parse_value=parse_date,
)


@strawberry.enum(description="Spacing of chart points: every trading day, or the last close of each week or month.")
class Frequency(enum.Enum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


@strawberry.enum(description="A cached field that refreshCache can recompute.")
class CacheTarget(enum.Enum):
    INDEX_CHART = "INDEX_CHART"
    YIELD_THIS_YEAR = "YIELD_THIS_YEAR"


# The cached field (namespace) each target recomputes.
TARGET_FIELDS = {CacheTarget.INDEX_CHART: CHART_NAMESPACE, CacheTarget.YIELD_THIS_YEAR: YIELD_NAMESPACE}


@strawberry.type(description="A market index in the data set.")
class IndexInfo:
    code: str
    name: str
    source: str = strawberry.field(description="Where the prices come from: the synthetic sample or an imported file.")
    first_date: dt.date
    last_date: dt.date


@strawberry.type(description="One chart point.")
class PricePoint:
    date: dt.date
    close: float
    normalized: float = strawberry.field(description="Close relative to the first point of the range, which is 100.")
    drawdown: float = strawberry.field(description="Percent below the highest point so far in the range (<= 0).")


@strawberry.type(description="One index's chart over the range.")
class IndexSeries:
    code: str
    name: str
    total_return: float = strawberry.field(description="Percent change from the first point to the last.")
    annualized_volatility: float = strawberry.field(
        description="Standard deviation of daily log returns in the range x sqrt(252), in percent; 0 with fewer than three closes."
    )
    max_drawdown: float = strawberry.field(description="Lowest drawdown of the points, in percent (<= 0).")
    _value: strawberry.Private[dict[str, Any]]

    @strawberry.field(description="Points in date order.")
    def points(self) -> list[PricePoint]:
        v = self._value
        columns = {"date": v["dates"], "close": v["close"], "normalized": v["normalized"], "drawdown": v["drawdown"]}
        return ColumnarList(columns, _price_point)  # type: ignore[return-value]  # completed as a list, see gql.columns


def _price_point(date: str, close: float, normalized: float, drawdown: float) -> PricePoint:
    return PricePoint(date=dt.date.fromisoformat(date), close=close, normalized=normalized, drawdown=drawdown)


@strawberry.type(description="Chart data of several indexes over one range.")
class IndexChart:
    frequency: Frequency
    start: dt.date = strawberry.field(description="First day of the range (the argument, or the first data of the indexes).")
    end: dt.date = strawberry.field(description="Last day of the range (the argument, or the last data of the indexes).")
    series: list[IndexSeries]

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> IndexChart:
        """The type of a cached chart value (gql.analytics.index_chart)."""
        return cls(
            frequency=Frequency(value["frequency"]),
            start=dt.date.fromisoformat(value["start"]),
            end=dt.date.fromisoformat(value["end"]),
            series=[
                IndexSeries(
                    code=s["code"], name=s["name"], total_return=s["total_return"],
                    annualized_volatility=s["annualized_volatility"], max_drawdown=s["max_drawdown"], _value=s,
                )
                for s in value["series"]
            ],
        )


@strawberry.type(description="Change of an index since the last close of the previous calendar year.")
class IndexYield:
    code: str
    name: str
    yield_pct: float = strawberry.field(description="Percent change from baseClose to lastClose (-8.08 means -8.08 %).")
    base_date: dt.date
    base_close: float
    last_date: dt.date = strawberry.field(
        description="Date of the last close on or before asOf (earlier when the index's data ends before asOf)."
    )
    last_close: float
    base_is_first_close_of_year: bool = strawberry.field(
        description="True when the index has no close in the previous year, so the base is its first close of this year."
    )

    @classmethod
    def from_value(cls, row: dict[str, Any]) -> IndexYield:
        """The type of one row of a cached yields value (gql.analytics.yields_this_year)."""
        return cls(
            code=row["code"], name=row["name"], yield_pct=row["yield_pct"],
            base_date=dt.date.fromisoformat(row["base_date"]), base_close=row["base_close"],
            last_date=dt.date.fromisoformat(row["last_date"]), last_close=row["last_close"],
            base_is_first_close_of_year=row["base_is_first_close_of_year"],
        )


@strawberry.type
class RefreshedField:
    target: CacheTarget
    duration_ms: float
    coalesced: bool = strawberry.field(
        description="True when this call joined a refresh of the same data already under way (one recomputation for both)."
    )


@strawberry.type
class RefreshResult:
    refreshed: list[RefreshedField]
    data_version: str = strawberry.field(
        description="The data version the fields were recomputed from: what the data source held when the call began."
    )


@strawberry.type(description="A new version of the data set: this server process answers from it from now on.")
class DataChanged:
    version: str = strawberry.field(
        description="The new data version: extensions.dataVersion of the answers from now on, data.version of /healthz."
    )
    previous_version: str = strawberry.field(description="The data version answered from before this change.")
    codes: list[str] = strawberry.field(
        description="Indexes added, removed or changed (closes, name or source), in data-set order, removed ones last."
    )
    last_date: dt.date = strawberry.field(description="The latest close in the new data set, of any index.")

    @classmethod
    def of(cls, change: DataChange) -> DataChanged:
        return cls(
            version=change.version, previous_version=change.previous, codes=list(change.codes),
            last_date=dt.date.fromisoformat(change.last_date),
        )
