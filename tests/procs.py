"""A subprocess of a test — a ``csjd`` command, a worker — whose output goes to files: what the
operations and the periodic-job tests share (each adds what it reads in that output)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csjd_core.testing import wait_until

#: Seconds a started worker may take to import, connect and print its first lines (2 slow cores).
STARTUP = 30.0


class Proc:
    """A running subprocess whose stdout and stderr go to files (never a full pipe)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], directory: Path, name: str, cwd: Path
    ) -> None:
        self.name = name
        self.out_path = directory / f"{name}.out"
        self.err_path = directory / f"{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            # A session of its own: a test can signal its whole process group, like a terminal.
            # And SIGINT as a terminal leaves it: a shell starts background jobs (a CI script
            # run with `&`) with SIGINT ignored, which a child inherits, and Python then never
            # raises KeyboardInterrupt. A handler in this process is reset to the default in
            # the child.
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def wait(self, timeout: float = 60.0) -> int:
        """Its exit status (fail with its output if it still runs after ``timeout``)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} ({self.popen.args}) still running after {timeout} s; "
                f"stderr:\n{self.err()}"
            ) from None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain), and wait for the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait_for(
        self, condition: Callable[[], Any], timeout: float = STARTUP, what: str = "condition"
    ) -> Any:
        """Wait for ``condition`` while the process lives (fail at once with its output if not)."""

        def check() -> Any:
            value = condition()
            if not value and self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} ({self.popen.args}) exited with {self.popen.returncode} "
                    f"before {what}; stderr:\n{self.err()}"
                )
            return value

        return wait_until(
            check,
            timeout=timeout,
            interval=0.02,
            message=lambda: f"{what}; stderr so far:\n{self.err()}",
        )

    def stop(self) -> None:
        """Kill whatever is left of its process group (test teardown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
