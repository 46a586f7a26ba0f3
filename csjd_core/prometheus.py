"""Prometheus metrics (the ``csjd[prometheus]`` extra): an exporter built on the engine's outcome
event and on the typed queue figures, never on counters scattered through the code.

- `PrometheusExporter` is a hook (`csjd_core.hooks.Hooks`): each `AttemptOutcome` counts one
  attempt by outcome and observes its handler duration and its lag, in plain integers per
  worker thread that a scrape sums; the in-flight gauge is read from the engine at the scrape.
  `MultiprocessExporter` writes the same figures through prometheus_client's multiprocess files
  (a supervised child). Labels are only the app's registered job types and configured queues:
  any other type or queue is counted under ``other`` and creates no series.
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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import accumulate
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString
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
    "MultiprocessExporter",
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
# fmt: off
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
)
# fmt: on
#: Seconds: from a job's due time to its start (a backlog can wait longer than a handler runs).
LAG_BUCKETS = (*DURATION_BUCKETS[:-1], 900, 3600)

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

_JOB_LABELS = ("queue", "type")
_OUTCOME_LABELS = ("queue", "type", "outcome")


class _Labels:
    """The label values of jobs: a registered type and a configured queue are their own, any
    other pair is ``other`` (cached only for registered pairs: an attacker-chosen type neither
    creates a series nor grows the cache)."""

    def __init__(
        self, types: Iterable[str] | Mapping[str, Any], queues: Iterable[str], default_queue: str
    ) -> None:
        self._types = types if isinstance(types, Mapping) else frozenset(types)
        self._queues = frozenset(queues) | {default_queue}
        self._default_queue = default_queue
        #: The labels of registered (queue, type) pairs seen so far.
        self.known: dict[tuple[str | None, str], tuple[str, str]] = {}

    def __call__(self, job: Job) -> tuple[str, str]:
        key = (job.queue, job.type)
        found = self.known.get(key)
        if found is not None:
            return found
        queue = job.queue or self._default_queue
        if job.type not in self._types or queue not in self._queues:
            return (OTHER, OTHER)
        found = self.known[key] = (queue, job.type)  # racing threads store the same value
        return found


class _Tally:
    """One thread's counts, in plain integers (written by that thread only): attempts by
    (labels, outcome), and per labels the histogram buckets' counts followed by their sum."""

    __slots__ = ("attempts", "durations", "lags")

    def __init__(self) -> None:
        self.attempts: dict[tuple[tuple[str, str], OutcomeKind], int] = {}
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.lags: dict[tuple[str, str], list[float]] = {}


def _histogram(
    histograms: dict[tuple[str, str], list[float]],
    labels: tuple[str, str],
    bounds: tuple[float, ...],
) -> list[float]:
    """A new histogram of ``labels`` in ``histograms``: a count per bucket of ``bounds``, the
    +Inf bucket's, then the sum."""
    counts = histograms[labels] = [0] * (len(bounds) + 2)
    return counts


class PrometheusExporter(Hooks):
    """Counts attempts by outcome and observes their durations and lags (the outcome event),
    per registered job type and configured queue: add it to the dispatcher's hooks (the worker
    commands do with ``--metrics-port``), and serve `registry`.

    Each worker thread counts in plain integers of its own; a scrape sums them (the
    ``csjd_attempts_total``, ``csjd_attempt_duration_seconds`` and ``csjd_job_lag_seconds``
    families) and reads the in-flight attempts and detached handlers from the engine (`bind`).
    An attempt then costs a few dictionary updates instead of a lock per metric.

    Args:
        types: the registered job types, or a live mapping of them (the handler registry's):
            only these become label values.
        queues: the configured queues; ``default_queue`` labels jobs without a queue.
        registry: where the metrics are registered (default: a fresh `CollectorRegistry`).
    """

    def __init__(
        self,
        types: Iterable[str] | Mapping[str, Any],
        queues: Iterable[str],
        *,
        default_queue: str = "default",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.labels = _Labels(types, queues, default_queue)
        self._known = self.labels.known
        self._tallies: list[_Tally] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._running: Callable[[], Iterable[Job]] | None = None
        self._live_detached: Callable[[], int] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_JobCollector(self))

    def bind(self, live_detached: Callable[[], int], running: Callable[[], Iterable[Job]]) -> None:
        """Read the detached handlers still running and the jobs running now from the engine
        (`BaseDispatcher.detached_running`, `BaseDispatcher.running_jobs`)."""
        self._live_detached = live_detached
        self._running = running

    def _tally(self) -> _Tally:
        tally = _Tally()
        with self._lock:
            self._tallies.append(tally)
        self._local.tally = tally
        return tally

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        try:
            tally = self._local.tally
        except AttributeError:
            tally = self._tally()
        job = outcome.job
        labels = self._known.get((job.queue, job.type)) or self.labels(job)
        attempts = tally.attempts
        key = (labels, outcome.kind)
        attempts[key] = attempts.get(key, 0) + 1
        # Each histogram: the count of the first bucket whose bound is >= the value, and the
        # sum (the last item); the "le" buckets are made cumulative at the scrape.
        value = outcome.duration
        if value is not None:
            counts = tally.durations.get(labels) or _histogram(
                tally.durations, labels, DURATION_BUCKETS
            )
            counts[bisect_left(DURATION_BUCKETS, value)] += 1
            counts[-1] += value
        value = outcome.lag
        if value is not None:
            counts = tally.lags.get(labels) or _histogram(tally.lags, labels, LAG_BUCKETS)
            counts[bisect_left(LAG_BUCKETS, value)] += 1
            counts[-1] += value

    def families(self) -> Iterator[Any]:
        """The job and process families, summed over the threads' tallies now."""
        with self._lock:
            tallies = list(self._tallies)
        attempts: dict[tuple[tuple[str, str], OutcomeKind], int] = {}
        durations: dict[tuple[str, str], list[float]] = {}
        lags: dict[tuple[str, str], list[float]] = {}
        for tally in tallies:
            for key, count in dict(tally.attempts).items():  # dict(): one atomic copy
                attempts[key] = attempts.get(key, 0) + count
            for into, source in ((durations, tally.durations), (lags, tally.lags)):
                for labels, counts in dict(source).items():
                    total = into.setdefault(labels, [0] * len(counts))
                    for index, value in enumerate(list(counts)):
                        total[index] += value
        family = CounterMetricFamily(
            "csjd_attempts", JOB_METRICS["csjd_attempts_total"][2], labels=_OUTCOME_LABELS
        )
        for ((queue, job_type), kind), count in sorted(attempts.items()):
            family.add_metric([queue, job_type, kind.value], count)
        yield family
        for name, bounds, histograms in (
            ("csjd_attempt_duration_seconds", DURATION_BUCKETS, durations),
            ("csjd_job_lag_seconds", LAG_BUCKETS, lags),
        ):
            histogram = HistogramMetricFamily(name, JOB_METRICS[name][2], labels=_JOB_LABELS)
            for labels, counts in sorted(histograms.items()):
                cumulative = list(accumulate(counts[:-1]))
                buckets = [
                    (floatToGoString(bound), cumulative[index])  # type: ignore[no-untyped-call]
                    for index, bound in enumerate((*bounds, float("inf")))
                ]
                histogram.add_metric(list(labels), buckets, sum_value=counts[-1])
            yield histogram
        in_flight = GaugeMetricFamily(
            "csjd_in_flight", JOB_METRICS["csjd_in_flight"][2], labels=_JOB_LABELS
        )
        running: dict[tuple[str, str], int] = {}
        for job in self._running() if self._running is not None else ():
            labels = self.labels(job)
            running[labels] = running.get(labels, 0) + 1
        for labels, count in sorted(running.items()):
            in_flight.add_metric(list(labels), count)
        yield in_flight
        detached = GaugeMetricFamily(
            "csjd_detached_handlers", PROCESS_METRICS["csjd_detached_handlers"][2]
        )
        detached.add_metric([], self._live_detached() if self._live_detached is not None else 0)
        yield detached


class _JobCollector(Collector):
    def __init__(self, exporter: PrometheusExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Any]:
        return self._exporter.families()


class _Series:
    """The label children of one (queue, type): looked up once, then used directly."""

    __slots__ = ("duration", "in_flight", "lag", "outcomes")

    def __init__(self, exporter: MultiprocessExporter, queue: str, job_type: str) -> None:
        self.outcomes = {
            kind: exporter.attempts.labels(queue, job_type, kind.value) for kind in OutcomeKind
        }
        self.duration = exporter.duration.labels(queue, job_type)
        self.lag = exporter.lag.labels(queue, job_type)
        self.in_flight = exporter.in_flight.labels(queue, job_type)


class MultiprocessExporter(Hooks):
    """`PrometheusExporter`'s figures written through prometheus_client's multiprocess files
    (``PROMETHEUS_MULTIPROC_DIR``), for a supervised child: the supervisor reads every
    child's files (custom collectors cannot be used there). Gauges sum over live processes.

    Args: as `PrometheusExporter`'s, without ``registry`` (the multiprocess files are it).
    """

    def __init__(
        self,
        types: Iterable[str] | Mapping[str, Any],
        queues: Iterable[str],
        *,
        default_queue: str = "default",
    ) -> None:
        self.labels = _Labels(types, queues, default_queue)
        labels = _JOB_LABELS
        # Summed over the live processes (the default, "all", would keep a series per pid,
        # and a dead child's forever).
        self.attempts = Counter(
            "csjd_attempts", JOB_METRICS["csjd_attempts_total"][2], _OUTCOME_LABELS, registry=None
        )
        self.duration = Histogram(
            "csjd_attempt_duration_seconds",
            JOB_METRICS["csjd_attempt_duration_seconds"][2],
            labels,
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.lag = Histogram(
            "csjd_job_lag_seconds",
            JOB_METRICS["csjd_job_lag_seconds"][2],
            labels,
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self.in_flight = Gauge(
            "csjd_in_flight",
            JOB_METRICS["csjd_in_flight"][2],
            labels,
            multiprocess_mode="livesum",
            registry=None,
        )
        self.detached = Gauge(
            "csjd_detached_handlers",
            PROCESS_METRICS["csjd_detached_handlers"][2],
            multiprocess_mode="livesum",
            registry=None,
        )
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self._live_detached: Callable[[], int] | None = None

    def bind(self, live_detached: Callable[[], int], running: Callable[[], Iterable[Job]]) -> None:
        """Read the detached handlers still running from ``live_detached`` (the engine's)."""
        self._live_detached = live_detached

    def series(self, job: Job) -> _Series:
        """The label children of ``job``'s labels (`_Labels`), made once."""
        labels = self.labels(job)
        found = self._series.get(labels)
        if found is None:
            with self._lock:
                found = self._series.get(labels)
                if found is None:
                    found = self._series[labels] = _Series(self, *labels)
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
