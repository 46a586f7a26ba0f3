"""An application with OpenTelemetry tracing on, for the cross-process trace tests (imported
by ``csjd worker traceapp:app`` subprocesses).

Its process's global tracer provider is an SDK one whose spans are appended, one JSON line
each, to the file ``CSJD_TRACE_FILE`` names: the test reads them and joins them to the producer
spans it recorded in memory. ``CSJD_TEST_REDIS_URL`` names the server; ``CSJD_OPS_OUTBOX_DB``
a SQLite outbox the worker relays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from csjd_core import App, JobContext
from csjd_core.config import DistributedConfig, RedisConfig


class FileExporter(SpanExporter):
    """Each span as one JSON line (``os.write`` on an ``O_APPEND`` descriptor)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            line = {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{span.context.trace_id:032x}",
                "span_id": f"{span.context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "links": [f"{link.context.span_id:016x}" for link in span.links],
                "status": span.status.status_code.name,
                "attributes": dict(span.attributes or {}),
                "events": [event.name for event in span.events],
                "pid": os.getpid(),
            }
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["CSJD_TRACE_FILE"])))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("traceapp")

app = App(
    mode="redis",
    name="traceapp",
    redis=RedisConfig.from_url(os.environ["CSJD_TEST_REDIS_URL"]),
    distributed=DistributedConfig(
        workers=2,
        block=0.2,
        retry={"base_delay": 0.01, "max_delay": 0.02},
        tracing=True,
    ),
)


@app.job("traced", takes_context=True)
def traced(ctx: JobContext) -> None:
    """Fails its first attempt; the second makes a span of its own (the handler's child)."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    with tracer.start_as_current_span("inside the handler"):
        pass


if os.environ.get("CSJD_OPS_OUTBOX_DB"):
    from sqlalchemy import MetaData, create_engine

    from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox, outbox_tables

    app.outboxes = (
        SQLAlchemyOutbox(
            create_engine(f"sqlite:///{os.environ['CSJD_OPS_OUTBOX_DB']}"),
            *outbox_tables(MetaData()),
            name="sqlite:trace",
        ),
    )
