"""The built-in synthetic sample: plausible-looking daily closes for the ten default indexes.

Generated, not real prices: the service has something to show on a laptop without a data import.
Every number is a pure function of the index code, so two runs (or two machines) serve the same data
and the same data version, and the cache stays valid across restarts.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gql.data import DEFAULT_INDEXES, IndexHistory, IndexMeta, make_closes

SAMPLE_SOURCE = "synthetic sample (generated, not real prices)"

# Chinese markets reopened on 4 January 2005 after the New Year break; the end is fixed (not "today")
# so that the sample, and with it the data version, never changes by itself.
SAMPLE_START = dt.date(2005, 1, 4)
SAMPLE_END = dt.date(2026, 11, 20)

# Lunar New Year's Day by year. Hard-coded because the lunisolar calendar has no simple rule and the
# sample only needs these years.
_LUNAR_NEW_YEAR: dict[int, dt.date] = {
    d.year: d
    for d in (
        dt.date(2005, 2, 9), dt.date(2006, 1, 29), dt.date(2007, 2, 18), dt.date(2008, 2, 7),
        dt.date(2009, 1, 26), dt.date(2010, 2, 14), dt.date(2011, 2, 3), dt.date(2012, 1, 23),
        dt.date(2013, 2, 10), dt.date(2014, 1, 31), dt.date(2015, 2, 19), dt.date(2016, 2, 8),
        dt.date(2017, 1, 28), dt.date(2018, 2, 16), dt.date(2019, 2, 5), dt.date(2020, 1, 25),
        dt.date(2021, 2, 12), dt.date(2022, 2, 1), dt.date(2023, 1, 22), dt.date(2024, 2, 10),
        dt.date(2025, 1, 29), dt.date(2026, 2, 17),
    )
}
# The Spring Festival closure: from New Year's Eve to the fifth day of the new year.
_LUNAR_NEW_YEAR_CLOSED_DAYS = range(-1, 6)

_TRADING_DAYS_PER_YEAR = 252
# Student-t with 4 degrees of freedom: tails about as fat as real daily index returns.
_SHOCK_DF = 4.0
# Volatility regimes: log-volatility is an AR(1) with this persistence (half-life about 46 trading days)
# and this standard deviation, so calm and turbulent stretches last weeks to months.
_REGIME_PERSISTENCE = 0.985
_VOL_OF_VOL = 0.35
# Long enough for the AR(1) to forget its starting value (0.985**500 < 0.001).
_REGIME_BURN_IN = 500
# Constituents of the A-share indexes move at most 10% a day, so no index can move (much) more.
_MAX_DAILY_LOG_RETURN = 0.10


@dataclass(frozen=True)
class _SampleProfile:
    start_level: float
    end_level: float
    annual_volatility: float


# Levels of the order of the real indexes' (most CSI indexes are based at 1000 on 2004-12-31): a free
# random walk at 30% volatility over 22 years ends anywhere from a twentieth to twenty times its start,
# which looks wrong on a chart, so each walk is pinned to an end level. Volatility is in the range of
# each index's real history, not fitted to it.
_PROFILES: dict[str, _SampleProfile] = {
    "000300": _SampleProfile(1000.0, 4500.0, 0.25),
    "000905": _SampleProfile(1000.0, 6500.0, 0.30),
    "000922": _SampleProfile(1000.0, 5500.0, 0.22),
    "000932": _SampleProfile(1000.0, 15000.0, 0.26),
    "000827": _SampleProfile(1000.0, 1800.0, 0.30),
    "000986": _SampleProfile(1000.0, 2300.0, 0.30),
    "399971": _SampleProfile(1000.0, 1500.0, 0.34),
    "000985": _SampleProfile(1000.0, 5500.0, 0.26),
    "000991": _SampleProfile(1000.0, 9000.0, 0.26),
    "HSI": _SampleProfile(14000.0, 26000.0, 0.22),
}


def trading_days(start: dt.date, end: dt.date) -> pd.DatetimeIndex:
    """The sample's market calendar from `start` to `end` inclusive: weekdays less the holidays."""
    unknown = [year for year in range(start.year, end.year + 1) if year not in _LUNAR_NEW_YEAR]
    if unknown:
        raise ValueError(
            f"no Lunar New Year date for {unknown[0]}; the sample calendar covers "
            f"{min(_LUNAR_NEW_YEAR)}-{max(_LUNAR_NEW_YEAR)}"
        )
    weekdays = pd.bdate_range(start, end, name="date").as_unit("ns")
    return weekdays[~weekdays.isin(_holidays(start.year, end.year))]


def _holidays(first_year: int, last_year: int) -> pd.DatetimeIndex:
    days = []
    for year in range(first_year, last_year + 1):
        days.append(dt.date(year, 1, 1))
        lunar_new_year = _LUNAR_NEW_YEAR[year]
        days += [lunar_new_year + dt.timedelta(days=k) for k in _LUNAR_NEW_YEAR_CLOSED_DAYS]
    return pd.DatetimeIndex(days)


def generate_sample() -> list[IndexHistory]:
    """One synthetic history per default index, in catalogue order, all on the same calendar."""
    days = trading_days(SAMPLE_START, SAMPLE_END)
    return [
        IndexHistory(
            IndexMeta(code=code, name=name, source=SAMPLE_SOURCE),
            make_closes(days, _simulate_closes(_PROFILES[code], _rng_for(code), len(days))),
        )
        for code, name in DEFAULT_INDEXES
    ]


def _rng_for(code: str) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process, and the sample must be the same everywhere.
    return np.random.default_rng(zlib.crc32(code.encode("utf-8")))


def _simulate_closes(profile: _SampleProfile, rng: np.random.Generator, n_days: int) -> np.ndarray:
    """Closes of a random walk from start to end level, with fat-tailed shocks and changing volatility."""
    daily_volatility = profile.annual_volatility / np.sqrt(_TRADING_DAYS_PER_YEAR)
    regime = _volatility_regime(rng, n_days)
    # Scaled to unit variance so that `daily_volatility` is the standard deviation it says it is.
    shocks = rng.standard_t(_SHOCK_DF, n_days) / np.sqrt(_SHOCK_DF / (_SHOCK_DF - 2))
    log_returns = np.clip(daily_volatility * regime * shocks, -_MAX_DAILY_LOG_RETURN, _MAX_DAILY_LOG_RETURN)
    log_returns[0] = 0.0  # the first close is the start level
    # Pin the end: a constant daily drift (a few hundredths of a percent) moves the walk from wherever it
    # ended to the profile's end level without changing the shape of its swings. It comes after the clip,
    # which would otherwise move the end again.
    total = np.log(profile.end_level / profile.start_level)
    log_returns[1:] += (total - log_returns.sum()) / (n_days - 1)
    closes = np.round(profile.start_level * np.exp(np.cumsum(log_returns)), 2)
    # Pinned walks stay far from zero; this only makes sure rounding never yields a close the store rejects.
    return np.maximum(closes, 0.01)


def _volatility_regime(rng: np.random.Generator, n_days: int) -> np.ndarray:
    """A multiplier of daily volatility, persistent from day to day, whose square averages 1."""
    noise = rng.standard_normal(n_days + _REGIME_BURN_IN)
    alpha = 1.0 - _REGIME_PERSISTENCE
    # An exponentially weighted mean of white noise is the AR(1) y[t] = (1 - alpha) y[t-1] + alpha x[t],
    # computed in compiled code; its stationary variance is alpha / (2 - alpha).
    smoothed = pd.Series(noise).ewm(alpha=alpha, adjust=False).mean().to_numpy()[_REGIME_BURN_IN:]
    log_volatility = smoothed * (_VOL_OF_VOL / np.sqrt(alpha / (2.0 - alpha)))
    # For normal h, E[exp(2h)] = exp(2 var h): subtracting var h leaves the average variance unchanged.
    return np.exp(log_volatility - _VOL_OF_VOL**2)
