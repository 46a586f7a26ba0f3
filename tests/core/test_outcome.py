"""The outcome event: one per recorded attempt, decided by the engine alone, in every mode."""

from __future__ import annotations

import time
from typing import Any

import pytest

from csjd_core import Config, Dispatcher, Hooks, Job, JobContext, RetryPolicy, permanent
from csjd_core.backends.file import FileJobStore
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind
from csjd_core.immediate import ImmediateDispatcher
from csjd_core.testing import wait_until

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
    # Duration: how long the handler ran (the slow one until it saw its timeout).
    assert by_id["slow", 1].duration is not None and by_id["slow", 1].duration >= 0.05
    assert all(o.duration is not None and o.lag is not None for o in hooks.outcomes)
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


SLOW = 0.3  # seconds the first job's handler sleeps (a measured duration, not a wait)
SLACK = 0.15  # Redis's clock has ms steps, and replies wait for the reader thread


def timed(ctx: JobContext, job: Job) -> None:
    if job.payload == "slow":
        time.sleep(SLOW)


def make_dispatcher(mode: str, hooks: Hooks, request: pytest.FixtureRequest) -> Any:
    if mode == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_client")  # flushed
        return RedisDistributedDispatcher(
            RedisConfig(url=url), DistributedConfig(workers=1, block=0.2, hooks=(hooks,))
        )
    store = None
    if mode == "file":
        store = FileJobStore(request.getfixturevalue("tmp_path") / "jobs.json")
    return Dispatcher(Config(workers=1, store=store, hooks=(hooks,)))


@pytest.mark.parametrize("mode", ["inprocess", "file", "redis"])
def test_an_outcome_tells_the_handlers_duration_and_the_jobs_lag(
    mode: str, request: pytest.FixtureRequest
) -> None:
    hooks = Recorder()
    dispatcher = make_dispatcher(mode, hooks, request)
    dispatcher.register_handler("t", timed)
    with dispatcher:
        dispatcher.submit(Job("slow", "t", "slow"))
        dispatcher.submit(Job("waiter", "t", "quick"))  # waits for the one worker
        wait_until(lambda: len(hooks.outcomes) == 2, 15)
    by_id = {o.job.id: o for o in hooks.outcomes}
    slow, waiter = by_id["slow"], by_id["waiter"]
    assert slow.duration is not None and waiter.duration is not None
    assert slow.lag is not None and waiter.lag is not None
    assert SLOW <= slow.duration < SLOW + 1.0
    assert waiter.duration < SLOW
    # The waiter's lag is the slow job's run; the slow job started at once.
    assert waiter.lag >= SLOW - SLACK
    assert slow.lag < waiter.lag


def test_an_attempt_that_never_ran_has_no_duration(redis_url: str, redis_client: Any) -> None:
    hooks = Recorder()
    dispatcher = RedisDistributedDispatcher(
        RedisConfig(url=redis_url), DistributedConfig(workers=1, block=0.2, hooks=(hooks,))
    )
    with dispatcher:
        dispatcher.submit(Job("nobody", "unregistered"))
        wait_until(lambda: len(hooks.outcomes) == 1, 15)
    [outcome] = hooks.outcomes
    assert (outcome.kind, outcome.duration, outcome.lag) == (OutcomeKind.FAILED, None, None)
