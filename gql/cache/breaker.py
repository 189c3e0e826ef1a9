"""The circuit breaker on Redis."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    CLOSED = 0  # Redis in use
    OPEN = 1  # Redis skipped until the cool-down ends
    HALF_OPEN = 2  # one probe under way


class CircuitBreaker:
    """Closed until `failures` consecutive calls fail; then open for `cooldown` seconds; then one probe.

    A refused or broken connection is a clear failure. A timeout is not always one: a burst of work can
    hold the event loop past the bound while Redis answered in time (on a busy machine, a cold stampede
    did). So timeouts open the breaker only once they have gone on, with no success, for `slow_span`.
    """

    def __init__(
        self, failures: int, cooldown: float, on_change: Callable[[BreakerState, BreakerState], None],
        slow_span: float = 0.5, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown = cooldown
        self.slow_span = slow_span
        self.state = BreakerState.CLOSED
        self._on_change = on_change
        self._clock = clock
        self._consecutive = 0
        self._streak_began = 0.0
        self._open_until = 0.0

    def probe_due(self) -> bool:
        """True once for the caller that should probe: open, and the cool-down is over."""
        if self.state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def succeeded(self) -> None:
        """A call answered. Only while closed: a slow call that answers after the breaker opened
        must not close it (that skips the probe, which first applies the refreshes made meanwhile)."""
        if self.state is BreakerState.CLOSED:
            self._consecutive = 0

    def probe_succeeded(self) -> None:
        self._consecutive = 0
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failed(self, timed_out: bool = False) -> None:
        now = self._clock()
        if self._consecutive == 0:
            self._streak_began = now
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self._consecutive >= self.failures
            and (not timed_out or now - self._streak_began >= self.slow_span)
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        self._open_until = now + self.cooldown
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        self._on_change(previous, state)
