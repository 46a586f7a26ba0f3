"""What the transactional outbox costs on PostgreSQL, with Django: commit → job started at a
steady rate (LISTEN/NOTIFY, and polling), one relay's throughput, and what NOTIFY adds to a
commit.

Run: ``python benchmarks/bench_outbox.py [--rate 200] [--seconds 10] [--rows 20000]
[--repeat 3] [--json PATH]``

Starts its own throwaway ``redis-server`` (as bench_redis.py does) and creates (then drops) a
PostgreSQL database on ``CSJD_TEST_POSTGRES_URL`` (default: postgres@127.0.0.1:5432). Measures:

- latency: a producer commits one ``delay_on_commit`` job per transaction at ``--rate`` jobs/s
  for ``--seconds``; one ``csjd_worker`` process (its relay and 8 worker threads) runs them; the
  handler records when it started. Commit → start, p50/p99/max, with ``CSJD_OUTBOX_NOTIFY``
  (the relay wakes on NOTIFY) and without (the relay polls every second, the default).
- relay: ``--rows`` rows bulk-inserted, then one `Relay` drains them into Redis: rows per second,
  beside ``submit_batch`` of the same jobs in batches of the same size (the baseline of the
  same run: the cost of Redis admission alone).
- notify: the time of a transaction writing one outbox row with NOTIFY beside one without.

Figures are medians of ``--repeat`` interleaved runs (the latency runs: one each).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import csjd_core  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))

import django  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from django.conf import settings  # noqa: E402

ADMIN_URL = (
    os.environ.get("CSJD_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
)
JOB_TYPE = "bench.outbox.probe"
STARTED = "bench:outbox:started"  # hash: seq -> start time (the handler's)


def configure(database: str, redis_url: str, *, notify: bool) -> None:
    """Django settings for the benchmark's database and Redis (in this process)."""
    admin = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "csjd_django"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": database,
                "USER": admin.get("user", "postgres"),
                "PASSWORD": admin.get("password", ""),
                "HOST": admin.get("host", "127.0.0.1"),
                "PORT": str(admin.get("port", "5432")),
            }
        },
        USE_TZ=True,
        CSJD_MODE="redis",
        CSJD_REDIS_URL=redis_url,
        CSJD_OUTBOX=True,
        CSJD_OUTBOX_NOTIFY=notify,
        CSJD_MAX_PENDING_JOBS=1_000_000,
        CSJD_WORKERS=8,
        CSJD_BLOCK=0.2,
    )
    django.setup()
    define_job(redis_url)
    import csjd_django as csjd  # noqa: PLC0415

    csjd.app.configure_from_settings()


def define_job(redis_url: str) -> None:
    import csjd_django as csjd  # noqa: PLC0415 - after django.setup()

    client = redis.Redis.from_url(redis_url)

    @csjd.job(JOB_TYPE)
    def probe(seq: int) -> None:
        client.hset(STARTED, str(seq), repr(time.time()))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- latency ---------------------------------------------------------------------------------
def latency(
    database: str, redis_url: str, rate: float, seconds: float, notify: bool
) -> dict[str, Any]:
    """Commit → start, with one worker process relaying; the producer is this process."""
    from django.db import close_old_connections, transaction  # noqa: PLC0415

    import csjd_django as csjd  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, __file__, "--worker", database, redis_url, "1" if notify else "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    csjd.app.outboxes[0].notify = notify  # the producer's side of NOTIFY
    try:
        time.sleep(3.0)  # import, connect, LISTEN
        probe = csjd.app.jobs[JOB_TYPE]
        count = int(rate * seconds)
        committed: dict[int, float] = {}
        start = time.perf_counter()
        for seq in range(count):
            due = start + seq / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            with transaction.atomic():
                probe.delay_on_commit(seq)
            committed[seq] = time.time()
        deadline = time.monotonic() + 60
        while client.hlen(STARTED) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        started = {int(k): float(v) for k, v in client.hgetall(STARTED).items()}
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        close_old_connections()
    lost = count - len(started)
    waits = [(started[seq] - at) * 1000 for seq, at in committed.items() if seq in started]
    return {
        "notify": notify,
        "rate": rate,
        "jobs": count,
        "lost": lost,
        "p50_ms": round(percentile(waits, 0.50), 2),
        "p99_ms": round(percentile(waits, 0.99), 2),
        "max_ms": round(max(waits), 2),
        "listening": "listening for outbox commits" in err,
    }


def run_worker(database: str, redis_url: str, notify: bool) -> None:
    """The ``--worker`` child: ``manage.py csjd_worker`` in effect (relay included)."""
    configure(database, redis_url, notify=notify)
    from django.core.management import call_command  # noqa: PLC0415

    call_command("csjd_worker", "--log-level", "INFO")


# -- relay throughput ------------------------------------------------------------------------
def relay_throughput(redis_url: str, rows: int) -> tuple[float, float]:
    """Rows per second through one relay, and jobs per second through ``submit_batch``."""
    import csjd_django as csjd  # noqa: PLC0415
    from csjd_core.operations import worker_dispatcher  # noqa: PLC0415
    from csjd_core.outbox import BATCH, Relay, encode_job  # noqa: PLC0415
    from csjd_django.models import OutboxJob  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    probe = csjd.app.jobs[JOB_TYPE]
    jobs = [probe.build_job((seq,), job_id=uuid.uuid4().hex) for seq in range(rows)]

    client.flushall()
    OutboxJob.objects.all().delete()
    OutboxJob.objects.bulk_create(
        [OutboxJob(job_id=job.id, queue=job.queue, data=encode_job(job)) for job in jobs],
        batch_size=2000,
    )
    dispatcher = worker_dispatcher(csjd.app)
    relay = Relay(csjd.app.outboxes[0], dispatcher)
    began = time.perf_counter()
    if os.environ.get("BENCH_PROFILE"):
        import cProfile  # noqa: PLC0415

        cProfile.runctx("while relay.relay_once(): pass", globals(), locals(), sort="cumtime")
    while relay.relay_once():
        pass
    relayed = (time.perf_counter() - began, relay.counters.relayed)
    assert relayed[1] == rows, relay.counters
    assert not OutboxJob.objects.exists()

    client.flushall()
    began = time.perf_counter()
    for start in range(0, rows, BATCH):
        dispatcher.submit_batch(jobs[start : start + BATCH])
    submitted = time.perf_counter() - began
    dispatcher.stop(5)
    return rows / relayed[0], rows / submitted


# -- NOTIFY on commits -----------------------------------------------------------------------
def commit_cost(transactions: int) -> tuple[float, float]:
    """µs per transaction writing one outbox row: without NOTIFY, with NOTIFY."""
    from django.db import transaction  # noqa: PLC0415

    import csjd_django as csjd  # noqa: PLC0415
    from csjd_django.models import OutboxJob  # noqa: PLC0415
    from csjd_django.outbox import DjangoOutbox  # noqa: PLC0415

    probe = csjd.app.jobs[JOB_TYPE]
    plain, notifying = DjangoOutbox(notify=False), DjangoOutbox(notify=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for index in range(transactions):
        for outbox in (plain, notifying) if index % 2 else (notifying, plain):
            job = probe.build_job((index,))
            began = time.perf_counter()
            with transaction.atomic():
                outbox.add(job)
            times[outbox.notify].append(time.perf_counter() - began)
    OutboxJob.objects.all().delete()
    return statistics.median(times[False]) * 1e6, statistics.median(times[True]) * 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="jobs per second committed")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a latency run")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per relay run")
    parser.add_argument("--repeat", type=int, default=3, help="relay and commit runs")
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import load_test_module  # noqa: PLC0415

    server_mod = load_test_module("redis_server")
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-outbox-"))
    server = server_mod.RedisServerProcess(args.server, tmp / "redis")
    server.start()
    database = f"csjd_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        configure(database, server.url, notify=True)
        from django.core.management import call_command  # noqa: PLC0415
        from django.db import connections  # noqa: PLC0415

        call_command("migrate", verbosity=0)
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT version()")
            pg_version = cursor.fetchone()[0].split(",")[0]
        print(f"{pg_version}; redis {server.version()}; cpus={os.cpu_count()}", file=sys.stderr)

        results: dict[str, Any] = {"postgres": pg_version, "redis": str(server.version())}
        relay_runs = [relay_throughput(server.url, args.rows) for _ in range(args.repeat)]
        relay_rate = statistics.median(r[0] for r in relay_runs)
        submit_rate = statistics.median(r[1] for r in relay_runs)
        results["relay"] = {
            "rows": args.rows,
            "relay_rows_per_s": round(relay_rate),
            "submit_batch_jobs_per_s": round(submit_rate),
            "ratio": round(relay_rate / submit_rate, 2),
        }
        print(f"relay: {results['relay']}", file=sys.stderr)

        plain, notifying = commit_cost(2000 * args.repeat)
        results["notify"] = {
            "commit_us_without": round(plain, 1),
            "commit_us_with": round(notifying, 1),
            "ratio": round(notifying / plain, 3),
        }
        print(f"notify: {results['notify']}", file=sys.stderr)

        results["latency"] = [
            latency(database, server.url, args.rate, args.seconds, notify)
            for notify in (True, False)
        ]
        for row in results["latency"]:
            print(f"latency: {row}", file=sys.stderr)
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        from django.db import connections  # noqa: PLC0415

        connections.close_all()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        server.stop()


if __name__ == "__main__":
    main()
