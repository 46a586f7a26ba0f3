"""CSJD: reliability-first background jobs for Python web applications."""

from typing import TYPE_CHECKING, Any

from csjd_core.app import App, Mode
from csjd_core.backends.base import Backend
from csjd_core.backends.file import FileJobStore
from csjd_core.config import Config, DistributedConfig, EngineConfig, RedisConfig
from csjd_core.context import JobContext
from csjd_core.dispatcher import Dispatcher
from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind
from csjd_core.errors import (
    BackendUnavailable,
    CSJDError,
    DispatcherClosed,
    DuplicateJob,
    InvalidConfig,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobStoreLocked,
    JobTimeout,
    PermanentError,
    QueueFull,
    RedisModeRequired,
    SettingsError,
    StoreCorrupted,
    StoreFailed,
    StoreNotFound,
    UnknownJobType,
    permanent,
)
from csjd_core.hooks import Hooks
from csjd_core.job import Job, JobState, JobStatus
from csjd_core.jobs import JobFunction, JobHandle, JobRegistry
from csjd_core.metrics import MetricsSnapshot, StopReport
from csjd_core.periodic import Schedule, every
from csjd_core.progress import Progress
from csjd_core.retry import RetryPolicy
from csjd_core.stats import ScheduleState
from csjd_core.utilities import AsyncBatchLoader, BatchLoader, CacheStats, TTLCache

if TYPE_CHECKING:
    from csjd_core.distributed import RedisDistributedDispatcher

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncBatchLoader",
    "AttemptOutcome",
    "Backend",
    "BackendUnavailable",
    "BatchLoader",
    "CSJDError",
    "CacheStats",
    "Config",
    "Dispatcher",
    "DispatcherClosed",
    "DistributedConfig",
    "DuplicateJob",
    "EngineConfig",
    "FileJobStore",
    "Hooks",
    "InvalidConfig",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobFunction",
    "JobHandle",
    "JobNotFound",
    "JobRegistry",
    "JobState",
    "JobStatus",
    "JobStoreLocked",
    "JobTimeout",
    "MetricsSnapshot",
    "Mode",
    "OutcomeKind",
    "PermanentError",
    "Progress",
    "QueueFull",
    "RedisConfig",
    "RedisDistributedDispatcher",
    "RedisModeRequired",
    "RetryPolicy",
    "Schedule",
    "ScheduleState",
    "SettingsError",
    "StopReport",
    "StoreCorrupted",
    "StoreFailed",
    "StoreNotFound",
    "TTLCache",
    "UnknownJobType",
    "every",
    "permanent",
]


def __getattr__(name: str) -> Any:
    # The distributed dispatcher imports redis, an optional extra: load it on first use.
    if name == "RedisDistributedDispatcher":
        from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415

        return RedisDistributedDispatcher
    raise AttributeError(f"module 'csjd_core' has no attribute {name!r}")
