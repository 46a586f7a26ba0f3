"""CSJDBackend: Django's Tasks framework on CSJD."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

import csjd_django as csjd
from csjd_core import JobState
from csjd_django import backends
from csjd_django.backends import CSJDBackend, CSJDTask
from csjd_django.compat import (
    InvalidTaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from testapp import tasks

pytestmark = pytest.mark.django_db


def test_backend_is_configured_with_honest_capabilities() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, CSJDBackend)
    assert backend.supports_defer and backend.supports_get_result and backend.supports_async_task
    assert backend.supports_priority
    assert isinstance(tasks.add, CSJDTask)


def test_a_task_priority_is_its_job_priority() -> None:
    """``supports_priority``: Django checks the range (-100..100) when the task is made, the
    job takes the priority (a whole float as an int), and the task runs."""
    backend = task_backends["default"]
    urgent = tasks.add.using(priority=7)
    assert backend.build_job(urgent, [1, 2], {}).priority == 7
    assert backend.build_job(tasks.add, [1, 2], {}).priority == 0
    assert backend.build_job(tasks.add.using(priority=-100), [], {}).priority == -100
    whole = backend.build_job(tasks.add.using(priority=5.0), [], {})  # Django accepts it
    assert (whole.priority, type(whole.priority)) == (5, int)
    result = urgent.enqueue(2, 3)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    with pytest.raises(InvalidTaskError, match="priority"):
        tasks.add.using(priority=101)


def test_every_job_state_maps_to_a_django_status() -> None:
    # The mapping lives in the adapter: core knows nothing of Django.
    assert backends._STATUS == {
        JobState.QUEUED: TaskResultStatus.READY,
        JobState.SCHEDULED: TaskResultStatus.READY,
        JobState.RUNNING: TaskResultStatus.RUNNING,
        JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
        JobState.FAILED: TaskResultStatus.FAILED,
        JobState.CANCELLED: TaskResultStatus.FAILED,
    }


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_task_is_failed_with_a_clear_error() -> None:
    """Django's model has no cancelled status: FAILED, its error naming `JobCancelled`."""
    with override_settings(CSJD_MODE="inprocess"):
        result = tasks.add.using(run_after=timezone.now() + timedelta(seconds=30)).enqueue(1, 2)
        assert csjd.cancel(result.id) is True
        cancelled = tasks.add.get_result(result.id)
    assert cancelled.status == TaskResultStatus.FAILED
    [error] = cancelled.errors
    assert error.exception_class_path == "csjd_core.errors.JobCancelled"
    assert "was cancelled: its cancellation was requested" in error.traceback


def test_enqueue_runs_and_get_result_reports_it() -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.args == [2, 3]
    assert result.enqueued_at is not None and result.finished_at is not None
    again = tasks.add.get_result(result.id)
    assert again.return_value == 5
    assert again.worker_ids


def test_errors_carry_the_exception_class_and_traceback() -> None:
    result = tasks.explode.enqueue("kaboom")
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "kaboom" in error.traceback


def test_context_and_async_tasks() -> None:
    assert tasks.with_context.enqueue("hi").return_value == "hi:1"
    assert tasks.async_double.enqueue(21).return_value == 42


def test_aenqueue_and_aget_result() -> None:
    async def go() -> Any:
        result = await tasks.add.aenqueue(1, 1)
        return await tasks.add.aget_result(result.id)

    assert asyncio.run(go()).return_value == 2


def test_signals_are_sent() -> None:
    seen: list[str] = []

    def on(signal_name: str) -> Any:
        def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append(f"{signal_name}:{task_result.status}")

        return receiver

    receivers = [
        (task_enqueued, on("enqueued")),
        (task_started, on("started")),
        (task_finished, on("finished")),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        tasks.add.enqueue(1, 2)
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
    assert "started:RUNNING" in seen
    assert "finished:SUCCESSFUL" in seen
    assert any(s.startswith("enqueued:") for s in seen)


def finished_signals() -> tuple[list[Any], Any]:
    """A receiver recording every ``task_finished`` (status, errors), and its disconnect."""
    seen: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append((task_result.id, task_result.status, len(task_result.errors)))

    task_finished.connect(receiver)
    return seen, lambda: task_finished.disconnect(receiver)


@pytest.mark.parametrize("mode", ["immediate", "inprocess"])
def test_task_finished_is_sent_once_when_the_task_ends(mode: str) -> None:
    # Without MAX_ATTEMPTS, `job.max_attempts or ctx.attempt` made every failed attempt look
    # final: a task that failed twice then succeeded sent FAILED, FAILED, SUCCESSFUL.
    seen, disconnect = finished_signals()
    try:
        with override_settings(CSJD_MODE=mode):
            recovered = tasks.fails_twice.using(backend="plain").enqueue(f"key-{mode}")
            doomed = tasks.explode.using(backend="plain").enqueue("always")
            assert csjd.wait(timeout=10)
            assert csjd.app.status(recovered.id).attempts == 3
            assert csjd.app.status(doomed.id).attempts == 3  # CSJD_DEFAULT_MAX_ATTEMPTS
    finally:
        disconnect()
    assert sorted(seen) == sorted(
        [(recovered.id, TaskResultStatus.SUCCESSFUL, 0), (doomed.id, TaskResultStatus.FAILED, 1)]
    )


def test_validation_errors() -> None:
    with pytest.raises(InvalidTaskError, match="not JSON"):
        tasks.add.enqueue(object(), 1)
    with pytest.raises(InvalidTaskError):
        tasks.add.using(priority=-101)  # out of Django's range (10 is supported)
    with pytest.raises(InvalidTaskError):
        tasks.add.using(run_after=timezone.now().replace(tzinfo=None))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"TIMEOUT": -1}, "timeout must be"),
        ({"TIMEOUT": 1e12}, "MAX_DURATION"),
        ({"MAX_ATTEMPTS": 0}, "max_attempts must be an int >= 1"),
    ],
)
def test_backend_options_follow_the_admission_rules(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidTaskError, match=problem):
        CSJDBackend("bad", {"BACKEND": "csjd_django.backends.CSJDBackend", "OPTIONS": options})


def test_unknown_result_id() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("no-such-id")


@pytest.mark.django_db(transaction=True)
def test_run_after_is_honoured_in_process() -> None:
    with override_settings(CSJD_MODE="inprocess"):
        result = tasks.add.using(run_after=timezone.now() + timedelta(seconds=30)).enqueue(1, 2)
        assert result.status == TaskResultStatus.READY
        assert tasks.add.get_result(result.id).status == TaskResultStatus.READY
        assert csjd.app.status(result.id).state == "scheduled"


def test_retries_come_from_backend_options() -> None:
    result = tasks.explode.enqueue("again")
    assert csjd.app.status(result.id).attempts == 2  # OPTIONS MAX_ATTEMPTS
