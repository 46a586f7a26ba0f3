"""Traces from Django (``CSJD_TRACING``): ``delay_on_commit`` captures the trace of the call,
inside the transaction, not of the commit; jobs of Django's Tasks framework are traced too."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import csjd_django as csjd
from csjd_core import JobState
from testapp import jobs, tasks
from testapp.models import Order


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


@pytest.mark.django_db(transaction=True)
def test_delay_on_commit_keeps_the_trace_of_the_call(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    order = Order.objects.create(number="A-1", customer="ann@example.com", total_cents=1999)
    with override_settings(CSJD_MODE="inprocess", CSJD_TRACING=provider):
        tracer = provider.get_tracer("web")
        # The request's span ends first, then the transaction commits (and the job is
        # admitted) outside it: the job's trace must still be the request's.
        with transaction.atomic(), tracer.start_as_current_span("request") as request:
            handle = jobs.send_receipt.delay_on_commit(order.pk)
            [send] = exporter.get_finished_spans()  # at the call, before the commit
        assert csjd.app.wait(10)
        assert handle.status().state is JobState.SUCCEEDED
    assert send.kind is SpanKind.PRODUCER and send.name == "send default"
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    [process] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER] == [send]
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert (process.attributes or {})["messaging.message.id"] == handle.id


@pytest.mark.django_db(transaction=True)
def test_a_task_of_djangos_tasks_framework_is_traced(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with override_settings(CSJD_MODE="inprocess", CSJD_TRACING=provider):
        result = tasks.add.enqueue(2, 3)
        assert csjd.app.wait(10)
    [send] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    [process] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert (send.attributes or {})["messaging.message.id"] == result.id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert (process.attributes or {})["csjd.outcome"] == "succeeded"
