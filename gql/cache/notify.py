"""Pub/sub waiters: a process waiting for another's computation is woken by its message, not a timer; and
followers of a topic, called for each of its messages (invalidations: gql/cache/results.py `on_invalidated`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from gql.cache.redis_link import REDIS_FAILURES, RedisLink

log = logging.getLogger("gql.cache")
# How long close() waits for its tasks to end once cancelled.
CLOSE_SECONDS = 2.0


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and wait for them, bounded: one that missed its cancellation (see view.py's keeper) must
    not hold the shutdown for ever."""
    pending = set(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_SECONDS)


class Watcher(Protocol):
    """Told of one topic's messages inline, in the order they arrive (the view: gql/cache/view.py), and of the
    subscription's state: `subscribed` once Redis has confirmed it, `unsubscribed` as soon as it is lost."""

    def heard(self, outcome: str) -> None: ...

    def subscribed(self) -> None: ...

    def unsubscribed(self) -> None: ...


class Notifications:
    """Delivers `<topic>|<outcome>` messages of one channel to the futures waiting for their topic.

    A waiter is registered before the condition it waits for is checked, so that a message sent in
    between is not missed.
    """

    def __init__(self, link: RedisLink, channel: str, usable: Callable[[], bool]) -> None:
        self._link = link
        self._channel = channel
        self._usable = usable
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        # Called for every message of their topic, for as long as the process runs (see `follow`).
        self._followers: dict[str, list[Callable[[str | None], Awaitable[None]]]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._watchers: dict[str, Watcher] = {}
        self.listening = asyncio.Event()

    def wait_for(self, topic: str) -> asyncio.Future[str]:
        """A future that gets the outcome of the next message about `topic`; give it back with `stop_waiting`."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(topic, []).append(waiter)
        return waiter

    def stop_waiting(self, topic: str, waiter: asyncio.Future[str]) -> None:
        waiting = self._waiters.get(topic)
        if waiting and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._waiters[topic]

    def follow(self, topic: str, handler: Callable[[str | None], Awaitable[None]]) -> None:
        """Run `handler(outcome)` for every message about `topic` from now on, and `handler(None)` each time the
        subscription (re)starts: messages sent while it was down are lost, so the handler looks for itself."""
        self._followers.setdefault(topic, []).append(handler)

    def watch(self, topic: str, watcher: Watcher) -> None:
        """Tell `watcher` of every message about `topic`, inline (so in order), from now on."""
        self._watchers[topic] = watcher
        if self.listening.is_set():
            watcher.subscribed()

    def _run_followers(self, topic: str | None, outcome: str | None) -> None:
        for followed, handlers in self._followers.items():
            if topic is None or followed == topic:
                for handler in handlers:
                    task = asyncio.ensure_future(self._follow_safely(handler, outcome))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)

    @staticmethod
    async def _follow_safely(handler: Callable[[str | None], Awaitable[None]], outcome: str | None) -> None:
        try:
            await handler(outcome)
        except Exception:  # a handler's failure must not end the listener, and is logged with its traceback
            log.exception("handling a cache notification failed")

    async def next_outcome(self, waiter: asyncio.Future[str], within: float) -> str | None:
        """The outcome the waiter gets within `within` seconds; None if none came (or no subscription yet)."""
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout=within)
        except TimeoutError:
            return None

    def bound(self, remaining_ms: int) -> float:
        """How long to wait for a message, given a lease's remaining time: until it would run out,
        or, without a subscription yet, a short poll."""
        return remaining_ms / 1000 + 0.01 if self.listening.is_set() else 0.05

    async def close(self) -> None:
        await cancel_all([self._listener] if self._listener is not None else [])
        await cancel_all(self._handling)

    def ensure_listening(self) -> None:
        """Subscribe (in the background) if not yet: started when this process first waits."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        """Deliver messages to this process's waiters; reconnects after Redis comes back."""
        while True:
            if not self._usable():
                await asyncio.sleep(0.2)
                continue
            pubsub = self._link.listener.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "subscribe":  # confirmed: from here on no message of the channel is missed
                        self.listening.set()
                        for watcher in self._watchers.values():
                            watcher.subscribed()
                        self._run_followers(None, None)
                    elif kind == "message":
                        topic, _, outcome = message["data"].decode().rpartition("|")
                        watching = self._watchers.get(topic)
                        if watching is not None:
                            watching.heard(outcome)
                        for waiter in self._waiters.pop(topic, ()):
                            if not waiter.done():
                                waiter.set_result(outcome)
                        if topic in self._followers:
                            self._run_followers(topic, outcome)
            except Exception as exc:  # noqa: BLE001  # the listener must outlive anything its client raises
                # Redis failures, and also what a client library raises on its way (redis-py 8.0 and 8.1's cluster
                # pub/sub, after a failover, raise a KeyError of a slot from a stale table).
                self._lost()
                if isinstance(exc, REDIS_FAILURES):
                    log.debug("cache notifications interrupted: %s", exc)
                else:
                    log.warning("cache notifications interrupted by %r; subscribing again", exc)
                await asyncio.sleep(0.2)
                with contextlib.suppress(Exception):
                    await self._link.rediscover(self._link.listener)  # its node may be gone for good
            finally:
                self._lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _lost(self) -> None:
        self.listening.clear()
        for watcher in self._watchers.values():
            watcher.unsubscribed()
