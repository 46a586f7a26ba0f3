"""Helpers of the periodic-job tests: ``csjd worker`` subprocesses ticking ``schedapp``'s
schedules, and the counts the tests assert on.

Three independent records are read, never one alone:
- what each ticker says it enqueued (its ``schedule enqueued name=... id=...`` log lines),
- what the schedule's mark counted (the hash ``csjd:jobs:{queue}:schedule:<name>``),
- what ran (each run appends ``job_id pid`` to one file, see ``schedapp.py``).
Nothing sleeps to synchronise: waits poll a condition with a deadline (`wait_until`); the test
durations are measured in slots seen, not in wall-clock seconds.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import procs

from csjd_core.backends.redis import QueueKeys

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP = "schedapp:app"
STARTUP = procs.STARTUP
ENQUEUED = re.compile(r"schedule enqueued name=(\S+) id=(\S+)")
SLOT = re.compile(r"^periodic:([^:]+):(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def slot_time(job_id: str) -> int:
    """The slot (a Unix time) in a slot's job id."""
    match = SLOT.match(job_id)
    assert match is not None, f"not a slot id: {job_id!r}"
    moment = datetime.strptime(match.group(2), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp())


def gaps(slots: Iterable[int], period: int = 1) -> list[int]:
    """The slots missing between the first and the last of ``slots``."""
    have = sorted(set(slots))
    if not have:
        return []
    return sorted(set(range(have[0], have[-1] + 1, period)) - set(have))


def mark(client: Any, name: str, queue: str = "default") -> dict[str, str]:
    """The schedule's mark hash, decoded."""
    raw = client.hgetall(QueueKeys("csjd:jobs", queue).schedule(name))
    return {k.decode(): v.decode() for k, v in raw.items()}


def enqueued_at(client: Any, job_id: str, queue: str = "default") -> float:
    """When Redis admitted the job (its ``TIME``, in seconds), from the job's hash."""
    value = client.hget(QueueKeys("csjd:jobs", queue).job(job_id), "enqueued_at")
    assert value is not None, f"no record of {job_id}"
    return int(value) / 1000


def redis_time(client: Any) -> float:
    """Redis ``TIME`` (the clock schedules are judged by), in seconds."""
    secs, micros = client.time()
    return float(secs) + micros / 1e6


def slot_records(client: Any, name: str = "tick", queue: str = "default") -> list[str]:
    """The job ids of every slot of schedule ``name`` that Redis holds a record of."""
    prefix = QueueKeys("csjd:jobs", queue).job("")
    return sorted(
        key.decode()[len(prefix) :] for key in client.scan_iter(f"{prefix}periodic:{name}:*")
    )


class Proc(procs.Proc):
    """A ``csjd`` subprocess run in ``tests/periodic`` (see `procs.Proc`)."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path, name: str) -> None:
        super().__init__(argv, env, directory, name, HERE)

    def enqueued(self, name: str = "tick") -> list[str]:
        """The slot ids this process's ticker logged as enqueued."""
        return [m.group(2) for m in ENQUEUED.finditer(self.err()) if m.group(1) == name]


class Fleet:
    """``csjd worker schedapp:app`` processes of one test, and the file their runs go to."""

    def __init__(self, directory: Path, url: str, **env: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.log = directory / "ran.log"
        self.env = {
            **os.environ,
            "CSJD_TEST_REDIS_URL": url,
            "CSJD_SCHED_LOG": str(self.log),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.env.pop("CSJD_WORKER_SLOT", None)
        self.procs: list[Proc] = []

    def start(self, argv: list[str], name: str | None = None) -> Proc:
        proc = Proc(argv, self.env, self.directory, name or f"proc{len(self.procs)}")
        self.procs.append(proc)
        return proc

    def worker(self, *options: str, fast_by: float | None = None) -> Proc:
        """Start ``csjd worker schedapp:app OPTIONS`` (with a host clock ``fast_by`` seconds
        ahead: through ``fast_clock.py``)."""
        prefix = ["-m", "csjd_core.cli"]
        if fast_by is not None:
            prefix = [str(HERE / "fast_clock.py"), str(fast_by)]
        return self.start([sys.executable, *prefix, "worker", APP, *options])

    def runs(self) -> list[tuple[str, int]]:
        """Every run so far: (job id, pid of the process that ran it), in order."""
        if not self.log.exists():
            return []
        pairs = [line.split() for line in self.log.read_text().splitlines() if line]
        return [(job_id, int(pid)) for job_id, pid in pairs]

    def ran(self, name: str = "tick") -> Counter[str]:
        """How many times each slot of schedule ``name`` ran."""
        return Counter(j for j, _ in self.runs() if j.startswith(f"periodic:{name}:"))

    def enqueued(self, name: str = "tick") -> Counter[str]:
        """How many tickers (of every process) logged each slot id as enqueued."""
        return Counter(job_id for proc in self.procs for job_id in proc.enqueued(name))

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
