"""``flask csjd``: run, relay, replay, stats, dead, schedule, cancel. Each parses its options, calls
`csjd_core.operations` with the core `App` of ``current_app`` and prints what the ``csjd``
command prints (the dead-letter and schedule actions are the very click commands of
``csjd dead`` and ``csjd schedule``)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, pass_script_info, with_appcontext

from csjd_core import operations, reports
from csjd_core.app import App
from csjd_core.cli import cancel_command, reported
from csjd_core.cli import dead as core_dead
from csjd_core.cli import schedule as core_schedule
from csjd_core.cli_options import (
    announcer,
    log_format_option,
    log_to_stderr,
    worker_options,
    worker_options_from,
)
from csjd_flask.extension import CSJDState, NotInitialized

__all__ = ["csjd_group", "current_core_app"]

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)

csjd_group = AppGroup(
    "csjd",
    help="CSJD background jobs: run workers, relay the outbox, replay a file store, stats, "
    "dead letters, periodic jobs, cancel.",
)


def current_core_app() -> App:
    """The core `App` of ``current_app`` (every ``flask csjd`` command runs in its context).

    Raises:
        NotInitialized: the app has no CSJD extension.
    """
    state = CSJDState.of(current_app._get_current_object())  # type: ignore[attr-defined]
    return state.core


def _core_app() -> App:
    """`current_core_app`, its error reported as a command-line error (no traceback)."""
    try:
        return current_core_app()
    except NotInitialized as exc:
        raise click.ClickException(str(exc)) from exc


@csjd_group.command("run")
@worker_options
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True)
@log_format_option()
@pass_script_info
def run(info: ScriptInfo, /, log_level: str, log_format: str, **values: Any) -> None:
    """Consume this app's Redis queues until SIGTERM/SIGINT (the first drains in-flight jobs,
    a second one stops at once). Each job runs inside an application context."""
    core = _core_app()
    level = log_level.upper()
    with reported():
        options, child = worker_options_from(values)
    command = _child_command(info, level, log_format, needed=not child and options.supervised)
    with log_to_stderr(level, log_format), reported():
        code = operations.run_workers(
            core,
            options,
            child_command=command,
            announce=announcer(log_format, lambda line: click.echo(line, err=True)),
            child=child,
            needed_by="flask csjd run",
        )
    if code:
        sys.exit(code)


@csjd_group.command("relay")
@click.option("--burst", is_flag=True, help="Exit once no outbox row is due.")
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True)
@log_format_option()
def relay(burst: bool, log_level: str, log_format: str) -> None:
    """Relay this app's outbox (CSJD(app, outbox=db)) to its Redis queues until
    SIGTERM/SIGINT, running no job (flask csjd run relays too, unless --no-relay)."""
    core = _core_app()
    with log_to_stderr(log_level.upper(), log_format), reported():
        code = operations.run_relay(
            core,
            announce=announcer(log_format, lambda line: click.echo(line, err=True)),
            burst=burst,
            needed_by="flask csjd relay",
        )
    if code:
        sys.exit(code)


def _child_command(info: ScriptInfo, level: str, log_format: str, *, needed: bool) -> list[str]:
    """``python -m flask [--app IMPORT] csjd run``: how the supervisor starts one worker.

    The import string is the one this process was given (``--app`` or ``FLASK_APP``, both
    land in ``ScriptInfo``); without one, the child finds ``wsgi.py`` / ``app.py`` in the same
    directory as this process did.

    Raises:
        click.ClickException: children are needed but the app came from a custom
            ``create_app`` callable (a test runner, a ``FlaskGroup`` script) the child cannot
            rebuild.
    """
    import_path = info.app_import_path or os.environ.get("FLASK_APP")
    if not import_path and info.create_app is not None and needed:
        raise click.ClickException(
            "--processes, --max-jobs and --max-memory start child processes with "
            "`python -m flask --app IMPORT csjd run`, but this app was not loaded from an "
            "import string; run `flask --app module:create_app csjd run` (or set FLASK_APP)"
        )
    app_option = ["--app", import_path] if import_path else []
    return [
        sys.executable,
        "-m",
        "flask",
        *app_option,
        "csjd",
        "run",
        "--log-level",
        level,
        "--log-format",
        log_format,
    ]


@csjd_group.command("replay")
@click.argument("path", required=False)
@click.option("--export", is_flag=True, help="Print every unfinished job as a JSON line.")
@click.option(
    "--run",
    "run_jobs",
    is_flag=True,
    help="Run the stored jobs with this app's handlers (in its app context).",
)
@click.option(
    "--into-redis",
    is_flag=True,
    help="Move the unfinished jobs into this app's Redis queues (CSJD_MODE='redis').",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Open a log corrupted in the middle: keep a copy, cut it at the damage.",
)
def replay(path: str | None, export: bool, run_jobs: bool, into_redis: bool, repair: bool) -> None:
    """List, export, run, or move into Redis the unfinished jobs of a file store (PATH,
    default CSJD_STORE_PATH)."""
    path = path or current_app.config.get("CSJD_STORE_PATH")
    if not path:
        raise click.UsageError("give a store PATH or set CSJD_STORE_PATH")
    if sum((export, run_jobs, into_redis)) > 1:
        raise click.UsageError("give at most one of --run, --export, --into-redis")
    app = _core_app() if run_jobs or into_redis else None
    action = "run" if run_jobs else "export" if export else "into-redis" if into_redis else "list"
    with reported():
        reports.replay(
            os.fspath(path),
            app,
            action,
            repair=repair,
            echo=click.echo,
            needed_by="flask csjd replay --into-redis",
        )


@csjd_group.command("stats")
@click.option("--queues", help="Comma-separated queues (default: CSJD_QUEUES).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(queues: str | None, as_json: bool) -> None:
    """Queue lengths, in flight, scheduled, dead letters, consumers, counters."""
    with reported():
        reports.stats(_core_app(), queues, as_json, needed_by="flask csjd stats", echo=click.echo)


@csjd_group.group("dead")
@click.pass_context
@with_appcontext
def dead(ctx: click.Context) -> None:
    """Dead letters of this app's Redis queues: list, show, requeue, purge."""
    ctx.meta["csjd.dead_app"] = _core_app()
    ctx.meta["csjd.dead_command"] = "flask csjd dead"


for _command in core_dead.commands.values():  # the very commands of `csjd dead`
    dead.add_command(_command)


@csjd_group.group("schedule", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@with_appcontext
def schedule(ctx: click.Context, as_json: bool) -> None:
    """Periodic jobs of this app: list them (no action), pause NAME, resume NAME, or run
    NAME now (outside its slots)."""
    app = _core_app()
    ctx.meta["csjd.schedule_app"] = app
    if ctx.invoked_subcommand is None:
        with reported():
            reports.schedules(app, as_json, echo=click.echo)


for _command in core_schedule.commands.values():  # the very commands of `csjd schedule`
    schedule.add_command(_command)


@csjd_group.command("cancel")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--queue", default=None, help="The jobs' queue (default: each of CSJD_QUEUES).")
@click.option("--type", "job_type", default=None, help="Bulk: every waiting job of this type.")
@click.option("--all", "everything", is_flag=True, help="Bulk: every waiting job of the queue.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (bulk form).")
def cancel(
    job_ids: tuple[str, ...],
    queue: str | None,
    job_type: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Cancel jobs by id: a waiting job never runs; a running one is told to stop and ends
    cancelled. Without ids, --type T or --all cancels every waiting (queued or scheduled) job
    of the queue, after a confirmation."""
    cancel_command(
        lambda app: app, _core_app(), job_ids, queue, job_type, everything, yes, "flask csjd cancel"
    )
