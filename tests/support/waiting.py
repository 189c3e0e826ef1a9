"""Waiting for events that have no completion signal to wait on."""

from __future__ import annotations

import time


def wait_until(condition, what: str, timeout: float = 10.0):
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after `timeout`.

    For events with no completion signal to wait on (a file watcher picking up a change). The timeout
    is a hang guard, not a speed assertion: bench/pickup.py measures how fast it happens.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
