"""OpenTelemetry traces in process (docs/observability.md, "OpenTelemetry traces"): a producer
span per admission whose context the job carries, a consumer span per attempt parented to it,
and nothing of OpenTelemetry imported unless tracing is on.

The trace across processes (a real worker on Redis) and through an outbox relay is checked in
tests/ops/test_tracing_cli.py; Django's ``delay_on_commit`` in tests/django/test_django_tracing.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from csjd_core import (
    App,
    Config,
    Dispatcher,
    InvalidConfig,
    Job,
    JobContext,
    RetryPolicy,
    UnknownJobType,
)
from csjd_core.errors import SettingsError
from csjd_core.settings import app_from_settings

FAST = RetryPolicy(base_delay=0.01, max_delay=0.01, jitter=None)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


@pytest.fixture
def dispatcher(provider: TracerProvider) -> Iterator[Dispatcher]:
    made = Dispatcher(Config(workers=2, retry=FAST, tracing=provider))
    try:
        yield made
    finally:
        made.stop(5)


def spans(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def consumers_of(exporter: InMemorySpanExporter, job_id: str) -> list[ReadableSpan]:
    found = [
        s
        for s in spans(exporter, SpanKind.CONSUMER)
        if (s.attributes or {}).get("messaging.message.id") == job_id
    ]
    return sorted(found, key=lambda s: (s.attributes or {})["csjd.job.attempt"])


def assert_child_of(span: ReadableSpan, parent: ReadableSpan) -> None:
    assert span.parent is not None
    assert span.context.trace_id == parent.context.trace_id
    assert span.parent.span_id == parent.context.span_id
    assert [link.context.span_id for link in span.links] == [parent.context.span_id]


def test_a_retried_job_has_one_consumer_span_per_attempt_under_its_producer_span(
    dispatcher: Dispatcher, exporter: InMemorySpanExporter
) -> None:
    inner_parents: list[int] = []

    @dispatcher.handler("flaky")
    def flaky(ctx: JobContext, job: Job) -> None:
        inner_parents.append(trace.get_current_span().get_span_context().span_id)
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    dispatcher.start()
    dispatcher.submit(Job("j1", "flaky", queue="mail", max_attempts=2))
    assert dispatcher.join(10)
    [send] = spans(exporter, SpanKind.PRODUCER)
    assert send.name == "send mail"
    first, second = consumers_of(exporter, "j1")
    for span in (first, second):
        assert span.name == "process mail"
        assert_child_of(span, send)
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: first attempt fails"
    assert (first.attributes or {})["csjd.outcome"] == "retried"
    assert (first.attributes or {})["csjd.outcome.terminal"] is False
    assert (first.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    assert dict(second.attributes or {}) == {
        "messaging.system": "csjd",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": "j1",
        "csjd.job.type": "flaky",
        "csjd.job.attempt": 2,
        "csjd.outcome": "succeeded",
        "csjd.outcome.terminal": True,
    }
    # The consumer span was current while the handler ran.
    assert inner_parents == [first.context.span_id, second.context.span_id]


def test_a_failing_handler_ends_its_span_in_error_and_terminal(
    dispatcher: Dispatcher, exporter: InMemorySpanExporter
) -> None:
    @dispatcher.handler("boom")
    def boom(ctx: JobContext, job: Job) -> None:
        raise KeyError("missing")

    dispatcher.start()
    dispatcher.submit(Job("b1", "boom", max_attempts=1))
    assert dispatcher.join(10)
    [span] = consumers_of(exporter, "b1")
    assert span.status.status_code is StatusCode.ERROR
    attributes = span.attributes or {}
    assert (attributes["csjd.outcome"], attributes["csjd.outcome.terminal"]) == ("failed", True)
    assert attributes["messaging.destination.name"] == "default"
    assert span.events[0].attributes["exception.type"] == "KeyError"  # type: ignore[index]


def test_spans_made_by_sync_and_async_handlers_are_children_of_the_attempt(
    dispatcher: Dispatcher, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("handlers")

    @dispatcher.handler("sync")
    def sync(ctx: JobContext, job: Job) -> None:
        with tracer.start_as_current_span("sync work"):
            pass

    @dispatcher.handler("async")
    async def run_async(ctx: JobContext, job: Job) -> None:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("async work"):
            await asyncio.sleep(0)

    dispatcher.start()
    dispatcher.submit(Job("s", "sync"))
    dispatcher.submit(Job("a", "async"))
    assert dispatcher.join(10)
    finished = {s.name: s for s in exporter.get_finished_spans()}
    [sync_attempt] = consumers_of(exporter, "s")
    [async_attempt] = consumers_of(exporter, "a")
    sync_parent = finished["sync work"].parent
    assert sync_parent is not None and sync_parent.span_id == sync_attempt.context.span_id
    async_parent = finished["async work"].parent
    assert async_parent is not None and async_parent.span_id == async_attempt.context.span_id


def test_a_batch_is_one_producer_span_and_a_carried_context_is_kept(
    dispatcher: Dispatcher, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.start()
    dispatcher.submit_batch([Job("b1", "t"), Job("b2", "t"), Job("b3", "t")])
    # A job that already carries a trace context (captured where it was created) keeps it:
    # no producer span of its own.
    with provider.get_tracer("web").start_as_current_span("request") as request:
        carried: dict[str, str] = {}
        inject(carried)
    dispatcher.submit(Job("c", "t", headers={**carried, "x-other": "kept"}))
    assert dispatcher.join(10)
    [send] = spans(exporter, SpanKind.PRODUCER)
    assert send.name == "send default"
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in (send.attributes or {})
    for job_id in ("b1", "b2", "b3"):
        [span] = consumers_of(exporter, job_id)
        assert_child_of(span, send)
    [span] = consumers_of(exporter, "c")
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    assert dispatcher.status("c").state.finished


def test_a_refused_admission_ends_its_producer_span_in_error(
    dispatcher: Dispatcher, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(UnknownJobType):
        dispatcher.submit(Job("x", "nobody"))
    [send] = spans(exporter, SpanKind.PRODUCER)
    assert send.status.status_code is StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]


def test_app_traced_stamps_a_job_for_a_later_admission(provider: TracerProvider) -> None:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(mode="inprocess", config=Config(tracing=provider, retry=FAST))
    try:
        app.register_handler("t", lambda ctx, job: None)
        job = app.traced(Job("later", "t"))
        assert set(job.headers or {}) == {"traceparent"}
        [send] = exporter.get_finished_spans()  # ended at the call
        app.enqueue(job)  # e.g. at the commit: no second producer span
        assert app.wait(10)
        [again, process] = exporter.get_finished_spans()
        assert again is send and process.kind is SpanKind.CONSUMER
        assert_child_of(process, send)
        assert App(mode="inprocess").traced(job) is job  # tracing off: unchanged
    finally:
        app.stop(5)


def test_tracing_must_be_true_false_or_a_provider() -> None:
    with pytest.raises(InvalidConfig, match=r"Config\.tracing must be True, False or an Open"):
        Config(tracing="yes")
    with pytest.raises(SettingsError, match="CSJD_TRACING"):
        app_from_settings({"CSJD_TRACING": 1})


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_tracing_nothing_of_opentelemetry_is_imported() -> None:
    done = _run(
        """
        import sys
        from csjd_core import App, Config, Dispatcher, Job
        from csjd_core.settings import app_from_settings
        app = app_from_settings({"CSJD_MODE": "inprocess"})
        app.register_handler("t", lambda ctx, job: None)
        app.enqueue(Job("a", "t"))
        assert app.wait(10)
        app.stop(5)
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        assert "csjd_core.tracing" not in sys.modules
        print("clean")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_tracing_without_opentelemetry_installed_names_the_extra() -> None:
    done = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from csjd_core import App, Config, Dispatcher, Job
        from csjd_core.errors import InvalidConfig, SettingsError
        from csjd_core.settings import app_from_settings
        app = App(mode="inprocess")  # off: works without it
        app.register_handler("t", lambda ctx, job: None)
        app.enqueue(Job("a", "t"))
        assert app.wait(10)
        app.stop(5)
        try:
            Config(tracing=True)
        except InvalidConfig as exc:
            print(exc)
        try:
            app_from_settings({"CSJD_TRACING": True})
        except SettingsError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    config_error, setting_error = done.stdout.strip().splitlines()
    assert config_error.startswith(
        "Config.tracing needs OpenTelemetry's API, which is not installed: pip install 'csjd[otel]'"
    )
    assert "CSJD_TRACING" in setting_error and "pip install 'csjd[otel]'" in setting_error


def test_the_hook_ignores_what_it_did_not_start(provider: TracerProvider) -> None:
    """An outcome with attempt 0 (a job ended before any attempt) makes no span."""
    from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind  # noqa: PLC0415
    from csjd_core.tracing import Tracing  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    tracing.after_attempt(
        AttemptOutcome(
            Job("z", "t"), OutcomeKind.CANCELLED, terminal=True, attempt=0, max_attempts=1
        )
    )
    assert exporter.get_finished_spans() == ()
