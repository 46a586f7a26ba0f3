"""Helpers of the Redis tests: fast dispatchers and worker subprocesses (see conftest.py).

Intervals are small (lease 1 s; heartbeat, claim and block 0.2 s) so that recovery takes
seconds; nothing sleeps to synchronise: tests poll a condition with a deadline
(`csjd_core.testing.wait_until`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from csjd_core import Job, RetryPolicy
from csjd_core.backends.base import BackendSettings, Delivery
from csjd_core.backends.redis import RedisStreamsBackend
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = HERE / "worker_proc.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

FAST = {
    "lease": 1.0,
    "heartbeat_interval": 0.2,
    "claim_interval": 0.2,
    "block": 0.2,
    "retry": RetryPolicy(base_delay=0.05, max_delay=0.2),
}
DEADLINE = 15.0  # seconds any single wait may take before the test fails


def fast_config(**overrides: Any) -> DistributedConfig:
    """A `DistributedConfig` with test-sized intervals."""
    return DistributedConfig(**{**FAST, **overrides})


class Consumers:
    """Backends with fixed consumer names that run no threads until `fetch` starts them (the
    test drives their reader and maintenance); closed at teardown (the `consumers` fixture)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RedisStreamsBackend] = []
        self.lost: list[Delivery] = []  # successes queued, then refused (on_lost_claim)

    def __call__(self, name: str, **config: Any) -> RedisStreamsBackend:
        config.setdefault("lease", 0.3)
        backend = RedisStreamsBackend(
            RedisConfig(url=self.url), fast_config(consumer=name, **config)
        )
        backend.open(
            BackendSettings(
                max_pending_jobs=1000,
                default_max_attempts=3,
                result_ttl=60.0,
                max_results=0,
                worker_id=name,
                on_lost_claim=self.lost.append,
            )
        )
        backend.reader.ensure_groups()
        self.made.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.made:
            backend.close(clean=True)


def fetch(backend: RedisStreamsBackend) -> Delivery:
    """The next delivery, consumption started first (once)."""
    if not backend.holdings.consuming:
        backend.start_consuming()
    delivery = backend.fetch(DEADLINE)
    assert delivery is not None
    return delivery


class Dispatchers:
    """Builds dispatchers for one test and stops every one of them at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RedisDistributedDispatcher] = []

    def __call__(self, *, url: str | None = None, **config: Any) -> RedisDistributedDispatcher:
        dispatcher = RedisDistributedDispatcher(
            RedisConfig(url=url or self.url), fast_config(**config)
        )
        self.made.append(dispatcher)
        return dispatcher

    def close(self) -> None:
        for dispatcher in self.made:
            dispatcher.stop(timeout=5)


def lines(path: Path) -> list[str]:
    """Complete lines of a file a child appends to (a missing file has none)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return data.split("\n")[:-1]


class WorkerProc:
    """One ``worker_proc.py worker`` child and the files it writes."""

    def __init__(
        self,
        directory: Path,
        name: str,
        url: str,
        options: dict[str, Any],
        pythonpath: Path | None = None,
    ) -> None:
        self.directory = directory
        self.name = name
        argv = [
            sys.executable,
            str(SCRIPT),
            "worker",
            "--url",
            url,
            "--dir",
            str(directory),
            "--name",
            name,
        ]
        for key, value in options.items():
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        self.log_path = directory / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=ENV
            if pythonpath is None
            else {**ENV, "PYTHONPATH": f"{pythonpath}{os.pathsep}{ROOT}"},
            text=True,
        )

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.name}.{suffix}"

    def started(self) -> list[str]:
        return lines(self.path("started"))

    def done(self) -> list[str]:
        return lines(self.path("done"))

    def died(self) -> list[str]:
        return lines(self.path("die"))

    def stats(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(self.path("stats").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = DEADLINE) -> WorkerProc:
        wait_until(
            lambda: self.path("ready").exists() or self.proc.poll() is not None,
            timeout,
            message=lambda: f"worker {self.name} never got ready:\n{self.log()}",
        )
        assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.log()}"
        wait_until(lambda: self.stats().get("consumer"), timeout)
        return self

    @property
    def consumer(self) -> str:
        return str(self.stats()["consumer"])

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still running after {timeout} s:\n{self.log()}"
            ) from None
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Workers:
    """Starts worker subprocesses for one test; SIGKILLs the survivors at teardown."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.url = url
        self.procs: list[WorkerProc] = []

    def __call__(
        self,
        name: str,
        *,
        url: str | None = None,
        ready: bool = True,
        pythonpath: Path | None = None,
        **options: Any,
    ) -> WorkerProc:
        """Start worker ``name`` (``pythonpath``: a directory whose ``csjd_core`` it runs
        instead of this checkout's)."""
        proc = WorkerProc(self.directory, name, url or self.url, options, pythonpath)
        self.procs.append(proc)
        return proc.wait_ready() if ready else proc

    def done(self) -> Counter[str]:
        """How many times each job id was completed, over every worker of the test."""
        counts: Counter[str] = Counter()
        for name in {p.name for p in self.procs}:
            counts.update(lines(self.directory / f"{name}.done"))
        return counts

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def submit_all(dispatcher: RedisDistributedDispatcher, jobs: list[Job], chunk: int = 100) -> None:
    """Submit ``jobs`` in batches of ``chunk`` (one queue)."""
    for start in range(0, len(jobs), chunk):
        dispatcher.submit_batch(jobs[start : start + chunk])


def assert_all_done(
    workers: Workers,
    ids: list[str],
    timeout: float = DEADLINE,
) -> Counter[str]:
    """Wait until every id appears in some worker's done file; return the counts."""
    wanted = set(ids)
    wait_until(
        lambda: wanted <= set(workers.done()),
        timeout,
        message=lambda: (
            f"{len(wanted - set(workers.done()))} of {len(wanted)} jobs "
            f"never done\n{workers.logs()}"
        ),
    )
    return workers.done()
