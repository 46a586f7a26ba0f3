"""The shop's background jobs (``jobs.py`` modules are autodiscovered by csjd_django).

Handlers are idempotent: delivery is at-least-once, so a job can run twice (see the README).
"""

from __future__ import annotations

from datetime import date

from django.core import mail
from django.db.models import F, Sum

import csjd_django as csjd
from csjd_core import permanent
from shop.models import Order, SalesReport


@csjd.job("shop.send_order_confirmation", max_attempts=5, timeout=30)
def send_order_confirmation(order_id: int) -> str:
    """Mail the customer their order's confirmation; returns the order number."""
    try:
        order = Order.objects.get(pk=order_id)
    except Order.DoesNotExist:
        raise permanent(LookupError(f"order {order_id} does not exist")) from None
    mail.send_mail(
        subject=f"Your order {order.number}",
        message=(
            f"Thank you for your order of {order.quantity} x {order.item}.\n"
            f"Total: {order.total_cents / 100:.2f} EUR.\n"
        ),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=[order.customer_email],
    )
    return order.number


@csjd.job("shop.build_sales_report", max_attempts=3, timeout=60)
def build_sales_report(day: str) -> dict[str, int]:
    """Rebuild one day's `SalesReport` from its orders (the same result however often it runs)."""
    when = date.fromisoformat(day)
    orders = Order.objects.filter(created_at__date=when)
    revenue = orders.aggregate(total=Sum(F("quantity") * F("unit_price_cents")))["total"] or 0
    count = orders.count()
    SalesReport.objects.update_or_create(
        day=when, defaults={"orders": count, "revenue_cents": revenue}
    )
    return {"orders": count, "revenue_cents": revenue}


@csjd.job("example.greet")
def greet(name: str) -> str:
    """A job type the Flask example registers too: either app can hand one to the other's
    workers by sending it to their queue, ``greet.apply_async(["Ada"], queue="shop")``."""
    return f"hello {name}"
