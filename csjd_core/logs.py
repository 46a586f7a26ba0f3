"""Log lines as text or as JSON objects: the formatters the worker commands' ``--log-format``
chooses between, usable in any logging configuration (``LOGGING`` in Django, ``dictConfig``).

Every attempt the engine records is one log record on ``csjd_core.engine`` whose ``extra``
fields (`ATTEMPT_FIELDS`) carry the job's id, type, queue, attempt, duration, outcome and error
class: the text format shows the message, the JSON format the fields too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["ATTEMPT_FIELDS", "LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "formatter"]

#: The values of a worker command's ``--log-format``.
LOG_FORMATS = ("text", "json")

#: The text format of the worker commands' lines on stderr.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: The ``extra`` fields of the record of an attempt (``None`` where they do not apply).
ATTEMPT_FIELDS = (
    "job_id",
    "job_type",
    "queue",
    "attempt",
    "max_attempts",
    "outcome",
    "terminal",
    "duration",
    "lag",
    "error_class",
    "retry_in",
)

# What every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Keys: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``,
    ``process`` (the pid: supervised children share a stream), every field the record was given
    with ``extra=``, and ``exception`` / ``stack`` (their text) when it has them. A value JSON
    cannot encode is written as its ``str()``.

    In a logging configuration: ``{"()": "csjd_core.logs.JsonFormatter"}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a ``--log-format`` value (``"text"`` or ``"json"``).

    Raises:
        ValueError: another value.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
