"""Helpers for test suites (CSJD's own and its users'): wait for a condition, never sleep."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """`wait_until` gave up: the condition did not become true before the deadline.

    It is an `AssertionError` (pytest reports it as a failed assertion) and a `TimeoutError`.
    """


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.001,
    message: str | Callable[[], str] = "condition was not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    The predicate is always called at least once, and once more at the deadline, so a
    condition that becomes true while the caller was descheduled is still seen.

    Args:
        predicate: called with no arguments; an exception it raises propagates at once.
        timeout: seconds to wait before giving up.
        interval: seconds between two calls.
        message: what was awaited, for the error (a callable is called only on failure, so
            it can describe the state at the deadline).

    Returns:
        The first truthy value ``predicate`` returned.

    Raises:
        WaitTimeout: the predicate stayed falsy for ``timeout`` seconds.
        ValueError: ``timeout`` or ``interval`` is negative or not finite.
    """
    for name, value in (("timeout", timeout), ("interval", interval)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    start = time.monotonic()
    deadline = start + timeout
    calls = 0
    while True:
        result = predicate()
        calls += 1
        if result:
            return result
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, deadline - now))
    text = message() if callable(message) else message
    raise WaitTimeout(
        f"{text} (waited {time.monotonic() - start:.3f} s of {timeout} s, {calls} checks; "
        f"last value {result!r})"
    )
