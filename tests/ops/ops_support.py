"""Helpers of the operations tests: the ``csjd`` command line driven as a user would.

Every command runs as a real subprocess (``python -m csjd_core.cli ...``) with its working
directory in ``tests/ops``, so ``opsapp:app`` names the example application in ``opsapp.py``.
Handlers append ``job_id pid`` to a per-test file; `Cli.ran` counts the ids in it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import procs
from procs import STARTUP

from csjd_core import Job
from csjd_core.backends.redis import QueueKeys
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher

OPS_DIR = Path(__file__).resolve().parent
ROOT = OPS_DIR.parents[1]
APP = "opsapp:app"


class Proc(procs.Proc):
    """A ``csjd`` subprocess run in ``tests/ops`` (see `procs.Proc`)."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path, name: str) -> None:
        super().__init__(argv, env, directory, name, OPS_DIR)

    def wait_for_line(self, pattern: str, count: int = 1, timeout: float = STARTUP) -> list[str]:
        """Wait until stderr holds ``count`` lines matching the regex ``pattern``."""

        def found() -> list[str]:
            hits = [line for line in self.err().splitlines() if re.search(pattern, line)]
            return hits if len(hits) >= count else []

        result: list[str] = self.wait_for(found, timeout, f"{count} line(s) matching {pattern!r}")
        return result

    def stop(self) -> None:
        """Kill whatever is left of it (test teardown): its supervised children (each in a
        process group of its own), then its process group."""
        for pid in pids_started(self):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        super().stop()


class Cli:
    """Runs ``csjd`` commands for one test against one Redis URL."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.url = url
        self.log = directory / "ran.log"
        self.env = {
            **os.environ,
            "CSJD_TEST_REDIS_URL": url,
            "CSJD_OPS_LOG": str(self.log),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(OPS_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CSJD_WORKER_SLOT", None)
        self.procs: list[Proc] = []

    def argv(self, args: Iterable[object]) -> list[str]:
        return [sys.executable, "-m", "csjd_core.cli", *map(str, args)]

    def run(
        self,
        *args: object,
        input: str | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion (stdin ``input``, or /dev/null)."""
        return subprocess.run(
            self.argv(args),
            cwd=OPS_DIR,
            env={**self.env, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: object, env: dict[str, str] | None = None) -> Proc:
        """Start a long-running command (a worker)."""
        proc = Proc(
            self.argv(args), {**self.env, **(env or {})}, self.directory, f"proc{len(self.procs)}"
        )
        self.procs.append(proc)
        return proc

    def ran(self) -> Counter[str]:
        """How many times each job id was executed (by any process)."""
        return _ids_in(self.log)

    def began(self) -> Counter[str]:
        """How many attempts of each ``record`` job began (its handler was entered)."""
        return _ids_in(self.log.with_name(self.log.name + ".started"))

    def enqueue(
        self,
        ids: Iterable[str],
        *,
        type: str = "record",
        queue: str | None = None,
        args: Iterable[Any] = (),
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> list[str]:
        """Submit jobs the way a web process would (straight to Redis, no worker)."""
        ids = list(ids)
        dispatcher = RedisDistributedDispatcher(
            RedisConfig.from_url(self.url), DistributedConfig(queues=(queue or "default",))
        )
        try:
            payload = {"args": list(args), "kwargs": {}}
            dispatcher.submit_batch(
                Job(i, type, payload, queue=queue, run_at=run_at, max_attempts=max_attempts)
                for i in ids
            )
        finally:
            dispatcher.close()
        return ids

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def keys(queue: str = "default") -> QueueKeys:
    """The Redis keys of one of opsapp's queues."""
    return QueueKeys("csjd:jobs", queue)


def _ids_in(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines() if line)


def states(client: Any, ids: Iterable[str], queue: str = "default") -> Counter[str]:
    """How many of ``ids`` are in each state, read from their job hashes."""
    k = keys(queue)
    return Counter((client.hget(k.job(i), "state") or b"missing").decode() for i in ids)


def pids_started(proc: Proc) -> list[int]:
    """Pids of the worker children a supervisor logged, in start order."""
    return [int(m) for m in re.findall(r"worker child started slot=\d+ pid=(\d+)", proc.err())]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
