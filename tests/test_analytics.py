"""Chart points, summary statistics and year-to-date yields, checked against values worked out by hand."""

from __future__ import annotations

import datetime as dt
import math

import orjson
import pandas as pd
import pytest

from gql.analytics import Frequency, NoDataError, index_chart, series_chart, year_to_date, yields_this_year
from gql.data import IndexHistory, IndexMeta, PriceStore, make_closes

D = dt.date
approx = pytest.approx
SQRT_252 = math.sqrt(252)  # 15.874507866...


def _closes(pairs: list[tuple[str, float]]):
    return make_closes([d for d, _ in pairs], [c for _, c in pairs])


def _history(code: str, name: str, pairs: list[tuple[str, float]]) -> IndexHistory:
    return IndexHistory(IndexMeta(code=code, name=name, source="test"), _closes(pairs))


# January 2024: Monday the 1st is a holiday; Friday the 12th is a holiday too.
JANUARY = [
    ("2024-01-02", 100.0),  # Tue  week 1 (Mon 1 .. Sun 7)
    ("2024-01-03", 110.0),  # Wed
    ("2024-01-04", 99.0),  # Thu
    ("2024-01-05", 105.0),  # Fri  <- week 1 point
    ("2024-01-08", 120.0),  # Mon  week 2 (Mon 8 .. Sun 14)
    ("2024-01-09", 90.0),  # Tue
    ("2024-01-10", 96.0),  # Wed
    ("2024-01-11", 108.0),  # Thu  <- week 2 point (Friday the 12th closed)
    ("2024-01-15", 102.0),  # Mon  week 3 (Mon 15 .. Sun 21), cut short by the end of the data
    ("2024-01-16", 114.0),  # Tue  <- week 3 point
]


# --- daily ----------------------------------------------------------------------------------------


def test_daily_chart_of_a_short_series():
    closes = _closes([("2024-01-02", 100.0), ("2024-01-03", 110.0), ("2024-01-04", 99.0)])
    chart = series_chart(closes, D(2024, 1, 2), D(2024, 1, 4), Frequency.DAILY)

    assert chart["dates"] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert chart["close"] == [100.0, 110.0, 99.0]
    # normalized = close / 100 * 100
    assert chart["normalized"] == approx([100.0, 110.0, 99.0])
    # running max 100, 110, 110 -> drawdown 0, 0, (99/110 - 1) * 100 = -10
    assert chart["drawdown"] == approx([0.0, 0.0, -10.0])
    # 99 / 100 - 1 = -1 %
    assert chart["total_return"] == approx(-1.0)
    assert chart["max_drawdown"] == approx(-10.0)
    # log returns r1 = ln(1.1) = 0.0953102, r2 = ln(0.9) = -0.1053605; mean m = -0.0050252
    # deviations +-(r1 - r2) / 2 = +-0.1003353; sample variance = 2 * 0.1003353^2 / (2 - 1) = 0.0201344
    # std = 0.1418957 -> * sqrt(252) = 2.2525 -> 225.25 %
    assert chart["annualized_volatility"] == approx(0.1418957 * SQRT_252 * 100, rel=1e-6)
    assert chart["annualized_volatility"] == approx(math.log(1.1 / 0.9) / math.sqrt(2) * SQRT_252 * 100)


def test_drawdown_is_exactly_zero_at_new_highs_and_equal_highs():
    closes = _closes([("2024-01-02", 100.0), ("2024-01-03", 80.0), ("2024-01-04", 100.0), ("2024-01-05", 125.0)])
    chart = series_chart(closes, D(2024, 1, 2), D(2024, 1, 5), Frequency.DAILY)
    # running max 100, 100, 100, 125 -> drawdown 0, -20, 0 (equal high), 0 (new high)
    assert chart["drawdown"] == approx([0.0, -20.0, 0.0, 0.0])
    for i in (0, 2, 3):
        assert chart["drawdown"][i] == 0.0
        assert math.copysign(1.0, chart["drawdown"][i]) == 1.0  # not -0.0
    assert all(d <= 0.0 for d in chart["drawdown"])
    assert chart["max_drawdown"] == approx(-20.0)
    # 125 / 100 - 1 = +25 %
    assert chart["total_return"] == approx(25.0)


def test_volatility_by_hand_for_four_closes():
    # closes chosen so the log returns are 0.01, 0.02, -0.01
    closes = _closes(
        [
            ("2024-01-02", 100.0),
            ("2024-01-03", 100.0 * math.exp(0.01)),
            ("2024-01-04", 100.0 * math.exp(0.03)),
            ("2024-01-05", 100.0 * math.exp(0.02)),
        ]
    )
    chart = series_chart(closes, D(2024, 1, 1), D(2024, 1, 7), Frequency.DAILY)
    # mean = 0.02 / 3 = 0.0066667; deviations 0.0033333, 0.0133333, -0.0166667
    # squares 0.0000111 + 0.0001778 + 0.0002778 = 0.0004667 = 7/15000; / (3 - 1) -> variance 7/30000
    # std = 0.0152753; * sqrt(252) = 0.2424871 -> 24.24871 %   (= sqrt(7 * 252 / 30000) * 100 = sqrt(0.0588) * 100)
    assert chart["annualized_volatility"] == approx(24.24871, rel=1e-6)
    assert chart["annualized_volatility"] == approx(math.sqrt(0.0588) * 100)
    # total return e^0.02 - 1 = 2.0201 %
    assert chart["total_return"] == approx((math.exp(0.02) - 1) * 100)
    # drawdown at the last point: e^0.02 / e^0.03 - 1 = e^-0.01 - 1 = -0.995017 %
    assert chart["drawdown"] == approx([0.0, 0.0, 0.0, (math.exp(-0.01) - 1) * 100])
    assert chart["max_drawdown"] == approx(-0.995017, rel=1e-6)


def test_volatility_uses_only_daily_returns_inside_the_range():
    # A huge jump before the range must not leak into the range's volatility.
    closes = _closes([("2024-01-01", 1.0), ("2024-01-02", 100.0), ("2024-01-03", 110.0), ("2024-01-04", 99.0)])
    chart = series_chart(closes, D(2024, 1, 2), D(2024, 1, 4), Frequency.DAILY)
    # same two returns as in the short series: ln(1.1), ln(0.9)
    assert chart["annualized_volatility"] == approx(math.log(1.1 / 0.9) / math.sqrt(2) * SQRT_252 * 100)


# --- weekly and monthly ---------------------------------------------------------------------------


def test_weekly_points_are_the_last_close_of_each_week():
    chart = series_chart(_closes(JANUARY), D(2024, 1, 1), D(2024, 1, 31), Frequency.WEEKLY)

    # Fri 5th; Thu 11th (Friday closed); Tue 16th (partial last week)
    assert chart["dates"] == ["2024-01-05", "2024-01-11", "2024-01-16"]
    assert chart["close"] == [105.0, 108.0, 114.0]
    # normalized: 100, 108/105*100 = 102.857143, 114/105*100 = 108.571429
    assert chart["normalized"] == approx([100.0, 102.857143, 108.571429], rel=1e-6)
    # weekly points only rise -> drawdown 0 everywhere, even though the daily line fell from 120 to 90
    assert chart["drawdown"] == [0.0, 0.0, 0.0]
    assert chart["max_drawdown"] == 0.0
    # 114 / 105 - 1 = 8.571429 %
    assert chart["total_return"] == approx(8.571429, rel=1e-6)


def test_weekly_volatility_still_uses_daily_returns():
    daily = series_chart(_closes(JANUARY), D(2024, 1, 1), D(2024, 1, 31), Frequency.DAILY)
    weekly = series_chart(_closes(JANUARY), D(2024, 1, 1), D(2024, 1, 31), Frequency.WEEKLY)
    monthly = series_chart(_closes(JANUARY), D(2024, 1, 1), D(2024, 1, 31), Frequency.MONTHLY)
    assert weekly["annualized_volatility"] == approx(daily["annualized_volatility"])
    assert monthly["annualized_volatility"] == approx(daily["annualized_volatility"])
    assert monthly["annualized_volatility"] > 0.0  # one monthly point, but nine daily returns


def test_weekly_drawdown_is_measured_on_the_weekly_points():
    closes = _closes(
        [
            ("2024-01-04", 100.0),  # Thu
            ("2024-01-05", 200.0),  # Fri  <- week 1 point 200
            ("2024-01-08", 300.0),  # Mon  intra-week peak: not a point
            ("2024-01-12", 150.0),  # Fri  <- week 2 point 150
            ("2024-01-19", 180.0),  # Fri  <- week 3 point 180
        ]
    )
    chart = series_chart(closes, D(2024, 1, 1), D(2024, 1, 21), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-01-05", "2024-01-12", "2024-01-19"]
    # running max of points 200, 200, 200 -> 0, (150/200 - 1) = -25 %, (180/200 - 1) = -10 %
    assert chart["drawdown"] == approx([0.0, -25.0, -10.0])
    assert chart["max_drawdown"] == approx(-25.0)
    # normalized 100, 75, 90; total return 180/200 - 1 = -10 %
    assert chart["normalized"] == approx([100.0, 75.0, 90.0])
    assert chart["total_return"] == approx(-10.0)


def test_weeks_run_monday_to_sunday():
    # A Sunday close belongs to the week that began on the Monday before; the next Monday starts a new week.
    closes = _closes(
        [
            ("2024-01-06", 1.0),  # Sat  week of Mon 1st
            ("2024-01-07", 2.0),  # Sun  week of Mon 1st  <- point
            ("2024-01-08", 3.0),  # Mon  week of Mon 8th
            ("2024-01-14", 4.0),  # Sun  week of Mon 8th  <- point
            ("2024-01-15", 5.0),  # Mon  week of Mon 15th <- point
        ]
    )
    chart = series_chart(closes, D(2024, 1, 1), D(2024, 1, 31), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-01-07", "2024-01-14", "2024-01-15"]
    assert chart["close"] == [2.0, 4.0, 5.0]


def test_weekly_points_span_a_year_boundary():
    closes = _closes(
        [
            ("2024-12-27", 10.0),  # Fri  <- point
            ("2024-12-30", 11.0),  # Mon  week of Mon 30 Dec .. Sun 5 Jan
            ("2024-12-31", 12.0),  # Tue
            ("2025-01-02", 13.0),  # Thu
            ("2025-01-03", 14.0),  # Fri  <- point (same week as 30 Dec)
        ]
    )
    chart = series_chart(closes, D(2024, 12, 23), D(2025, 1, 5), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-12-27", "2025-01-03"]
    assert chart["close"] == [10.0, 14.0]


def test_monthly_points_are_the_last_trading_day_of_each_month():
    closes = _closes(
        [
            ("2024-01-30", 100.0),
            ("2024-01-31", 102.0),  # Wed  <- January point
            ("2024-02-01", 101.0),
            ("2024-02-28", 96.0),  # Wed  <- February point (Thu 29th, leap day, closed)
            ("2024-03-01", 97.0),
            ("2024-03-28", 112.2),  # Thu  <- March point (Good Friday 29th closed)
            ("2024-04-01", 115.0),
            ("2024-04-02", 117.3),  # Tue  <- April point (the month is cut short by the range)
            ("2024-04-30", 999.0),  # after the range end
        ]
    )
    chart = series_chart(closes, D(2024, 1, 1), D(2024, 4, 15), Frequency.MONTHLY)
    assert chart["dates"] == ["2024-01-31", "2024-02-28", "2024-03-28", "2024-04-02"]
    assert chart["close"] == [102.0, 96.0, 112.2, 117.3]
    # normalized: 100, 96/102 = 94.117647, 112.2/102 = 110, 117.3/102 = 115
    assert chart["normalized"] == approx([100.0, 94.117647, 110.0, 115.0], rel=1e-6)
    # running max 102, 102, 112.2, 117.3 -> 0, (96/102 - 1) = -5.882353 %, 0, 0
    assert chart["drawdown"] == approx([0.0, -5.882353, 0.0, 0.0], rel=1e-6)
    assert chart["max_drawdown"] == approx(-5.882353, rel=1e-6)
    assert chart["total_return"] == approx(15.0)


# --- the range ------------------------------------------------------------------------------------


def test_start_and_end_are_inclusive():
    chart = series_chart(_closes(JANUARY), D(2024, 1, 3), D(2024, 1, 5), Frequency.DAILY)
    assert chart["dates"] == ["2024-01-03", "2024-01-04", "2024-01-05"]
    assert chart["close"] == [110.0, 99.0, 105.0]


def test_start_and_end_on_non_trading_days():
    # Sat 6th .. Sun 14th: Monday 8th to Thursday 11th
    chart = series_chart(_closes(JANUARY), D(2024, 1, 6), D(2024, 1, 14), Frequency.DAILY)
    assert chart["dates"] == ["2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11"]
    # Mon 1st (holiday) .. Fri 12th (holiday)
    chart = series_chart(_closes(JANUARY), D(2024, 1, 1), D(2024, 1, 12), Frequency.DAILY)
    assert chart["dates"][0] == "2024-01-02"
    assert chart["dates"][-1] == "2024-01-11"


def test_range_wider_than_the_data():
    chart = series_chart(_closes(JANUARY), D(2023, 6, 1), D(2024, 6, 1), Frequency.DAILY)
    assert len(chart["dates"]) == len(JANUARY)


def test_normalized_and_drawdown_are_relative_to_the_range_not_the_whole_history():
    # The 120 on Monday 8th is higher than anything in the range Tue 9th .. Thu 11th and must not count.
    chart = series_chart(_closes(JANUARY), D(2024, 1, 9), D(2024, 1, 11), Frequency.DAILY)
    assert chart["close"] == [90.0, 96.0, 108.0]
    # normalized 90/90, 96/90, 108/90 -> 100, 106.666667, 120
    assert chart["normalized"] == approx([100.0, 106.666667, 120.0], rel=1e-6)
    # every point is a new high within the range -> drawdown 0 (not 90/120 - 1 = -25 % against the old peak)
    assert chart["drawdown"] == [0.0, 0.0, 0.0]
    assert chart["max_drawdown"] == 0.0
    # 108 / 90 - 1 = 20 %
    assert chart["total_return"] == approx(20.0)


def test_weekly_range_starting_mid_week_normalizes_to_the_first_point():
    # Wed 10th .. Tue 16th: week 2 keeps Thu 11th (108), week 3 Tue 16th (114)
    chart = series_chart(_closes(JANUARY), D(2024, 1, 10), D(2024, 1, 16), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-01-11", "2024-01-16"]
    # 114 / 108 * 100 = 105.555556
    assert chart["normalized"] == approx([100.0, 105.555556], rel=1e-6)
    assert chart["total_return"] == approx(5.555556, rel=1e-6)


def test_single_point_range():
    chart = series_chart(_closes(JANUARY), D(2024, 1, 6), D(2024, 1, 8), Frequency.DAILY)  # Sat .. Mon
    assert chart["dates"] == ["2024-01-08"]
    assert chart["close"] == [120.0]
    assert chart["normalized"] == [100.0]
    assert chart["drawdown"] == [0.0]
    assert chart["total_return"] == 0.0
    assert chart["max_drawdown"] == 0.0
    assert chart["annualized_volatility"] == 0.0  # no daily return at all


def test_two_points_give_one_return_and_zero_volatility():
    chart = series_chart(_closes(JANUARY), D(2024, 1, 2), D(2024, 1, 3), Frequency.DAILY)
    # one log return: the sample std needs two
    assert chart["annualized_volatility"] == 0.0
    assert chart["total_return"] == approx(10.0)


def test_single_weekly_point_has_daily_volatility():
    # Tue 2nd .. Fri 5th is one weekly point, but three daily returns
    chart = series_chart(_closes(JANUARY), D(2024, 1, 2), D(2024, 1, 5), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-01-05"]
    assert chart["normalized"] == [100.0]
    assert chart["total_return"] == 0.0
    assert chart["max_drawdown"] == 0.0
    assert chart["annualized_volatility"] > 0.0


@pytest.mark.parametrize(
    "start, end",
    [
        (D(2024, 1, 6), D(2024, 1, 7)),  # a weekend inside the data
        (D(2023, 1, 1), D(2023, 12, 31)),  # before the data
        (D(2024, 2, 1), D(2024, 2, 29)),  # after the data
        (D(2024, 1, 5), D(2024, 1, 2)),  # start after end
    ],
)
def test_empty_range_raises_no_data_error(start, end):
    with pytest.raises(NoDataError):
        series_chart(_closes(JANUARY), start, end, Frequency.DAILY)


def test_no_data_error_is_a_value_error():
    assert issubclass(NoDataError, ValueError)


# --- year to date ---------------------------------------------------------------------------------

# Tue 31 Dec 2024 trades; Wed 1 Jan 2025 is a holiday; Sat 4th and Sun 5th are a weekend.
YEAR_END = [
    ("2023-12-29", 80.0),
    ("2024-12-27", 95.0),  # Fri
    ("2024-12-30", 98.0),  # Mon
    ("2024-12-31", 100.0),  # Tue  <- last close of 2024
    ("2025-01-02", 102.0),  # Thu  first close of 2025
    ("2025-01-03", 104.0),  # Fri
    ("2025-01-06", 91.92),  # Mon
]


def test_year_to_date_from_the_december_31_close():
    ytd = year_to_date(_closes(YEAR_END), D(2025, 1, 3))
    # 104 / 100 - 1 = +4 %
    assert ytd == {
        "yield_pct": approx(4.0),
        "base_date": "2024-12-31",
        "base_close": 100.0,
        "last_date": "2025-01-03",
        "last_close": 104.0,
        "base_is_first_close_of_year": False,
    }


def test_year_to_date_percent_is_not_a_fraction_and_not_rounded():
    ytd = year_to_date(_closes(YEAR_END), D(2025, 1, 6))
    # 91.92 / 100 - 1 = -0.0808 -> -8.08 (percent)
    assert ytd["yield_pct"] == approx(-8.08)
    assert ytd["last_date"] == "2025-01-06"


def test_year_to_date_base_is_december_30_when_december_31_is_closed():
    closes = _closes([p for p in YEAR_END if p[0] != "2024-12-31"])
    ytd = year_to_date(closes, D(2025, 1, 3))
    assert (ytd["base_date"], ytd["base_close"]) == ("2024-12-30", 98.0)
    # 104 / 98 - 1 = 0.0612245 -> 6.122449 %, unrounded
    assert ytd["yield_pct"] == approx(6.12244898, rel=1e-8)
    assert ytd["yield_pct"] != round(ytd["yield_pct"], 2)
    assert ytd["base_is_first_close_of_year"] is False


def test_year_to_date_base_on_a_weekend_year_end():
    # 2023 ends on a Sunday: the base is Friday 29 Dec 2023
    ytd = year_to_date(_closes(YEAR_END), D(2024, 12, 27))
    assert (ytd["base_date"], ytd["base_close"]) == ("2023-12-29", 80.0)
    # 95 / 80 - 1 = 18.75 %
    assert ytd["yield_pct"] == approx(18.75)
    assert ytd["base_is_first_close_of_year"] is False


def test_year_to_date_on_the_first_trading_day_after_a_holiday():
    # Jan 1 closed: the first close of the year is Jan 2; 102 / 100 - 1 = +2 %
    ytd = year_to_date(_closes(YEAR_END), D(2025, 1, 2))
    assert ytd["base_date"] == "2024-12-31"
    assert ytd["last_date"] == "2025-01-02"
    assert ytd["yield_pct"] == approx(2.0)


@pytest.mark.parametrize("as_of", [D(2025, 1, 4), D(2025, 1, 5)])
def test_year_to_date_as_of_a_weekend_uses_fridays_close(as_of):
    ytd = year_to_date(_closes(YEAR_END), as_of)
    assert (ytd["last_date"], ytd["last_close"]) == ("2025-01-03", 104.0)
    assert ytd["yield_pct"] == approx(4.0)


def test_year_to_date_on_january_1_before_any_trading_this_year_is_none():
    # The last close is of 2024: it must not pass for a 2025 figure (0 % "this year").
    with pytest.raises(NoDataError, match=r"^no close in 2025 up to 2025-01-01$"):
        year_to_date(_closes(YEAR_END), D(2025, 1, 1))


def test_year_to_date_of_an_index_that_starts_mid_year():
    closes = _closes([("2024-06-03", 50.0), ("2024-06-04", 52.0), ("2024-06-05", 55.0)])
    ytd = year_to_date(closes, D(2024, 6, 5))
    # no close in 2023: base is the first close of 2024, 55 / 50 - 1 = +10 %
    assert ytd == {
        "yield_pct": approx(10.0),
        "base_date": "2024-06-03",
        "base_close": 50.0,
        "last_date": "2024-06-05",
        "last_close": 55.0,
        "base_is_first_close_of_year": True,
    }
    # on its first day the yield is 0 and the flag still holds
    first_day = year_to_date(closes, D(2024, 6, 3))
    assert first_day["yield_pct"] == 0.0
    assert first_day["base_is_first_close_of_year"] is True


def test_year_to_date_of_a_mid_year_start_in_the_following_year_uses_december():
    closes = _closes([("2024-06-03", 50.0), ("2024-12-31", 60.0), ("2025-01-02", 66.0)])
    ytd = year_to_date(closes, D(2025, 1, 2))
    # 66 / 60 - 1 = +10 %
    assert (ytd["base_date"], ytd["base_is_first_close_of_year"]) == ("2024-12-31", False)
    assert ytd["yield_pct"] == approx(10.0)


def test_year_to_date_with_no_close_in_the_previous_year_uses_the_first_close_of_the_year():
    # Suspended all of 2024: there is no close in the previous calendar year, so per the spec the base
    # is the first close of 2025 (100) -> 110 / 100 - 1 = +10 %, flag True (not 110 / 40 - 1 from 2023).
    closes = _closes([("2023-12-29", 40.0), ("2025-01-02", 100.0), ("2025-01-03", 110.0)])
    ytd = year_to_date(closes, D(2025, 1, 3))
    assert (ytd["base_date"], ytd["base_is_first_close_of_year"]) == ("2025-01-02", True)
    assert ytd["yield_pct"] == approx(10.0)


def test_year_to_date_with_no_close_last_year_nor_this_year_raises():
    # Suspended from 2023-12-29 to 2025-01-02: as of 2025-01-01 there is no base in 2024 nor a close in 2025.
    closes = _closes([("2023-12-29", 40.0), ("2025-01-02", 100.0)])
    with pytest.raises(NoDataError):
        year_to_date(closes, D(2025, 1, 1))


def test_chart_of_a_microsecond_index_reads_dates_right():
    # pandas 3 parses to microseconds by default; the chart must not assume nanoseconds.
    closes = pd.Series([1.0, 2.0, 3.0], index=pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-08"]).as_unit("us"))
    chart = series_chart(closes, D(2024, 1, 1), D(2024, 1, 31), Frequency.WEEKLY)
    assert chart["dates"] == ["2024-01-03", "2024-01-08"]


@pytest.mark.parametrize("as_of", [D(2024, 12, 26), D(2020, 1, 1)])
def test_year_to_date_before_any_data_raises_no_data_error(as_of):
    closes = _closes([p for p in YEAR_END if p[0] >= "2024"])
    with pytest.raises(NoDataError):
        year_to_date(closes, as_of)


# --- several indexes ------------------------------------------------------------------------------


@pytest.fixture
def store() -> PriceStore:
    return PriceStore(
        [
            _history("000300", "CSI 300", YEAR_END),
            _history("HSI", "Hang Seng", [("2024-12-31", 200.0), ("2025-01-02", 190.0), ("2025-01-03", 210.0)]),
        ]
    )


def test_index_chart_keeps_the_order_of_codes_and_carries_code_and_name(store):
    assert store.codes == ("000300", "HSI")  # the store's own order is the other way round
    chart = index_chart(store, ["HSI", "000300"], D(2024, 12, 31), D(2025, 1, 5), Frequency.WEEKLY)

    assert (chart["frequency"], chart["start"], chart["end"]) == ("WEEKLY", "2024-12-31", "2025-01-05")
    assert [(s["code"], s["name"]) for s in chart["series"]] == [("HSI", "Hang Seng"), ("000300", "CSI 300")]
    hsi, csi = chart["series"]
    # both have one weekly point in that range, Fri 3 Jan (week of Mon 30 Dec)
    assert hsi["dates"] == csi["dates"] == ["2025-01-03"]
    assert (hsi["close"], csi["close"]) == ([210.0], [104.0])
    # the series match series_chart of each index
    assert {k: v for k, v in hsi.items() if k not in ("code", "name")} == series_chart(
        store["HSI"].closes, D(2024, 12, 31), D(2025, 1, 5), Frequency.WEEKLY
    )


def test_index_chart_of_a_range_empty_for_one_index_raises(store):
    with pytest.raises(NoDataError):
        index_chart(store, ["000300", "HSI"], D(2024, 12, 27), D(2024, 12, 27), Frequency.DAILY)


def test_yields_this_year_keeps_the_order_of_codes_and_carries_code_and_name(store):
    yields = yields_this_year(store, ["HSI", "000300"], D(2025, 1, 3))
    assert [(y["code"], y["name"]) for y in yields] == [("HSI", "Hang Seng"), ("000300", "CSI 300")]
    # HSI: 210 / 200 - 1 = +5 %; CSI 300: 104 / 100 - 1 = +4 %
    assert [y["yield_pct"] for y in yields] == approx([5.0, 4.0])
    assert yields[0]["base_date"] == "2024-12-31"
    # a single code and a repeated code are fine
    assert [y["code"] for y in yields_this_year(store, ["HSI", "HSI"], D(2025, 1, 3))] == ["HSI", "HSI"]


# --- JSON-ready values ----------------------------------------------------------------------------


def _assert_plain(value) -> None:
    """Only the types JSON has: dict with str keys, list, str, float, bool (no numpy scalars)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert type(value) in (str, float, bool), (value, type(value))


@pytest.mark.parametrize("frequency", list(Frequency))
def test_chart_values_are_json_ready(store, frequency):
    chart = index_chart(store, ["000300", "HSI"], D(2023, 1, 1), D(2025, 12, 31), frequency)
    _assert_plain(chart)
    for series in chart["series"]:
        for iso in series["dates"]:
            assert dt.date.fromisoformat(iso).isoformat() == iso
        for key in ("total_return", "annualized_volatility", "max_drawdown"):
            assert type(series[key]) is float
    assert orjson.loads(orjson.dumps(chart)) == chart


def test_single_point_chart_values_are_json_ready():
    chart = series_chart(_closes(JANUARY), D(2024, 1, 8), D(2024, 1, 8), Frequency.DAILY)
    _assert_plain(chart)
    assert orjson.loads(orjson.dumps(chart)) == chart


def test_year_to_date_values_are_json_ready(store):
    for as_of in (D(2025, 1, 5), D(2025, 6, 30)):
        yields = yields_this_year(store, ["000300", "HSI"], as_of)
        _assert_plain(yields)
        for ytd in yields:
            assert type(ytd["base_is_first_close_of_year"]) is bool
            assert dt.date.fromisoformat(ytd["base_date"]).isoformat() == ytd["base_date"]
            assert dt.date.fromisoformat(ytd["last_date"]).isoformat() == ytd["last_date"]
        assert orjson.loads(orjson.dumps(yields)) == yields
    mid_year = year_to_date(_closes([("2024-06-03", 50.0), ("2024-06-04", 52.0)]), D(2024, 6, 4))
    _assert_plain(mid_year)
    assert orjson.loads(orjson.dumps(mid_year)) == mid_year


def test_an_index_ending_earlier_in_the_year_is_measured_at_its_own_last_close():
    store = PriceStore(
        [
            _history("000300", "CSI 300", [("2025-12-31", 100.0), ("2026-03-02", 105.0)]),
            _history("HSI", "Hang Seng", [("2025-12-31", 200.0), ("2026-07-24", 190.0)]),
        ]
    )
    early, fresh = yields_this_year(store, ["000300", "HSI"], D(2026, 7, 24))
    assert (early["base_date"], early["last_date"], early["yield_pct"]) == ("2025-12-31", "2026-03-02", approx(5.0))
    assert (fresh["base_date"], fresh["last_date"], fresh["yield_pct"]) == ("2025-12-31", "2026-07-24", approx(-5.0))


def test_an_index_ending_in_an_earlier_year_has_no_year_to_date_for_a_later_one():
    # 000300 ends in January 2021: as of 2026-07-24 its 2021 figure must not pass for 2026.
    store = PriceStore(
        [
            _history("000300", "CSI 300", [("2020-12-31", 100.0), ("2021-01-27", 105.0)]),
            _history("HSI", "Hang Seng", [("2025-12-31", 200.0), ("2026-07-24", 190.0)]),
        ]
    )
    with pytest.raises(NoDataError, match=r"^index 000300: no close in 2026 up to 2026-07-24$"):
        yields_this_year(store, ["000300", "HSI"], D(2026, 7, 24))


def test_charts_from_the_memoized_daily_series_equal_charts_from_prices():
    import gc

    from gql import analytics

    closes = _closes([("2024-01-02", 100.0), ("2024-01-05", 104.0), ("2024-01-08", 99.0), ("2024-02-01", 120.0)])
    analytics._daily_series.pop(id(closes), None)
    first = series_chart(closes, D(2024, 1, 3), D(2024, 2, 29), Frequency.WEEKLY)
    assert id(closes) in analytics._daily_series
    again = series_chart(closes, D(2024, 1, 3), D(2024, 2, 29), Frequency.WEEKLY)
    assert again == first
    # Another range and frequency of the same series is a slice of the memoized one.
    assert series_chart(closes, D(2024, 1, 1), D(2024, 1, 6), Frequency.DAILY)["close"] == [100.0, 104.0]
    key = id(closes)
    del closes
    gc.collect()
    assert key not in analytics._daily_series
