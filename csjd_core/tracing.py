"""OpenTelemetry traces (``csjd[otel]``): a PRODUCER span per enqueue and a CONSUMER span per
attempt, joined by the W3C trace context (``traceparent``, ``tracestate``) that the producer
writes into the job's ``headers``.

Imported only when tracing is on (``Config(tracing=True)``, ``DistributedConfig(tracing=True)``,
``CSJD_TRACING = True``): this module imports ``opentelemetry`` (the API only; the application
installs and configures an SDK). The attributes follow the messaging semantic conventions of
`SEMCONV_VERSION` (docs/observability.md, "OpenTelemetry traces").
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from csjd_core.engine.outcome import OutcomeKind
from csjd_core.hooks import Hooks
from csjd_core.job import Job

if TYPE_CHECKING:
    from csjd_core.context import JobContext
    from csjd_core.engine.outcome import AttemptOutcome

__all__ = ["SEMCONV_VERSION", "SYSTEM", "Tracing"]

#: The version of OpenTelemetry's messaging semantic conventions the spans follow (the first
#: with ``messaging.operation.type`` = ``send`` / ``process`` and ``messaging.operation.name``).
SEMCONV_VERSION = "1.27.0"

#: ``messaging.system`` of every span.
SYSTEM = "csjd"

_SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# Always W3C trace context, whatever global propagator the application set: the headers are
# part of the wire format, and a bounded one (a ``baggage`` header could outgrow the limit).
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"

# An attempt's outcome -> the ``csjd.outcome`` attribute; these end in status ERROR.
_FAILURES = frozenset(
    {OutcomeKind.RETRIED, OutcomeKind.FAILED, OutcomeKind.PANICKED, OutcomeKind.TIMED_OUT}
)


class Tracing(Hooks):
    """The spans of one dispatcher: `send` wraps an admission (the producer span), and the
    hook methods make a consumer span of each attempt (``before_process`` starts it and makes
    it current while the handler runs; ``after_attempt`` ends it with the outcome).

    Args:
        provider: an OpenTelemetry ``TracerProvider``, or ``None`` for the global one
            (looked up at each span: an SDK configured after this object was built is used).
        default_queue: ``messaging.destination.name`` of jobs that name no queue.
    """

    def __init__(self, provider: Any = None, *, default_queue: str = "default") -> None:
        from csjd_core import __version__  # noqa: PLC0415 - the package imports the core

        if provider is None:
            self.tracer = trace.get_tracer("csjd", __version__, schema_url=_SCHEMA_URL)
        else:
            self.tracer = provider.get_tracer("csjd", __version__, schema_url=_SCHEMA_URL)
        self.default_queue = default_queue
        # The consumer span of each attempt between its start and its outcome, by (job id,
        # attempt): the outcome of a detached attempt is told on the watchdog's thread.
        self._spans: dict[tuple[str, int], Any] = {}
        self._local = threading.local()  # the worker thread's attempt: (key, context token)

    # -- producer --------------------------------------------------------------------------
    @contextmanager
    def send(self, jobs: Sequence[Job]) -> Iterator[list[Job]]:
        """A PRODUCER span ``send <queue>`` around an admission: yields ``jobs`` with its
        context in their headers. A job that already carries a ``traceparent`` keeps it (its
        trace was captured where it was created: ``delay_on_commit``, an outbox row, a
        relay); when every job does, there is no span. The span ends with status ERROR if the
        admission raises.
        """
        fresh = [index for index, job in enumerate(jobs) if _needs_context(job)]
        if not fresh:
            yield list(jobs)
            return
        queue, attributes = self._send_attributes([jobs[index] for index in fresh])
        with self.tracer.start_as_current_span(
            f"send {queue}" if queue else "send", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            stamped = list(jobs)
            if not carrier:  # no valid trace (a no-op provider): nothing to carry
                yield stamped
                return
            for index in fresh:
                job = stamped[index]
                headers = {**(job.headers or {}), **carrier}
                stamped[index] = dataclasses.replace(job, headers=headers)
            yield stamped

    def stamp(self, job: Job) -> Job:
        """``job`` with the trace context of this call in its headers, under a producer span
        that ends at once: for a job admitted later (at a commit, by an outbox's relay), so
        that its trace is the one of the call that asked for it."""
        with self.send((job,)) as (stamped,):
            return stamped

    def _send_attributes(self, jobs: Sequence[Job]) -> tuple[str | None, dict[str, Any]]:
        queues = {job.queue or self.default_queue for job in jobs}
        queue = queues.pop() if len(queues) == 1 else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        if queue is not None:
            attributes["messaging.destination.name"] = queue
        types = {job.type for job in jobs}
        if len(types) == 1:
            job_type = types.pop()
            if isinstance(job_type, str):
                attributes["csjd.job.type"] = job_type
        if len(jobs) == 1:
            if isinstance(jobs[0].id, str):
                attributes["messaging.message.id"] = jobs[0].id
        else:
            attributes["messaging.batch.message_count"] = len(jobs)
        return queue, attributes

    # -- consumer (hooks) ------------------------------------------------------------------
    def before_process(self, job: Job, ctx: JobContext) -> None:
        """Start the attempt's CONSUMER span and make it current on this thread."""
        local = self._local
        previous = getattr(local, "key", None)
        if previous is not None:  # the last attempt here never got an outcome (lost claim)
            local.key = None
            self._end_lost(previous)
        span = self._start_consumer(job, ctx.attempt)
        key = (job.id, ctx.attempt)
        self._spans[key] = span
        local.key = key
        local.token = otel_context.attach(trace.set_span_in_context(span))

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        """The handler returned: its span is no longer current (it ends with the outcome)."""
        local = self._local
        token = getattr(local, "token", None)
        if token is not None:
            local.token = None
            otel_context.detach(token)

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        """End the attempt's span with its outcome (an attempt whose handler never ran here,
        cancelled or of an unknown type, gets a span that starts and ends now)."""
        if outcome.attempt < 1:
            return  # a job ended before any attempt: nothing was processed
        job = outcome.job
        key = (job.id, outcome.attempt)
        span = self._spans.pop(key, None)
        local = self._local
        if getattr(local, "key", None) == key:
            local.key = None
        if span is None:
            span = self._start_consumer(job, outcome.attempt)
        kind = outcome.kind
        span.set_attribute("csjd.outcome", str(kind))
        span.set_attribute("csjd.outcome.terminal", outcome.terminal)
        if outcome.retry_in is not None:
            span.set_attribute("csjd.retry_in", outcome.retry_in)
        error = outcome.error
        if kind in _FAILURES or (kind is OutcomeKind.CANCELLED and error is not None):
            exception = outcome.exception
            if exception is not None:
                span.record_exception(exception)
                span.set_attribute("error.type", type(exception).__qualname__)
            elif error is not None:
                span.set_attribute("error.type", error.kind)
            description = error.message if error is not None else str(kind)
            span.set_status(Status(StatusCode.ERROR, description))
        span.end()

    def _start_consumer(self, job: Job, attempt: int) -> Any:
        queue = job.queue or self.default_queue
        parent = _PROPAGATOR.extract(job.headers) if job.headers else None
        links = None
        if parent is not None:
            remote = trace.get_current_span(parent).get_span_context()
            if remote.is_valid:
                links = [Link(remote)]
        return self.tracer.start_span(
            f"process {queue}",
            context=parent if parent is not None else otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": job.id,
                "csjd.job.type": job.type,
                "csjd.job.attempt": attempt,
            },
        )

    def _end_lost(self, key: tuple[str, int]) -> None:
        span = self._spans.pop(key, None)
        if span is not None:
            span.set_attribute("csjd.outcome", "lost")
            span.end()


def _needs_context(job: Job) -> bool:
    """True if ``job`` can take a trace context and has none (a malformed one is left to
    admission to refuse)."""
    if not isinstance(job, Job):
        return False
    headers = job.headers
    return headers is None or (type(headers) is dict and _TRACEPARENT not in headers)
