"""Daily publication: when new prices are expected, how long results stay fresh until then, and the
optional scheduled refresh after it.

Index data is day-level: a result computed at 10:00 is as fresh as it will ever be until the next
close is published (e.g. 15:30 Asia/Shanghai on a trading day). With `GQL_TTL_UNTIL_PUBLICATION`
results live until then instead of a fixed number of seconds; with `GQL_REFRESH_AT` the server
refreshes itself at that time each trading day (one process of the fleet does it, by a Redis lock).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

# Trading days are taken to be weekdays: exchange holidays are not known here, and a refresh or
# an expiry on a holiday costs one recomputation, nothing more.
_WEEKEND = (5, 6)


def parse_time_of_day(text: str) -> dt.time:
    """'15:30' -> 15:30; ValueError with what is allowed otherwise."""
    try:
        hours, minutes = (int(part) for part in text.split(":"))
        return dt.time(hours, minutes)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day: expected HH:MM, e.g. 15:30") from None


def next_publication(now: dt.datetime, at: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The first trading-day moment `at` (in `zone`) strictly after `now` (an aware datetime)."""
    local = now.astimezone(zone)
    candidate = dt.datetime.combine(local.date(), at, tzinfo=zone)
    while candidate <= local or candidate.weekday() in _WEEKEND:
        candidate = dt.datetime.combine(candidate.date() + dt.timedelta(days=1), at, tzinfo=zone)
    return candidate


def seconds_until_publication(now: dt.datetime, at: dt.time, zone: ZoneInfo, minimum: float = 60.0) -> float:
    """TTL for day-level results: until the next publication, and never less than `minimum` seconds."""
    return max(minimum, (next_publication(now, at, zone) - now).total_seconds())


async def run_daily(
    at: dt.time,
    zone: ZoneInfo,
    job: Callable[[dt.datetime], Awaitable[None]],
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> None:
    """Call `job(slot)` at `at` on every trading day until cancelled; a failing job is logged and retried next day."""
    while True:
        slot = next_publication(clock(), at, zone)
        await asyncio.sleep(max(0.0, (slot - clock()).total_seconds()))
        try:
            await job(slot)
        except Exception:
            log.exception("scheduled refresh for %s failed; next attempt at the next publication", slot.isoformat())
