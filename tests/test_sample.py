"""The synthetic sample: deterministic, on a plausible market calendar, with plausible prices."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gql.data import DEFAULT_INDEXES, PriceStore
from gql.sample import SAMPLE_END, SAMPLE_SOURCE, generate_sample, trading_days

REPO = Path(__file__).resolve().parent.parent


def _sample_digest() -> str:
    return PriceStore(generate_sample()).version


def _dates(*iso: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(list(iso))


# --- determinism ----------------------------------------------------------------------------------


def test_two_calls_give_identical_histories():
    first, second = generate_sample(), generate_sample()
    for a, b in zip(first, second, strict=True):
        assert a.meta == b.meta
        pd.testing.assert_series_equal(a.closes, b.closes, check_exact=True)


def test_another_process_generates_the_same_sample():
    # A fresh interpreter has a different str-hash salt, so this catches seeds taken from hash().
    script = (
        "from gql.data import PriceStore; from gql.sample import generate_sample; "
        "print(PriceStore(generate_sample()).version)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    assert result.stdout.strip() == _sample_digest()


# --- calendar -------------------------------------------------------------------------------------


def test_sample_runs_from_january_2005_to_the_fixed_end():
    for history in generate_sample():
        assert history.first_date.year == 2005 and history.first_date.month == 1
        assert history.last_date == SAMPLE_END


def test_every_index_shares_one_calendar():
    sample = generate_sample()
    for history in sample:
        assert history.closes.index.equals(sample[0].closes.index)
        assert history.closes.index.is_monotonic_increasing and history.closes.index.is_unique


def test_no_trading_on_weekends_or_new_years_day():
    days = generate_sample()[0].closes.index
    assert (days.day_of_week < 5).all()
    assert not ((days.month == 1) & (days.day == 1)).any()


def test_new_years_day_on_a_weekday_is_closed_and_the_next_day_open():
    days = trading_days(dt.date(2024, 12, 30), dt.date(2025, 1, 3))
    assert days.equals(_dates("2024-12-30", "2024-12-31", "2025-01-02", "2025-01-03"))


def test_lunar_new_year_week_2024_is_closed():
    # Lunar New Year 2024 was Saturday 10 February: closed Friday the 9th through Thursday the 15th.
    days = trading_days(dt.date(2024, 2, 5), dt.date(2024, 2, 20))
    assert days.equals(_dates("2024-02-05", "2024-02-06", "2024-02-07", "2024-02-08",
                              "2024-02-16", "2024-02-19", "2024-02-20"))


def test_lunar_new_year_week_2015_is_closed():
    # Lunar New Year 2015 was Thursday 19 February: closed Wednesday the 18th through Tuesday the 24th.
    days = trading_days(dt.date(2015, 2, 16), dt.date(2015, 2, 27))
    assert days.equals(_dates("2015-02-16", "2015-02-17", "2015-02-25", "2015-02-26", "2015-02-27"))


def test_sample_calendar_has_the_lunar_new_year_gaps():
    days = generate_sample()[0].closes.index
    assert pd.Timestamp("2024-02-08") in days and pd.Timestamp("2024-02-16") in days
    assert not days.isin(pd.date_range("2024-02-09", "2024-02-15")).any()


def test_trading_days_refuses_years_without_a_lunar_new_year_date():
    with pytest.raises(ValueError, match="2027"):
        trading_days(dt.date(2026, 12, 1), dt.date(2027, 3, 1))


# --- prices ---------------------------------------------------------------------------------------


def test_codes_and_names_follow_the_default_catalogue():
    assert [(h.meta.code, h.meta.name) for h in generate_sample()] == list(DEFAULT_INDEXES)


def test_every_index_says_it_is_synthetic():
    assert "synthetic" in SAMPLE_SOURCE
    assert all(h.meta.source == SAMPLE_SOURCE for h in generate_sample())


def test_closes_are_positive_canonical_and_in_cents():
    for history in generate_sample():
        closes = history.closes
        assert closes.dtype == np.float64 and closes.name == "close" and closes.index.name == "date"
        assert (closes > 0).all()
        np.testing.assert_array_equal(closes.to_numpy(), closes.round(2).to_numpy())


def test_volatility_is_that_of_a_real_equity_index():
    for history in generate_sample():
        log_returns = np.diff(np.log(history.closes.to_numpy()))
        annualized = log_returns.std() * np.sqrt(252)
        assert 0.10 < annualized < 0.45, (history.meta.code, annualized)
        assert np.abs(log_returns).max() < 0.25, history.meta.code


def test_returns_have_fat_tails():
    # Normal returns have kurtosis 3; real daily index returns are far above it.
    for history in generate_sample():
        log_returns = np.diff(np.log(history.closes.to_numpy()))
        centred = log_returns - log_returns.mean()
        kurtosis = (centred**4).mean() / centred.var() ** 2
        assert kurtosis > 4, (history.meta.code, kurtosis)


def test_price_store_accepts_the_sample():
    store = PriceStore(generate_sample())
    assert len(store) == 10
    assert store.codes == tuple(code for code, _ in DEFAULT_INDEXES)
    assert store.last_date == SAMPLE_END
