"""``csjd worker --processes N``: a supervisor that runs N worker child processes.

Each child is a fresh interpreter (``python -m csjd_core.cli worker ... --child``), so it builds
its dispatcher, connections and threads after the process starts: nothing is inherited from the
supervisor. A child that dies is restarted (with backoff if it keeps dying); a child that exits
with `EXIT_RECYCLE` (``--max-jobs`` / ``--max-memory`` reached, in-flight work finished) is
replaced at once. The first SIGTERM/SIGINT is forwarded to every child (they drain); a second one
kills them and exits. Children run in their own process group, so only the supervisor receives a
terminal's Ctrl-C; a child whose supervisor vanished (SIGKILL) drains and exits by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from csjd_core.retry import Backoff
from csjd_core.worker import EXIT_FORCED

__all__ = ["EXIT_RECYCLE", "FleetWatch", "supervise"]

logger = logging.getLogger("csjd_core.supervisor")

#: A child's exit status when it recycles itself (max jobs or memory reached, drained).
EXIT_RECYCLE = 4

#: A child that ran this many seconds before dying is restarted with the shortest delay again.
_STABLE_AFTER = 30.0


class FleetWatch:
    """Told what the supervisor does with its children (``--metrics-port``: see
    `csjd_core.worker_metrics`). ``env`` is added to each child's environment."""

    env: dict[str, str] = {}

    def child_exited(self, pid: int) -> None:
        """Child ``pid`` exited (before any replacement starts)."""

    def fleet(self, running: int, wanted: int) -> None:
        """How many children run now, and how many should (told every loop)."""


def supervise(
    child_argv: list[str],
    processes: int,
    *,
    burst: bool = False,
    command: list[str] | None = None,
    watch: FleetWatch | None = None,
) -> int:
    """Run ``processes`` children until a signal (or, in burst mode, until all finished).

    Args:
        child_argv: arguments of one child worker.
        processes: how many children to keep running.
        burst: children exit 0 when the queues are empty; do not restart them then.
        command: the program the arguments follow (default ``python -m csjd_core.cli``;
            Django passes ``python manage.py``).
        watch: told of exited children and of the fleet's size (the metrics).

    Returns:
        The exit status for the supervisor process: 0, `EXIT_FORCED` after a second signal, 1 if
        a child did not drain cleanly.
    """
    program = command or [sys.executable, "-m", "csjd_core.cli"]
    watch = watch or FleetWatch()
    stop = threading.Event()
    forced = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            forced.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: dict[int, subprocess.Popen[bytes]] = {}
    # 0.5, 1, 2 ... 30 s: a supervisor restarts its own children, no herd to spread out.
    backoffs = {slot: Backoff(base=0.5, cap=30.0, jitter=False) for slot in range(processes)}
    not_before = dict.fromkeys(range(processes), 0.0)
    started_at = dict.fromkeys(range(processes), 0.0)
    finished: set[int] = set()
    unclean = False

    def spawn(slot: int) -> None:
        env = dict(os.environ, CSJD_WORKER_SLOT=str(slot), **watch.env)
        # Its own process group: a Ctrl-C in a terminal (or an init that signals the whole
        # group) reaches the supervisor only, which forwards exactly one SIGTERM. Otherwise a
        # child would see two signals and stop without draining.
        children[slot] = subprocess.Popen(
            [*program, *child_argv], env=env, stdin=subprocess.DEVNULL, process_group=0
        )
        started_at[slot] = time.monotonic()
        logger.info("worker child started slot=%d pid=%d", slot, children[slot].pid)

    for slot in range(processes):
        spawn(slot)
    signalled = False
    while True:
        if stop.is_set() and not signalled:
            signalled = True
            logger.info("stopping: draining %d worker children", len(children))
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
        if forced.is_set():
            logger.warning("second signal: killing worker children")
            for child in children.values():
                if child.poll() is None:
                    child.kill()
            for child in children.values():
                child.wait()
            return EXIT_FORCED
        for slot, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[slot]
            try:
                watch.child_exited(child.pid)
            except Exception:  # the metrics never stop the supervisor
                logger.exception("metrics clean-up failed for an exited child pid=%d", child.pid)
            if stop.is_set() or (burst and code == 0):
                # -SIGTERM: the forwarded signal came before the child installed its handler.
                if code not in (0, EXIT_RECYCLE, -signal.SIGTERM):
                    logger.error(
                        "worker child did not drain cleanly slot=%d pid=%d code=%s",
                        slot,
                        child.pid,
                        code,
                    )
                    unclean = True
                finished.add(slot)
                continue
            if code == EXIT_RECYCLE:
                logger.info("worker child recycled slot=%d pid=%d", slot, child.pid)
                backoffs[slot].reset()
            else:
                if time.monotonic() - started_at[slot] >= _STABLE_AFTER:
                    backoffs[slot].reset()
                delay = backoffs[slot].next_delay()
                not_before[slot] = time.monotonic() + delay
                logger.error(
                    "worker child died slot=%d pid=%d code=%s; restarting in %.1fs",
                    slot,
                    child.pid,
                    code,
                    delay,
                )
        for slot in range(processes):
            if (
                slot not in children
                and slot not in finished
                and not stop.is_set()
                and time.monotonic() >= not_before[slot]
            ):
                spawn(slot)
        if not children and (stop.is_set() or len(finished) == processes):
            return 1 if unclean else 0
        watch.fleet(
            sum(1 for child in children.values() if child.poll() is None),
            0 if stop.is_set() else processes - len(finished),
        )
        time.sleep(0.1)
