"""Argument checks: what the resolvers answer for, or a UserInputError saying what is allowed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gql.data import PriceStore
from gql.errors import UserInputError, shown


def resolve_codes(store: PriceStore, codes: Sequence[str] | None, max_codes: int = 100) -> tuple[str, ...]:
    """Codes to answer for, in the order asked; null means every index in data-set order."""
    if codes is None:
        return store.codes
    if not codes:
        raise UserInputError("codes is an empty list; pass null (or leave it out) for all indexes, or name some")
    if len(codes) > max_codes:
        raise UserInputError(f"{len(codes)} codes asked for; the limit is {max_codes} per field")
    resolved, unknown, seen = [], [], set()
    for raw in codes:
        code = store.find(raw.strip())  # in any case (ASCII letters only: see gql.data.code_key)
        if code is None:
            unknown.append(raw)
        elif code in seen:
            raise UserInputError(f"index code {shown(raw)} is asked for twice; list each code once")
        else:
            seen.add(code)
            resolved.append(code)
    if unknown:
        names = ", ".join(shown(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise UserInputError(f"unknown index code{'s' if len(unknown) > 1 else ''} {names}; known codes: {', '.join(store.codes)}")
    return tuple(resolved)


def chart_arguments(
    store: PriceStore, codes: Sequence[str] | None, start: dt.date | None, end: dt.date | None, max_codes: int = 100
) -> tuple[tuple[str, ...], dt.date, dt.date]:
    """What indexChart answers for: the indexes charted and the range."""
    return resolve_range(store, resolve_codes(store, codes, max_codes), start, end, named=codes is not None)


def yield_arguments(
    store: PriceStore, codes: Sequence[str] | None, as_of: dt.date | None, max_codes: int = 100
) -> tuple[tuple[str, ...], dt.date]:
    """What yieldThisYear answers for: the indexes measured and the date."""
    return resolve_as_of(store, resolve_codes(store, codes, max_codes), as_of, named=codes is not None)


# One rule for both cached fields: an index is answered for a period only if it has a close in it. One
# asked for by code that has none is an error naming it (whether asked alone or with others); with codes
# null ("every index"), the indexes without a close in the period are left out.


def resolve_range(
    store: PriceStore, codes: Sequence[str], start: dt.date | None, end: dt.date | None, *, named: bool
) -> tuple[tuple[str, ...], dt.date, dt.date]:
    """The indexes to chart and the range: the given bounds clipped to the data of these indexes (or the whole of it)."""
    if start is not None and end is not None and start > end:
        raise UserInputError(f"start {start} is after end {end}; start must be on or before end")
    first = min(store[c].first_date for c in codes)
    last = max(store[c].last_date for c in codes)
    lo = first if start is None else max(start, first)
    hi = last if end is None else min(end, last)
    whose = f"the data of {codes[0]}" if len(codes) == 1 else "the data of these indexes" if named else "the data"
    if start is not None and start > last:
        raise UserInputError(f"no close on or after start {start}: {whose} runs from {first} to {last}")
    if end is not None and end < first:
        raise UserInputError(f"no close on or before end {end}: {whose} runs from {first} to {last}")
    charted = tuple(c for c in codes if store[c].has_close_between(lo, hi))
    if not named and not charted:
        raise UserInputError(f"no index has a close between {lo} and {hi}; choose a range with trading days in it")
    if len(charted) < len(codes) and named:
        spans = "; ".join(f"{c} has data from {store[c].first_date} to {store[c].last_date}" for c in codes if c not in charted)
        raise UserInputError(f"no closes between {lo} and {hi} for {', '.join(c for c in codes if c not in charted)} ({spans}); "
                             "leave them out, or choose a range they have data in")
    return charted, lo, hi


def resolve_as_of(store: PriceStore, codes: Sequence[str], as_of: dt.date | None, *, named: bool) -> tuple[tuple[str, ...], dt.date]:
    """The indexes measured and the date to measure at. Year-to-date is of asOf's year (asOf defaults to the
    latest date in the data set; a later date in the same year means that date): an index with no close
    in that year up to asOf has no year-to-date for it."""
    last = store.last_date
    if as_of is not None and as_of > last and as_of.year != last.year:
        raise UserInputError(
            f"asOf {as_of} is in a year with no data yet; the latest close is on {last}: use a date up to {dt.date(last.year, 12, 31)}"
        )
    date = last if as_of is None or as_of > last else as_of
    year_start = dt.date(date.year, 1, 1)
    measured = tuple(c for c in codes if store[c].has_close_between(year_start, date))
    if not named and not measured:
        raise UserInputError(f"no index has a close in {date.year} up to {date}; the data runs from {store.first_date} to {last}")
    if len(measured) < len(codes) and named:
        unmeasured = [c for c in codes if c not in measured]
        spans = "; ".join(f"{c} has data from {store[c].first_date} to {store[c].last_date}" for c in unmeasured[:10])
        raise UserInputError(
            f"no year-to-date for {date.year} up to {date} for {', '.join(unmeasured)}: no close in {date.year} up to {date} ({spans}); "
            "leave them out, or ask an asOf in a year they have closes in"
        )
    return measured, date
