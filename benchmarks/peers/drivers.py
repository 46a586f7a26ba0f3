"""How the harness enqueues jobs on each system and starts its workers.

A `Driver` knows one system: the command that starts K worker processes the way its docs
recommend, how to enqueue one job of a kind (``noop``, ``incr``, ``latency``) and, when the
system has one, its bulk API. The app modules are imported lazily: ``PEERS_REDIS_URL`` must be
set first.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

KINDS = ("noop", "incr", "latency")
BATCH = 1000  # jobs per call of a bulk API
BIN = Path(sys.executable).parent


def pace(count: int, rate: float | None) -> Callable[[int], float]:
    """A function returning how long to sleep before job ``i`` to keep ``rate`` jobs/s."""
    start = time.perf_counter()
    if rate is None:
        return lambda i: 0.0
    return lambda i: max(0.0, start + i / rate - time.perf_counter())


class Driver(ABC):
    """One system under test."""

    name: ClassVar[str]
    module: ClassVar[str]  # the app module, under apps/
    distribution: ClassVar[str]  # the package whose version is reported
    bulk_api: ClassVar[str | None] = None  # what `send_bulk` calls, for the report
    direct_probe: ClassVar[bool] = False  # see apps/probe.py

    @property
    def app(self) -> Any:
        """The system's app module (imported on first use)."""
        return importlib.import_module(f"apps.{self.module}")

    @abstractmethod
    def worker_commands(self, processes: int) -> list[list[str]]:
        """The commands (one per OS process started) that run ``processes`` worker processes."""

    @abstractmethod
    def send(self, kind: str, count: int, rate: float | None = None) -> float:
        """Enqueue ``count`` jobs one by one (at ``rate`` jobs/s if given); return seconds."""

    def send_bulk(self, kind: str, count: int) -> float:
        """Enqueue ``count`` jobs with the bulk API, `BATCH` per call; return seconds."""
        raise NotImplementedError(f"{self.name} has no bulk enqueue API")


class SyncDriver(Driver):
    """A system whose producer API is synchronous."""

    @abstractmethod
    def submit(self, kind: str, ts: float) -> None:
        """Enqueue one job."""

    def send(self, kind: str, count: int, rate: float | None = None) -> float:
        wait = pace(count, rate)
        started = time.perf_counter()
        for i in range(count):
            delay = wait(i)
            if delay:
                time.sleep(delay)
            self.submit(kind, time.time())
        return time.perf_counter() - started


class AsyncDriver(Driver):
    """A system whose producer API is asyncio: one coroutine enqueues, awaiting each job."""

    @abstractmethod
    async def connect(self) -> Any:
        """Open a producer connection."""

    @abstractmethod
    async def close(self, conn: Any) -> None:
        """Close it."""

    @abstractmethod
    async def submit(self, conn: Any, kind: str, ts: float) -> None:
        """Enqueue one job."""

    def send(self, kind: str, count: int, rate: float | None = None) -> float:
        return run(self._send(kind, count, rate))

    async def _send(self, kind: str, count: int, rate: float | None) -> float:
        conn = await self.connect()
        try:
            wait = pace(count, rate)
            started = time.perf_counter()
            for i in range(count):
                delay = wait(i)
                if delay:
                    await asyncio.sleep(delay)
                await self.submit(conn, kind, time.time())
            return time.perf_counter() - started
        finally:
            await self.close(conn)


def run(coro: Coroutine[Any, Any, float]) -> float:
    """Run a producer coroutine on a fresh event loop."""
    return asyncio.run(coro)


def batches(count: int) -> list[int]:
    """Sizes of the bulk calls that enqueue ``count`` jobs."""
    return [min(BATCH, count - i) for i in range(0, count, BATCH)]


# ---------------------------------------------------------------------------------- systems
class Csjd(SyncDriver):
    name, module, distribution = "csjd", "csjd_app", "csjd"
    bulk_api = "Dispatcher.submit_batch"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "csjd"), "worker", "apps.csjd_app:app", "--processes", str(processes),
                 "--log-level", "warning"]]  # fmt: skip

    def submit(self, kind: str, ts: float) -> None:
        getattr(self.app, kind).delay(ts)

    def send_bulk(self, kind: str, count: int) -> float:
        job, dispatcher = getattr(self.app, kind), self.app.app.dispatcher
        started = time.perf_counter()
        for size in batches(count):
            dispatcher.submit_batch([job.build_job((time.time(),)) for _ in range(size)])
        return time.perf_counter() - started


class Celery(SyncDriver):
    name, module, distribution = "celery", "celery_app", "celery"
    bulk_api = "group(...).apply_async()"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "celery"), "-A", "apps.celery_app", "worker", "-c", str(processes),
                 "--loglevel", "WARNING"]]  # fmt: skip

    def submit(self, kind: str, ts: float) -> None:
        getattr(self.app, kind).delay(ts)

    def send_bulk(self, kind: str, count: int) -> float:
        from celery import group  # noqa: PLC0415

        task = getattr(self.app, kind)
        started = time.perf_counter()
        for size in batches(count):
            group(task.s(time.time()) for _ in range(size)).apply_async()
        return time.perf_counter() - started


class Rq(SyncDriver):
    name, module, distribution = "rq", "rq_app", "rq"
    bulk_api = "Queue.enqueue_many"
    direct_probe = True

    def __init__(self) -> None:
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        """The producer's queue object."""
        if self._queue is None:
            self._queue = self.app.queue()
        return self._queue

    def worker_commands(self, processes: int) -> list[list[str]]:
        from apps import probe  # noqa: PLC0415

        return [[str(BIN / "rq"), "worker", "-u", probe.URL, "-q", self.app.QUEUE]
                for _ in range(processes)]  # fmt: skip

    def submit(self, kind: str, ts: float) -> None:
        self.queue.enqueue(getattr(self.app, kind), ts)

    def send_bulk(self, kind: str, count: int) -> float:
        from rq import Queue  # noqa: PLC0415

        func = getattr(self.app, kind)
        started = time.perf_counter()
        for size in batches(count):
            jobs = [Queue.prepare_data(func, (time.time(),)) for _ in range(size)]
            self.queue.enqueue_many(jobs)
        return time.perf_counter() - started


class Dramatiq(SyncDriver):
    name, module, distribution = "dramatiq", "dramatiq_app", "dramatiq"
    bulk_api = "group(...).run()"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "dramatiq"), "apps.dramatiq_app", "--processes", str(processes),
                 "--threads", "8"]]  # fmt: skip

    def submit(self, kind: str, ts: float) -> None:
        getattr(self.app, kind).send(ts)

    def send_bulk(self, kind: str, count: int) -> float:
        from dramatiq import group  # noqa: PLC0415

        actor = getattr(self.app, kind)
        started = time.perf_counter()
        for size in batches(count):
            group(actor.message(time.time()) for _ in range(size)).run()
        return time.perf_counter() - started


class Huey(SyncDriver):
    name, module, distribution = "huey", "huey_app", "huey"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "huey_consumer"), "apps.huey_app.huey", "-k", "process", "-w",
                 str(processes), "-q"]]  # fmt: skip

    def submit(self, kind: str, ts: float) -> None:
        getattr(self.app, kind)(ts)


class Arq(AsyncDriver):
    name, module, distribution = "arq", "arq_app", "arq"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "arq"), "apps.arq_app.WorkerSettings"] for _ in range(processes)]

    async def connect(self) -> Any:
        from arq import create_pool  # noqa: PLC0415

        return await create_pool(self.app.REDIS)

    async def close(self, conn: Any) -> None:
        await conn.aclose()

    async def submit(self, conn: Any, kind: str, ts: float) -> None:
        await conn.enqueue_job(kind, ts)


class Taskiq(AsyncDriver):
    name, module, distribution = "taskiq", "taskiq_app", "taskiq"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "taskiq"), "worker", "apps.taskiq_app:broker", "--workers",
                 str(processes), "--log-level", "WARNING"]]  # fmt: skip

    async def connect(self) -> Any:
        await self.app.broker.startup()
        return self.app.broker

    async def close(self, conn: Any) -> None:
        await conn.shutdown()

    async def submit(self, conn: Any, kind: str, ts: float) -> None:
        await getattr(self.app, kind).kiq(ts)


class Saq(AsyncDriver):
    name, module, distribution = "saq", "saq_app", "saq"

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[str(BIN / "saq"), "apps.saq_app.settings", "--workers", str(processes)]]

    async def connect(self) -> Any:
        queue = self.app.queue()
        await queue.connect()
        return queue

    async def close(self, conn: Any) -> None:
        await conn.disconnect()

    async def submit(self, conn: Any, kind: str, ts: float) -> None:
        await conn.enqueue(kind, ts=ts)


DRIVERS: dict[str, type[Driver]] = {
    d.name: d for d in (Csjd, Celery, Rq, Dramatiq, Huey, Arq, Taskiq, Saq)
}
