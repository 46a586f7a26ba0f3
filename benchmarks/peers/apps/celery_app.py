"""Celery with its Redis broker and default settings; workers run with ``celery worker``."""

from __future__ import annotations

from celery import Celery

from apps import probe

app = Celery("peers", broker=probe.URL)


@app.task
def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


@app.task
def incr(ts: float) -> None:
    """One Redis INCR."""
    probe.incr(ts)


@app.task
def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
