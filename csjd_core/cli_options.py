"""The worker options every front end offers (``csjd worker``, ``flask csjd run``): one list.

Only click here, so a front end can apply them at import without the ``redis`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from csjd_core.limits import MAX_WORKERS

__all__ = ["worker_options"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--workers", type=click.IntRange(1, MAX_WORKERS), help="Worker threads per process."
    ),
    click.option(
        "--processes",
        type=click.IntRange(1, 256),
        default=1,
        show_default=True,
        help="Worker processes under one supervisor.",
    ),
    click.option("--burst", is_flag=True, help="Exit when the queues are empty."),
    click.option("--max-jobs", type=click.IntRange(1), help="Recycle a process after N jobs."),
    click.option("--max-memory", help="Recycle a process past this RSS (e.g. 512M)."),
    click.option(
        "--drain-timeout",
        type=click.FloatRange(0),
        default=30.0,
        show_default=True,
        help="Seconds to let in-flight jobs finish after SIGTERM.",
    ),
    click.option("--child", is_flag=True, hidden=True),
)


def worker_options(command: F) -> F:
    """Add ``--workers --processes --burst --max-jobs --max-memory --drain-timeout`` (and the
    hidden ``--child``) to a click command; ``--queues`` and ``--log-level`` differ per front
    end in their help and defaults, so each adds its own."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
