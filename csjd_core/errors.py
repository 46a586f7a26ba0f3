"""The exception tree: every failure CSJD reports has a name here; and how any error is told as
text that never fails, never grows without bound and always encodes."""

from __future__ import annotations

import traceback as _traceback
from typing import TYPE_CHECKING

from csjd_core.limits import clip_text, clip_traceback

if TYPE_CHECKING:
    from csjd_core.job import JobStatus

__all__ = [
    "BackendUnavailable",
    "CSJDError",
    "DispatcherClosed",
    "DuplicateJob",
    "InvalidConfig",
    "InvalidJob",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobStoreLocked",
    "JobTimeout",
    "PermanentError",
    "QueueFull",
    "RedisModeRequired",
    "SettingsError",
    "StoreCorrupted",
    "StoreFailed",
    "StoreNotFound",
    "UnknownJobType",
    "describe_error",
    "format_traceback",
    "permanent",
]


class CSJDError(Exception):
    """Base class of every error CSJD raises."""


class InvalidJob(CSJDError, ValueError):
    """A job (or its payload, arguments or schedule) cannot be accepted as given."""


class InvalidConfig(CSJDError, ValueError):
    """A configuration value is bad. ``owner`` and ``field`` name it (``Config``,
    ``workers``), so a settings layer maps it back to its own name without reading the text."""

    def __init__(self, message: str, *, owner: str, field: str) -> None:
        super().__init__(message)
        self.owner = owner
        self.field = field


class UnknownJobType(CSJDError, LookupError):
    """No handler is registered for the job's type."""


class DuplicateJob(CSJDError):
    """A job with this id exists and has not finished (or is inside the dedupe window)."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(message or f"job id {job_id!r} is already taken by an unfinished job")
        self.job_id = job_id


class QueueFull(CSJDError):
    """Admission refused: `max_pending_jobs` unfinished jobs already exist."""

    def __init__(self, limit: int, message: str | None = None) -> None:
        super().__init__(message or f"queue full: max_pending_jobs={limit} unfinished jobs")
        self.limit = limit


class DispatcherClosed(CSJDError):
    """The dispatcher is stopping or stopped and no longer accepts jobs."""


class BackendUnavailable(CSJDError):
    """The backend (Redis, the file system) could not be reached or written."""


class StoreFailed(BackendUnavailable):
    """The durable store could not write a record; the job was not accepted."""


class StoreNotFound(CSJDError, FileNotFoundError):
    """No file store at the given path (neither its snapshot nor its log exists)."""


class StoreCorrupted(CSJDError):
    """The durable store's files hold corrupted data that cannot be repaired silently."""

    def __init__(self, message: str, *, path: str = "", offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class JobStoreLocked(CSJDError):
    """Another process (or store object) holds the store's exclusive lock."""

    def __init__(self, path: str, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid else "an unknown process"
        super().__init__(
            f"job store {path} is locked by {holder}; only one process may open a file store "
            "(several web-server processes need CSJD_MODE='redis')"
        )
        self.path = path
        self.holder_pid = holder_pid


class JobNotFound(CSJDError, LookupError):
    """``status(job_id)``: no job with that id is known (never submitted, or its result expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r} (never submitted, or its result expired)")
        self.job_id = job_id


class JobFailed(CSJDError):
    """``handle.result()``: the job ended in the failed state, or cancelled."""

    def __init__(self, status: JobStatus) -> None:
        if status.state == "cancelled":
            message = (
                f"job {status.id!r} was cancelled ({status.cancel_reason or 'cancelled'}) "
                f"after {status.attempts} attempt(s)"
            )
        else:
            message = (
                f"job {status.id!r} failed after {status.attempts} attempt(s): {status.last_error}"
            )
        super().__init__(message)
        self.status = status


class SettingsError(CSJDError, ValueError):
    """A ``CSJD_*`` setting is unknown or has a bad value."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message  # without the setting's name


class RedisModeRequired(CSJDError):
    """A command or operation that works on Redis queues was asked of an app in another mode."""

    def __init__(self, needed_by: str, mode: str) -> None:
        super().__init__(
            f"{needed_by} works on Redis queues, but CSJD_MODE is {str(mode)!r}: in-process "
            "mode runs its workers inside the application process. Set CSJD_MODE='redis' and "
            "CSJD_REDIS_URL (in code: App(mode='redis', redis=RedisConfig(...)))."
        )
        self.needed_by = needed_by
        self.mode = mode


class JobTimeout(CSJDError):
    """An attempt ran past its timeout (recorded as the attempt's error)."""


class JobCancelled(JobTimeout):
    """``ctx.raise_if_cancelled()`` after the job's cancellation was requested (a `JobTimeout`
    too, so handlers that catch timeouts stop for a cancel as well)."""


class PermanentError(CSJDError):
    """Raised by a handler: the job failed and must not be retried."""

    def __init__(self, message: str = "", *, cause: BaseException | None = None) -> None:
        super().__init__(message or (repr(cause) if cause is not None else "permanent failure"))
        self.cause = cause


def permanent(exc: BaseException | str) -> PermanentError:
    """Wrap an error so that raising it fails the job without retries.

    Args:
        exc: the underlying exception (kept as ``__cause__``) or a message.

    Returns:
        A `PermanentError` to ``raise``.
    """
    if isinstance(exc, PermanentError):
        return exc
    if isinstance(exc, BaseException):
        err = PermanentError(describe_error(exc), cause=exc)
        err.__cause__ = exc
        return err
    return PermanentError(str(exc))


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` for an exception, at most `MAX_ERROR_TEXT` characters, encodable.

    Never raises: an exception whose ``__str__`` fails is described by its ``repr``, and one
    whose ``repr`` fails too by its type alone.
    """
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:
        try:
            text = f"<str() failed> {exc!r}"
        except Exception:
            text = "<str() and repr() failed>"
    return clip_text(f"{name}: {text}" if text else name)


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback as text, keeping its last `MAX_TRACEBACK` characters. Never
    raises (the `traceback` module already survives a failing ``__str__``)."""
    try:
        text = "".join(_traceback.format_exception(exc))
    except Exception:
        text = describe_error(exc)
    return clip_traceback(text)
