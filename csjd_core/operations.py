"""Operating CSJD, from any front end: run workers, read and act on the Redis queues and their
dead letters, and list, run or move a file store's jobs.

Click-free library functions: each takes an `App` (or a store's path), returns values (typed:
`QueueStats`, `DeadLetter`, `JobStatus`...) and raises `CSJDError`s. The front ends — ``csjd``,
``manage.py csjd_*`` and ``flask csjd`` — parse their options into these calls and print what
they return with `csjd_core.reports`, so the three stay in step by construction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from csjd_core.app import App, Mode
from csjd_core.backends.base import CancelVerdict
from csjd_core.backends.file import FileJobStore
from csjd_core.dispatcher import Dispatcher
from csjd_core.errors import (
    CSJDError,
    DuplicateJob,
    InvalidConfig,
    StoreNotFound,
    UnknownJobType,
)
from csjd_core.job import Job, JobState, JobStatus
from csjd_core.limits import MAX_WORKERS, brief, name_problem, names, seconds
from csjd_core.metrics import MetricsSnapshot
from csjd_core.metrics_server import bind_metrics_port
from csjd_core.outbox import OutboxStats, Relay
from csjd_core.periodic import Schedule
from csjd_core.stats import DeadLetter, QueueStats, ScheduleState
from csjd_core.supervisor import EXIT_RECYCLE, supervise
from csjd_core.worker import InFlight, run_worker, stop_on_signals
from csjd_core.worker_metrics import (
    SupervisorMetrics,
    child_exporter,
    serve_worker_metrics,
    worker_exporter,
)

if TYPE_CHECKING:
    from csjd_core.distributed import RedisDistributedDispatcher
    from csjd_core.prometheus import MultiprocessExporter, PrometheusExporter

__all__ = [
    "OPTIONS",
    "WORKER_BOUNDS",
    "CancelReport",
    "RequeueReport",
    "WorkerOptions",
    "cancel_jobs",
    "dead_count",
    "dead_letter",
    "dead_letters",
    "export_store",
    "live_workers",
    "move_into_redis",
    "open_store",
    "outbox_stats",
    "parse_size",
    "purge_dead",
    "queue_list",
    "queue_option",
    "queue_stats",
    "redis_queues",
    "requeue_dead",
    "run_relay",
    "run_store",
    "run_workers",
    "store_jobs",
    "waiting_jobs",
]

logger = logging.getLogger("csjd_core.worker")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)

#: The `InvalidConfig.owner` of a bad worker option (a command-line usage error).
OPTIONS = "WorkerOptions"

#: Each numeric worker option's (minimum, maximum or None): `WorkerOptions` checks them, and
#: the front ends' parsers offer them (`csjd_core.cli_options`).
WORKER_BOUNDS: dict[str, tuple[float, float | None]] = {
    "workers": (1, MAX_WORKERS),
    "processes": (1, 256),
    "max_jobs": (1, None),
    "max_memory": (1, None),
    "drain_timeout": (0, None),
    "metrics_port": (1, 65535),
}


def parse_size(text: str) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"100000"``.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a size like 512M or 2G, got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


def queue_list(text: str | None) -> list[str] | None:
    """Queue names from a command line's ``--queues a,b`` (``None`` for none given).

    Raises:
        InvalidConfig: a name is not a queue name (naming ``--queues``).
    """
    if not text:
        return None
    queues = names(text)
    _check_queues(queues)
    return queues


def _check_queues(queues: Sequence[str], field: str = "queues") -> None:
    for queue in queues:
        problem = name_problem(queue, "queue")
        if problem is not None:
            raise _invalid(field, problem)


def queue_option(queue: str | None) -> str | None:
    """A command line's ``--queue NAME`` (``None``: the app's default queue).

    Raises:
        InvalidConfig: not a queue name (naming ``--queue``).
    """
    if queue is not None:
        _check_queues([queue], "queue")
    return queue


def _invalid(field: str, message: str) -> InvalidConfig:
    """A bad worker option, named as the command line spells it (``--max-jobs``)."""
    flag = "--" + field.replace("_", "-")
    return InvalidConfig(f"{flag}: {message}", owner=OPTIONS, field=field)


def _rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- workers ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """How to run workers: the one set of options (and defaults) every front end offers.

    Args:
        queues: the queues to consume (default: the app's).
        workers: worker threads per process (default: the app's).
        processes: worker processes; more than one runs them under a supervisor.
        burst: exit once the queues hold no unfinished job.
        max_jobs: recycle a process after this many attempts (its in-flight work finished).
        max_memory: recycle a process past this resident size, in bytes.
        drain_timeout: seconds in-flight jobs may take to finish after SIGTERM.
        no_schedule: do not tick the app's schedules in this process (or its children).
        no_relay: do not relay the app's outboxes in this process (or its children).
        metrics_port: serve ``/metrics`` (Prometheus) and ``/healthz`` on this port (the
            ``prometheus`` extra); with a supervisor, the supervisor serves it.
    """

    queues: tuple[str, ...] | None = None
    workers: int | None = None
    processes: int = 1
    burst: bool = False
    max_jobs: int | None = None
    max_memory: int | None = None
    drain_timeout: float = 30.0
    no_schedule: bool = False
    no_relay: bool = False
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.queues is not None:
            _check_queues(self.queues)
        for field, (minimum, maximum) in WORKER_BOUNDS.items():
            value = getattr(self, field)
            if value is None and field not in ("processes", "drain_timeout"):
                continue
            if field == "drain_timeout":
                try:
                    value = seconds(value, "--drain-timeout")
                except ValueError as exc:
                    raise InvalidConfig(str(exc), owner=OPTIONS, field=field) from None
                object.__setattr__(self, field, value)
            elif type(value) is not int:
                raise _invalid(field, f"must be an int, got {brief(value)}")
            if value < minimum or (maximum is not None and value > maximum):
                bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
                raise _invalid(field, f"must be {bound}, got {brief(value)}")

    @classmethod
    def parse(
        cls, *, queues: str | None = None, max_memory: str | None = None, **options: Any
    ) -> WorkerOptions:
        """Options as a command line gives them: ``queues`` as ``"a,b"``, ``max_memory`` as
        ``"512M"``; ``None`` values mean the default.

        Raises:
            InvalidConfig: a bad value, naming the option.
        """
        given = {k: v for k, v in options.items() if v is not None}
        if queues:
            given["queues"] = tuple(queue_list(queues) or ())
        if max_memory:
            try:
                given["max_memory"] = parse_size(max_memory)
            except ValueError as exc:
                raise _invalid("max_memory", str(exc)) from None
        return cls(**given)

    @property
    def supervised(self) -> bool:
        """True when a supervisor runs the workers as child processes."""
        return self.processes > 1 or self.max_jobs is not None or self.max_memory is not None

    def child_argv(self) -> list[str]:
        """The options a supervised child runs with (one process, no supervisor of its own)."""
        argv = ["--child", "--drain-timeout", str(self.drain_timeout)]
        for flag, value in (
            ("--queues", ",".join(self.queues) if self.queues else None),
            ("--workers", self.workers),
            ("--max-jobs", self.max_jobs),
            ("--max-memory", self.max_memory),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if self.burst:
            argv.append("--burst")
        if self.no_schedule:
            argv.append("--no-schedule")
        if self.no_relay:
            argv.append("--no-relay")
        return argv


def worker_dispatcher(
    app: App,
    queues: Sequence[str] | None = None,
    workers: int | None = None,
    hooks: tuple[object, ...] = (),
    *,
    schedule: bool = False,
    relay: bool = False,
    needed_by: str = "csjd worker",
) -> RedisDistributedDispatcher:
    """A Redis dispatcher for ``app`` with the given overrides (and extra hooks); with
    ``schedule`` it ticks the app's schedules while started (without, it still records the
    last outcome of the runs it finishes); with ``relay`` it relays the app's outboxes.

    Raises:
        RedisModeRequired: the app is not in Redis mode.
        CSJDError: the ``redis`` extra is not installed.
    """
    redis = app.require_redis(needed_by)
    try:
        from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415
    except ImportError as exc:
        raise CSJDError(
            f"{needed_by} needs the redis extra: pip install 'csjd[redis]' ({exc})"
        ) from exc
    changes: dict[str, Any] = {}
    if queues:
        changes["queues"] = tuple(queues)
    if workers:
        changes["workers"] = workers
    if hooks:
        changes["hooks"] = (*app.distributed.hooks, *hooks)
    config = dataclasses.replace(app.distributed, **changes)
    return RedisDistributedDispatcher(
        redis,
        config,
        registry=app.registry,
        schedules=app.schedules,
        tick=schedule,
        outboxes=app.outboxes if relay else (),
    )


def run_workers(
    app: App,
    options: WorkerOptions,
    *,
    child_command: list[str],
    announce: Callable[[str], object],
    child: bool = False,
    needed_by: str = "csjd worker",
) -> int:
    """Run workers for ``app`` until a signal (or, with ``burst``, until the queues are empty):
    in this process, or as ``options.processes`` supervised children.

    Args:
        app: a Redis-mode `App` with its handlers registered.
        options: the `WorkerOptions`.
        child_command: the command that runs one worker (a child gets ``child_argv()``).
        child: this process is a supervised child.
        needed_by: names the front end's command in errors.
        announce: prints the start-up banner (the front end's standard error).

    Returns:
        The exit status: 0 after a clean drain, `EXIT_RECYCLE` when a child recycled itself,
        1 if jobs were still running at the drain deadline or Redis was unreachable at start.

    Raises:
        RedisModeRequired: the app is not in Redis mode.
    """
    in_flight = InFlight()
    # Supervised children tick and relay, not their supervisor (which runs no jobs).
    runs_jobs = child or not options.supervised
    # The port first: taken or refused, the command fails before anything starts.
    sock = bind_metrics_port(options.metrics_port) if options.metrics_port else None
    try:
        return _run_workers(
            app, options, sock, in_flight, runs_jobs, child_command, announce, child, needed_by
        )
    finally:
        if sock is not None:
            sock.close()


def _run_workers(
    app: App,
    options: WorkerOptions,
    sock: socket.socket | None,
    in_flight: InFlight,
    runs_jobs: bool,
    child_command: list[str],
    announce: Callable[[str], object],
    child: bool,
    needed_by: str,
) -> int:
    hooks: tuple[object, ...] = (in_flight,)
    queues = options.queues or app.distributed.queues
    exporter: MultiprocessExporter | PrometheusExporter | None = None
    served: PrometheusExporter | None = None
    if child:
        exporter = child_exporter(app, queues)  # its supervisor serves the port
    elif sock is not None and not options.supervised:
        exporter = served = worker_exporter(app, queues)
    if exporter is not None:
        hooks += (exporter,)
    dispatcher = worker_dispatcher(
        app,
        options.queues,
        options.workers,
        hooks=hooks,
        schedule=not options.no_schedule and runs_jobs,
        relay=not options.no_relay and runs_jobs,
        needed_by=needed_by,
    )
    ticking = ",".join(app.schedules) or "-"
    if options.no_schedule and app.schedules:
        ticking = "off (--no-schedule)"
    relaying = ",".join(outbox.name for outbox in app.outboxes) or "-"
    if options.no_relay and app.outboxes:
        relaying = "off (--no-relay)"
    elif not outboxes_readable(app):  # not migrated, or the database is down: say so now
        return 1
    if not child and options.supervised:
        announce(_banner(dispatcher, options.processes, needed_by, ticking, relaying))
        watch = SupervisorMetrics(app, dispatcher, sock) if sock is not None else None
        try:
            return supervise(
                options.child_argv(),
                options.processes,
                burst=options.burst,
                command=child_command,
                watch=watch,
            )
        finally:
            if watch is not None:
                watch.close()
    server = None
    if exporter is not None:
        exporter.bind(dispatcher.detached_running, dispatcher.running_jobs)
    if served is not None and sock is not None:
        server = serve_worker_metrics(app, dispatcher, served.registry, sock)
    if not child:
        announce(_banner(dispatcher, 1, needed_by, ticking, relaying))
    recycled: list[str] = []
    supervisor = os.getppid()

    def should_stop() -> bool:
        if options.max_jobs and dispatcher.metrics().processed >= options.max_jobs:
            recycled.append(f"max_jobs={options.max_jobs}")
        elif options.max_memory and _rss_bytes() > options.max_memory:
            recycled.append(f"max_memory={options.max_memory}")
        elif child and os.getppid() != supervisor:
            # The supervisor was killed (SIGKILL, OOM killer): drain rather than run orphaned.
            recycled.append("supervisor_gone")
        return bool(recycled)

    try:
        report = run_worker(
            dispatcher,
            burst=options.burst,
            drain_timeout=options.drain_timeout,
            should_stop=should_stop,
            in_flight=in_flight,
        )
    except CSJDError as exc:  # Redis down at start: the process manager retries
        logger.error("cannot start the worker: %s", exc)
        return 1
    finally:
        if server is not None:
            server.close()
    if recycled:
        logger.info("recycling worker process reason=%s report=%s", recycled[0], report)
        return EXIT_RECYCLE
    return 0 if report.clean else 1


def _banner(
    dispatcher: RedisDistributedDispatcher,
    processes: int,
    command: str,
    schedules: str,
    outboxes: str,
) -> str:
    config = dispatcher.config
    return (
        f"{command}: queues={','.join(config.queues)} processes={processes} "
        f"workers={config.workers} group={config.group} redis={dispatcher.redis_config.display} "
        f"types={','.join(dispatcher.registry.types()) or '-'} schedules={schedules} "
        f"outbox={outboxes}"
    )


# -- the outbox relay ------------------------------------------------------------------------
def run_relay(
    app: App,
    *,
    announce: Callable[[str], object],
    burst: bool = False,
    needed_by: str = "csjd relay",
) -> int:
    """Relay ``app``'s outboxes to its Redis queues until a signal (with ``burst``, until no
    row is due), without running jobs: a relay of its own, beside workers started with
    ``--no-relay`` or in addition to their relays.

    Returns:
        The exit status: 0, or 1 when a burst could not finish (Redis or the database away).

    Raises:
        RedisModeRequired: the app is not in Redis mode (in-process mode relays in the
            process that holds the store).
        CSJDError: the app has no outbox.
    """
    if not app.outboxes:
        raise CSJDError(
            f"{needed_by}: the app has no outbox to relay (Django: CSJD_OUTBOX = True; "
            "Flask: CSJD(app, outbox=db); an App of your own: app.outboxes = "
            "(SQLAlchemyOutbox(engine, *outbox_tables(metadata)),); see docs/outbox.md)"
        )
    if not outboxes_readable(app):
        return 1
    dispatcher = worker_dispatcher(app, needed_by=needed_by)
    relays = [Relay(outbox, dispatcher) for outbox in app.outboxes]
    announce(
        f"{needed_by}: outbox={','.join(outbox.name for outbox in app.outboxes)} "
        f"redis={dispatcher.redis_config.display} burst={'yes' if burst else 'no'}"
    )
    try:
        if burst:
            return _relay_burst(relays)
        stop = threading.Event()
        with stop_on_signals(stop):
            for relay in relays:
                relay.start()
            while not stop.wait(0.5):
                pass
            for relay in relays:  # a batch under way finishes (or its rows are relayed again)
                relay.stop(30.0)
        return 0
    finally:
        dispatcher.stop(5.0)


def outboxes_readable(app: App) -> bool:
    """Whether each of ``app``'s outboxes can be read (else an error says why, once: a worker or
    relay then exits with status 1, as when Redis is down at its start)."""
    figures = outbox_stats(app)
    for outbox in app.outboxes:  # (the relays open connections of their own)
        outbox.close()
    for name, stats in figures.items():
        if isinstance(stats, str):
            logger.error("%s outbox=%s", stats, name)
            return False
    return True


def outbox_stats(app: App) -> dict[str, OutboxStats | str]:
    """Each of ``app``'s outboxes by name: rows waiting, the oldest, rows set aside, relays —
    or why it cannot be read (the database down, not migrated)."""
    figures: dict[str, OutboxStats | str] = {}
    for outbox in app.outboxes:
        try:
            figures[outbox.name] = outbox.stats()
        except Exception as exc:  # the database's error: said, not raised
            error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            figures[outbox.name] = (
                f"cannot read the outbox; is the database up, and migrated? error={error}"
            )
    return figures


def _relay_burst(relays: Sequence[Relay]) -> int:
    for relay in relays:
        try:
            while relay.relay_once():
                pass
        except Exception as exc:
            logger.error(
                "relay failed; rows wait for the next relay outbox=%s error=%s",
                relay.outbox.name,
                exc,
            )
            return 1
        finally:
            relay.outbox.close()
        logger.info("outbox relayed outbox=%s counters=%s", relay.outbox.name, relay.counters)
    return 0


# -- queues and dead letters -----------------------------------------------------------------
@contextlib.contextmanager
def redis_queues(
    app: App, queues: Sequence[str] | None = None, *, needed_by: str = "csjd"
) -> Iterator[RedisDistributedDispatcher]:
    """A dispatcher for operator calls on the app's queues (or ``queues``); it consumes
    nothing and is closed (its connections too) when the block ends.

    Raises:
        RedisModeRequired: the app is not in Redis mode.
    """
    dispatcher = worker_dispatcher(app, queues, needed_by=needed_by)
    try:
        yield dispatcher
    finally:
        dispatcher.close()


def queue_stats(
    app: App, queues: Sequence[str] | None = None, *, needed_by: str = "csjd stats"
) -> dict[str, QueueStats]:
    """Cluster-wide figures of the app's queues (or ``queues``), by queue.

    Raises:
        RedisModeRequired: the app is not in Redis mode.
        BackendUnavailable: Redis could not be reached.
    """
    with redis_queues(app, queues, needed_by=needed_by) as dispatcher:
        return dispatcher.stats()


def live_workers(stats: dict[str, QueueStats], *, this_host: bool = False) -> dict[str, int]:
    """Live consumers (fresh heartbeat) per queue; ``this_host``: only this host's (consumer
    names start with the hostname)."""
    prefix = socket.gethostname() + ":" if this_host else ""
    return {
        name: sum(1 for c in queue.consumers if c.live and c.name.startswith(prefix))
        for name, queue in stats.items()
    }


def dead_letters(
    app: App, queue: str | None = None, count: int = 50, *, needed_by: str = "csjd dead"
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters of ``queue`` (default: the app's default queue)."""
    with redis_queues(app, needed_by=needed_by) as dispatcher:
        return dispatcher.dead_letters(queue, count)


def dead_letter(
    app: App, entry_id: str, queue: str | None = None, *, needed_by: str = "csjd dead"
) -> DeadLetter | None:
    """One dead letter by its entry id, or ``None``."""
    with redis_queues(app, needed_by=needed_by) as dispatcher:
        return dispatcher.dead_letter(entry_id, queue)


def dead_count(app: App, queue: str | None = None, *, needed_by: str = "csjd dead") -> int:
    """How many dead letters ``queue`` holds."""
    with redis_queues(app, needed_by=needed_by) as dispatcher:
        return dispatcher.dead_count(queue)


@dataclass(frozen=True, slots=True)
class RequeueReport:
    """What `requeue_dead` did: the entries requeued, and the ones skipped with why."""

    requeued: list[str]
    skipped: list[tuple[str, str]]


def requeue_dead(
    app: App,
    entry_ids: Sequence[str] | None,
    queue: str | None = None,
    *,
    needed_by: str = "csjd dead",
) -> RequeueReport:
    """Put dead letters back on their queue as fresh jobs (attempts reset); ``entry_ids=None``
    requeues every dead letter of the queue. An entry that cannot be requeued (its id taken by
    a live job, a poison entry without a job) is skipped, with the reason."""
    requeued: list[str] = []
    skipped: list[tuple[str, str]] = []
    with redis_queues(app, needed_by=needed_by) as dispatcher:
        if entry_ids is None:
            entry_ids = [d.entry_id for d in dispatcher.dead_letters(queue, 1_000_000)]
        for entry_id in entry_ids:
            try:
                if dispatcher.requeue_dead(entry_id, queue):
                    requeued.append(entry_id)
                else:
                    skipped.append((entry_id, "no such dead letter"))
            except CSJDError as exc:
                skipped.append((entry_id, str(exc)))
    return RequeueReport(requeued, skipped)


def purge_dead(app: App, queue: str | None = None, *, needed_by: str = "csjd dead") -> int:
    """Delete every dead letter of ``queue``; returns how many."""
    with redis_queues(app, needed_by=needed_by) as dispatcher:
        return dispatcher.purge_dead(queue)


# -- file stores -----------------------------------------------------------------------------
def open_store(path: str | os.PathLike[str], *, repair: bool = False) -> FileJobStore:
    """The file store at ``path``, opened (the caller closes it).

    Raises:
        StoreNotFound: there is no store there.
        JobStoreLocked: a process holds it.
        StoreCorrupted: it is damaged (``repair=True`` keeps a copy and cuts the log).
    """
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + ".log"):
        raise StoreNotFound(f"no job store at {path} (nor {path}.log)")
    store = FileJobStore(path, repair=repair)
    store.open()
    return store


def store_jobs(path: str | os.PathLike[str], *, repair: bool = False) -> list[JobStatus]:
    """The unfinished jobs a file store holds."""
    store = open_store(path, repair=repair)
    try:
        return store.jobs()
    finally:
        store.close()


def export_store(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Every unfinished job of a file store as a JSON-ready record: the job's wire form plus
    its state, attempts and last error."""
    store = open_store(path, repair=repair)
    try:
        return [
            {
                **store.job(status.id).to_dict(),
                "state": str(status.state),
                "attempts": status.attempts,
                "last_error": status.last_error,
            }
            for status in store.jobs()
        ]
    finally:
        store.close()


def run_store(path: str | os.PathLike[str], app: App, *, repair: bool = False) -> MetricsSnapshot:
    """Run a file store's unfinished jobs to the end with ``app``'s handlers, in this process.

    Raises:
        StoreNotFound, JobStoreLocked, StoreCorrupted: see `open_store`.
        UnknownJobType: ``app`` has no handler for some stored job type (nothing runs).
    """
    statuses = store_jobs(path, repair=repair)  # a repaired log is clean from here on
    missing = sorted({s.type for s in statuses} - set(app.registry.types()))
    if missing:
        raise UnknownJobType(
            f"no handler for the stored job types {missing}; the app registers "
            f"{app.registry.types() or 'none'} (nothing was run)"
        )
    store = FileJobStore(os.fspath(path))
    dispatcher = Dispatcher(dataclasses.replace(app.config, store=store), registry=app.registry)
    with dispatcher:
        dispatcher.join()
    return dispatcher.metrics()


def move_into_redis(
    path: str | os.PathLike[str],
    app: App,
    *,
    repair: bool = False,
    batch: int = 500,
    needed_by: str = "csjd replay --into-redis",
) -> tuple[int, int]:
    """Move a file store's unfinished jobs into ``app``'s Redis queues, each exactly once.

    Ids are kept, so a re-run after an interruption meets `DuplicateJob` for jobs already moved
    (unfinished in Redis, or finished within ``dedupe_window``) and only drops them from the
    store. Each batch is folded into the store's snapshot (fsynced) before the next one, and
    so is a partial batch when a submit fails.

    Returns:
        (moved now, found already in Redis).

    Raises:
        RedisModeRequired: the app is not in Redis mode (nothing moved).
        StoreNotFound, JobStoreLocked, StoreCorrupted: see `open_store` (nothing moved).
        CSJDError: the move was interrupted (a job could not be admitted: `QueueFull`,
            `BackendUnavailable`, `InvalidJob`, as its cause); the jobs before it are moved
            and recorded, it and the rest stay in the store: run it again.
    """
    app.require_redis(needed_by)
    store = open_store(path, repair=repair)
    moved = already = 0
    try:
        dispatcher = worker_dispatcher(app, needed_by=needed_by)
        try:
            statuses = [s for s in store.jobs() if s.state is not JobState.RUNNING]
            for start in range(0, len(statuses), batch):
                done: list[str] = []
                try:
                    for status in statuses[start : start + batch]:
                        job: Job = store.job(status.id)
                        try:
                            dispatcher.submit(job)
                            moved += 1
                        except DuplicateJob:
                            already += 1
                        done.append(job.id)
                except CSJDError as exc:
                    raise CSJDError(
                        f"move interrupted after {moved + already} jobs: {exc}. The jobs moved "
                        "so far left the store; run the same command again to move the rest "
                        "(each job lands in Redis once)"
                    ) from exc
                finally:  # also when a submit fails: what reached Redis leaves the store
                    if done:
                        store.discard(done, "moved to Redis")
                        store.compact()
        finally:
            dispatcher.close()
    finally:
        store.close()
    return moved, already


# -- schedules -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One schedule as the listings show it (``csjd schedule``, the Django dashboard).

    Attributes:
        schedule: its definition.
        state: its mark (``None``: no ticker has seen it yet).
        next_slot: its next slot (UTC): the time in its next run's id.
        next_due: when that slot is due: ``next_slot`` plus its jitter.
        queue: the queue its runs go to (Redis mode: the app's default queue for a job that
            names none; ``None`` in process).

    Whether the marks are shared by every ticker is the app's: `schedules_shared`.
    """

    schedule: Schedule
    state: ScheduleState | None
    next_slot: datetime
    next_due: datetime
    queue: str | None


def schedule_rows(app: App) -> list[ScheduleRow]:
    """Every schedule of ``app`` with its mark and next slot, by name.

    Raises:
        BackendUnavailable: Redis could not be reached.
        JobStoreLocked: the app's file store is held by another process (run this there:
            the Django dashboard does).
    """
    dispatcher = app.dispatcher
    now = dispatcher.clock()
    default_queue = app.distributed.queues[0] if app.mode is Mode.REDIS else None
    rows = []
    for name in sorted(app.schedules):
        schedule = app.schedules[name]
        state = dispatcher.schedule_state(name, schedule.queue)
        after = now if state is None or state.mark is None else max(state.mark, now)
        slot = schedule.next_slot(after)
        rows.append(
            ScheduleRow(
                schedule,
                state,
                datetime.fromtimestamp(slot, UTC),
                datetime.fromtimestamp(schedule.due(slot), UTC),
                schedule.queue or default_queue,
            )
        )
    return rows


def schedules_shared(app: App) -> bool:
    """True when ``app``'s schedule marks are shared by its processes (Redis, a file store);
    False in in-process mode in memory, where each process keeps its own."""
    return app.mode is Mode.REDIS or app.config.store is not None


def find_schedule(app: App, name: str) -> Schedule:
    """The schedule called ``name``.

    Raises:
        CSJDError: ``app`` has no such schedule (the message lists its schedules).
    """
    schedule = app.schedules.get(name)
    if schedule is None:
        known = ", ".join(sorted(app.schedules)) or "none"
        raise CSJDError(f"no schedule named {name!r} (schedules: {known})")
    return schedule


#: What `schedule_action` does.
SCHEDULE_ACTIONS = ("pause", "resume", "run")


@dataclass(frozen=True, slots=True)
class ScheduleActionResult:
    """What `schedule_action` did: ``changed`` is False for a pause of a paused schedule or a
    resume of one that is not paused; ``job_id`` is a run's."""

    action: str
    name: str
    changed: bool
    job_id: str | None = None


def schedule_action(
    app: App, action: str, name: str, *, from_command: bool
) -> ScheduleActionResult:
    """Pause, resume or run (now) schedule ``name``: what every front end's action calls.

    Args:
        from_command: the caller is a command's own process (``csjd schedule``, ``manage.py
            csjd_schedule``, ``flask csjd schedule``), not a process that runs the app's jobs
            (a web process, as the Django dashboard is).

    Returns:
        What was done: the run's job id, or whether pause/resume changed anything.

    Raises:
        ValueError: ``action`` is not one of `SCHEDULE_ACTIONS`.
        CSJDError: no such schedule; or, from a command, an app whose schedules live in each
            process's memory (in-process without a file store; immediate mode, but for a run,
            which runs at once in the command).
        QueueFull, BackendUnavailable: from the backend.
    """
    if action not in SCHEDULE_ACTIONS:
        raise ValueError(f"schedule action must be one of {SCHEDULE_ACTIONS}, got {action!r}")
    schedule = find_schedule(app, name)
    immediate_run = app.mode is Mode.IMMEDIATE and action == "run"
    if from_command and not schedules_shared(app) and not immediate_run:
        # The command's process would act on a memory of its own, which ends with it.
        raise CSJDError(
            f"cannot {action} {name!r} from a command: in {app.mode} mode without a file store "
            "each process keeps its schedules in its own memory (use Redis mode or a file "
            "store; in Django, the admin dashboard's Schedules buttons act in the web process)"
        )
    if action == "run":
        return ScheduleActionResult(action, name, True, app.dispatcher.run_now(schedule))
    changed = app.dispatcher.set_schedule_paused(schedule, action == "pause")
    return ScheduleActionResult(action, name, changed)


# -- cancel ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CancelReport:
    """What `cancel_jobs` did, by job id: ``cancelled`` (waiting: ended now), ``requested``
    (running: asked to stop; it ends ``cancelled``), ``ended`` (finished before), ``running``
    (the bulk form: it had started, left alone) and ``missing`` (no record)."""

    cancelled: tuple[str, ...] = ()
    requested: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def _cancel_target(app: App, from_command: bool, needed_by: str) -> None:
    """Raise unless a command's process can reach ``app``'s jobs (as for schedules)."""
    if from_command and not schedules_shared(app):
        raise CSJDError(
            f"{needed_by}: in {app.mode} mode without a file store each process keeps its "
            "jobs in its own memory, which a command cannot reach (use Redis mode or a file "
            "store; in Django, the admin dashboard's Cancel button acts in the web process; "
            "in code, app.cancel(job_id))"
        )


def cancel_jobs(
    app: App,
    job_ids: Sequence[str],
    queue: str | None = None,
    *,
    waiting_only: bool = False,
    from_command: bool,
    needed_by: str = "csjd cancel",
) -> CancelReport:
    """Cancel jobs by id: what every front end's cancel calls (``csjd cancel``, ``manage.py
    csjd_cancel``, ``flask csjd cancel``, the Django dashboard's Cancel button).

    Args:
        queue: where they are (Redis mode; default: each of the app's queues).
        waiting_only: leave a job that started alone (the bulk form).
        from_command: the caller is a command's own process (not one that runs the jobs).

    Raises:
        CSJDError: from a command, an app whose jobs live in each process's memory.
        InvalidJob: ``queue`` is not a queue name.
        BackendUnavailable: Redis (or the store) could not record a cancellation; the ones
            before it stand (cancelling again is safe).
    """
    _cancel_target(app, from_command, needed_by)
    found: dict[str, list[str]] = {str(v): [] for v in CancelVerdict}
    dispatcher = app.dispatcher
    for job_id in job_ids:
        found[dispatcher.cancel_job(job_id, queue, waiting_only=waiting_only)].append(job_id)
    return CancelReport(
        cancelled=tuple(found[CancelVerdict.CANCELLED]),
        requested=tuple(found[CancelVerdict.REQUESTED]),
        ended=tuple(found[CancelVerdict.ENDED]),
        running=tuple(found[CancelVerdict.RUNNING]),
        missing=tuple(found[CancelVerdict.NOT_FOUND]),
    )


def waiting_jobs(
    app: App,
    job_type: str | None = None,
    queue: str | None = None,
    *,
    from_command: bool,
    needed_by: str = "csjd cancel",
) -> list[str]:
    """The ids of the jobs that wait (queued or scheduled) in ``queue`` (default: the app's
    default queue in Redis mode; every job in process), of ``job_type`` if given: what the
    bulk cancel ends, with `cancel_jobs` ``waiting_only``.

    Raises:
        CSJDError: from a command, an app whose jobs live in each process's memory.
    """
    _cancel_target(app, from_command, needed_by)
    return app.dispatcher.waiting_jobs(job_type, queue)
