"""Running a dispatcher as a worker process: signals, burst mode, progress lines."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.metrics import StopReport

__all__ = ["EXIT_FORCED", "run_worker"]

logger = logging.getLogger("csjd_core.worker")

#: Exit status after a second SIGTERM/SIGINT stopped the worker without draining.
EXIT_FORCED = 3


def run_worker(
    dispatcher: BaseDispatcher,
    *,
    burst: bool = False,
    drain_timeout: float | None = 30.0,
    install_signals: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> StopReport:
    """Start ``dispatcher`` and block until told to stop, then drain.

    The first SIGTERM or SIGINT stops fetching and lets in-flight jobs finish (up to
    ``drain_timeout`` seconds); a second one exits the process at once with `EXIT_FORCED` (jobs
    still running stay in the backend: the file store requeues them on restart, Redis reclaims
    them after the lease).

    Args:
        dispatcher: the dispatcher to run (handlers registered).
        burst: return once nothing is left to do (no unfinished job in the backend).
        drain_timeout: seconds to wait for in-flight jobs when stopping.
        install_signals: install the SIGTERM/SIGINT handlers (main thread only).
        should_stop: polled once a second; True stops like a signal (``--max-jobs`` etc).

    Returns:
        The dispatcher's `StopReport`.
    """
    stop = threading.Event()
    if install_signals:

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Runs in the main thread between bytecodes: set a flag, touch nothing else.
            if stop.is_set():
                os.write(2, b"csjd: second signal, exiting now without draining\n")
                os._exit(EXIT_FORCED)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    dispatcher.start()
    last = dispatcher.metrics()
    last_at = time.monotonic()
    while not stop.wait(0.05 if burst else 1.0):
        if burst and dispatcher.pending() == 0:
            break
        if should_stop is not None and should_stop():
            break
        now = time.monotonic()
        if now - last_at >= 1.0:
            current = dispatcher.metrics()
            done = current.processed - last.processed
            if done:
                logger.info(
                    "progress jobs_per_s=%.0f retries=%d failures=%d panics=%d",
                    done / (now - last_at),
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
