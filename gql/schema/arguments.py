"""Argument checks: what the resolvers answer for, or a UserInputError saying what is allowed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gql.data import PriceStore
from gql.errors import UserInputError


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
            raise UserInputError(f"index code {raw!r} is asked for twice; list each code once")
        else:
            seen.add(code)
            resolved.append(code)
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise UserInputError(f"unknown index code{'s' if len(unknown) > 1 else ''} {names}; known codes: {', '.join(store.codes)}")
    return tuple(resolved)


def resolve_range(
    store: PriceStore, codes: Sequence[str], start: dt.date | None, end: dt.date | None
) -> tuple[dt.date, dt.date]:
    """The range to chart: the given bounds clipped to the data of these indexes (or the whole of it)."""
    if start is not None and end is not None and start > end:
        raise UserInputError(f"start {start} is after end {end}; start must be on or before end")
    first = min(store[c].first_date for c in codes)
    last = max(store[c].last_date for c in codes)
    lo = first if start is None else max(start, first)
    hi = last if end is None else min(end, last)
    if lo > hi:
        raise UserInputError(f"the range {start or first} to {end or last} holds no data; the data runs from {first} to {last}")
    empty = [c for c in codes if store[c].last_date < lo or store[c].first_date > hi]
    if empty:
        spans = "; ".join(f"{c} has data from {store[c].first_date} to {store[c].last_date}" for c in empty)
        raise UserInputError(f"no closes between {lo} and {hi} for {', '.join(empty)} ({spans})")
    return lo, hi


def resolve_as_of(store: PriceStore, codes: Sequence[str], as_of: dt.date | None) -> dt.date:
    """The date to measure at; a date after the data but in the same year means the latest close."""
    last = max(store[c].last_date for c in codes)
    if as_of is None:
        return last
    first = min(store[c].first_date for c in codes)
    if as_of < first:
        raise UserInputError(f"asOf {as_of} is before the first data ({first}); use a date from {first} on")
    if as_of > last:
        if as_of.year != last.year:
            raise UserInputError(
                f"asOf {as_of} is in a year with no data yet; the latest close is on {last}: use a date up to {dt.date(last.year, 12, 31)}"
            )
        return last
    missing = [c for c in codes if store[c].first_date > as_of]
    if missing:
        spans = "; ".join(f"{c} starts on {store[c].first_date}" for c in missing)
        raise UserInputError(f"no close on or before asOf {as_of} for {', '.join(missing)} ({spans})")
    return as_of
