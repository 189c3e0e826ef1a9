"""Time as the cache and the response layer read it, injectable so that tests advance it instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """Wall time (`now`: when an entry was computed, shared across processes) and monotonic time
    (`monotonic`: intervals inside this process, such as the breaker's cool-down)."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = Clock()
