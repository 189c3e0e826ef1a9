"""Publication times, TTLs until the next publication, the daily refresh loop and its fleet-wide claim."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest

from gql.cache import ResultCache
from gql.config import ConfigError, Settings
from gql.schedule import next_publication, parse_time_of_day, run_daily, seconds_until_publication

SHANGHAI = ZoneInfo("Asia/Shanghai")
AT = dt.time(15, 30)


def shanghai(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (shanghai(2026, 11, 18, 10, 0), shanghai(2026, 11, 18, 15, 30)),  # Wednesday morning: today
        (shanghai(2026, 11, 18, 15, 30), shanghai(2026, 11, 19, 15, 30)),  # exactly at it: the next one
        (shanghai(2026, 11, 20, 16, 0), shanghai(2026, 11, 23, 15, 30)),  # Friday evening: Monday
        (shanghai(2026, 11, 21, 9, 0), shanghai(2026, 11, 23, 15, 30)),  # Saturday: Monday
        # 2026-11-18 07:00 UTC is 15:00 in Shanghai: half an hour before the publication.
        (dt.datetime(2026, 11, 18, 7, 0, tzinfo=dt.UTC), shanghai(2026, 11, 18, 15, 30)),
    ],
)
def test_next_publication(now, expected):
    assert next_publication(now, AT, SHANGHAI) == expected


def test_ttl_until_publication_and_its_minimum():
    assert seconds_until_publication(shanghai(2026, 11, 18, 15, 0), AT, SHANGHAI) == 1800
    assert seconds_until_publication(shanghai(2026, 11, 18, 15, 29, 30), AT, SHANGHAI) == 60


def test_times_of_day_and_zones_are_checked():
    assert parse_time_of_day("09:05") == dt.time(9, 5)
    for bad in ("25:00", "3pm", "15"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_time_of_day(bad)
    with pytest.raises(ConfigError, match="GQL_REFRESH_AT"):
        Settings.from_env({"GQL_REFRESH_AT": "half past three"})
    with pytest.raises(ConfigError, match="GQL_TIMEZONE"):
        Settings.from_env({"GQL_TIMEZONE": "Mars/Olympus"})


def test_results_live_until_the_next_publication_when_configured():
    from gql.service import Service

    fixed = Service(Settings())
    assert fixed.ttl(3600) == 3600
    daily = Service(Settings(ttl_until_publication=True))
    now = dt.datetime.now(dt.UTC)
    expected = (next_publication(now, AT, SHANGHAI) - now).total_seconds()
    assert daily.ttl(3600) == pytest.approx(max(60, expected), abs=2)


@pytest.mark.anyio
async def test_run_daily_calls_the_job_at_the_slot_and_survives_a_failure():
    slot = shanghai(2026, 11, 18, 15, 30)
    times = iter([slot - dt.timedelta(seconds=0.05)] * 2 + [slot + dt.timedelta(seconds=1)] * 100)
    calls = []

    async def job(when: dt.datetime) -> None:
        calls.append(when)
        raise RuntimeError("a failing refresh must not stop the schedule")

    task = asyncio.ensure_future(run_daily(AT, SHANGHAI, job, clock=lambda: next(times)))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if calls:
            break
    await asyncio.sleep(0.05)
    assert calls == [slot] and not task.done()  # waiting for the next day, not crashed
    task.cancel()


@pytest.mark.anyio
async def test_only_one_process_of_the_fleet_claims_a_slot(redis_server):
    config = Settings(redis_url=redis_server.url, cache_prefix=f"t-{uuid.uuid4().hex[:8]}")
    one, two = ResultCache(config), ResultCache(config)
    key = one.keys.scheduled_refresh("2026-11-18T15:30:00+08:00")
    assert await one.raw.claim(key, 60) is True
    assert await two.raw.claim(key, 60) is False
    await one.close()
    await two.close()
