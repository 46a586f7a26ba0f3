"""The ``csjd`` command-line tool."""

from __future__ import annotations

import logging
import sys

import click

__all__ = ["main"]


@click.group()
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level for CSJD's loggers.",
)
def main(log_level: str) -> None:
    """CSJD: reliability-first background jobs."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option("--jobs", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 256))
def demo(jobs: int, workers: int) -> None:
    """Run a realistic mix of jobs (successes, retries, failures, a timeout, a panic)."""
    from csjd_core.demo import run_demo

    # Retries and failures are part of the show: keep their tracebacks out of the table.
    logging.getLogger("csjd_core").setLevel(logging.CRITICAL)
    sys.exit(run_demo(jobs=jobs, workers=workers))


if __name__ == "__main__":  # pragma: no cover
    main()
