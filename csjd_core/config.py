"""Configuration of the in-process dispatcher."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from csjd_core.backends.base import Backend
from csjd_core.retry import RetryPolicy, seconds

__all__ = ["Config"]


def check_int(value: object, name: str, minimum: int) -> int:
    """Validate an integer setting.

    Raises:
        ValueError: naming the field and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_timeout(value: float | timedelta | None, name: str) -> float | None:
    """Validate an optional positive duration in seconds."""
    if value is None:
        return None
    result = seconds(value, name)
    if result == 0 or not math.isfinite(result):
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return result


def retry_policy(value: RetryPolicy | Mapping[str, Any], name: str) -> RetryPolicy:
    """A `RetryPolicy` from an instance or a mapping of its fields (unknown keys are errors)."""
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(RetryPolicy)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name} has unknown keys {unknown}; known: {sorted(known)}")
        return RetryPolicy(**value)
    raise ValueError(f"{name} must be a RetryPolicy or a dict of its fields, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Settings of an in-process `Dispatcher`.

    Args:
        workers: handlers that may run at once (worker threads).
        max_pending_jobs: cap on unfinished jobs (queued, scheduled, running, retrying);
            past it `submit` raises `QueueFull`.
        max_detached_handlers: how many timed-out handlers that ignore cancellation may be
            abandoned (their slot given a fresh worker); 0 keeps strict non-overlap.
        store: a durable backend such as `FileJobStore`; ``None`` keeps jobs in memory only.
        default_max_attempts: attempts for jobs that do not set ``max_attempts``.
        default_timeout: seconds per attempt for jobs that do not set ``timeout``.
        retry: the backoff policy (a `RetryPolicy` or a dict of its fields).
        hooks: `Hooks` objects called around each job.
        result_ttl: seconds a finished job's status and result stay queryable.
        max_results: at most this many finished jobs are remembered (oldest dropped first).
    """

    workers: int = 4
    max_pending_jobs: int = 10_000
    max_detached_handlers: int = 0
    store: Backend | None = None
    default_max_attempts: int = 3
    default_timeout: float | timedelta | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hooks: Sequence[object] = ()
    result_ttl: float | timedelta = 600.0
    max_results: int = 100_000

    def __post_init__(self) -> None:
        check_int(self.workers, "Config.workers", 1)
        check_int(self.max_pending_jobs, "Config.max_pending_jobs", 1)
        check_int(self.max_detached_handlers, "Config.max_detached_handlers", 0)
        check_int(self.default_max_attempts, "Config.default_max_attempts", 1)
        check_int(self.max_results, "Config.max_results", 0)
        object.__setattr__(
            self, "default_timeout", check_timeout(self.default_timeout, "Config.default_timeout")
        )
        object.__setattr__(self, "result_ttl", seconds(self.result_ttl, "Config.result_ttl"))
        object.__setattr__(self, "retry", retry_policy(self.retry, "Config.retry"))
        if isinstance(self.hooks, str | bytes) or not isinstance(self.hooks, Sequence):
            raise ValueError(f"Config.hooks must be a sequence of hook objects, got {self.hooks!r}")
        object.__setattr__(self, "hooks", tuple(self.hooks))
        if self.store is not None and (
            not isinstance(self.store, Backend) or not self.store.durable
        ):
            raise ValueError(
                f"Config.store must be a durable store such as FileJobStore, got {self.store!r}"
            )
