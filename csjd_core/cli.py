"""The ``csjd`` command: it parses, calls `csjd_core.operations`, and prints with
`csjd_core.reports` — as ``manage.py csjd_*`` and ``flask csjd`` do."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from csjd_core import operations, reports
from csjd_core.cli_options import (
    LOG_FORMAT_HELP,
    announcer,
    load_app,
    log_format_option,
    worker_options,
    worker_options_from,
)
from csjd_core.demo import run_demo
from csjd_core.errors import BackendUnavailable, CSJDError, InvalidConfig
from csjd_core.logs import LOG_FORMATS, formatter

__all__ = ["main"]

APP_HELP = "APP is module:attr naming your csjd_core.App, or a function returning one."
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """A `CSJDError` becomes a one-line ``Error: ...`` and exit status 1 (no traceback); a
    bad option value (`InvalidConfig` of `operations.OPTIONS`) a usage error, status 2."""
    try:
        yield
    except InvalidConfig as exc:
        if exc.owner == operations.OPTIONS:
            raise click.UsageError(str(exc)) from exc
        raise click.ClickException(str(exc)) from exc
    except CSJDError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="csjd", prog_name="csjd")
@click.option(
    "--log-level",
    default=None,
    type=LOG_LEVELS,
    help="Log level (default: INFO for worker and relay, WARNING otherwise).",
)
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None, help=LOG_FORMAT_HELP)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """CSJD: reliability-first background jobs."""
    ctx.ensure_object(dict)
    if log_level is None:
        log_level = "INFO" if ctx.invoked_subcommand in ("worker", "relay") else "WARNING"
    ctx.obj["log_level"] = log_level.upper()
    ctx.obj["log_format"] = log_format or "text"
    root = logging.getLogger()
    root.setLevel(log_level.upper())
    if not root.handlers:  # as logging.basicConfig, with the format chosen
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(ctx.obj["log_format"]))
        root.addHandler(handler)
        ctx.obj["log_handler"] = handler


def _use_log_format(ctx: click.Context, log_format: str | None) -> str:
    """A subcommand's ``--log-format`` (or the one given before it), applied to the handler
    `main` installed."""
    log_format = log_format or ctx.obj.get("log_format", "text")
    handler = ctx.obj.get("log_handler")
    if handler is not None:
        handler.setFormatter(formatter(log_format))
    return log_format


@main.command()
@click.option("--jobs", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--store",
    type=click.Path(dir_okay=False),
    default=None,
    help="Durable mode: keep jobs in this FileJobStore; kill the demo and run it again.",
)
@click.option(
    "--slow",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Extra seconds per email job (time to kill the demo mid-run).",
)
def demo(jobs: int, workers: int, store: str | None, slow: float) -> None:
    """Run a realistic mix of jobs (successes, retries, failures, a timeout, a panic).

    Ctrl-C stops it gracefully: running jobs finish, and with --store the rest stay in the
    store for the next run.
    """
    # Retries and failures are part of the show: keep their tracebacks out of the table.
    logging.getLogger("csjd_core").setLevel(logging.CRITICAL)
    with reported():  # the store is locked by another process, or damaged
        code = run_demo(jobs=jobs, workers=workers, store=store, slow=slow)
    sys.exit(code)


@main.command(epilog=APP_HELP)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--run", "run_app", metavar="APP", help="Run the stored jobs with APP's handlers.")
@click.option("--export", is_flag=True, help="Print every unfinished job as a JSON line.")
@click.option(
    "--into-redis", "redis_app", metavar="APP", help="Move the unfinished jobs into APP's queues."
)
@click.option(
    "--repair",
    is_flag=True,
    help="Open a log corrupted in the middle: keep a copy, cut it at the damage.",
)
def replay(
    path: str, run_app: str | None, export: bool, redis_app: str | None, repair: bool
) -> None:
    """List, export, run, or move into Redis the unfinished jobs of the file store at PATH.

    APP (for --run and --into-redis) is module:attr naming your csjd_core.App, or a function
    that returns one, e.g. myproject.jobs:app.
    """
    if sum(map(bool, (run_app, export, redis_app))) > 1:
        raise click.UsageError("give at most one of --run, --export, --into-redis")
    spec = run_app or redis_app
    action = "run" if run_app else "export" if export else "into-redis" if redis_app else "list"
    app = load_app(spec) if spec else None
    with reported():
        reports.replay(path, app, action, repair=repair, echo=click.echo)


@main.command(epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@worker_options
@click.option(
    "--log-level",
    type=LOG_LEVELS,
    help="Log level (default: INFO, or the one given before the command).",
)
@log_format_option(inherited=True)
@click.pass_context
def worker(
    ctx: click.Context,
    /,
    app_spec: str,
    log_level: str | None,
    log_format: str | None,
    **values: Any,
) -> None:
    """Consume the Redis queues of APP until SIGTERM (a second signal stops at once).

    APP is module:attr naming your csjd_core.App, or a function that returns one, e.g.
    myproject.jobs:app (imported from the current directory, like flask --app).
    """
    level = (log_level or ctx.obj.get("log_level", "INFO")).upper()
    logging.getLogger().setLevel(level)
    log_format = _use_log_format(ctx, log_format)
    with reported():
        options, child = worker_options_from(values)
        code = operations.run_workers(
            load_app(app_spec),
            options,
            child_command=[
                sys.executable,
                "-m",
                "csjd_core.cli",
                "--log-level",
                level,
                "--log-format",
                log_format,
                "worker",
                app_spec,
            ],
            announce=announcer(log_format, _to_stderr),
            child=child,
        )
    sys.exit(code)


@main.command(epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@click.option("--burst", is_flag=True, help="Exit once no outbox row is due.")
@click.option(
    "--log-level",
    type=LOG_LEVELS,
    help="Log level (default: INFO, or the one given before the command).",
)
@log_format_option(inherited=True)
@click.pass_context
def relay(
    ctx: click.Context, /, app_spec: str, burst: bool, log_level: str | None, log_format: str | None
) -> None:
    """Relay the outbox of APP to its Redis queues until SIGTERM, running no job (workers
    relay too, unless started with --no-relay).
    """
    level = (log_level or ctx.obj.get("log_level", "INFO")).upper()
    logging.getLogger().setLevel(level)
    log_format = _use_log_format(ctx, log_format)
    with reported():
        code = operations.run_relay(
            load_app(app_spec), announce=announcer(log_format, _to_stderr), burst=burst
        )
    sys.exit(code)


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


@main.command(epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@click.option("--queues", help="Comma-separated queues (default: the app's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(app_spec: str, queues: str | None, as_json: bool) -> None:
    """Queue lengths, in flight, scheduled, dead letters, consumers, counters of APP
    (module:attr naming your csjd_core.App)."""
    with reported():
        reports.stats(load_app(app_spec), queues, as_json, needed_by="csjd stats", echo=click.echo)


@main.command(epilog=APP_HELP)
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
    with reported():
        app, names = load_app(app_spec), operations.queue_list(queues)
        try:
            figures = operations.queue_stats(app, names, needed_by="csjd health")
        except BackendUnavailable as exc:
            click.echo(f"unhealthy: cannot reach Redis: {exc}", err=True)
            sys.exit(1)
    live = operations.live_workers(figures, this_host=this_host)
    for line in reports.health_lines(live, socket.gethostname() if this_host else None):
        click.echo(line)
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


@click.group(cls=_DeadGroup, epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@click.pass_context
def dead(ctx: click.Context, app_spec: str) -> None:
    """Dead letters of APP (module:attr naming your csjd_core.App): list, show, requeue,
    purge."""
    ctx.meta["csjd.dead_app"] = app_spec
    ctx.meta["csjd.dead_command"] = "csjd dead"


def _dead_app() -> tuple[Any, str]:
    """The app of the ``dead`` group (a `load_app` spec, or an `App` a front end put there)."""
    meta = click.get_current_context().meta
    target = meta["csjd.dead_app"]
    return (load_app(target) if isinstance(target, str) else target), meta["csjd.dead_command"]


@dead.command("list")
@click.option("--queue", default=None, help="Queue (default: the app's default queue).")
@click.option("--count", type=click.IntRange(1), default=50, show_default=True)
def dead_list(queue: str | None, count: int) -> None:
    """List the oldest dead letters."""
    app, command = _dead_app()
    with reported():
        reports.dead_list(app, queue, count, needed_by=f"{command} list", echo=click.echo)


@dead.command("show")
@click.argument("entry_id")
@click.option("--queue", default=None)
def dead_show(entry_id: str, queue: str | None) -> None:
    """Show one dead letter with its traceback and payload."""
    app, command = _dead_app()
    with reported():
        reports.dead_show(app, entry_id, queue, needed_by=f"{command} show", echo=click.echo)


@dead.command("requeue")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@click.option("--queue", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_requeue(
    entry_ids: tuple[str, ...], everything: bool, queue: str | None, yes: bool
) -> None:
    """Put dead letters back on their queue (attempts reset)."""
    if bool(entry_ids) == everything:
        raise click.UsageError("give dead-letter entry ids or --all (not both)")
    app, command = _dead_app()
    with reported():
        reports.dead_requeue(
            app,
            None if everything else entry_ids,
            queue,
            confirm=_confirmation(yes),
            needed_by=f"{command} requeue",
            echo=click.echo,
            warn=_to_stderr,
        )


@dead.command("purge")
@click.option("--queue", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(queue: str | None, yes: bool) -> None:
    """Delete every dead letter of a queue."""
    app, command = _dead_app()
    with reported():
        reports.dead_purge(
            app, queue, confirm=_confirmation(yes), needed_by=f"{command} purge", echo=click.echo
        )


def _confirmation(yes: bool) -> Callable[[str], object]:
    """Asks before acting (``Aborted!`` and status 1 on no), unless ``--yes``."""
    if yes:
        return lambda question: True
    return lambda question: click.confirm(question, abort=True)


main.add_command(dead)


@click.command(epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--queue", default=None, help="The jobs' queue (default: each of the app's).")
@click.option("--type", "job_type", default=None, help="Bulk: every waiting job of this type.")
@click.option("--all", "everything", is_flag=True, help="Bulk: every waiting job of the queue.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (bulk form).")
def cancel(
    app_spec: str,
    job_ids: tuple[str, ...],
    queue: str | None,
    job_type: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Cancel jobs of APP (module:attr naming your csjd_core.App) by id: a waiting job never
    runs; a running one is told to stop and ends cancelled. Without ids, --type T or --all
    cancels every waiting (queued or scheduled) job of the queue, after a confirmation."""
    cancel_command(load_app, app_spec, job_ids, queue, job_type, everything, yes, "csjd cancel")


def cancel_command(
    load: Callable[[Any], Any],
    target: Any,
    job_ids: tuple[str, ...],
    queue: str | None,
    job_type: str | None,
    everything: bool,
    yes: bool,
    needed_by: str,
) -> None:
    """The body of ``csjd cancel`` and ``flask csjd cancel`` (``load(target)``: the app)."""
    if job_ids and (job_type or everything):
        raise click.UsageError("give job ids, or --type / --all for the bulk form (not both)")
    if not job_ids and not (job_type or everything):
        raise click.UsageError("give job ids, or --type TYPE / --all to cancel waiting jobs")
    with reported():
        reports.cancel(
            load(target),
            job_ids,
            queue,
            job_type=job_type,
            confirm=_confirmation(yes),
            needed_by=needed_by,
            echo=click.echo,
            warn=_to_stderr,
        )


main.add_command(cancel)


class _ScheduleGroup(click.Group):
    """``csjd schedule APP --json`` as ``csjd stats APP --json`` is typed (a group reads its
    own options only before its first argument: ``--json`` after APP was taken for a command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if len(args) >= 2 and args[1] == "--json":
            args = [args[1], args[0], *args[2:]]
        return super().parse_args(ctx, args)


@click.group(cls=_ScheduleGroup, invoke_without_command=True, epilog=APP_HELP)
@click.argument("app_spec", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def schedule(ctx: click.Context, app_spec: str, as_json: bool) -> None:
    """Periodic jobs of APP (module:attr naming your csjd_core.App): list them (no action),
    pause, resume, or run one now."""
    ctx.meta.setdefault("csjd.schedule_app", app_spec)
    if ctx.invoked_subcommand is None:
        with reported():
            reports.schedules(_schedule_app(), as_json, echo=click.echo)


def _schedule_app() -> Any:
    """The app of the ``schedule`` group (a `load_app` spec, or an `App` a front end put)."""
    target = click.get_current_context().meta["csjd.schedule_app"]
    return load_app(target) if isinstance(target, str) else target


@schedule.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    """Pause schedule NAME: every ticker skips its slots (each recorded) until resumed."""
    with reported():
        reports.schedule_action(_schedule_app(), "pause", name, echo=click.echo)


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Resume schedule NAME; the slots due while it was paused stay skipped."""
    with reported():
        reports.schedule_action(_schedule_app(), "resume", name, echo=click.echo)


@schedule.command("run")
@click.argument("name")
def schedule_run(name: str) -> None:
    """Enqueue a run of schedule NAME now, outside its slots."""
    with reported():
        reports.schedule_action(_schedule_app(), "run", name, echo=click.echo)


main.add_command(schedule)


if __name__ == "__main__":  # pragma: no cover
    main()
