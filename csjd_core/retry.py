"""Exponential backoff with jitter: how long a failed job waits before its next attempt
(`RetryPolicy`), and how long a reconnect or a restart waits (`Backoff`)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from csjd_core.errors import InvalidConfig
from csjd_core.limits import brief, seconds

__all__ = ["Backoff", "RetryPolicy", "seconds"]

Jitter = Literal["full", "equal"] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Delay before attempt n+1 after attempt n failed: ``min(max_delay, base * factor**(n-1))``.

    Args:
        base_delay: seconds before the first retry (before jitter).
        factor: growth per attempt (>= 1).
        max_delay: cap in seconds, applied before jitter.
        jitter: ``"full"`` (uniform in [0, d]), ``"equal"`` (uniform in [d/2, d]) or ``None``.
    """

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        for name in ("base_delay", "max_delay"):
            try:
                object.__setattr__(self, name, seconds(getattr(self, name), f"RetryPolicy.{name}"))
            except ValueError as exc:
                raise InvalidConfig(str(exc), owner="RetryPolicy", field=name) from None
        if (
            isinstance(self.factor, bool)
            or not isinstance(self.factor, int | float)
            or not math.isfinite(self.factor)
            or self.factor < 1
        ):
            raise InvalidConfig(
                f"RetryPolicy.factor must be a number >= 1, got {brief(self.factor)}",
                owner="RetryPolicy",
                field="factor",
            )
        if self.max_delay < self.base_delay:
            raise InvalidConfig(
                f"RetryPolicy.max_delay ({self.max_delay}) must be >= base_delay "
                f"({self.base_delay})",
                owner="RetryPolicy",
                field="max_delay",
            )
        if self.jitter not in ("full", "equal", None):
            raise InvalidConfig(
                f"RetryPolicy.jitter must be 'full', 'equal' or None, got {brief(self.jitter)}",
                owner="RetryPolicy",
                field="jitter",
            )

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay in seconds after failed attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if self.base_delay == 0:
            return 0.0
        # Compare logarithms instead of computing huge powers that overflow a float. The ratio
        # is a difference of logs: max_delay / base_delay itself overflows for a tiny base.
        exponent = (attempt - 1) * math.log(self.factor)
        log_max = math.log(self.max_delay)
        if exponent > log_max - math.log(self.base_delay) + 1:
            return self.max_delay
        try:
            return min(self.max_delay, self.base_delay * self.factor ** (attempt - 1))
        except OverflowError:  # factor**(n-1) alone exceeds a float while base_delay is tiny
            return min(self.max_delay, math.exp(min(math.log(self.base_delay) + exponent, log_max)))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered delay in seconds after failed attempt ``attempt`` (1-based)."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return ceiling * rand()
        if self.jitter == "equal":
            return ceiling / 2 + (ceiling / 2) * rand()
        return ceiling


class Backoff:
    """Exponential backoff with jitter for reconnects and restarts: never a hot loop.

    Each failure doubles the step from ``base`` up to ``cap``; a delay is uniform between half
    and all of the current step (``jitter=False``: the step itself); `reset` after a success.
    """

    def __init__(self, base: float = 0.05, cap: float = 5.0, *, jitter: bool = True) -> None:
        self.base, self.cap, self.jitter, self.failures = base, cap, jitter, 0

    def peek(self) -> float:
        """The current step (the longest delay the next failure may wait)."""
        return float(min(self.cap, self.base * 2.0**self.failures))

    def next_delay(self) -> float:
        """A delay for this failure; the step grows for the next one."""
        step = self.peek()
        self.failures = min(self.failures + 1, 32)
        return random.uniform(step / 2, step) if self.jitter else step

    def sleep(self, stop: Callable[[], bool]) -> None:
        """Wait `next_delay` seconds, in slices, returning early once ``stop()`` is true."""
        deadline = time.monotonic() + self.next_delay()
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def reset(self) -> None:
        """Back to the shortest step (after a success)."""
        self.failures = 0
