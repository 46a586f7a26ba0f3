"""Every limit CSJD enforces, in one place: what admission refuses and what records keep.

A value past a limit is refused where it enters (`InvalidJob` at admission, `InvalidConfig` in
a configuration, `SettingsError` in ``CSJD_*`` settings) with a message naming the limit, so
that no value a producer chose can kill a background thread, poison a batch or grow a record
without bound.
docs/limits.md lists them with the errors a user sees.
"""

from __future__ import annotations

import math
import re
import threading
from datetime import timedelta

__all__ = [
    "DEFAULT_MAX_DEAD_LETTERS",
    "DEFAULT_MAX_RESULT_BYTES",
    "HEADER_NAME",
    "MAX_ATTEMPTS",
    "MAX_DURATION",
    "MAX_ERROR_TEXT",
    "MAX_HEADERS",
    "MAX_HEADERS_LENGTH",
    "MAX_INT_BITS",
    "MAX_JOB_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_NESTING",
    "MAX_PRIORITY",
    "MAX_PROGRESS_MESSAGE",
    "MAX_TRACEBACK",
    "MAX_WORKERS",
    "MIN_PRIORITY",
    "NAME_PATTERN",
    "attempts",
    "brief",
    "clip_text",
    "clip_traceback",
    "headers",
    "is_name",
    "is_text",
    "job_options",
    "name_problem",
    "names",
    "positive_seconds",
    "priority",
    "seconds",
]

#: Longest duration in seconds anywhere one is accepted: timeouts, countdowns, how far ahead an
#: ``eta`` may be, retry delays, leases, intervals, TTLs (ten years). Far below
#: ``threading.TIMEOUT_MAX``, so a wait on any of them can never overflow.
MAX_DURATION = min(10 * 365 * 24 * 3600.0, threading.TIMEOUT_MAX / 4)

#: Most attempts a job may be given (``max_attempts``, ``default_max_attempts``).
MAX_ATTEMPTS = 10_000

#: Most worker threads (or read-ahead entries) one process may have: a typo such as
#: ``workers=100000`` is refused at start-up, not by the system halfway through spawning them.
MAX_WORKERS = 1024

#: A job's ``priority`` ranges from `MIN_PRIORITY` to `MAX_PRIORITY` (Django's Tasks range;
#: higher starts first, 0 is the default).
MIN_PRIORITY = -100
MAX_PRIORITY = 100

#: Most entries in a job's ``headers`` (trace context such as ``traceparent``/``tracestate``).
MAX_HEADERS = 16

#: Longest a job's ``headers`` may be: the characters of every name and value together (W3C
#: trace context needs under 600: ``traceparent`` is 55, ``tracestate`` at most 512).
MAX_HEADERS_LENGTH = 4096

#: A header name: an HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``), 1 to 128 characters.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")

#: Deepest nesting of lists and objects in a payload or a result.
MAX_NESTING = 64

#: Integers in payloads and results stay below ``2**MAX_INT_BITS`` in magnitude: the range of a
#: JSON number read as a double, so every reader of the JSON gets a finite number back.
MAX_INT_BITS = 1024

#: Largest job (id, type and payload as JSON) in any mode; also the file store's record limit.
MAX_JOB_BYTES = 64 * 1024 * 1024

#: Longest job id, job type or queue name (characters).
MAX_NAME_LENGTH = 1024

#: Error messages kept in a status, a log line or a dead letter (characters; the start is kept).
MAX_ERROR_TEXT = 4_000

#: Progress messages kept (``ctx.set_progress``; characters, the start is kept): a value
#: written about once a second per running job, so smaller than an error's.
MAX_PROGRESS_MESSAGE = 500

#: Tracebacks kept in a status or a dead letter (characters; the end is kept).
MAX_TRACEBACK = 8_000

#: Default ``max_result_bytes``: the largest return value kept, as JSON.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024

#: Default ``max_dead_letters``: dead letters kept per queue (Redis ``XADD MAXLEN ~``).
DEFAULT_MAX_DEAD_LETTERS = 10_000

#: Queue names, stream prefixes, group and consumer names: they become parts of Redis keys, so
#: no braces (a Cluster hash tag), no whitespace or control characters.
NAME_PATTERN = re.compile(r"[\w.:@/+-]{1,200}")


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages: never raises (a huge
    int has no repr, a broken ``__repr__`` must not hide the real problem)."""
    try:
        text = repr(value)
    except Exception:
        if isinstance(value, int):
            return f"<an int of {value.bit_length()} bits>"
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_text(value: str) -> bool:
    """True if ``value`` encodes as UTF-8 (no lone surrogates such as ``os.fsdecode`` makes)."""
    if value.isascii():  # constant time in CPython
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_name(value: object) -> bool:
    """True if ``value`` may name a queue, a stream prefix, a group or a consumer."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def names(text: str) -> list[str]:
    """The names of a comma-separated list (``"a, b"``: ``["a", "b"]``), unchecked."""
    return [name.strip() for name in text.split(",") if name.strip()]


def name_problem(value: object, what: str) -> str | None:
    """Why ``value`` cannot name a queue (or prefix, group, consumer), or None if it can."""
    if is_name(value):
        return None
    return (
        f"{what} must be 1 to 200 letters, digits or '_.:@/+-' (no braces, spaces or control "
        f"characters: names become parts of Redis keys), got {brief(value)}"
    )


def _printable(text: str) -> str:
    """``text`` with lone surrogates spelled out (``\\udcff``): safe to encode anywhere."""
    if is_text(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clip_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters (keeping the start) and made encodable."""
    if len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more characters]"
    return _printable(text)


def clip_traceback(text: str, limit: int = MAX_TRACEBACK) -> str:
    """A traceback cut to its last ``limit`` characters (the innermost frames and the error)
    and made encodable."""
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return _printable(text)


# -- The rules every boundary shares. Each raises ValueError naming ``name``; a caller turns it
# -- into InvalidJob, InvalidConfig or its framework's error.
def seconds(value: float | timedelta, name: str) -> float:
    """A duration in seconds from a number or `timedelta`, between 0 and `MAX_DURATION`.

    Raises:
        ValueError: naming ``name`` when the value is negative, not a number, or longer than
            `MAX_DURATION` (ten years: no wait on it can overflow a timer).
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be seconds (a number or timedelta), got {brief(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        value = math.inf
    if not value >= 0:  # negative or NaN
        raise ValueError(f"{name} must be a number of seconds >= 0, got {brief(value)}")
    if value > MAX_DURATION:
        raise ValueError(
            f"{name} must be at most {MAX_DURATION:.0f} seconds (ten years, "
            f"csjd_core.limits.MAX_DURATION), got {brief(value)}"
        )
    return value


def positive_seconds(value: float | timedelta, name: str) -> float:
    """`seconds`, and more than 0 (a timeout, a lease, an interval).

    Raises:
        ValueError: naming ``name``.
    """
    result = seconds(value, name)
    if result == 0:
        raise ValueError(f"{name} must be positive seconds, got {brief(value)}")
    return result


def attempts(value: object, name: str) -> int:
    """An attempt count: an int from 1 to `MAX_ATTEMPTS`.

    Raises:
        ValueError: naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS:
        raise ValueError(
            f"{name} must be an int >= 1 and at most {MAX_ATTEMPTS} "
            f"(csjd_core.limits.MAX_ATTEMPTS), got {brief(value)}"
        )
    return value


def priority(value: object, name: str = "priority") -> int:
    """A job's priority: an int from `MIN_PRIORITY` to `MAX_PRIORITY` (not a bool).

    Raises:
        ValueError: naming ``name``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_PRIORITY <= value <= MAX_PRIORITY
    ):
        raise ValueError(
            f"{name} must be an int from {MIN_PRIORITY} to {MAX_PRIORITY} (higher starts "
            f"first; csjd_core.limits.MIN_PRIORITY/MAX_PRIORITY), got {brief(value)}"
        )
    return value


def headers(value: object, name: str = "headers") -> dict[str, str]:
    """A job's headers: a dict of at most `MAX_HEADERS` entries, each name an HTTP token
    (`HEADER_NAME`) and each value text, at most `MAX_HEADERS_LENGTH` characters together.

    Raises:
        ValueError: naming ``name`` and the limit.
    """
    if type(value) is not dict:
        raise ValueError(f"{name} must be a dict of str to str, got {brief(value)}")
    if len(value) > MAX_HEADERS:
        raise ValueError(
            f"{name} has {len(value)} entries; at most {MAX_HEADERS} (csjd_core.limits.MAX_HEADERS)"
        )
    length = 0
    for key, text in value.items():
        if type(key) is not str or HEADER_NAME.fullmatch(key) is None:
            raise ValueError(
                f"{name} names must be 1 to 128 letters, digits or !#$%&'*+-.^_`|~ (an HTTP "
                f"token), got {brief(key)}"
            )
        if type(text) is not str or not is_text(text):
            raise ValueError(f"{name}[{key!r}] must be text (a str), got {brief(text)}")
        length += len(key) + len(text)
    if length > MAX_HEADERS_LENGTH:
        raise ValueError(
            f"{name} hold {length} characters; at most {MAX_HEADERS_LENGTH} "
            "(csjd_core.limits.MAX_HEADERS_LENGTH)"
        )
    return value


def job_options(
    max_attempts: object, timeout: float | timedelta | None
) -> tuple[int | None, float | None]:
    """A job's ``max_attempts`` and ``timeout`` (in seconds), as admission checks them: at
    admission, in ``@job(...)`` and in a Django task's options.

    Raises:
        ValueError: naming the option and its limit.
    """
    return (
        None if max_attempts is None else attempts(max_attempts, "max_attempts"),
        None if timeout is None else positive_seconds(timeout, "timeout"),
    )
