"""Pure, vectorized pandas/numpy analytics: prices in, plain JSON-ready values out (no I/O)."""

from __future__ import annotations

import datetime as dt
import enum
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, cast

import numpy as np
import pandas as pd

from gql.data import PriceStore

TRADING_DAYS_PER_YEAR = 252
_NS_PER_DAY = 86_400 * 10**9
_EPOCH = dt.date(1970, 1, 1)

class Frequency(enum.Enum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


class SeriesChart(TypedDict):
    code: str
    name: str
    dates: list[str]
    close: list[float]
    normalized: list[float]
    drawdown: list[float]
    total_return: float
    annualized_volatility: float
    max_drawdown: float


class Chart(TypedDict):
    frequency: str
    start: str
    end: str
    series: list[SeriesChart]


class YearToDate(TypedDict):
    code: str
    name: str
    yield_pct: float
    base_date: str
    base_close: float
    last_date: str
    last_close: float
    base_is_first_close_of_year: bool


class NoDataError(ValueError):
    """The asked range or date holds no close of an index."""


@dataclass(frozen=True)
class DailySeries:
    """An index's whole daily history in the forms every chart slices: computed once per price series."""

    days: np.ndarray  # int64, days since 1970-01-01, ascending
    closes: np.ndarray  # float64
    log_closes: np.ndarray  # float64
    dates: np.ndarray  # object array of ISO date strings (formatting dates is the costly part of a chart)


# By the identity of the price series (Series are not hashable): a reloaded data set brings new
# series, and an entry is dropped when its series is collected. Memoization only: results are the
# same with or without it.
_daily_series: dict[int, DailySeries] = {}
_daily_series_lock = threading.Lock()


def daily_series(closes: pd.Series) -> DailySeries:
    """The memoized daily series of a closes series (see DailySeries)."""
    series = _daily_series.get(id(closes))
    if series is None:
        days = closes.index.as_unit("ns").asi8 // _NS_PER_DAY
        values = closes.to_numpy(dtype="float64")
        dates = np.array(np.datetime_as_string(days.astype("datetime64[D]")).tolist(), dtype=object)
        series = DailySeries(days, values, np.log(values), dates)
        with _daily_series_lock:
            if id(closes) not in _daily_series:
                _daily_series[id(closes)] = series
                weakref.finalize(closes, _daily_series.pop, id(closes), None)
    return series


def series_chart(closes: pd.Series, start: dt.date, end: dt.date, frequency: Frequency) -> dict:
    """Chart points and summary statistics of one index between `start` and `end` (inclusive).

    Points are the daily closes, or the last close of each calendar week (Monday to Sunday) or
    month. `normalized` is 100 at the first point and `drawdown` is measured from the running
    maximum of the points, so both describe the line that is drawn; `total_return` and
    `max_drawdown` agree with those points. Volatility always uses daily log returns.

    Any range and frequency is a slice (and a pick) of the index's memoized daily series: only
    the range-relative columns are computed per call.
    """
    whole = daily_series(closes)
    lo = int(np.searchsorted(whole.days, _epoch_day(start), side="left"))
    hi = int(np.searchsorted(whole.days, _epoch_day(end), side="right"))
    if hi <= lo:
        raise NoDataError(f"no close between {start} and {end}")
    days = whole.days[lo:hi]
    daily = whole.closes[lo:hi]

    keep: slice | np.ndarray
    if frequency is Frequency.DAILY:
        keep = slice(None)
    else:
        period = _week_numbers(days) if frequency is Frequency.WEEKLY else _month_numbers(days)
        keep = np.flatnonzero(np.r_[period[1:] != period[:-1], True])
    points = daily[keep]
    running_max = np.maximum.accumulate(points)
    drawdown = (points / running_max - 1.0) * 100.0
    # Exact zeros at new highs (not -0.0), so clients can test `drawdown == 0`.
    drawdown[points == running_max] = 0.0

    log_returns = np.diff(whole.log_closes[lo:hi])
    volatility = float(log_returns.std(ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR) * 100.0) if log_returns.size > 1 else 0.0
    return {
        "dates": whole.dates[lo:hi][keep].tolist(),
        "close": points.tolist(),
        "normalized": (points / points[0] * 100.0).tolist(),
        "drawdown": drawdown.tolist(),
        "total_return": float((points[-1] / points[0] - 1.0) * 100.0),
        "annualized_volatility": volatility,
        "max_drawdown": float(drawdown.min()),
    }


def _epoch_day(day: dt.date) -> int:
    return (day - _EPOCH).days


def _week_numbers(days: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday: shifting by 3 days makes weeks run Monday to Sunday.
    return (days + 3) // 7


def _month_numbers(days: np.ndarray) -> np.ndarray:
    months = days.astype("datetime64[D]").astype("datetime64[M]")
    return months.astype("int64")


def year_to_date(closes: pd.Series, as_of: dt.date) -> dict:
    """Percent change from the last close of the previous year to the last close on or before `as_of`,
    which must be in `as_of`'s year: an index with no close in that year has no year-to-date for it.

    An index with no close in the previous year is measured from its first close of the year,
    and `base_is_first_close_of_year` says so.
    """
    index = closes.index
    last = int(index.searchsorted(pd.Timestamp(as_of), side="right")) - 1
    first_of_year = int(index.searchsorted(pd.Timestamp(as_of.year, 1, 1), side="left"))
    if last < first_of_year:
        raise NoDataError(f"no close in {as_of.year} up to {as_of}")
    base = first_of_year - 1
    from_this_year = base < 0 or index[base].year != as_of.year - 1
    if from_this_year:
        # No close in the previous year (the index starts this year, or has a gap): measure from
        # the first close of this year.
        base = first_of_year
    values = closes.to_numpy(dtype="float64")
    base_close, last_close = float(values[base]), float(values[last])
    return {
        "yield_pct": (last_close / base_close - 1.0) * 100.0,
        "base_date": index[base].date().isoformat(),
        "base_close": base_close,
        "last_date": index[last].date().isoformat(),
        "last_close": last_close,
        "base_is_first_close_of_year": from_this_year,
    }


def index_chart(store: PriceStore, codes: Sequence[str], start: dt.date, end: dt.date, frequency: Frequency) -> Chart:
    """The chart of several indexes over one range, in the order of `codes`."""
    series: list[SeriesChart] = []
    for code in codes:
        history = store[code]
        try:
            chart = series_chart(history.closes, start, end, frequency)
        except NoDataError as exc:
            raise NoDataError(f"index {code}: {exc}") from None
        series.append(cast(SeriesChart, {"code": code, "name": history.meta.name, **chart}))
    return {"frequency": frequency.value, "start": start.isoformat(), "end": end.isoformat(), "series": series}


def yields_this_year(store: PriceStore, codes: Sequence[str], as_of: dt.date) -> list[YearToDate]:
    """Year-to-date yield of several indexes as of one date, in the order of `codes`.

    An index whose data ends before `as_of` but in its year (a stale import next to fresher ones) is
    measured at its own last close; its `last_date` shows it.
    """
    rows: list[YearToDate] = []
    for code in codes:
        history = store[code]
        try:
            ytd = year_to_date(history.closes, as_of)
        except NoDataError as exc:
            raise NoDataError(f"index {code}: {exc}") from None
        rows.append(cast(YearToDate, {"code": code, "name": history.meta.name, **ytd}))
    return rows
