"""Progress a running handler reports (``ctx.set_progress``) and ``status().progress`` shows.

Progress is advisory: it is kept with the job's record for people to look at, and nothing in
CSJD decides anything from it (recovery, retries and fencing never read it). Values are checked
where they enter (`make_progress`), so a record holds only finite, non-negative numbers and a
bounded message. The stored form (`to_json`, the Redis record's ``progress`` field) is compact
JSON; `from_json` never raises: a damaged value reads as no progress.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from csjd_core.limits import MAX_PROGRESS_MESSAGE, brief, clip_text

__all__ = ["Progress", "from_json", "make_progress", "to_json"]

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running job has come, as its handler last reported it.

    Attributes:
        current: work done so far (a finite number >= 0).
        total: the work there is, if known (>= ``current``), else ``None``.
        message: what the handler is doing, at most `MAX_PROGRESS_MESSAGE` characters.
        at: when the handler reported it (UTC; the worker's clock).
    """

    current: float
    total: float | None
    message: str | None
    at: datetime

    @property
    def fraction(self) -> float | None:
        """``current / total`` between 0 and 1, or ``None`` without a (non-zero) total."""
        if not self.total:
            return None
        return min(1.0, self.current / self.total)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"set_progress: {name} must be a number, got {brief(value)}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ValueError(f"set_progress: {name} must be a finite number, got {brief(value)}")
    if value < 0:
        raise ValueError(f"set_progress: {name} must be >= 0, got {brief(value)}")
    return value


def make_progress(
    current: float, total: float | None = None, message: str | None = None
) -> Progress:
    """A checked `Progress` stamped now: what ``ctx.set_progress`` stores.

    Raises:
        TypeError: ``current`` or ``total`` is not a number, ``message`` not a string.
        ValueError: a number is negative, not finite, or ``current`` exceeds ``total``.
    """
    _number(current, "current")
    if total is not None:
        _number(total, "total")
        if current > total:
            raise ValueError(
                f"set_progress: current ({brief(current)}) must not exceed total ({brief(total)})"
            )
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"set_progress: message must be a str, got {brief(message)}")
        message = clip_text(message, MAX_PROGRESS_MESSAGE)
    return Progress(current, total, message, datetime.fromtimestamp(time.time(), tz=UTC))


def to_json(progress: Progress) -> str:
    """The stored form: ``{"c": current, "t": total, "m": message, "at": Unix ms}``, ``t`` and
    ``m`` left out when ``None``."""
    data: dict[str, Any] = {"c": progress.current}
    if progress.total is not None:
        data["t"] = progress.total
    if progress.message is not None:
        data["m"] = progress.message
    data["at"] = round(progress.at.timestamp() * 1000)
    return _encode(data)


def from_json(text: str | None) -> Progress | None:
    """A `Progress` from `to_json`'s form; ``None`` for none, or for a value that does not
    read (progress is advisory: a damaged field must not break ``status()``)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        current, total, message = data["c"], data.get("t"), data.get("m")
        _number(current, "current")
        if total is not None:
            _number(total, "total")
        if message is not None and not isinstance(message, str):
            return None
        at = datetime.fromtimestamp(int(data["at"]) / 1000, tz=UTC)
    except (ValueError, TypeError, KeyError, OverflowError, OSError, RecursionError):
        return None
    return Progress(current, total, message, at)
