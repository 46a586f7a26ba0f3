"""Running a dispatcher as a worker process: signals, burst mode, progress lines."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.hooks import Hooks
from csjd_core.metrics import StopReport

if TYPE_CHECKING:
    from csjd_core.context import JobContext
    from csjd_core.job import Job

__all__ = ["EXIT_FORCED", "InFlight", "run_worker", "stop_on_signals"]

logger = logging.getLogger("csjd_core.worker")

#: Exit status after a second SIGTERM/SIGINT stopped the worker without draining.
EXIT_FORCED = 3

#: Seconds between two checks of ``should_stop`` (and of an empty queue in burst mode).
_POLL = 0.1


class InFlight(Hooks):
    """Counts the attempts running in this process, for the progress line.

    Add it to the dispatcher's hooks. (A handler detached after its timeout is not counted
    down: its attempt ended for the engine, but its thread still runs.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def before_process(self, job: Job, ctx: JobContext) -> None:
        with self._lock:
            self._running += 1

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        with self._lock:
            self._running -= 1

    def __call__(self) -> int:
        """Attempts running now."""
        return max(0, self._running)


def run_worker(
    dispatcher: BaseDispatcher,
    *,
    burst: bool = False,
    drain_timeout: float | None = 30.0,
    install_signals: bool = True,
    should_stop: Callable[[], bool] | None = None,
    in_flight: Callable[[], int] | None = None,
) -> StopReport:
    """Start ``dispatcher`` and block until told to stop, then drain.

    The first SIGTERM or SIGINT stops fetching and lets in-flight jobs finish (up to
    ``drain_timeout`` seconds); a second one exits the process at once with `EXIT_FORCED` (jobs
    still running stay in the backend: the file store requeues them on restart, Redis reclaims
    them after the lease).

    Args:
        dispatcher: the dispatcher to run (handlers registered).
        burst: return once nothing is left to do (no unfinished job in the backend, no row
            waiting in an outbox the dispatcher relays).
        drain_timeout: seconds to wait for in-flight jobs when stopping.
        install_signals: install the SIGTERM/SIGINT handlers (main thread only).
        should_stop: polled ten times a second; True stops like a signal (``--max-jobs``).
        in_flight: how many attempts run now (an `InFlight` hook), for the progress line.

    Returns:
        The dispatcher's `StopReport`.
    """
    stop = threading.Event()
    if not install_signals:
        return _serve(dispatcher, stop, burst, drain_timeout, should_stop, in_flight)
    with stop_on_signals(stop):
        return _serve(dispatcher, stop, burst, drain_timeout, should_stop, in_flight)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While inside, the first SIGTERM or SIGINT sets ``stop``; a second one exits the process
    at once with `EXIT_FORCED` (main thread only)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: set a flag, touch nothing else.
        if stop.is_set():
            os.write(2, b"csjd: second signal, exiting now without draining\n")
            os._exit(EXIT_FORCED)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(
    dispatcher: BaseDispatcher,
    stop: threading.Event,
    burst: bool,
    drain_timeout: float | None,
    should_stop: Callable[[], bool] | None,
    in_flight: Callable[[], int] | None,
) -> StopReport:
    dispatcher.start()
    last = dispatcher.metrics()
    last_at = time.monotonic()
    while not stop.wait(_POLL):
        if burst and _drained(dispatcher):
            break
        if should_stop is not None and should_stop():
            break
        now = time.monotonic()
        if now - last_at >= 1.0:
            current = dispatcher.metrics()
            done = current.processed - last.processed
            running = in_flight() if in_flight is not None else 0
            if done or running:  # busy: one line a second; idle: silence
                logger.info(
                    "progress jobs_per_s=%.0f in_flight=%d retries=%d failures=%d panics=%d",
                    done / (now - last_at),
                    running,
                    current.retried - last.retried,
                    current.failed - last.failed,
                    current.panics - last.panics,
                )
            last, last_at = current, now
    if stop.is_set():
        logger.info("signal received; draining in-flight jobs timeout=%s", drain_timeout)
    report = dispatcher.stop(drain_timeout)
    logger.info("worker stopped report=%s", report)
    return report


def _drained(dispatcher: BaseDispatcher) -> bool:
    """No unfinished job: none waits in the outboxes this process relays, none in the backend
    (the outboxes first: a relay deletes its rows after the queue has their jobs; the backend
    is asked first too, so a busy queue costs no database query)."""
    try:
        if dispatcher.pending():
            return False
        if any(relay.outbox.stats().depth for relay in dispatcher.relays):
            return False
        return not dispatcher.relays or dispatcher.pending() == 0
    except Exception as exc:  # Redis or the database unreachable for a moment: no crash
        # The backend logs the outage (with backoff); a line per poll would only add noise.
        logger.debug("cannot count unfinished jobs; burst mode keeps waiting error=%s", exc)
        return False
