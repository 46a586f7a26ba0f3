"""What the command-line front ends share: the worker options — one list, with the defaults of
`WorkerOptions`, applied to click commands (``csjd worker``, ``flask csjd run``) and to argparse
parsers (``manage.py csjd_worker``) — and `load_app`.

Nothing here imports redis, so a front end can use it at import without the extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from csjd_core.app import App
from csjd_core.logs import LOG_FORMATS, JsonFormatter, formatter
from csjd_core.operations import WORKER_BOUNDS, WorkerOptions

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "WORKER_OPTIONS",
    "add_worker_arguments",
    "announcer",
    "load_app",
    "log_format_option",
    "log_to_stderr",
    "worker_options",
    "worker_options_from",
]

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WorkerOptions)}
#: The levels a worker command's ``--log-level`` takes.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: ``--log-format``'s help, in every front end.
LOG_FORMAT_HELP = (
    "text, or json: one JSON object per line (docs/observability.md, 'Structured logs')."
)


def log_format_option(*, inherited: bool = False) -> Callable[[F], F]:
    """``--log-format`` for a click command (its callback receives ``log_format``).
    ``inherited``: no default of its own (``None``): a ``csjd`` subcommand takes the value given
    before it."""
    if inherited:
        return click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            default=None,
            help=f"{LOG_FORMAT_HELP} Default: text, or the one given before the command.",
        )
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help=LOG_FORMAT_HELP,
    )


@dataclass(frozen=True, slots=True)
class Option:
    """One worker option as every front end offers it."""

    flag: str
    help: str
    type: type | None = None  # None: a flag
    hidden: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def minimum(self) -> float | None:
        """The least value `WorkerOptions` accepts (``None``: no bound, or not parsed here)."""
        return WORKER_BOUNDS[self.dest][0] if self._bounded else None

    @property
    def maximum(self) -> float | None:
        return WORKER_BOUNDS[self.dest][1] if self._bounded else None

    @property
    def _bounded(self) -> bool:
        return self.type in (int, float) and self.dest in WORKER_BOUNDS

    @property
    def default(self) -> Any:
        return _DEFAULTS.get(self.dest, False if self.type is None else None)


WORKER_OPTIONS = (
    Option("--queues", "Comma-separated queues to consume (default: the app's).", str),
    Option("--workers", "Worker threads per process (default: the app's).", int),
    Option("--processes", "Worker processes under one supervisor.", int),
    Option(
        "--burst",
        "Exit once no job is left (queued, scheduled or running, or waiting in an outbox "
        "this process relays).",
    ),
    Option("--max-jobs", "Recycle a process after N jobs.", int),
    Option("--max-memory", "Recycle a process past this RSS (e.g. 512M).", str),
    Option("--drain-timeout", "Seconds to let in-flight jobs finish after SIGTERM.", float),
    Option("--no-schedule", "Do not tick the app's periodic jobs in this process."),
    Option("--no-relay", "Do not relay the app's outbox in this process."),
    Option(
        "--metrics-port",
        "Serve /metrics (Prometheus) and /healthz on this port (needs csjd[prometheus]).",
        int,
    ),
    Option("--child", "(internal: a supervised child)", hidden=True),
)


def _click_option(option: Option) -> Callable[[F], F]:
    if option.type is None:
        return click.option(
            option.flag, is_flag=True, default=False, help=option.help, hidden=option.hidden
        )
    kind: Any = option.type
    if option.type is int and option.minimum is not None:
        kind = click.IntRange(
            int(option.minimum), None if option.maximum is None else int(option.maximum)
        )
    elif option.type is float and option.minimum is not None:
        kind = click.FloatRange(option.minimum, option.maximum)
    default = option.default
    return click.option(
        option.flag,
        type=kind,
        default=default,
        show_default=default is not None,
        help=option.help,
        hidden=option.hidden,
    )


def worker_options(command: F) -> F:
    """Add the worker options to a click command (its callback receives them by name)."""
    for option in reversed(WORKER_OPTIONS):
        command = _click_option(option)(command)
    return command


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the worker options to an argparse parser (``manage.py csjd_worker``)."""
    for option in WORKER_OPTIONS:
        help_text = argparse.SUPPRESS if option.hidden else option.help
        if option.type is None:
            parser.add_argument(option.flag, action="store_true", help=help_text)
            continue
        parser.add_argument(
            option.flag,
            type=_bounded(option) if option.minimum is not None else option.type,
            default=option.default,
            help=help_text,
        )


def _bounded(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        assert option.type is not None
        try:
            value = option.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < option.minimum or (option.maximum is not None and value > option.maximum):
            bound = (
                f"from {option.minimum} to {option.maximum}"
                if option.maximum is not None
                else f">= {option.minimum}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def worker_options_from(values: Mapping[str, Any]) -> tuple[WorkerOptions, bool]:
    """`WorkerOptions` (and whether this is a supervised child) from the parsed options.

    Raises:
        InvalidConfig: a bad value, naming the option.
    """
    given = {option.dest: values.get(option.dest) for option in WORKER_OPTIONS}
    child = bool(given.pop("child"))
    return WorkerOptions.parse(**given), child


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
    except Exception as exc:  # the app's own import failed: say where, not click's traceback
        raise click.BadParameter(
            f"cannot import {module_name!r}: {_error_at(exc)}", param_hint="APP"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attr!r}", param_hint="APP"
            ) from None
    if not isinstance(target, App) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise click.BadParameter(
                f"{spec}() (an App factory, called without arguments) raised {_error_at(exc)}",
                param_hint="APP",
            ) from exc
    if not isinstance(target, App):
        raise click.BadParameter(
            f"{spec} is {type(target).__name__}, not a csjd_core.App (or a factory of one)",
            param_hint="APP",
        )
    return target


def _error_at(exc: BaseException) -> str:
    """An error raised while importing the user's code, with where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


#: The loggers of CSJD's own lines.
_OUR_LOGGERS = ("csjd_core", "csjd_django", "csjd_flask")


def _formats_json(logger: logging.Logger) -> bool:
    """Whether every handler a record of ``logger`` reaches writes JSON (`JsonFormatter`)."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers.extend(current.handlers)
        current = current.parent if current.propagate else None
    return bool(handlers) and all(isinstance(h.formatter, JsonFormatter) for h in handlers)


def announcer(log_format: str, echo: Callable[[str], object]) -> Callable[[str], object]:
    """How a worker command prints its start-up banner: ``echo`` as is, or, with the JSON log
    format, as a log object (logger ``csjd_core.worker``) so that every line on stderr parses."""
    if log_format != "json":
        return echo
    json_formatter = formatter("json")

    def announce(line: str) -> object:
        record = logging.makeLogRecord(
            {"name": "csjd_core.worker", "levelno": logging.INFO, "levelname": "INFO", "msg": line}
        )
        return echo(json_formatter.format(record))

    return announce


@contextmanager
def log_to_stderr(level: str, log_format: str = "text") -> Iterator[None]:
    """Log lines at ``level`` (banner, progress, attempts, drain, schedules) on stderr, as
    ``log_format`` says (`csjd_core.logs`), for a worker command's duration — unless the process
    already configured logging for them (a handler on the root logger or on the csjd loggers,
    as Django's ``LOGGING`` may set): then only the level is set, and a JSON format is left to
    that configuration (said in a warning). ``flask csjd run`` and ``manage.py csjd_worker``."""
    root = logging.getLogger()
    previous = root.level
    handler: logging.Handler | None = None
    if not any(logging.getLogger(name).hasHandlers() for name in _OUR_LOGGERS):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    elif log_format == "json" and not _formats_json(logging.getLogger("csjd_core")):
        logging.getLogger("csjd_core.worker").warning(
            "--log-format %s not applied: logging is configured by the application; use "
            "csjd_core.logs.JsonFormatter in its configuration",
            log_format,
        )
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)
        if handler is not None:
            root.removeHandler(handler)
