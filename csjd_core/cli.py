"""The ``csjd`` command-line tool."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from dataclasses import replace

import click

from csjd_core.app import App
from csjd_core.backends.file import FileJobStore
from csjd_core.demo import run_demo
from csjd_core.dispatcher import Dispatcher
from csjd_core.errors import CSJDError

__all__ = ["main"]


@click.group()
@click.version_option(package_name="csjd", prog_name="csjd")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (default: INFO for worker, WARNING otherwise).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """CSJD: reliability-first background jobs."""
    ctx.ensure_object(dict)
    if log_level is None:
        log_level = "INFO" if ctx.invoked_subcommand == "worker" else "WARNING"
    ctx.obj["log_level"] = log_level.upper()
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def load_app(spec: str) -> App:
    """Import ``module:attr`` naming an `App` or a zero-argument factory returning one.

    Raises:
        click.BadParameter: the spec is malformed or does not name an App.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"expected module:attr, got {spec!r}", param_hint="APP")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `flask --app` and `celery -A`
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    target = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attr!r}", param_hint="APP"
            ) from None
    if not isinstance(target, App) and callable(target):
        target = target()
    if not isinstance(target, App):
        raise click.BadParameter(
            f"{spec} is {type(target).__name__}, not a csjd_core.App (or a factory of one)",
            param_hint="APP",
        )
    return target


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
    try:
        code = run_demo(jobs=jobs, workers=workers, store=store, slow=slow)
    except CSJDError as exc:  # the store is locked by another process, or damaged
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--run",
    "run_app",
    metavar="APP",
    help="Run the stored jobs with the handlers of this App (module:attr).",
)
@click.option("--export", is_flag=True, help="Print every unfinished job as a JSON line.")
@click.option(
    "--into-redis",
    "redis_app",
    metavar="APP",
    help="Move the unfinished jobs into the Redis queues of this App (module:attr).",
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
    if not os.path.exists(path) and not os.path.exists(path + ".log"):
        raise click.ClickException(f"no job store at {path} (nor {path}.log)")
    app = load_app(run_app) if run_app else None
    target = load_app(redis_app) if redis_app else None
    store = FileJobStore(path, repair=repair)
    try:
        statuses = store.jobs()
    except CSJDError as exc:
        raise click.ClickException(str(exc)) from exc
    if target is not None:
        from csjd_core.cli_redis import move_into_redis  # noqa: PLC0415 - optional redis

        try:
            moved, already = move_into_redis(store, target)
        except CSJDError as exc:
            raise click.ClickException(
                f"move interrupted: {exc}. The jobs moved so far left the store; run the same "
                "command again to move the rest (each job lands in Redis once)"
            ) from exc
        finally:
            store.close()
        click.echo(f"moved {moved} jobs into Redis ({already} were already there)")
        return
    if export:
        for status in statuses:
            job = store.job(status.id)
            click.echo(
                json.dumps(
                    {
                        **job.to_dict(),
                        "state": str(status.state),
                        "attempts": status.attempts,
                        "last_error": status.last_error,
                    }
                )
            )
        store.close()
        return
    counts = store.counts()
    click.echo(
        f"{path}: {len(statuses)} unfinished jobs"
        + "".join(f", {n} {state}" for state, n in sorted(counts.items()))
    )
    if app is None:
        for status in statuses[:50]:
            click.echo(
                f"  {status.id}  {status.type}  {status.state}  attempts={status.attempts}"
                + (f"  last_error={status.last_error}" if status.last_error else "")
            )
        if len(statuses) > 50:
            click.echo(f"  ... and {len(statuses) - 50} more (use --export)")
        store.close()
        return
    store.close()
    missing = sorted({s.type for s in statuses} - set(app.registry.types()))
    if missing:
        raise click.ClickException(f"{run_app} has no handler for job types {missing}")
    dispatcher = Dispatcher(replace(app.config, store=FileJobStore(path)), registry=app.registry)
    with dispatcher:
        dispatcher.join()
    m = dispatcher.metrics()
    click.echo(
        f"ran {m.accepted} jobs: {m.succeeded} succeeded, {m.failed} failed, {m.retried} retries"
    )


def _add_redis_commands() -> None:
    try:
        from csjd_core import cli_redis  # noqa: PLC0415 - needs the optional redis package
    except ImportError as exc:  # without the [redis] extra: say so, rather than "No such command"
        for name in ("worker", "stats", "health", "dead"):
            main.add_command(_needs_redis(name, exc))
        return
    for command in (cli_redis.worker, cli_redis.stats, cli_redis.health, cli_redis.dead):
        main.add_command(command)


def _needs_redis(name: str, error: ImportError) -> click.Command:
    """A stand-in for a distributed-mode command when redis-py is not installed."""

    def explain() -> None:
        raise click.ClickException(
            f"`csjd {name}` works on Redis queues and needs the redis extra: "
            f"pip install 'csjd[redis]' ({error})"
        )

    return click.Command(
        name,
        callback=explain,
        help="Needs the redis extra: pip install 'csjd[redis]'.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


_add_redis_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
