"""The example shop's tests: work enqueued on commit, the N+1 fix, and Redis mode end to end."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from shop import jobs
from shop.forms import OrderForm
from shop.models import Customer, Order, SalesReport
from shop.views import place_order

import csjd_django as csjd
from csjd_core import JobNotFound, JobState

pytestmark = pytest.mark.django_db

ORDER = {
    "customer_email": "ann@example.com",
    "item": "teapot",
    "quantity": 2,
    "unit_price_cents": 1250,
}


def test_placing_an_order_mails_the_customer_and_builds_the_report_on_commit(
    client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # A test runs inside a transaction that never commits: capture the on-commit callbacks and
    # run them as a commit would.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("shop:order-create"), ORDER)
    assert response.status_code == 302
    assert len(callbacks) == 2  # the confirmation and the report
    order = Order.objects.get()
    assert [m.subject for m in mail.outbox] == [f"Your order {order.number}"]
    assert mail.outbox[0].to == ["ann@example.com"]
    report = SalesReport.objects.get(day=timezone.localdate(order.created_at))
    assert (report.orders, report.revenue_cents) == (1, 2500)
    assert csjd.status(order.confirmation_job_id).result == order.number
    page = client.get(response["Location"]).content.decode()
    assert "succeeded" in page


@pytest.mark.django_db(transaction=True)
def test_nothing_is_enqueued_when_the_order_is_rolled_back() -> None:
    form = OrderForm(ORDER)
    assert form.is_valid()
    order = None

    def checkout() -> None:
        nonlocal order
        with transaction.atomic():
            order = place_order(form)
            raise RuntimeError("payment declined")  # after the order was saved and enqueued

    with pytest.raises(RuntimeError):
        checkout()
    assert not Order.objects.exists()
    assert mail.outbox == []
    assert not SalesReport.objects.exists()
    assert order is not None
    assert order.confirmation_job_id
    with pytest.raises(JobNotFound):
        csjd.status(order.confirmation_job_id)  # never enqueued


@pytest.mark.parametrize("orders", [3, 30])
def test_order_list_runs_one_customer_query_however_many_rows(
    client: Any, django_assert_num_queries: Any, orders: int
) -> None:
    for n in range(orders):
        email = f"c{n}@example.com"
        if n % 3:  # every third order is a guest's: no customer entry
            Customer.objects.create(email=email, name=f"Customer {n}")
        Order.objects.create(customer_email=email, item="cup", unit_price_cents=500)
    # 1 query for the orders + 1 for all their customers (BatchLoader) + 1 for the reports;
    # a lookup per row would make it orders + 2.
    with django_assert_num_queries(3):
        page = client.get(reverse("shop:order-list")).content.decode()
    assert page.count("<tr>") == orders + 1
    assert "Customer 1 (standard)" in page
    assert "guest c0@example.com" in page


def test_greet_is_registered_for_other_apps_to_enqueue() -> None:
    assert "example.greet" in csjd.app.registry.types()
    assert jobs.greet.delay("Ann").result(timeout=1) == "hello Ann"


def test_the_project_checks_and_migrations_are_clean() -> None:
    call_command("check", fail_level="WARNING")
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not os.environ.get("EXAMPLE_REDIS_URL"),
    reason="set EXAMPLE_REDIS_URL to a Redis the test may write to",
)
def test_redis_mode_end_to_end(client: Any) -> None:
    """The web process only enqueues; `manage.py csjd_worker` runs the jobs."""
    with override_settings(CSJD_MODE="redis", CSJD_REDIS_URL=os.environ["EXAMPLE_REDIS_URL"]):
        response = client.post(reverse("shop:order-create"), ORDER)  # commits for real
        order = Order.objects.get()
        assert csjd.status(order.confirmation_job_id).state is JobState.QUEUED
        assert mail.outbox == []
        call_command("csjd_worker", "--burst")
        assert csjd.status(order.confirmation_job_id).state is JobState.SUCCEEDED
        assert [m.subject for m in mail.outbox] == [f"Your order {order.number}"]
        assert SalesReport.objects.get().orders == 1
        assert "succeeded" in client.get(response["Location"]).content.decode()
