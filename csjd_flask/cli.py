"""``flask csjd``: run, replay, stats, dead — they parse options and call the core commands."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, pass_script_info

from csjd_core.app import App
from csjd_core.cli_options import worker_options
from csjd_core.errors import CSJDError
from csjd_flask.extension import CSJDState, NotInitialized

__all__ = ["csjd_group", "current_core_app"]

#: What the core ``csjd`` commands load (``module:attr``): the core App of ``current_app``.
APP_SPEC = "csjd_flask.cli:current_core_app"

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)

csjd_group = AppGroup(
    "csjd", help="CSJD background jobs: run workers, replay a file store, stats, dead letters."
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


def _redis_app(command: str) -> App:
    core = _core_app()
    try:
        core.require_redis(f"flask csjd {command}")
    except CSJDError as exc:
        raise click.ClickException(str(exc)) from exc
    return core


def _core_command(argv: list[str], prog_name: str) -> None:
    """Run a core ``csjd`` command (``standalone_mode=False``: its errors reach Flask's CLI)."""
    from csjd_core.cli import main  # noqa: PLC0415 - only when a command runs

    main.main(args=argv, prog_name=prog_name, standalone_mode=False)


@csjd_group.command("run")
@click.option("--queues", help="Comma-separated queues to consume (default: CSJD_QUEUES).")
@worker_options
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True)
@pass_script_info
def run(
    info: ScriptInfo,
    queues: str | None,
    workers: int | None,
    processes: int,
    burst: bool,
    max_jobs: int | None,
    max_memory: str | None,
    drain_timeout: float,
    log_level: str,
    child: bool,
) -> None:
    """Consume this app's Redis queues until SIGTERM/SIGINT (the first drains in-flight jobs,
    a second one stops at once). Each job runs inside an application context."""
    from csjd_core.cli_redis import serve  # noqa: PLC0415 - needs the [redis] extra

    core = _redis_app("run")
    level = log_level.upper()
    supervised = not child and (processes > 1 or bool(max_jobs) or bool(max_memory))
    command = _child_command(info, level, needed=supervised)
    with _log_to_stderr(level):
        code = serve(
            core,
            child_command=command,
            queues=queues,
            workers=workers,
            processes=processes,
            burst=burst,
            max_jobs=max_jobs,
            max_memory=max_memory,
            drain_timeout=drain_timeout,
            child=child,
        )
    if code:
        sys.exit(code)


def _child_command(info: ScriptInfo, level: str, *, needed: bool) -> list[str]:
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
    return [sys.executable, "-m", "flask", *app_option, "csjd", "run", "--log-level", level]


@contextmanager
def _log_to_stderr(level: str) -> Iterator[None]:
    """INFO lines (banner, progress, drain) on stderr for the command's duration, unless the
    process already configured logging (then only the level is set)."""
    root = logging.getLogger()
    previous = root.level
    handler: logging.Handler | None = None
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)
        if handler is not None:
            root.removeHandler(handler)


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
    argv = ["replay", os.fspath(path)]
    if export:
        argv.append("--export")
    if repair:
        argv.append("--repair")
    if run_jobs:
        _core_app()  # a clear error before the store is opened
        argv += ["--run", APP_SPEC]
    if into_redis:
        _redis_app("replay --into-redis")
        argv += ["--into-redis", APP_SPEC]
    _core_command(argv, "flask csjd replay")


@csjd_group.command("stats")
@click.option("--queues", help="Comma-separated queues (default: CSJD_QUEUES).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(queues: str | None, as_json: bool) -> None:
    """Queue lengths, in flight, scheduled, dead letters, consumers, counters."""
    _redis_app("stats")
    argv = ["stats", APP_SPEC]
    if queues:
        argv += ["--queues", queues]
    if as_json:
        argv.append("--json")
    _core_command(argv, "flask csjd stats")


@csjd_group.group("dead")
def dead() -> None:
    """Dead letters of this app's Redis queues: list, show, requeue, purge."""


def _dead(action: str, *args: str) -> None:
    _redis_app(f"dead {action}")
    _core_command(["dead", APP_SPEC, action, *args], f"flask csjd dead {action}")


def _queue(queue: str | None) -> list[str]:
    return ["--queue", queue] if queue else []


@dead.command("list")
@click.option("--queue", help="Queue (default: the first of CSJD_QUEUES).")
@click.option("--count", type=click.IntRange(1), default=50, show_default=True)
def dead_list(queue: str | None, count: int) -> None:
    """List the oldest dead letters."""
    _dead("list", *_queue(queue), "--count", str(count))


@dead.command("show")
@click.argument("entry_id")
@click.option("--queue", help="Queue (default: the first of CSJD_QUEUES).")
def dead_show(entry_id: str, queue: str | None) -> None:
    """Show one dead letter with its traceback and payload."""
    _dead("show", entry_id, *_queue(queue))


@dead.command("requeue")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@click.option("--queue", help="Queue (default: the first of CSJD_QUEUES).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_requeue(
    entry_ids: tuple[str, ...], everything: bool, queue: str | None, yes: bool
) -> None:
    """Put dead letters back on their queue (attempts reset)."""
    flags = [*(["--all"] if everything else []), *(["--yes"] if yes else [])]
    _dead("requeue", *entry_ids, *_queue(queue), *flags)


@dead.command("purge")
@click.option("--queue", help="Queue (default: the first of CSJD_QUEUES).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(queue: str | None, yes: bool) -> None:
    """Delete every dead letter of a queue."""
    _dead("purge", *_queue(queue), *(["--yes"] if yes else []))
