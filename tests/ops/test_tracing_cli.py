"""A trace across processes: the producer span recorded in this process (an SDK with an
in-memory exporter), the consumer spans in a real ``csjd worker`` subprocess on a real Redis
(its SDK writes them to a file, tests/ops/traceapp.py), joined by the job's ``traceparent``
header — for a job submitted straight to Redis, and for one written to an outbox that the
worker relays."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ops_support import Cli
from sqlalchemy import MetaData, create_engine

from csjd_core import App, Job
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox, outbox_tables

APP = "traceapp:app"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def producer(cli: Cli, exporter: InMemorySpanExporter, tmp_path: Path) -> App:
    """This process's app: Redis mode, tracing into ``exporter``, with the worker's outbox."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cli.env["CSJD_TRACE_FILE"] = str(tmp_path / "spans.jsonl")
    cli.env["CSJD_OPS_OUTBOX_DB"] = str(tmp_path / "outbox.sqlite3")
    app = App(
        mode="redis",
        redis=RedisConfig.from_url(cli.url),
        distributed=DistributedConfig(tracing=provider),
    )
    metadata = MetaData()
    outbox = SQLAlchemyOutbox(
        create_engine(f"sqlite:///{cli.env['CSJD_OPS_OUTBOX_DB']}"), *outbox_tables(metadata)
    )
    metadata.create_all(outbox.engine)
    app.outboxes = (outbox,)

    @app.job("traced", takes_context=True)
    def traced(ctx: Any) -> None:  # the worker's handler runs it; this one only enqueues
        raise AssertionError("runs in the worker")

    return app


def worker_spans(cli: Cli) -> list[dict[str, Any]]:
    path = Path(cli.env["CSJD_TRACE_FILE"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_trace(send: ReadableSpan, spans: list[dict[str, Any]], job_id: str) -> None:
    """Two attempts of ``job_id`` in the worker: each a CONSUMER span, child of (and linked
    to) ``send``, in its trace; the first ERROR and retried, the second succeeded with the
    handler's own span inside it."""
    trace_id = f"{send.context.trace_id:032x}"
    send_id = f"{send.context.span_id:016x}"
    process = sorted(
        (s for s in spans if s["attributes"].get("messaging.message.id") == job_id),
        key=lambda s: s["attributes"]["csjd.job.attempt"],
    )
    assert [s["attributes"]["csjd.job.attempt"] for s in process] == [1, 2]
    for span in process:
        assert span["pid"] != os.getpid()
        assert (span["name"], span["kind"]) == ("process default", "CONSUMER")
        assert (span["trace_id"], span["parent_id"], span["links"]) == (
            trace_id,
            send_id,
            [send_id],
        )
        assert span["attributes"]["messaging.operation.type"] == "process"
    first, second = process
    assert (first["status"], first["attributes"]["csjd.outcome"]) == ("ERROR", "retried")
    assert first["attributes"]["error.type"] == "RuntimeError"
    assert first["events"] == ["exception"]
    assert (second["status"], second["attributes"]["csjd.outcome"]) == ("UNSET", "succeeded")
    [inner] = [s for s in spans if s["name"] == "inside the handler" and s["trace_id"] == trace_id]
    assert inner["parent_id"] == second["span_id"]


def test_a_trace_joins_the_producer_and_a_worker_process(
    cli: Cli, producer: App, exporter: InMemorySpanExporter
) -> None:
    handle = producer.jobs["traced"].delay()
    [send] = exporter.get_finished_spans()
    assert (send.name, send.kind.name) == ("send default", "PRODUCER")
    assert dict(send.attributes or {}) == {
        "messaging.system": "csjd",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "csjd.job.type": "traced",
        "messaging.message.id": handle.id,
    }
    done = cli.run("worker", APP, "--burst")
    assert done.returncode == 0, done.stderr
    check_trace(send, worker_spans(cli), handle.id)


def test_an_outbox_row_relayed_by_the_worker_keeps_the_producers_trace(
    cli: Cli, producer: App, exporter: InMemorySpanExporter
) -> None:
    [outbox] = producer.outboxes
    assert isinstance(outbox, SQLAlchemyOutbox)
    with outbox.engine.begin() as connection:  # the application's transaction
        job = producer.outbox_job(Job("boxed", "traced", {"args": [], "kwargs": {}}))
        outbox.add(connection, job)
    [send] = exporter.get_finished_spans()  # at the call, not at the relay
    assert send.name == "send default"
    done = cli.run("worker", APP, "--burst")  # relays the row, then runs it
    assert done.returncode == 0, done.stderr
    spans = worker_spans(cli)
    check_trace(send, spans, "boxed")
    # The relay (another process) started no trace of its own.
    assert [s for s in spans if s["kind"] == "PRODUCER"] == []
