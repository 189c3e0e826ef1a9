"""One rule for periods without data, for both cached fields and for one index or many: an index is answered
for a period only if it has a close in it. Asked for by code, one without is an error naming it; with codes
null it is left out. Year-to-date is of asOf's calendar year: a 2021 figure never passes for 2026.

The data set is the README's real one (tests/fixtures, the original layouts): CSI 300 ends on 2021-01-27,
CSI 500 on 2021-02-05, the Hang Seng Index on 2026-07-24.
"""

from __future__ import annotations

import pytest

from tests.support.http import ADMIN, CHART, REFRESH, YIELD, gql, statuses
from tests.support.realdata import import_real


@pytest.fixture
def real(make_client, tmp_path):
    return make_client(data_dir=import_real(tmp_path), data_watch=False)


def error(body: dict) -> str:
    assert body["data"] is None
    [only] = body["errors"]
    assert only["extensions"]["code"] == "BAD_USER_INPUT"
    return only["message"]


NO_2026 = (
    "no year-to-date for 2026 up to 2026-07-24 for 000300: no close in 2026 up to 2026-07-24 "
    "(000300 has data from 2005-04-08 to 2021-01-27); leave them out, or ask an asOf in a year they have closes in"
)


@pytest.mark.parametrize("codes", [["000300"], ["000300", "HSI"], ["HSI", "000300"]], ids=["alone", "first", "with HSI first"])
def test_an_index_without_a_close_in_the_year_is_an_error_alone_or_with_others(real, codes):
    assert error(gql(real, YIELD, codes=codes, asOf="2026-07-24")) == NO_2026


def test_the_default_asof_is_the_data_sets_latest_date_for_one_index_too(real):
    # Not 000300's own last date: "year to date" means the data set's year, asked alone or with others.
    assert error(gql(real, YIELD, codes=["000300"])) == NO_2026


def test_codes_null_leaves_out_the_indexes_without_a_close_in_the_year(real):
    rows = gql(real, YIELD)["data"]["yieldThisYear"]
    assert [(r["code"], r["lastDate"][:4], r["baseDate"][:4]) for r in rows] == [("HSI", "2026", "2025")]
    earlier = gql(real, YIELD, asOf="2021-01-29")["data"]["yieldThisYear"]
    # 000300's last close of 2021 before asOf is 2021-01-27: measured there, in the same year.
    assert [(r["code"], r["lastDate"]) for r in earlier] == [("000300", "2021-01-27"), ("000905", "2021-01-29"), ("HSI", "2021-01-29")]


def test_an_index_is_measured_in_a_year_it_has_closes_in(real):
    [row] = gql(real, YIELD, codes=["000300"], asOf="2021-01-27")["data"]["yieldThisYear"]
    assert (row["baseDate"], row["lastDate"], row["baseIsFirstCloseOfYear"]) == ("2020-12-31", "2021-01-27", False)
    assert row["yieldPct"] == pytest.approx((row["lastClose"] / row["baseClose"] - 1) * 100, rel=1e-12)


def test_a_chart_range_without_data_for_a_named_index_names_it(real):
    body = gql(real, CHART, codes=["000300"], start="2026-01-01")
    assert error(body) == "no close on or after start 2026-01-01: the data of 000300 runs from 2005-04-08 to 2021-01-27"
    body = gql(real, CHART, codes=["000300", "HSI"], start="2022-01-01")
    assert error(body) == (
        "no closes between 2022-01-01 and 2026-07-24 for 000300 (000300 has data from 2005-04-08 to 2021-01-27); "
        "leave them out, or choose a range they have data in"
    )


def test_a_chart_of_every_index_shows_those_with_data_in_the_range(real):
    chart = gql(real, CHART, start="2022-01-01")["data"]["indexChart"]
    assert [s["code"] for s in chart["series"]] == ["HSI"] and chart["start"] == "2022-01-01"
    whole = gql(real, CHART)["data"]["indexChart"]
    assert [s["code"] for s in whole["series"]] == ["000300", "000905", "HSI"]
    assert (whole["start"], whole["end"]) == ("1990-01-02", "2026-07-24")


def test_refresh_recomputes_the_defaults_the_queries_ask_for(real):
    assert "errors" not in gql(real, REFRESH, ADMIN)
    # The refresh computed the defaults (codes null) with the same rule: the next default queries are hits.
    assert statuses(gql(real, YIELD)) == ["HIT"]
    assert statuses(gql(real, CHART)) == ["HIT"]


def test_dates_no_timestamp_can_hold_are_answered_with_the_rule(real):
    # pandas Timestamps stop at 1677 and 2262: the checks compare dates first.
    assert error(gql(real, YIELD, asOf="1677-01-01")) == "no index has a close in 1677 up to 1677-01-01; the data runs from 1990-01-02 to 2026-07-24"
    assert error(gql(real, CHART, codes=["HSI"], end="0001-01-02")) == (
        "no close on or before end 0001-01-02: the data of HSI runs from 1990-01-02 to 2026-07-24"
    )
