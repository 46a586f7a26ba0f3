"""Helpers of the outbox fault tests: the test Django project (``tests/django/testproject``) on a
throwaway PostgreSQL database with ``CSJD_OUTBOX = True``, its web processes, workers and relays
as real subprocesses, and the counts the tests assert on.

Independent records, never one alone:
- what the web processes committed (``manage.py outbox_enqueue`` prints each committed job id),
- what ran: every run of ``outbox.counted`` inserts a row of ``testapp_jobrun`` (job id, pid,
  attempt, time) in the same database, with no unique constraint — a job that ran twice leaves
  two rows (duplicates = rows - distinct ids),
- what the outbox still holds (``csjd_outbox`` rows) and what Redis holds (the stream, the pending
  counter, the queue's ``succeeded`` count),
- what the relays say they did (their ``RelayCounters`` log lines).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import psycopg
import redis

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
DJANGO = TESTS / "django"
STREAM = "csjd:jobs:{default}"
PENDING = "csjd:jobs:{default}:pending"
STATS = "csjd:jobs:{default}:stats"
STARTUP = procs.STARTUP

#: The last line of ``csjd_relay --burst``, and of a worker's relay when it stops.
COUNTERS = re.compile(
    r"(?:outbox relayed outbox=\S+|relay stopped relay=\S+) counters=RelayCounters\("
    r"relayed=(\d+), skipped=(\d+), postponed=(\d+), set_aside=(\d+), batches=(\d+), "
    r"errors=(\d+)\)"
)
ALREADY_RELAYED = re.compile(r"outbox rows already relayed, deleted outbox=\S+ count=(\d+)")
COMMITTED = re.compile(r"^committed (\d+) at=([\d.]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Relayed:
    """A relay's `RelayCounters`, from its log line."""

    relayed: int
    skipped: int
    postponed: int
    set_aside: int
    batches: int
    errors: int


def relay_counters(log: str) -> Relayed:
    """The counters of the one relay whose log is ``log``."""
    found = COUNTERS.findall(log)
    assert len(found) == 1, f"expected one relay counters line, found {len(found)}:\n{log}"
    return Relayed(*map(int, found[0]))


@dataclass(frozen=True)
class Counts:
    """What ran, what waits, what Redis holds."""

    runs: int  # rows of testapp_jobrun: every run
    distinct: int  # distinct job ids among them
    rows_left: int  # csjd_outbox rows
    stream: int  # XLEN of the default queue's stream
    pending: int  # the queue's unfinished-jobs counter
    succeeded: int  # the queue's succeeded count

    @property
    def duplicates(self) -> int:
        return self.runs - self.distinct

    def __str__(self) -> str:
        return (
            f"runs={self.runs} distinct={self.distinct} duplicates={self.duplicates} "
            f"outbox_rows_left={self.rows_left} stream={self.stream} pending={self.pending} "
            f"succeeded={self.succeeded}"
        )


def committed_ids(out: str) -> list[str]:
    """The job ids ``manage.py outbox_enqueue`` printed for every commit it reported so far
    (the output of a running one may end in the middle of a transaction's lines)."""
    ids: list[str] = []
    lines: list[str] = []
    for line in out.splitlines():
        match = COMMITTED.match(line)
        if match:
            assert int(match.group(1)) == len(lines), out[-2000:]
            ids += lines
            lines = []
        elif line.startswith("rolled back"):
            lines = []
        elif line:
            lines.append(line)
    return ids


class Web:
    """A finished ``manage.py outbox_enqueue``: what it committed, and when (the last commit)."""

    def __init__(self, proc: procs.Proc, returncode: int) -> None:
        self.proc = proc
        self.returncode = returncode
        out = proc.out()
        self.ids = committed_ids(out)
        ends = COMMITTED.findall(out)
        self.committed_at = float(ends[-1][1]) if ends else None


class Site:
    """One test's project: a PostgreSQL database, a Redis, and the processes started on them."""

    def __init__(self, directory: Path, database_url: str, redis_url: str, **env: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.database_url = database_url
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(DJANGO), str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            "CSJD_TEST_MODE": "redis",
            "CSJD_TEST_REDIS_URL": redis_url,
            "CSJD_TEST_DATABASE_URL": database_url,
            "CSJD_TEST_OUTBOX": "1",
            **env,
        }
        for name in ("CSJD_TEST_DB", "CSJD_WORKER_SLOT"):
            self.env.pop(name, None)
        self.procs: list[procs.Proc] = []
        self._db: psycopg.Connection[Any] | None = None
        self._redis: redis.Redis | None = None

    # -- processes ---------------------------------------------------------------------------
    def start(self, *args: str, name: str | None = None, **env: str) -> procs.Proc:
        """``manage.py ARGS`` (``python -m django``) as a subprocess."""
        name = name or f"{len(self.procs):02d}-{args[0]}"
        proc = procs.Proc(
            [sys.executable, "-m", "django", *args],
            {**self.env, **env},
            self.directory,
            name,
            HERE,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 120.0, **env: str) -> tuple[procs.Proc, int]:
        """``manage.py ARGS`` to its end: the process and its exit status."""
        proc = self.start(*args, **env)
        return proc, proc.wait(timeout)

    def migrate(self) -> None:
        proc, code = self.run("migrate", "--run-syncdb", "-v", "0")
        assert code == 0, proc.err()

    def enqueue(self, count: int, *options: str, **env: str) -> Web:
        """A web process committing ``count`` counted jobs (``manage.py outbox_enqueue``)."""
        proc, code = self.run("outbox_enqueue", str(count), *options, **env)
        return Web(proc, code)

    def worker(self, *options: str, **env: str) -> procs.Proc:
        """``manage.py csjd_worker OPTIONS`` (it relays), once its relay runs."""
        proc = self.start("csjd_worker", *options, **env)
        proc.wait_for(lambda: "relaying outbox=" in proc.err(), what="the worker's relay")
        return proc

    def stop_worker(self, proc: procs.Proc) -> Relayed:
        """SIGTERM (drain) a worker; its relay's counters."""
        code = proc.terminate()
        assert code == 0, proc.err()[-4000:]
        return relay_counters(proc.err())

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self._db is not None:
            self._db.close()
        if self._redis is not None:
            self._redis.close()

    # -- what the database and Redis hold ----------------------------------------------------
    @property
    def db(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(self.database_url, autocommit=True)
        return self._db

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    def query(self, sql: str) -> Any:
        row = self.db.execute(sql).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row

    def runs(self) -> int:
        return int(self.query("SELECT count(*) FROM testapp_jobrun"))

    def rows_left(self) -> int:
        return int(self.query("SELECT count(*) FROM csjd_outbox"))

    def ran(self) -> Counter[str]:
        """How many times each job id ran."""
        rows = self.db.execute("SELECT job_id FROM testapp_jobrun").fetchall()
        return Counter(job_id for (job_id,) in rows)

    def stream_ids(self) -> list[str]:
        """The job id of every entry of the default queue's stream."""
        return [fields[b"id"].decode() for _, fields in self.redis.xrange(STREAM)]

    def counts(self) -> Counts:
        runs, distinct = self.query("SELECT count(*), count(DISTINCT job_id) FROM testapp_jobrun")
        client = self.redis
        return Counts(
            runs=int(runs),
            distinct=int(distinct),
            rows_left=self.rows_left(),
            stream=int(client.xlen(STREAM)),
            pending=int(client.get(PENDING) or 0),
            succeeded=int(client.hget(STATS, "succeeded") or 0),
        )
