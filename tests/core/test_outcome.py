"""The outcome event: one per recorded attempt, decided by the engine alone, in every mode."""

from __future__ import annotations

from typing import Any

import pytest

from csjd_core import Config, Dispatcher, Hooks, Job, JobContext, RetryPolicy, permanent
from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind
from csjd_core.immediate import ImmediateDispatcher

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)


class Recorder(Hooks):
    def __init__(self) -> None:
        self.outcomes: list[AttemptOutcome] = []
        self.legacy: list[str] = []

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        self.outcomes.append(outcome)

    def after_succeeded(self, job: Job, result: Any) -> None:
        self.legacy.append(f"succeeded:{job.id}")

    def after_retry_scheduled(self, job: Job, attempt: int, delay: float) -> None:
        self.legacy.append(f"retry:{job.id}:{attempt}")

    def after_failed(self, job: Job, error: str) -> None:
        self.legacy.append(f"failed:{job.id}")


def handler(ctx: JobContext, job: Job) -> Any:
    what = job.payload
    if what == "ok":
        return {"n": ctx.attempt}
    if what == "flaky" and ctx.attempt < 2:
        raise ConnectionError("try again")
    if what == "flaky":
        return "recovered"
    if what == "permanent":
        raise permanent(ValueError("no"))
    if what == "panic":
        raise SystemExit("bye")
    if what == "slow":
        ctx.wait(5)
        ctx.raise_if_cancelled()
    raise RuntimeError(what)


@pytest.mark.parametrize("mode", ["inprocess", "immediate"])
def test_every_attempt_is_one_outcome_with_the_engines_decision(mode: str) -> None:
    hooks = Recorder()
    config = Config(retry=FAST, default_max_attempts=2, hooks=(hooks,))
    dispatcher = Dispatcher(config) if mode == "inprocess" else ImmediateDispatcher(config)
    dispatcher.register_handler("t", handler)
    with dispatcher:
        for payload in ("ok", "flaky", "permanent", "panic", "boom"):
            dispatcher.submit(Job(payload, "t", payload))
        dispatcher.submit(Job("slow", "t", "slow", timeout=0.05, max_attempts=1))
        assert dispatcher.join(10)
    seen = sorted((o.job.id, o.attempt, o.kind, o.terminal) for o in hooks.outcomes)
    assert seen == [
        ("boom", 1, OutcomeKind.RETRIED, False),
        ("boom", 2, OutcomeKind.FAILED, True),
        ("flaky", 1, OutcomeKind.RETRIED, False),
        ("flaky", 2, OutcomeKind.SUCCEEDED, True),
        ("ok", 1, OutcomeKind.SUCCEEDED, True),
        ("panic", 1, OutcomeKind.PANICKED, False),
        ("panic", 2, OutcomeKind.PANICKED, True),
        ("permanent", 1, OutcomeKind.FAILED, True),
        ("slow", 1, OutcomeKind.TIMED_OUT, True),
    ]
    by_id = {(o.job.id, o.attempt): o for o in hooks.outcomes}
    assert by_id["ok", 1].result == {"n": 1}
    assert by_id["boom", 1].retry_in is not None and by_id["boom", 2].retry_in is None
    assert isinstance(by_id["boom", 2].exception, RuntimeError)  # told on the worker thread
    assert by_id["permanent", 1].error is not None
    assert by_id["permanent", 1].error.kind == "permanent"
    # The older hooks are derived from the same event: one call per outcome.
    assert sorted(hooks.legacy) == sorted(
        [
            "succeeded:ok",
            "retry:flaky:1",
            "succeeded:flaky",
            "failed:permanent",
            "retry:panic:1",
            "failed:panic",
            "retry:boom:1",
            "failed:boom",
            "failed:slow",
        ]
    )
    metrics = dispatcher.metrics()
    assert metrics.processed == len(hooks.outcomes)
    assert (metrics.succeeded, metrics.failed, metrics.retried, metrics.panics) == (2, 4, 3, 2)
