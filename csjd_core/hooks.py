"""Lifecycle hooks: objects whose methods the engine calls around each job, in both modes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from csjd_core.engine.outcome import OutcomeKind

if TYPE_CHECKING:
    from csjd_core.context import JobContext
    from csjd_core.engine.outcome import AttemptOutcome
    from csjd_core.job import Job

__all__ = ["Hooks"]

logger = logging.getLogger(__name__)


class Hooks:
    """Base class with no-op methods; override the ones you need.

    A hook that raises is logged with its traceback and never fails a job. Hooks run on the
    thread that triggers them (the submitting thread, or the worker running the job).
    """

    def before_enqueue(self, job: Job) -> None:
        """Called before admission; raising here is logged, not propagated. For a periodic
        job's slot it is called by each ticker that tries the slot (``after_enqueue`` only by
        the one that enqueued it)."""

    def after_enqueue(self, job: Job) -> None:
        """Called after the job was admitted."""

    def before_process(self, job: Job, ctx: JobContext) -> None:
        """Called on the worker thread right before the handler runs."""

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        """Called after every attempt with its result or error, before the engine decides
        the outcome (a result after the timeout still fails): for the outcome, see
        `after_attempt`."""

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        """Called once per recorded attempt with its `AttemptOutcome` (kind, ``terminal``,
        attempt, error): the engine's decision, never to be made again by a hook."""

    def after_succeeded(self, job: Job, result: Any) -> None:
        """Called when the job succeeded (its outcome recorded), with its JSON result."""

    def after_retry_scheduled(self, job: Job, attempt: int, delay: float) -> None:
        """Called when failed attempt ``attempt`` was scheduled to retry in ``delay`` seconds."""

    def after_failed(self, job: Job, error: str) -> None:
        """Called when the job failed for good (attempts exhausted or permanent error)."""

    def worker_started(self, worker_id: str) -> None:
        """Called on a worker thread when it starts."""

    def worker_stopped(self, worker_id: str) -> None:
        """Called on a worker thread when it exits."""


_HOOK_NAMES = (
    "before_enqueue",
    "after_enqueue",
    "before_process",
    "after_process",
    "after_attempt",
    "after_succeeded",
    "after_retry_scheduled",
    "after_failed",
    "worker_started",
    "worker_stopped",
)


_OUTCOME_HOOKS = ("after_attempt", "after_succeeded", "after_retry_scheduled", "after_failed")


class HookRunner:
    """Calls only the overridden hook methods, logging any exception they raise."""

    def __init__(self, hooks: Sequence[object]) -> None:
        self._calls: dict[str, list[Callable[..., Any]]] = {}
        for name in _HOOK_NAMES:
            calls = []
            for hook in hooks:
                method = getattr(hook, name, None)
                base = getattr(Hooks, name)
                if method is None or getattr(method, "__func__", None) is base:
                    continue
                calls.append(method)
            if calls:
                self._calls[name] = calls
        self.active = bool(self._calls)
        #: Some hook wants the outcome of attempts (the event is only built then).
        self.wants_outcomes = any(name in self._calls for name in _OUTCOME_HOOKS)
        # The outcome's subscribers, looked up once: `outcome` runs for every attempt.
        self._after_attempt = tuple(self._calls.get("after_attempt", ()))
        self._legacy = any(name in self._calls for name in _OUTCOME_HOOKS[1:])

    def outcome(self, outcome: AttemptOutcome) -> None:
        """Tell the hooks an attempt's outcome: ``after_attempt``, then the older hook that
        matches it (``after_succeeded``, ``after_retry_scheduled`` or ``after_failed``)."""
        for method in self._after_attempt:
            try:
                method(outcome)
            except BaseException:  # even SystemExit: a hook must never kill a worker
                logger.exception("hook failed hook=%r method=after_attempt", method)
        if not self._legacy:
            return
        error = outcome.error
        if outcome.kind is OutcomeKind.SUCCEEDED:
            self.call("after_succeeded", outcome.job, outcome.result)
        elif outcome.kind is OutcomeKind.CANCELLED:
            return  # neither a success nor a failure: ``after_attempt`` only
        elif not outcome.terminal:
            self.call("after_retry_scheduled", outcome.job, outcome.attempt, outcome.retry_in)
        elif error is not None:
            self.call("after_failed", outcome.job, error.message)

    def has(self, name: str) -> bool:
        """True if some hook overrides ``name``."""
        return name in self._calls

    def call(self, name: str, *args: Any) -> None:
        """Call every ``name`` hook; exceptions are logged and swallowed."""
        for method in self._calls.get(name, ()):
            try:
                method(*args)
            except BaseException:  # even SystemExit: a hook must never kill a worker
                logger.exception("hook failed hook=%r method=%s", method, name)
