"""The ``csjd`` commands that operate distributed mode: worker, stats, dead, health."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import sys
import time
from typing import Any

import click

from csjd_core.app import App
from csjd_core.backends.file import FileJobStore
from csjd_core.cli_options import worker_options
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.errors import BackendUnavailable, CSJDError, DuplicateJob
from csjd_core.job import JobState
from csjd_core.supervisor import EXIT_RECYCLE, supervise
from csjd_core.worker import InFlight, run_worker

__all__ = ["dead", "health", "move_into_redis", "serve", "stats", "worker"]

logger = logging.getLogger("csjd_core.worker")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"100000"``.

    Raises:
        click.BadParameter: not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise click.BadParameter(f"expected a size like 512M or 2G, got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def distributed_dispatcher(
    app: App,
    queues: str | None = None,
    workers: int | None = None,
    hooks: tuple[object, ...] = (),
) -> RedisDistributedDispatcher:
    """A Redis dispatcher for ``app`` with the command line's overrides (and extra hooks).

    Raises:
        click.ClickException: the app is not in Redis mode.
    """
    try:
        redis = app.require_redis("csjd worker")
    except CSJDError as exc:
        raise click.ClickException(str(exc)) from exc
    changes: dict[str, Any] = {}
    if queues:
        changes["queues"] = tuple(q.strip() for q in queues.split(",") if q.strip())
    if workers:
        changes["workers"] = workers
    if hooks:
        changes["hooks"] = (*app.distributed.hooks, *hooks)
    try:
        config = dataclasses.replace(app.distributed, **changes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return RedisDistributedDispatcher(redis, config, registry=app.registry)


def command_dispatcher(app: App, queues: str | None = None) -> RedisDistributedDispatcher:
    """A dispatcher for one command (no consumers), closed when the command's context ends."""
    dispatcher = distributed_dispatcher(app, queues)
    click.get_current_context().call_on_close(dispatcher.close)
    return dispatcher


def move_into_redis(store: FileJobStore, app: App, batch: int = 500) -> tuple[int, int]:
    """Move a file store's unfinished jobs into ``app``'s Redis queues, each exactly once.

    Ids are kept, so a re-run after an interruption meets `DuplicateJob` for jobs already moved
    (unfinished in Redis, or finished within ``dedupe_window``) and only drops them from the
    store. Each batch is folded into the store's snapshot (fsynced) before the next one, and
    so is a partial batch when a submit fails.

    Returns:
        (moved now, found already in Redis).

    Raises:
        QueueFull, BackendUnavailable, InvalidJob: a job could not be admitted; the jobs before
            it are moved and recorded, it and the rest stay in the store.
    """
    dispatcher = distributed_dispatcher(app)
    moved = already = 0
    statuses = [s for s in store.jobs() if s.state is not JobState.RUNNING]
    try:
        for start in range(0, len(statuses), batch):
            done: list[str] = []
            try:
                for status in statuses[start : start + batch]:
                    job = store.job(status.id)
                    try:
                        dispatcher.submit(job)
                        moved += 1
                    except DuplicateJob:
                        already += 1
                    done.append(job.id)
            finally:  # also when a submit fails: what reached Redis leaves the store
                if done:
                    store.discard(done, "moved to Redis")
                    store.compact()
    finally:
        dispatcher.close()
    return moved, already


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues to consume (default: the app's).")
@worker_options
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (default: INFO, or the one given before the command).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_spec: str,
    queues: str | None,
    workers: int | None,
    processes: int,
    burst: bool,
    max_jobs: int | None,
    max_memory: str | None,
    drain_timeout: float,
    log_level: str | None,
    child: bool,
) -> None:
    """Consume the Redis queues of APP until SIGTERM (a second signal stops at once).

    APP is module:attr naming your csjd_core.App, or a function that returns one, e.g.
    myproject.jobs:app (imported from the current directory, like flask --app).
    """
    from csjd_core.cli import load_app  # noqa: PLC0415 - cli imports this module

    level = (log_level or ctx.obj.get("log_level", "INFO")).upper()
    logging.getLogger().setLevel(level)
    sys.exit(
        serve(
            load_app(app_spec),
            child_command=[
                sys.executable,
                "-m",
                "csjd_core.cli",
                "--log-level",
                level,
                "worker",
                app_spec,
            ],
            queues=queues,
            workers=workers,
            processes=processes,
            burst=burst,
            max_jobs=max_jobs,
            max_memory=max_memory,
            drain_timeout=drain_timeout,
            child=child,
        )
    )


def serve(
    app: App,
    *,
    child_command: list[str],
    queues: str | None = None,
    workers: int | None = None,
    processes: int = 1,
    burst: bool = False,
    max_jobs: int | None = None,
    max_memory: str | None = None,
    drain_timeout: float = 30.0,
    child: bool = False,
) -> int:
    """Run workers for ``app``: in this process, or as ``processes`` supervised children.

    Shared by ``csjd worker``, ``manage.py csjd_worker`` and ``flask csjd run``, which only
    parse their options.

    Args:
        app: a Redis-mode `App` with its handlers registered.
        child_command: the command that runs one worker (a child adds ``--child`` and the
            options to it).

    Returns:
        The process exit status: 0 after a clean drain, `EXIT_RECYCLE` when a child recycled
        itself, 1 if jobs were still running at the drain deadline.
    """
    memory_limit = parse_size(max_memory) if max_memory else None
    in_flight = InFlight()
    dispatcher = distributed_dispatcher(app, queues, workers, hooks=(in_flight,))
    if not child and (processes > 1 or max_jobs or memory_limit):
        argv = ["--child", "--drain-timeout", str(drain_timeout)]
        for flag, value in (
            ("--queues", queues),
            ("--workers", workers),
            ("--max-jobs", max_jobs),
            ("--max-memory", max_memory),
        ):
            if value:
                argv += [flag, str(value)]
        if burst:
            argv.append("--burst")
        _banner(dispatcher, processes)
        return supervise(argv, processes, burst=burst, command=child_command)
    if not child:
        _banner(dispatcher, 1)
    recycled: list[str] = []
    supervisor = os.getppid()

    def should_stop() -> bool:
        if max_jobs and dispatcher.metrics().processed >= max_jobs:
            recycled.append(f"max_jobs={max_jobs}")
        elif memory_limit and rss_bytes() > memory_limit:
            recycled.append(f"max_memory={max_memory}")
        elif child and os.getppid() != supervisor:
            # The supervisor was killed (SIGKILL, OOM killer): drain rather than run orphaned.
            recycled.append("supervisor_gone")
        return bool(recycled)

    try:
        report = run_worker(
            dispatcher,
            burst=burst,
            drain_timeout=drain_timeout,
            should_stop=should_stop,
            in_flight=in_flight,
        )
    except BackendUnavailable as exc:  # Redis down at start: the process manager retries
        logger.error("cannot start the worker: %s", exc)
        return 1
    if recycled:
        logger.info("recycling worker process reason=%s report=%s", recycled[0], report)
        return EXIT_RECYCLE
    return 0 if report.clean else 1


def _banner(dispatcher: RedisDistributedDispatcher, processes: int) -> None:
    config = dispatcher.config
    click.echo(
        f"csjd worker: queues={','.join(config.queues)} processes={processes} "
        f"workers={config.workers} group={config.group} redis={dispatcher.redis_config.display} "
        f"types={','.join(dispatcher.registry.types()) or '-'}",
        err=True,
    )


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues (default: the app's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(app_spec: str, queues: str | None, as_json: bool) -> None:
    """Queue lengths, in flight, scheduled, dead letters, consumers, counters of APP
    (module:attr naming your csjd_core.App)."""
    from csjd_core.cli import load_app  # noqa: PLC0415

    dispatcher = command_dispatcher(load_app(app_spec), queues)
    try:
        figures = dispatcher.stats()
    except Exception as exc:
        raise click.ClickException(f"cannot read stats: {exc}") from exc
    if as_json:
        click.echo(json.dumps(figures, indent=2, sort_keys=True))
        return
    for name, q in figures.items():
        click.echo(
            f"queue {name}: stream={q['stream_length']} in_flight={q['in_flight']} "
            f"scheduled={q['scheduled']} unfinished={q['unfinished']} dead={q['dead']} "
            f"(kept: about {q['max_dead_letters']})"
        )
        counters = " ".join(f"{k}={v}" for k, v in sorted(q["counters"].items()))
        click.echo(f"  counters: {counters or '-'}")
        for c in q["consumers"]:
            age = "expired" if c["heartbeat_age"] is None else f"{c['heartbeat_age']:.1f}s"
            click.echo(
                f"  consumer {c['name']}: pending={c['pending']} idle={c['idle_ms']}ms "
                f"heartbeat={age}"
            )


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues (default: the app's).")
@click.option(
    "--this-host",
    is_flag=True,
    help="Count only workers of this host (consumer names start with the hostname): "
    "a container's liveness probe.",
)
def health(app_spec: str, queues: str | None, this_host: bool) -> None:
    """Exit 0 if every queue of APP (module:attr naming your csjd_core.App) has a live worker
    (fresh heartbeat), 1 otherwise."""
    from csjd_core.cli import load_app  # noqa: PLC0415

    dispatcher = command_dispatcher(load_app(app_spec), queues)
    try:
        figures = dispatcher.stats()
    except Exception as exc:
        click.echo(f"unhealthy: cannot reach Redis: {exc}", err=True)
        sys.exit(1)
    prefix = socket.gethostname() + ":" if this_host else ""
    live = {
        name: sum(
            1
            for c in q["consumers"]
            if c["heartbeat_age"] is not None and c["name"].startswith(prefix)
        )
        for name, q in figures.items()
    }
    where = f" on {prefix[:-1]}" if prefix else ""
    for name, count in live.items():
        click.echo(f"queue {name}: {count} live worker(s){where}")
    dead_queues = [name for name, count in live.items() if not count]
    if dead_queues:
        click.echo(f"unhealthy: no live worker for {', '.join(dead_queues)}", err=True)
        sys.exit(1)


class _DeadGroup(click.Group):
    """``csjd dead APP ACTION``; the older order ``csjd dead ACTION APP`` is accepted too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if len(args) >= 2 and args[0] in self.commands and args[1] not in self.commands:
            args = [args[1], args[0], *args[2:]]
        return super().parse_args(ctx, args)


@click.group(cls=_DeadGroup)
@click.argument("app_spec", metavar="APP")
@click.pass_context
def dead(ctx: click.Context, app_spec: str) -> None:
    """Dead letters of APP (module:attr naming your csjd_core.App): list, show, requeue,
    purge."""
    ctx.meta["csjd.dead_app"] = app_spec


def _dead_dispatcher() -> RedisDistributedDispatcher:
    from csjd_core.cli import load_app  # noqa: PLC0415

    return command_dispatcher(load_app(click.get_current_context().meta["csjd.dead_app"]))


@dead.command("list")
@click.option("--queue", default=None, help="Queue (default: the app's default queue).")
@click.option("--count", type=click.IntRange(1), default=50, show_default=True)
def dead_list(queue: str | None, count: int) -> None:
    """List the oldest dead letters."""
    dispatcher = _dead_dispatcher()
    letters = dispatcher.dead_letters(queue, count)
    if not letters:
        click.echo(f"no dead letters in queue {queue or dispatcher.config.queues[0]}")
    for letter in letters:
        when = (
            "?"
            if letter.failed_at is None
            else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(letter.failed_at))
        )
        attempts = "?" if letter.attempts is None else letter.attempts
        damaged = f"  DAMAGED ({letter.damaged})" if letter.damaged else ""
        click.echo(
            f"{letter.entry_id}  {letter.job_id}  {letter.type}  attempts={attempts}  {when}  "
            f"{letter.reason}: {letter.error[:120]}{damaged}"
        )


@dead.command("show")
@click.argument("entry_id")
@click.option("--queue", default=None)
def dead_show(entry_id: str, queue: str | None) -> None:
    """Show one dead letter with its traceback and payload."""
    for letter in _dead_dispatcher().dead_letters(queue, 100_000):
        if letter.entry_id == entry_id:
            click.echo(json.dumps(dataclasses.asdict(letter), indent=2))
            return
    raise click.ClickException(f"no dead letter {entry_id}")


@dead.command("requeue")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@click.option("--queue", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_requeue(
    entry_ids: tuple[str, ...], everything: bool, queue: str | None, yes: bool
) -> None:
    """Put dead letters back on their queue (attempts reset)."""
    dispatcher = _dead_dispatcher()
    ids = list(entry_ids)
    if everything:
        ids = [letter.entry_id for letter in dispatcher.dead_letters(queue, 1_000_000)]
        if not ids:
            click.echo("no dead letters to requeue")
            return
    if not ids:
        raise click.UsageError("give dead-letter entry ids or --all")
    if not yes:
        click.confirm(f"requeue {len(ids)} dead letter(s)?", abort=True)
    done = 0
    for entry_id in ids:
        try:
            done += dispatcher.requeue_dead(entry_id, queue)
        except CSJDError as exc:
            click.echo(f"skipped {entry_id}: {exc}", err=True)
    click.echo(f"requeued {done} of {len(ids)}")


@dead.command("purge")
@click.option("--queue", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(queue: str | None, yes: bool) -> None:
    """Delete every dead letter of a queue."""
    dispatcher = _dead_dispatcher()
    count = dispatcher.dead_count(queue)
    if not count:
        click.echo(f"no dead letters to purge in queue {queue or dispatcher.config.queues[0]}")
        return
    if not yes:
        click.confirm(f"delete {count} dead letter(s)?", abort=True)
    click.echo(f"purged {dispatcher.purge_dead(queue)}")
