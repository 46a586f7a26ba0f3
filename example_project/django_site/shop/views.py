"""The shop's pages: place an order (work enqueued on commit), see it, list orders."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

import csjd_django as csjd
from csjd_core import BatchLoader, JobNotFound
from shop import jobs
from shop.forms import OrderForm
from shop.models import Customer, Order, SalesReport


def place_order(form: OrderForm) -> Order:
    """Save the order and enqueue its follow-up work in the same transaction.

    With ``CSJD_OUTBOX`` the jobs are rows of this transaction: if it commits they run, whatever
    happens next (the process killed, Redis down); if it rolls back, nothing is enqueued: no
    mail for an order that does not exist. The job ids are known at once, before the commit.
    """
    with transaction.atomic():
        order = form.save()
        confirmation = jobs.send_order_confirmation.delay_on_commit(order.pk)
        order.confirmation_job_id = confirmation.id
        order.save(update_fields=["confirmation_job_id"])
        jobs.build_sales_report.delay_on_commit(timezone.localdate(order.created_at).isoformat())
    return order


def order_create(request: HttpRequest) -> HttpResponse:
    form = OrderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        return redirect(place_order(form))
    return render(request, "shop/order_form.html", {"form": form})


def order_detail(request: HttpRequest, pk: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=pk)
    try:
        status: Any = csjd.status(order.confirmation_job_id)
    except JobNotFound:
        status = None  # its result expired (CSJD_RESULT_TTL); a waiting job answers "queued"
    return render(request, "shop/order_detail.html", {"order": order, "status": status})


def _customers_by_email(emails: list[str]) -> dict[str, Customer]:
    """One query for a batch of e-mails (the `BatchLoader`'s ``batch_fn``)."""
    return {c.email: c for c in Customer.objects.filter(email__in=emails)}


def order_list(request: HttpRequest) -> HttpResponse:
    """The latest orders with their customer's name.

    Orders reference customers by e-mail, not by foreign key (guest checkout), so
    ``select_related`` cannot help, and looking each customer up in the loop costs one query per
    row (N+1). `BatchLoader` collects the e-mails the rows ask for and fetches them all in one
    query: ``defer`` for each row, one ``dispatch``, then read the futures.
    """
    orders = list(Order.objects.all()[:100])
    customers: BatchLoader[str, Customer] = BatchLoader(_customers_by_email, max_batch=500)
    futures = [customers.defer(order.customer_email) for order in orders]
    customers.dispatch()  # one query for every row
    rows = []
    for order, future in zip(orders, futures, strict=True):
        try:
            customer: Customer | None = future.result()
        except KeyError:
            customer = None  # a guest: no entry in the directory
        rows.append({"order": order, "customer": customer})
    reports = SalesReport.objects.all()[:7]
    return render(request, "shop/order_list.html", {"rows": rows, "reports": reports})
