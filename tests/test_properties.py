"""Properties of argument normalization and cache keys, checked on generated arguments without Redis.

The same question asked two ways is one cache key, two different questions never share one, a key never
holds user text, and no argument makes the checks raise anything but UserInputError.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gql import analytics
from gql.cache import CacheResult, CacheStatus
from gql.cache.keys import Keys
from gql.config import Settings
from gql.data import IndexHistory, IndexMeta, PriceStore, make_closes
from gql.errors import UserInputError
from gql.schema.arguments import chart_arguments, resolve_as_of, resolve_codes, resolve_range, yield_arguments
from gql.schema.types import CHART_NAMESPACE, YIELD_NAMESPACE, Frequency
from gql.service import Service

# Derandomized and without an example database: the same examples on every run and machine, and no
# .hypothesis/ directory in the work tree.
PROPERTY = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
PREFIX = "prop"


def _history(code: str, start: str, end: str) -> IndexHistory:
    days = pd.bdate_range(start, end)
    closes = 100.0 * np.exp(np.cumsum(np.sin(np.arange(len(days)) / 7.0) * 0.01))
    return IndexHistory(IndexMeta(code=code, name=f"Index {code}", source="test"), make_closes(days, closes))


# Indexes with different spans (so clipping and "no data for this index" both happen), given out of
# data-set order (the store sorts them: 000300, 000905, 399971, HSI).
STORE = PriceStore(
    [
        _history("HSI", "2015-06-01", "2022-03-15"),
        _history("000905", "2012-01-02", "2018-12-31"),
        _history("000300", "2010-01-04", "2020-11-20"),
        _history("399971", "2016-07-01", "2021-06-30"),
    ]
)
CODES = STORE.codes
SPACES = " \t\n\r\x0b\x0c\xa0\u3000"

dates = st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31))
# Dates near the data (and its edges) find more interesting cases than 1900-2100 alone.
data_dates = st.one_of(
    st.dates(STORE.first_date - dt.timedelta(days=30), STORE.last_date + dt.timedelta(days=30)),
    st.sampled_from(sorted({d for h in STORE for d in (h.first_date, h.last_date)})),
)
optional_dates = st.none() | dates | data_dates
frequencies = st.sampled_from(list(Frequency))


@st.composite
def spelled(draw: st.DrawFn, code: str) -> str:
    """The code as a user may type it: any letter case, whitespace around it."""
    cased = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in code)
    return draw(st.text(SPACES, max_size=2)) + cased + draw(st.text(SPACES, max_size=2))


@st.composite
def code_selections(draw: st.DrawFn, min_size: int = 1) -> tuple[str, ...]:
    """A non-empty selection of known codes, in any order."""
    order = draw(st.permutations(CODES))
    return tuple(order[: draw(st.integers(min_size, len(order)))])


@st.composite
def spellings(draw: st.DrawFn, codes: Sequence[str]) -> list[str]:
    return [draw(spelled(code)) for code in codes]


# --- what the resolvers do, without Redis ---------------------------------------------------------


class _RecordingCache:
    """Stands in for ResultCache: keeps the key parts the resolver built, then computes the value."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def get_or_compute(self, namespace: str, parts: dict[str, Any], ttl: float, compute, refused=()) -> CacheResult:
        self.calls.append((namespace, dict(parts)))
        return CacheResult(await compute(), CacheStatus.BYPASS, 0.0, 0.0)


def cache_key(prefix: str, namespace: str, parts: dict[str, Any]) -> str:
    return Keys(prefix).entry(namespace, parts).name


class _RecordingService(Service):
    """The real Service with a recording cache in place of ResultCache."""

    def __init__(self, compute: bool) -> None:
        self.recording = _RecordingCache()
        super().__init__(Settings(chart_ttl=60.0, yield_ttl=60.0, max_codes=100), cache=self.recording)  # type: ignore[arg-type]
        self._computing = compute

    async def compute(self, fn, *args):
        store, *rest = args
        # Computing is slow (a daily chart of four indexes takes ~20 ms); most properties only need to
        # know what would be computed: the analytics function and its arguments.
        return fn(store, *rest) if self._computing else (fn.__name__, *rest)


def chart_outcome(
    codes: Sequence[str] | None, start: dt.date | None, end: dt.date | None, frequency: Frequency, compute: bool = False
):
    """("key", cache key, value) as Query.index_chart would build them, or ("error", message).

    The value is the computed chart, or with compute=False the call that would compute it.
    """
    # Mirrors Query.index_chart; the key parts themselves come from the real Service.chart.
    backend = _RecordingService(compute)
    try:
        resolved, lo, hi = chart_arguments(STORE, codes, start, end)
        result = asyncio.run(backend.chart(resolved, lo, hi, analytics.Frequency[frequency.value], STORE))
    except UserInputError as exc:
        return ("error", exc.message)
    [(namespace, parts)] = backend.recording.calls
    assert namespace == CHART_NAMESPACE
    return ("key", cache_key(PREFIX, namespace, parts), result.value)


def yield_outcome(codes: Sequence[str] | None, as_of: dt.date | None, compute: bool = False):
    """("key", cache key, value) as Query.yield_this_year would build them, or ("error", message)."""
    backend = _RecordingService(compute)
    try:
        resolved, date = yield_arguments(STORE, codes, as_of)
        result = asyncio.run(backend.yields(resolved, date, STORE))
    except UserInputError as exc:
        return ("error", exc.message)
    [(namespace, parts)] = backend.recording.calls
    assert namespace == YIELD_NAMESPACE
    return ("key", cache_key(PREFIX, namespace, parts), result.value)


def assert_same_question(a, b) -> None:
    """Both refused, or both answered under one key with the same computation behind it."""
    assert a[0] == b[0], (a[:2], b[:2])
    if a[0] == "key":
        assert a[1] == b[1]
        assert a[2] == b[2]


def _span(codes: Sequence[str]) -> tuple[dt.date, dt.date]:
    return min(STORE[c].first_date for c in codes), max(STORE[c].last_date for c in codes)


# --- equivalent arguments: one key ----------------------------------------------------------------


@PROPERTY
@given(selection=code_selections(), data=st.data(), start=optional_dates, end=optional_dates, frequency=frequencies, as_of=optional_dates)
def test_code_spelling_does_not_change_the_key(selection, data, start, end, frequency, as_of):
    typed = data.draw(spellings(selection))
    assert resolve_codes(STORE, typed) == selection
    assert_same_question(chart_outcome(typed, start, end, frequency), chart_outcome(list(selection), start, end, frequency))
    assert_same_question(yield_outcome(typed, as_of), yield_outcome(list(selection), as_of))


@PROPERTY
@given(start=optional_dates, end=optional_dates, frequency=frequencies, as_of=optional_dates)
def test_null_codes_are_every_code_with_data_for_the_period(start, end, frequency, as_of):
    assert resolve_codes(STORE, None) == CODES == ("000300", "000905", "399971", "HSI")
    pairs = [
        (chart_outcome(None, start, end, frequency), chart_outcome(list(CODES), start, end, frequency)),
        (yield_outcome(None, as_of), yield_outcome(list(CODES), as_of)),
    ]
    for every, named in pairs:
        if named[0] == "key":  # every index has data for the period: null is the same question as naming them all
            assert_same_question(every, named)
        elif every[0] == "key":  # naming them all is refused for some index: null leaves it (and only it) out
            assert set(every[2][1]) < set(CODES) and "no " in named[1]


@PROPERTY
@given(
    codes=st.none() | code_selections(),
    before=st.integers(0, 40_000),
    after=st.integers(0, 40_000),
    other=st.none() | data_dates,
    frequency=frequencies,
)
def test_bounds_outside_the_data_are_the_same_as_no_bounds(codes, before, after, other, frequency):
    first, last = _span(codes or CODES)
    early = max(dt.date(1900, 1, 1), first - dt.timedelta(days=before))
    late = min(dt.date(2100, 12, 31), last + dt.timedelta(days=after))
    assert_same_question(chart_outcome(codes, early, other, frequency), chart_outcome(codes, None, other, frequency))
    assert_same_question(chart_outcome(codes, other, late, frequency), chart_outcome(codes, other, None, frequency))
    whole = chart_outcome(codes, early, late, frequency)
    assert_same_question(whole, chart_outcome(codes, None, None, frequency))
    assert whole[0] == "key" and whole[2][2:4] == (first, last)


@PROPERTY
@given(codes=st.none() | code_selections(), days_after=st.integers(1, 366))
def test_as_of_after_the_data_in_its_year_is_the_last_date(codes, days_after):
    last = STORE.last_date  # of the whole data set, whichever indexes are asked for
    as_of = last + dt.timedelta(days=days_after)
    assume(as_of.year == last.year)
    latest = yield_outcome(codes, last)
    assert_same_question(yield_outcome(codes, as_of), latest)
    assert_same_question(yield_outcome(codes, None), latest)


@PROPERTY
@given(codes=st.none() | code_selections(), days_after=st.integers(1, 40_000))
def test_as_of_in_a_later_year_than_the_data_is_refused(codes, days_after):
    last = STORE.last_date
    as_of = min(dt.date(2100, 12, 31), last + dt.timedelta(days=days_after))
    assume(as_of.year > last.year)
    outcome = yield_outcome(codes, as_of)
    assert outcome[0] == "error" and "no data yet" in outcome[1]


# --- different arguments: different keys ----------------------------------------------------------


@PROPERTY
@given(selection=code_selections(min_size=2), data=st.data(), frequency=frequencies, as_of=st.none() | data_dates)
def test_a_different_code_order_is_a_different_key(selection, data, frequency, as_of):
    reordered = tuple(data.draw(st.permutations(selection)))
    assume(reordered != selection)
    a, b = chart_outcome(list(selection), None, None, frequency), chart_outcome(list(reordered), None, None, frequency)
    assert a[0] == b[0] == "key" and a[1] != b[1]
    assert (a[2][1], b[2][1]) == (selection, reordered)
    a, b = yield_outcome(list(selection), as_of), yield_outcome(list(reordered), as_of)
    assert a[0] == b[0]
    if a[0] == "key":
        assert a[1] != b[1] and b[2][1] == reordered


@PROPERTY
@given(a=code_selections(), b=code_selections(), frequency=frequencies, as_of=st.none() | data_dates)
def test_different_code_sets_are_different_keys(a, b, frequency, as_of):
    assume(set(a) != set(b))
    x, y = chart_outcome(list(a), None, None, frequency), chart_outcome(list(b), None, None, frequency)
    assert x[0] == y[0] == "key" and x[1] != y[1]
    x, y = yield_outcome(list(a), as_of), yield_outcome(list(b), as_of)
    if x[0] == y[0] == "key":
        assert x[1] != y[1]
    # null is all codes in data-set order, and only that.
    assert (chart_outcome(None, None, None, frequency)[1] == chart_outcome(list(a), None, None, frequency)[1]) == (a == CODES)


@PROPERTY
@given(
    codes=st.none() | code_selections(),
    first_pair=st.tuples(st.none() | data_dates, st.none() | data_dates),
    second_pair=st.tuples(st.none() | data_dates, st.none() | data_dates),
    frequency=frequencies,
)
def test_chart_keys_are_equal_exactly_when_the_normalized_range_is(codes, first_pair, second_pair, frequency):
    resolved = resolve_codes(STORE, codes)

    def normalized(pair):
        try:
            return resolve_range(STORE, resolved, *pair, named=True)[1:]
        except UserInputError:
            return None

    ranges = normalized(first_pair), normalized(second_pair)
    assume(None not in ranges)
    a, b = chart_outcome(codes, *first_pair, frequency), chart_outcome(codes, *second_pair, frequency)
    assert a[0] == b[0] == "key"
    assert (a[1] == b[1]) == (ranges[0] == ranges[1])
    assert a[2][2:4] == ranges[0]


@PROPERTY
@given(codes=st.none() | code_selections(), pair=st.tuples(data_dates, data_dates), frequency=frequencies)
def test_different_in_range_dates_are_different_keys(codes, pair, frequency):
    first, last = _span(codes or CODES)
    one, two = pair
    assume(one != two and first <= one <= last and first <= two <= last)
    for x, y in [
        (chart_outcome(codes, one, None, frequency), chart_outcome(codes, two, None, frequency)),
        (chart_outcome(codes, None, one, frequency), chart_outcome(codes, None, two, frequency)),
        (yield_outcome(codes, one), yield_outcome(codes, two)),
    ]:
        if x[0] == y[0] == "key":
            assert x[1] != y[1]


@PROPERTY
@given(codes=st.none() | code_selections(), start=st.none() | data_dates, end=st.none() | data_dates, pair=st.permutations(list(Frequency)))
def test_a_different_frequency_is_a_different_key(codes, start, end, pair):
    a, b = chart_outcome(codes, start, end, pair[0]), chart_outcome(codes, start, end, pair[1])
    assert a[0] == b[0]
    if a[0] == "key":
        assert a[1] != b[1] and a[2][4] is analytics.Frequency[pair[0].value]


@PROPERTY
@given(codes=st.none() | code_selections(), as_of=st.none() | data_dates)
def test_charts_and_yields_never_share_a_key(codes, as_of):
    chart, ytd = chart_outcome(codes, as_of, as_of, Frequency.DAILY), yield_outcome(codes, as_of)
    if chart[0] == ytd[0] == "key":
        assert chart[1] != ytd[1]


# --- cache_key ------------------------------------------------------------------------------------

# What a user could put into the parts if the resolvers ever passed raw arguments through.
user_text = st.text(min_size=1, max_size=40)
part_values = st.one_of(user_text, st.lists(user_text, max_size=5).map(tuple), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none())
parts_dicts = st.dictionaries(st.text(min_size=1, max_size=12), part_values, min_size=1, max_size=8)
namespaces = st.sampled_from([CHART_NAMESPACE, YIELD_NAMESPACE])


@PROPERTY
@given(parts=parts_dicts, namespace=namespaces, data=st.data())
def test_cache_key_holds_no_user_text_has_a_fixed_length_and_ignores_dict_order(parts, namespace, data):
    key = cache_key(PREFIX, namespace, parts)
    assert re.fullmatch(rf"{PREFIX}:entry:\{{{namespace}:[0-9a-f]{{32}}\}}", key), key
    assert len(key) == len(f"{PREFIX}:entry:{{{namespace}:") + 33
    texts = [v for v in parts.values() if isinstance(v, str)] + [k for k in parts]
    for text in texts:
        if not re.fullmatch(r"[0-9a-f]+", text):
            assert text not in key.removeprefix(f"{PREFIX}:entry:{{{namespace}:").removesuffix("}")
    assert cache_key(PREFIX, namespace, dict(parts)) == key
    shuffled = data.draw(st.permutations(list(parts.items())))
    assert cache_key(PREFIX, namespace, dict(shuffled)) == key


@PROPERTY
@given(parts=parts_dicts, namespace=namespaces, data=st.data())
def test_cache_key_changes_with_any_part(parts, namespace, data):
    name = data.draw(st.sampled_from(sorted(parts)))
    changed = data.draw(part_values.filter(lambda v: v != parts[name] and not (isinstance(v, tuple) and list(v) == parts[name])))
    assert cache_key(PREFIX, namespace, {**parts, name: changed}) != cache_key(PREFIX, namespace, parts)
    other = next(n for n in (CHART_NAMESPACE, YIELD_NAMESPACE) if n != namespace)
    assert cache_key(PREFIX, other, parts) != cache_key(PREFIX, namespace, parts)


@PROPERTY
@given(typed=st.lists(st.one_of(user_text, st.sampled_from(CODES).flatmap(spelled)), min_size=1, max_size=6), as_of=optional_dates)
def test_keys_of_user_typed_codes_hold_no_user_text(typed, as_of):
    for outcome in (chart_outcome(typed, None, None, Frequency.MONTHLY), yield_outcome(typed, as_of)):
        if outcome[0] == "key":
            assert re.fullmatch(rf"{PREFIX}:entry:\{{(indexChart|yieldThisYear):[0-9a-f]{{32}}\}}", outcome[1])


# --- the checks refuse, never crash ---------------------------------------------------------------

raw_codes = st.none() | st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(CODES).flatmap(spelled), st.sampled_from(["", " ", "hſi", "HSı", "０００３００"])),
    max_size=8,
)


@PROPERTY
@given(codes=raw_codes, start=optional_dates, end=optional_dates, as_of=optional_dates, frequency=frequencies)
def test_argument_checks_raise_only_user_input_errors(codes, start, end, as_of, frequency):
    try:
        resolved = resolve_codes(STORE, codes)
    except UserInputError as exc:
        assert exc.extensions == {"code": "BAD_USER_INPUT"} and exc.message
        return
    assert resolved and len(set(resolved)) == len(resolved) and set(resolved) <= set(CODES)
    try:
        charted, lo, hi = resolve_range(STORE, resolved, start, end, named=True)
    except UserInputError as exc:
        assert exc.extensions == {"code": "BAD_USER_INPUT"}
    else:
        assert charted == resolved  # named codes: every one charted, or an error
        assert lo <= hi and (start is None or lo >= start) and (end is None or hi <= end)
        assert all(STORE[c].has_close_between(lo, hi) for c in resolved)
    try:
        measured, date = resolve_as_of(STORE, resolved, as_of, named=True)
    except UserInputError as exc:
        assert exc.extensions == {"code": "BAD_USER_INPUT"}
    else:
        assert measured == resolved
        # Year-to-date of asOf's year only: every index measured has a close in that year up to the date.
        assert all(STORE[c].has_close_between(dt.date(date.year, 1, 1), date) for c in resolved)
        assert date <= STORE.last_date
    # The whole resolver path: a range or date the checks let through either computes or is refused.
    for outcome in (chart_outcome(codes, start, end, frequency, compute=True), yield_outcome(codes, as_of, compute=True)):
        assert outcome[0] in ("key", "error")


@pytest.mark.parametrize("count", [101, 1000])
def test_too_many_codes_is_a_user_input_error(count):
    with pytest.raises(UserInputError):
        resolve_codes(STORE, [" hsi "] * count)


def test_a_range_without_a_close_is_a_user_input_error():
    # A weekend inside the data: the argument check finds no close in it, before any computation.
    saturday = dt.date(2016, 7, 9)
    outcome = chart_outcome(["000300"], saturday, saturday + dt.timedelta(days=1), Frequency.DAILY, compute=True)
    assert outcome[0] == "error" and outcome[1].startswith("no closes between 2016-07-09 and 2016-07-10 for 000300")
    with pytest.raises(analytics.NoDataError):
        analytics.index_chart(STORE, ["000300"], saturday, saturday + dt.timedelta(days=1), analytics.Frequency.DAILY)
