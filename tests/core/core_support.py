"""Helpers shared by the dispatcher and execution tests."""

from __future__ import annotations

import threading
from typing import Any

from csjd_core import Config, Dispatcher, JobNotFound, JobState, JobStatus, RetryPolicy
from csjd_core.testing import wait_until

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)
DEADLINE = 10.0  # generous: a condition returns as soon as it holds; this only bounds failures


class Harness:
    """Dispatchers and gates of one test; teardown opens every gate, then stops every dispatcher."""

    def __init__(self) -> None:
        self.dispatchers: list[Dispatcher] = []
        self.gates: list[threading.Event] = []

    def dispatcher(self, **config: Any) -> Dispatcher:
        config.setdefault("retry", FAST)
        dispatcher = Dispatcher(Config(**config))
        self.dispatchers.append(dispatcher)
        return dispatcher

    def gate(self) -> threading.Event:
        gate = threading.Event()
        self.gates.append(gate)
        return gate

    def close(self) -> None:
        for gate in self.gates:
            gate.set()
        for dispatcher in self.dispatchers:
            dispatcher.stop(timeout=2.0)


def state_of(d: Dispatcher, job_id: str) -> JobState | None:
    try:
        return d.status(job_id).state
    except JobNotFound:
        return None


def wait_state(d: Dispatcher, job_id: str, *states: JobState) -> JobStatus:
    wait_until(
        lambda: state_of(d, job_id) in states,
        DEADLINE,
        message=lambda: f"job {job_id!r} is {state_of(d, job_id)}, never {states}",
    )
    return d.status(job_id)
