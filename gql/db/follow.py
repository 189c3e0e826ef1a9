"""How a process hears of a commit to the database, by any client, with no request needed.

- PostgreSQL: LISTEN on the channel the triggers NOTIFY (delivered on commit), on a connection of its
  own (psycopg's asyncio connection: waiting for a notification never holds the event loop). On each
  notification the feed picks up what changed. While that connection is down the process polls the
  version every `poll_seconds`, and on reconnecting picks up what it missed.
- MariaDB/MySQL: a poll of the version row (one indexed single-row read) every `poll_seconds`.

`sync` is the feed's: it reads in the feed's loader thread, keeps the last snapshot when the database
is away, and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import URL

from gql.db.tables import CHANNEL

log = logging.getLogger(__name__)

# A listening connection that has heard nothing for this long is checked with a query (a database that
# went away without closing it, a NAT that dropped it).
_QUIET_SECONDS = 10.0


async def follow(url: URL, postgres: bool, sync: Callable[[], Awaitable[object]], stop: asyncio.Event, *,
                 poll_seconds: float, timeout: float) -> None:
    if postgres:
        await _listen(url, sync, stop, poll_seconds=poll_seconds, timeout=timeout)
    else:
        await _poll(sync, stop, poll_seconds, until=None)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _poll(sync: Callable[[], Awaitable[object]], stop: asyncio.Event, every: float, until: float | None) -> None:
    """Sync every `every` seconds, until stopped (or for `until` seconds)."""
    loop = asyncio.get_running_loop()
    end = None if until is None else loop.time() + until
    while not stop.is_set() and (end is None or loop.time() < end):
        await sync()
        await _wait(stop, every)


async def _listen(url: URL, sync: Callable[[], Awaitable[object]], stop: asyncio.Event, *, poll_seconds: float, timeout: float) -> None:
    import psycopg

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    down = False
    backoff = poll_seconds
    while not stop.is_set():
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=max(1, round(timeout)),
                                                application_name="gql-index-cache listener"),
                timeout + 1,
            )
        except (TimeoutError, OSError, psycopg.Error) as exc:
            if not down:
                log.warning("cannot listen for data changes on %s (%s); polling every %.1f s until it can",
                            url.render_as_string(hide_password=True), str(exc).strip().splitlines()[0] if str(exc).strip() else
                            type(exc).__name__, poll_seconds)
            down = True
            # Poll meanwhile (changes still arrive, a little later), then try to listen again.
            await _poll(sync, stop, poll_seconds, until=backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        try:
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if down:
                    log.warning("listening for data changes on %s again", url.render_as_string(hide_password=True))
                down, backoff = False, poll_seconds
                await sync()  # what was committed before the LISTEN, or while not listening
                while not stop.is_set():
                    heard = False
                    async for _ in conn.notifies(timeout=_QUIET_SECONDS, stop_after=1):
                        heard = True
                    if heard:
                        await sync()
                    else:  # quiet: make sure the connection is alive (a dead one raises here)
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout)
        except (TimeoutError, OSError, psycopg.Error) as exc:
            if not stop.is_set():
                log.warning("the connection listening for data changes on %s was lost (%s); reconnecting",
                            url.render_as_string(hide_password=True), type(exc).__name__)
                down = True
