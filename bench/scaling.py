"""Cold computation scaling: `gql.analytics.index_chart` in process, DAILY over the whole range, for many indexes."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gql import analytics
from gql.analytics import Frequency, index_chart
from gql.data import IndexHistory, IndexMeta, PriceStore, make_closes

TRADING_DAYS = 5040  # 20 years of 252 trading days


@dataclass(frozen=True)
class ScalingRow:
    indexes: int
    points: int
    seconds: float  # median of the runs

    @property
    def us_per_point(self) -> float:
        return self.seconds / self.points * 1e6


def synthetic_store(n_indexes: int, n_days: int = TRADING_DAYS, seed: int = 7) -> PriceStore:
    """`n_indexes` random walks on one business-day calendar; only their shape and size matter here."""
    days = pd.bdate_range("2006-01-02", periods=n_days)
    rng = np.random.default_rng(seed)
    log_returns = rng.standard_normal((n_indexes, n_days)) * 0.015
    log_returns[:, 0] = 0.0
    closes = np.round(1000.0 * np.exp(np.cumsum(log_returns, axis=1)), 2)
    return PriceStore(
        IndexHistory(IndexMeta(code=f"B{i:05d}", name=f"Bench index {i}", source="bench"), make_closes(days, closes[i]))
        for i in range(n_indexes)
    )


def time_index_chart(n_indexes: int, runs: int) -> ScalingRow:
    store = synthetic_store(n_indexes)
    timings, points = [], 0
    for _ in range(runs):
        analytics._daily_series.clear()  # cold: from prices, no memoized daily series
        began = time.perf_counter()
        chart = index_chart(store, store.codes, store.first_date, store.last_date, Frequency.DAILY)
        timings.append(time.perf_counter() - began)
        points = sum(len(series["dates"]) for series in chart["series"])
        del chart
    return ScalingRow(n_indexes, points, statistics.median(timings))


def cold_scaling(sizes: list[int], runs: int) -> list[ScalingRow]:
    return [time_index_chart(n, runs) for n in sizes]


@dataclass(frozen=True)
class PartialHitRow:
    variant: str
    from_prices: float  # seconds, median: the daily series built from the prices first
    from_series: float  # seconds, median: sliced and resampled from the memoized daily series


def partial_hits(runs: int, n_indexes: int = 10) -> list[PartialHitRow]:
    """Chart variants of `n_indexes` x 20 years computed cold from prices vs from the cached daily series."""
    store = synthetic_store(n_indexes)
    last = store.last_date
    variants = [
        ("whole range, DAILY", store.first_date, last, Frequency.DAILY),
        ("whole range, WEEKLY", store.first_date, last, Frequency.WEEKLY),
        ("whole range, MONTHLY", store.first_date, last, Frequency.MONTHLY),
        ("last 5 years, WEEKLY", last - dt.timedelta(days=5 * 365), last, Frequency.WEEKLY),
        ("last year, DAILY", last - dt.timedelta(days=365), last, Frequency.DAILY),
    ]
    rows = []
    for label, start, end, frequency in variants:
        cold, warm = [], []
        for _ in range(runs):
            analytics._daily_series.clear()
            began = time.perf_counter()
            index_chart(store, store.codes, start, end, frequency)
            cold.append(time.perf_counter() - began)
            began = time.perf_counter()
            index_chart(store, store.codes, start, end, frequency)
            warm.append(time.perf_counter() - began)
        rows.append(PartialHitRow(label, statistics.median(cold), statistics.median(warm)))
    return rows
