"""Job functions of the test app (autodiscovered by csjd_django)."""

from __future__ import annotations

import os
import threading
import time

from django.core import mail

import csjd_django as csjd
from csjd_core import JobContext, permanent
from testapp.models import JobRun, Order, Receipt

CALLS: list[str] = []


@csjd.job("email.receipt", max_attempts=3)
def send_receipt(order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    mail.send_mail(f"Receipt {order.number}", "Thanks!", "shop@example.com", [order.customer])
    Receipt.objects.create(order=order, sent_by="csjd")
    return order.number


@csjd.job("order.number")
def order_number(order_id: int) -> str:
    """Reads the order and writes nothing: SQLite's shared in-memory test database refuses a
    writer outright (no busy wait) while another connection, such as the outbox relay's, holds
    a write transaction."""
    return Order.objects.get(pk=order_id).number


@csjd.job("flaky", max_attempts=3, takes_context=True)
def flaky(ctx: JobContext, fail_times: int) -> int:
    CALLS.append(f"flaky:{ctx.attempt}")
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@csjd.job("always.fails", max_attempts=2)
def always_fails() -> None:
    raise permanent(ValueError("bad input <script>alert(1)</script>"))


@csjd.job("outbox.counted", max_attempts=5, takes_context=True)
def counted(ctx: JobContext, seconds: float = 0.0) -> None:
    """Counts each run in the database (tests/outbox/: `JobRun`), then sleeps ``seconds``."""
    JobRun.objects.create(
        job_id=ctx.job_id, pid=os.getpid(), attempt=ctx.attempt, ran_at=time.time()
    )
    if seconds:
        time.sleep(seconds)


#: report_progress(hold=True) waits for PROGRESS_GATE after setting PROGRESS_REPORTED.
PROGRESS_GATE = threading.Event()
PROGRESS_REPORTED = threading.Event()


@csjd.job("progress.report", takes_context=True)
def report_progress(ctx: JobContext, label: str, hold: bool = False) -> str:
    """Reports progress 1..3 of 4 (the last with ``label`` in its message)."""
    for step in (1, 2, 3):
        ctx.set_progress(step, 4, f"step {step} {label}")
    if hold:
        PROGRESS_REPORTED.set()
        PROGRESS_GATE.wait(10)
    return label
