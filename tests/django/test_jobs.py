"""@csjd.job in a Django project: inline calls, enqueueing, on-commit, settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.db import transaction
from django.test import override_settings

import csjd_django as csjd
from csjd_core import JobFailed, JobNotFound, JobState
from csjd_core.errors import InvalidJob
from testapp import jobs
from testapp.models import Order, Receipt

pytestmark = pytest.mark.django_db


def make_order(number: str = "A-1") -> Order:
    return Order.objects.create(number=number, customer="ann@example.com", total_cents=1999)


def test_jobs_module_is_autodiscovered() -> None:
    assert {"email.receipt", "flaky", "always.fails"} <= set(csjd.app.registry.types())


def test_calling_the_function_runs_it_inline() -> None:
    order = make_order()
    assert jobs.send_receipt(order.pk) == "A-1"
    assert len(mail.outbox) == 1


def test_delay_in_immediate_mode_runs_at_enqueue_with_a_result() -> None:
    order = make_order()
    handle = jobs.send_receipt.delay(order.pk)
    assert handle.status().state is JobState.SUCCEEDED
    assert handle.result(timeout=1) == "A-1"
    assert Receipt.objects.filter(order=order).count() == 1


def test_retries_then_success_and_permanent_failure() -> None:
    assert jobs.flaky.delay(2).result(timeout=1) == 3
    handle = jobs.always_fails.delay()
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=1)
    assert info.value.status.attempts == 1  # permanent: not retried
    assert "<script>" in (info.value.status.last_error or "")


def test_non_json_argument_fails_at_the_call_naming_it() -> None:
    with pytest.raises(InvalidJob, match="order_id"):
        jobs.send_receipt.delay(object())


@pytest.mark.django_db(transaction=True)
def test_delay_on_commit_enqueues_only_after_commit() -> None:
    order = make_order()
    with transaction.atomic():
        handle = jobs.send_receipt.delay_on_commit(order.pk)
        with pytest.raises(JobNotFound):
            handle.status()  # not enqueued while the transaction is open
    assert handle.status().state is JobState.SUCCEEDED
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_delay_on_commit_enqueues_nothing_on_rollback() -> None:
    order = make_order()
    with pytest.raises(RuntimeError), transaction.atomic():
        handle = jobs.send_receipt.delay_on_commit(order.pk)
        raise RuntimeError("rolled back")
    with pytest.raises(JobNotFound):
        handle.status()
    assert mail.outbox == []
    assert csjd.app.dispatcher.metrics().submitted == 0


@pytest.mark.django_db(transaction=True)
def test_enqueue_failure_after_commit_is_logged_with_the_job_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order = make_order()
    with override_settings(CSJD_MODE="inprocess", CSJD_MAX_PENDING_JOBS=1):
        jobs.flaky.apply_async(args=[0], countdown=60)  # fills the queue
        with transaction.atomic():
            handle = jobs.send_receipt.delay_on_commit(order.pk)
        assert any(handle.id in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_any_error_of_an_enqueue_after_commit_is_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: only CSJDError was caught; anything else left Django's own on_commit message, without
    # the job id or what was lost.
    order = make_order()

    def broken_enqueue(job: Any) -> None:
        raise RuntimeError("a bug in the enqueue path")

    monkeypatch.setattr(csjd.app, "enqueue", broken_enqueue)
    with transaction.atomic():
        handle = jobs.send_receipt.delay_on_commit(order.pk)
    (record,) = [r for r in caplog.records if "enqueue after commit failed" in r.getMessage()]
    assert repr(handle.id) in record.getMessage()
    assert record.exc_info is not None and "a bug in the enqueue path" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_inprocess_mode_starts_lazily_and_wait_returns_when_done() -> None:
    with override_settings(CSJD_MODE="inprocess", CSJD_WORKERS=2):
        assert csjd.app._dispatcher is None  # nothing built at import or in ready()
        order = make_order()
        handle = jobs.send_receipt.delay(order.pk)
        assert csjd.wait(timeout=10)
        assert handle.status().state is JobState.SUCCEEDED
