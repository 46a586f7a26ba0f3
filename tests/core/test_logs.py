"""The per-attempt log records (one per recorded attempt, its fields as ``extra``) and the
JSON formatter, in process: every outcome kind, counted against the outcome events."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from csjd_core import Config, Dispatcher, Hooks, Job, JobContext, RetryPolicy
from csjd_core.cli_options import log_to_stderr
from csjd_core.engine.outcome import AttemptOutcome
from csjd_core.logs import ATTEMPT_FIELDS, JsonFormatter, formatter

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)


class Recorder(Hooks):
    def __init__(self) -> None:
        self.outcomes: list[AttemptOutcome] = []

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        self.outcomes.append(outcome)


class Boom(Exception):
    pass


def handler(ctx: JobContext, job: Job) -> Any:
    what = job.payload
    if what == "ok":
        return 1
    if what == "panic":
        raise SystemExit("bye")
    if what == "slow":
        ctx.wait(5)
        ctx.raise_if_cancelled()
    raise Boom(what)


def test_one_record_per_attempt_with_the_outcome_events_figures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="csjd_core.engine")
    hooks = Recorder()
    dispatcher = Dispatcher(Config(retry=FAST, default_max_attempts=2, hooks=(hooks,)))
    dispatcher.register_handler("t", handler)
    with dispatcher:
        for payload in ("ok", "panic", "boom"):
            dispatcher.submit(Job(payload, "t", payload))
        dispatcher.submit(Job("slow", "t", "slow", timeout=0.05, max_attempts=1))
        assert dispatcher.join(10)

    records = [r for r in caplog.records if hasattr(r, "outcome")]
    assert len(records) == len(hooks.outcomes) == 6
    events = {(o.job.id, o.attempt): o for o in hooks.outcomes}
    for record in records:
        event = events.pop((record.job_id, record.attempt))  # type: ignore[attr-defined]
        fields = {name: getattr(record, name) for name in ATTEMPT_FIELDS}
        assert fields["outcome"] == event.kind.value
        assert fields["terminal"] is event.terminal
        assert fields["duration"] == event.duration
        assert fields["lag"] == event.lag
        assert fields["job_type"] == "t"
        assert fields["queue"] is None  # in-process: no queues
        assert fields["retry_in"] == event.retry_in
    assert not events
    classes = {(r.job_id, r.outcome): r.error_class for r in records}  # type: ignore[attr-defined]
    assert classes == {
        ("ok", "succeeded"): None,
        ("panic", "panicked"): "SystemExit",
        ("boom", "retried"): f"{__name__}.Boom",
        ("boom", "failed"): f"{__name__}.Boom",
        ("slow", "timed_out"): "csjd_core.errors.JobTimeout",  # raise_if_cancelled raised it
    }


def test_the_json_formatter_writes_one_parsable_object_per_record() -> None:
    try:
        raise Boom('a "quoted"\nline')
    except Boom:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "csjd_core.engine", logging.ERROR, __file__, 1, "job failed id=%r", ("j<1>",), exc_info
    )
    record.job_id = "j<1>"
    record.duration = 0.25
    record.when = object()  # not JSON: written as its str()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "job failed id='j<1>'"
    assert data["level"] == "ERROR"
    assert data["logger"] == "csjd_core.engine"
    assert data["job_id"] == "j<1>"
    assert data["duration"] == 0.25
    assert data["when"].startswith("<object object")
    assert 'Boom: a "quoted"\nline' in data["exception"]
    assert data["time"].endswith("+00:00")
    assert isinstance(data["process"], int)


def test_formatter_refuses_an_unknown_format() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    assert not isinstance(formatter("text"), JsonFormatter)
    with pytest.raises(ValueError, match="log format must be one of text, json, got 'xml'"):
        formatter("xml")


@contextlib.contextmanager
def bare_logging() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """The root and csjd_core loggers without handlers (pytest's put back afterwards: it adds
    them for each phase of a test, so this runs in the test's body)."""
    root, ours = logging.getLogger(), logging.getLogger("csjd_core")
    saved = (root.handlers[:], ours.handlers[:])
    root.handlers.clear()
    ours.handlers.clear()
    try:
        yield root, ours
    finally:
        root.handlers[:], ours.handlers[:] = saved


def test_a_worker_command_adds_its_stderr_handler_only_when_none_receives_our_lines() -> None:
    with bare_logging() as (root, ours):
        check_handlers(root, ours)


def check_handlers(root: logging.Logger, ours: logging.Logger) -> None:
    with log_to_stderr("INFO", "json"):
        [added] = root.handlers
        assert isinstance(added.formatter, JsonFormatter)
    assert root.handlers == []
    # An application's configuration prints the csjd lines (Django's LOGGING may name only
    # csjd_core): a second handler would print each line twice.
    configured = logging.StreamHandler(io.StringIO())
    ours.addHandler(configured)
    with log_to_stderr("INFO", "text"):
        assert root.handlers == []
    with log_to_stderr("INFO", "json"):  # not JSON there: said, not forced
        pass
    assert "--log-format json not applied" in configured.stream.getvalue()
    configured.setFormatter(JsonFormatter())
    configured.stream = io.StringIO()
    with log_to_stderr("INFO", "json"):  # JSON already: nothing to say
        pass
    assert configured.stream.getvalue() == ""
