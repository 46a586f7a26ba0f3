"""Prometheus metrics (the ``csjd[prometheus]`` extra): an exporter built on the engine's outcome
event and on the typed queue figures, never on counters scattered through the code.

- `PrometheusExporter` is a hook (`csjd_core.hooks.Hooks`): each `AttemptOutcome` counts one
  attempt by outcome and observes its handler duration and its lag; ``before_process`` /
  ``after_process`` keep the in-flight gauge. Labels are only the app's registered job types and
  configured queues: any other type or queue is counted under ``other`` and creates no series.
- `QueueCollector` reads the queues' levels (`QueueGauges`) from Redis at most once per
  ``ttl`` seconds, whatever the scrape rate: one exporter per deployment (the supervisor, or
  the single worker process) serves them, never summed over processes.
- `multiprocess_registry`, `fold_dead_process`: prometheus_client's multiprocess mode for
  ``--processes N`` (see docs/observability.md).

Importing this module imports prometheus_client: nothing else in csjd_core does.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "CSJD's Prometheus metrics need the prometheus extra: pip install 'csjd[prometheus]'"
    ) from exc

from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind
from csjd_core.hooks import Hooks
from csjd_core.stats import QueueGauges

if TYPE_CHECKING:
    from csjd_core.context import JobContext
    from csjd_core.job import Job

__all__ = [
    "JOB_METRICS",
    "OTHER",
    "PROCESS_METRICS",
    "QUEUE_METRICS",
    "ProcessCollector",
    "PrometheusExporter",
    "QueueCollector",
    "exposition",
    "fold_dead_process",
    "multiprocess_registry",
]

logger = logging.getLogger("csjd_core.metrics")

#: The label value of every job type that is not registered and every queue not configured.
OTHER = "other"

#: Seconds: handler durations, from a millisecond to an hour.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
#: Seconds: from a job's due time to its start.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

#: Metric name → (type, labels, help): per job type and queue, told by the exporter hook.
JOB_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "csjd_attempts_total": (
        "counter",
        ("queue", "type", "outcome"),
        "Attempts recorded, by outcome (succeeded, retried, failed, panicked, timed_out, "
        "cancelled).",
    ),
    "csjd_attempt_duration_seconds": (
        "histogram",
        ("queue", "type"),
        "Seconds the handler ran.",
    ),
    "csjd_job_lag_seconds": (
        "histogram",
        ("queue", "type"),
        "Seconds from the job's due time to the start of its attempt (the queue's clock).",
    ),
    "csjd_in_flight": ("gauge", ("queue", "type"), "Attempts running now."),
}
#: Per queue, read from Redis by `QueueCollector`.
QUEUE_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "csjd_queue_length": ("gauge", ("queue",), "Entries in the queue's streams."),
    "csjd_queue_waiting": ("gauge", ("queue",), "Entries no consumer has taken yet."),
    "csjd_queue_in_flight": ("gauge", ("queue",), "Entries delivered and not acknowledged."),
    "csjd_queue_scheduled": ("gauge", ("queue",), "Jobs waiting for their run_at or a retry."),
    "csjd_queue_unfinished": ("gauge", ("queue",), "Jobs queued, scheduled or running."),
    "csjd_queue_dead_letters": ("gauge", ("queue",), "Dead letters kept."),
    "csjd_queue_oldest_waiting_age_seconds": (
        "gauge",
        ("queue",),
        "Seconds since the oldest waiting entry entered the stream (0: none waits).",
    ),
    "csjd_queue_consumers": ("gauge", ("queue",), "Consumers with a fresh heartbeat."),
    "csjd_queue_scrape_errors_total": (
        "counter",
        (),
        "Queue reads that failed (Redis unreachable); the gauges are then left out.",
    ),
    "csjd_outbox_depth": ("gauge", ("outbox",), "Rows waiting in the outbox."),
    "csjd_outbox_oldest_age_seconds": (
        "gauge",
        ("outbox",),
        "Seconds since the oldest waiting outbox row was written (0: none waits).",
    ),
}
#: Per process.
PROCESS_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "csjd_detached_handlers": (
        "gauge",
        (),
        "Handlers detached after their timeout and still running.",
    ),
    "csjd_pending_jobs": (
        "gauge",
        (),
        "Unfinished jobs of an in-process dispatcher (queued, scheduled, running).",
    ),
}

_OUTCOMES = tuple(kind.value for kind in OutcomeKind)


class _Series:
    """The label children of one (queue, type): looked up once, then used directly."""

    __slots__ = ("duration", "in_flight", "lag", "outcomes")

    def __init__(self, exporter: PrometheusExporter, queue: str, job_type: str) -> None:
        self.outcomes = {
            kind: exporter.attempts.labels(queue, job_type, kind.value) for kind in OutcomeKind
        }
        self.duration = exporter.duration.labels(queue, job_type)
        self.lag = exporter.lag.labels(queue, job_type)
        self.in_flight = exporter.in_flight.labels(queue, job_type)


class PrometheusExporter(Hooks):
    """Counts attempts, observes durations and lags, keeps the in-flight gauge: add it to the
    dispatcher's hooks (the worker commands do with ``--metrics-port``).

    Args:
        types: the registered job types, or a live mapping of them (the handler registry's):
            only these become label values.
        queues: the configured queues; ``default_queue`` labels jobs without a queue.
        registry: where the metrics are registered (default: a fresh `CollectorRegistry`; in
            multiprocess mode pass ``None`` and ``multiprocess=True``).
        multiprocess: the values go to prometheus_client's multiprocess files
            (``PROMETHEUS_MULTIPROC_DIR``): gauges then sum over live processes.
    """

    def __init__(
        self,
        types: Iterable[str] | Mapping[str, Any],
        queues: Iterable[str],
        *,
        default_queue: str = "default",
        registry: CollectorRegistry | None = None,
        multiprocess: bool = False,
    ) -> None:
        self.registry = registry if registry is not None or multiprocess else CollectorRegistry()
        self._types = types if isinstance(types, Mapping) else frozenset(types)
        self._queues = frozenset(queues) | {default_queue}
        self._default_queue = default_queue
        # Summed over the live processes in multiprocess mode (the default, "all", would
        # keep a series per pid, and a dead child's forever).
        mode: Literal["livesum", "all"] = "livesum" if multiprocess else "all"
        registry = self.registry
        labels = ("queue", "type")
        self.attempts = Counter(
            "csjd_attempts",
            JOB_METRICS["csjd_attempts_total"][2],
            [*labels, "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "csjd_attempt_duration_seconds",
            JOB_METRICS["csjd_attempt_duration_seconds"][2],
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "csjd_job_lag_seconds",
            JOB_METRICS["csjd_job_lag_seconds"][2],
            labels,
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "csjd_in_flight",
            JOB_METRICS["csjd_in_flight"][2],
            labels,
            multiprocess_mode=mode,
            registry=registry,
        )
        self.detached = Gauge(
            "csjd_detached_handlers",
            PROCESS_METRICS["csjd_detached_handlers"][2],
            multiprocess_mode=mode,
            registry=registry,
        )
        self._series: dict[tuple[str | None, str], _Series] = {}
        self._lock = threading.Lock()
        self._other = self._make(OTHER, OTHER)
        self._live_detached: Callable[[], int] | None = None

    def bind(self, live_detached: Callable[[], int]) -> None:
        """Read the detached handlers still running from ``live_detached`` (the engine's)."""
        self._live_detached = live_detached

    def _make(self, queue: str, job_type: str) -> _Series:
        return _Series(self, queue, job_type)

    def series(self, job: Job) -> _Series:
        """The label children of ``job``'s queue and type: ``other`` for an unregistered type
        or a queue not configured (cached only for registered pairs: an attacker-chosen type
        neither creates a series nor grows this cache)."""
        key = (job.queue, job.type)
        found = self._series.get(key)
        if found is not None:
            return found
        queue = job.queue or self._default_queue
        if job.type not in self._types or queue not in self._queues:
            return self._other
        with self._lock:
            found = self._series.get(key)
            if found is None:
                found = self._series[key] = self._make(queue, job.type)
        return found

    # -- hooks -----------------------------------------------------------------------------
    def before_process(self, job: Job, ctx: JobContext) -> None:
        self.series(job).in_flight.inc()

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        self.series(job).in_flight.dec()

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        series = self.series(outcome.job)
        series.outcomes[outcome.kind].inc()
        if outcome.duration is not None:
            series.duration.observe(outcome.duration)
        if outcome.lag is not None:
            series.lag.observe(outcome.lag)
        if outcome.kind is OutcomeKind.TIMED_OUT and self._live_detached is not None:
            self.detached.set(self._live_detached())

    def worker_stopped(self, worker_id: str) -> None:
        # A detached handler's thread exits through here: the gauge follows it down.
        if self._live_detached is not None:
            self.detached.set(self._live_detached())


class QueueCollector(Collector):
    """The queue gauges (`QUEUE_METRICS`), read through ``read`` at most once per ``ttl``
    seconds: scrapes in between get the cached figures, so no scrape rate can load Redis.
    A failed read is counted (``csjd_queue_scrape_errors_total``) and the gauges are left out
    of that scrape rather than shown stale.

    Args:
        read: returns the figures by queue (`Admin.gauges` through the dispatcher).
        outboxes: returns the app's outbox figures by name (`operations.outbox_stats`), or
            ``None``.
        ttl: seconds a read is reused.
    """

    def __init__(
        self,
        read: Callable[[], Mapping[str, QueueGauges]],
        *,
        outboxes: Callable[[], Mapping[str, Any]] | None = None,
        ttl: float = 2.0,
    ) -> None:
        self._read = read
        self._outboxes = outboxes
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._cached: tuple[Mapping[str, QueueGauges] | None, Mapping[str, Any]] = (None, {})
        self.errors = 0
        self.reads = 0

    def figures(self) -> tuple[Mapping[str, QueueGauges] | None, Mapping[str, Any]]:
        """The cached figures, read again once they are ``ttl`` seconds old."""
        with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._at < self._ttl:
                return self._cached
            queues: Mapping[str, QueueGauges] | None
            try:
                queues = self._read()
            except Exception as exc:
                self.errors += 1
                queues = None
                logger.warning("cannot read the queue gauges error=%s: %s", type(exc).__name__, exc)
            outboxes = self._outboxes() if self._outboxes is not None else {}
            self.reads += 1
            self._cached = (queues, outboxes)
            self._at = time.monotonic()
            return self._cached

    def collect(self) -> Iterator[Any]:
        queues, outboxes = self.figures()
        families = {
            name: GaugeMetricFamily(name, info[2], labels=list(info[1]))
            for name, info in QUEUE_METRICS.items()
            if info[0] == "gauge"
        }
        for queue in (queues or {}).values():
            values = {
                "csjd_queue_length": queue.stream_length,
                "csjd_queue_waiting": queue.waiting,
                "csjd_queue_in_flight": queue.in_flight,
                "csjd_queue_scheduled": queue.scheduled,
                "csjd_queue_unfinished": queue.unfinished,
                "csjd_queue_dead_letters": queue.dead,
                "csjd_queue_oldest_waiting_age_seconds": queue.oldest_waiting_age,
                "csjd_queue_consumers": queue.consumers,
            }
            for name, value in values.items():
                families[name].add_metric([queue.name], value)
        now = datetime.now(UTC)
        for name, stats in outboxes.items():
            if isinstance(stats, str):  # cannot be read now (said in the worker's log)
                continue
            families["csjd_outbox_depth"].add_metric([name], stats.depth)
            oldest = stats.oldest_age(now)
            families["csjd_outbox_oldest_age_seconds"].add_metric(
                [name], 0.0 if oldest is None else float(oldest)
            )
        yield from families.values()
        errors = QUEUE_METRICS["csjd_queue_scrape_errors_total"]
        family = CounterMetricFamily("csjd_queue_scrape_errors", errors[2])
        family.add_metric([], self.errors)
        yield family


class ProcessCollector(Collector):
    """``csjd_pending_jobs`` of an in-process dispatcher (a web process's view)."""

    def __init__(self, pending: Callable[[], int]) -> None:
        self._pending = pending

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "csjd_pending_jobs", PROCESS_METRICS["csjd_pending_jobs"][2], labels=[]
        )
        family.add_metric([], self._pending())
        yield family


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type for an ``Accept`` header (Prometheus text, or
    OpenMetrics when asked for)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


# -- multiprocess mode -----------------------------------------------------------------------
def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads every process's values from ``path`` (the supervisor's)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def wipe_multiprocess_dir(path: str) -> None:
    """Remove every value file left in ``path`` (by an earlier run): counts start at zero."""
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def fold_dead_process(path: str, pid: int) -> None:
    """A child ``pid`` exited: fold its counters and histograms into the ``*_archive.db`` files
    (so totals never go down) and remove its files, and drop its live gauges
    (``mark_process_dead``). Without this a recycling fleet (``--max-jobs``) leaves a file per
    metric type per child, and every scrape reads them all. The caller serialises this with
    its scrapes (a scrape in between would count the child twice or not at all)."""
    from prometheus_client import multiprocess  # noqa: PLC0415
    from prometheus_client.mmap_dict import MmapedDict  # noqa: PLC0415

    for kind in ("counter", "histogram"):
        source = os.path.join(path, f"{kind}_{pid}.db")
        if not os.path.exists(source):
            continue
        # prometheus_client's own file format, through its own class (left untyped by it).
        dead: Any = MmapedDict(source, read_mode=True)  # type: ignore[no-untyped-call]
        archive: Any = MmapedDict(  # type: ignore[no-untyped-call]
            os.path.join(path, f"{kind}_archive.db")
        )
        try:
            for key, value, timestamp in dead.read_all_values():
                total, _ = archive.read_value(key)
                archive.write_value(key, total + value, timestamp)
        finally:
            archive.close()
            dead.close()
        os.remove(source)
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
