"""The handler registry: the allow-list that maps job types to functions."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from csjd_core.context import JobContext
from csjd_core.job import Job

__all__ = ["Handler", "HandlerFn", "HandlerRegistry"]

HandlerFn = Callable[[JobContext, Job], Any]


class Handler:
    """A registered handler function and how to call it."""

    __slots__ = ("fn", "is_async", "type")

    def __init__(self, job_type: str, fn: HandlerFn) -> None:
        self.type = job_type
        self.fn = fn
        # A callable object with an ``async def __call__`` is a coroutine function too.
        call = fn if inspect.isroutine(fn) else type(fn).__call__
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class HandlerRegistry:
    """Job type -> handler. Types are looked up here, never imported from a message."""

    def __init__(self) -> None:
        #: type -> `Handler`; replaced, never mutated (copy-on-write): read it without a lock.
        self.handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def register(self, type: str, fn: HandlerFn) -> None:
        """Register ``fn`` for ``type``.

        Raises:
            ValueError: ``type`` is empty, or another function is registered for it.
            TypeError: ``fn`` is not callable.
        """
        if not isinstance(type, str) or not type:
            raise ValueError(f"job type must be a non-empty string, got {type!r}")
        if not callable(fn):
            raise TypeError(f"handler for {type!r} must be callable, got {fn!r}")
        with self._lock:
            existing = self.handlers.get(type)
            if existing is not None and existing.fn is not fn:
                raise ValueError(
                    f"job type {type!r} already has handler {existing.fn!r}; "
                    "one type maps to one handler"
                )
            # Copy-on-write: readers on the hot path never take the lock.
            handlers = dict(self.handlers)
            handlers[type] = Handler(type, fn)
            self.handlers = handlers

    def get(self, type: str) -> Handler | None:
        """The handler for ``type`` or None."""
        return self.handlers.get(type)

    def __contains__(self, type: object) -> bool:
        return type in self.handlers

    def types(self) -> list[str]:
        """Registered types, sorted."""
        return sorted(self.handlers)
