"""A worker's relay learns of a commit from PostgreSQL (``LISTEN``/``NOTIFY``), long before its
poll interval; with ``CSJD_OUTBOX_NOTIFY = False`` it finds the rows by polling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from outbox_support import Site

from csjd_core.job import Job
from csjd_core.outbox import encode_job

from redis_server import RedisServerProcess

pytestmark = pytest.mark.timeout(120)

POLL = 30.0  # seconds: only a notification explains a start within PROMPT of the commit
PROMPT = 2.0


def ran_at(site: Site) -> dict[str, float]:
    rows = site.db.execute("SELECT job_id, ran_at FROM testapp_jobrun").fetchall()
    return dict(rows)


def test_a_commit_wakes_an_idle_listening_worker_long_before_its_poll_interval(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    server = redis_server_factory()
    site = sites(server.url, CSJD_TEST_OUTBOX_POLL_INTERVAL=str(POLL))
    worker = site.worker()
    worker.wait_for(lambda: "listening for outbox commits" in worker.err(), what="listening")

    # The control: a row written without a notification waits for the poll (30 s away).
    silent = Job(f"silent-{uuid.uuid4().hex}", "outbox.counted", {"args": [0.0], "kwargs": {}})
    site.db.execute(
        "INSERT INTO csjd_outbox (job_id, data, created_at, attempts) VALUES (%s, %s, now(), 0)",
        [silent.id, encode_job(silent)],
    )
    time.sleep(PROMPT + 0.5)
    unrelayed = site.rows_left()
    assert site.runs() == 0

    web = site.enqueue(1)  # its commit notifies
    assert web.returncode == 0, web.proc.err()
    assert web.committed_at is not None
    worker.wait_for(lambda: site.runs() >= 2, timeout=10, what="both jobs run")
    started = ran_at(site)
    latency = started[web.ids[0]] - web.committed_at
    relayed = site.stop_worker(worker)
    counts = site.counts()
    print(
        f"\nnotify: the row written without a notification still waiting after "
        f"{PROMPT + 0.5} s ({unrelayed} row); the committed job started {latency:.3f} s after "
        f"its commit (poll interval {POLL} s), the silent row with it; {counts} relay={relayed}"
    )

    assert unrelayed == 1
    assert 0 <= latency < PROMPT
    assert started[silent.id] - web.committed_at < PROMPT
    assert site.ran() == {web.ids[0]: 1, silent.id: 1}
    assert (counts.rows_left, relayed.relayed) == (0, 2)


def test_without_notify_the_relay_polls(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    server = redis_server_factory()
    site = sites(server.url, CSJD_TEST_OUTBOX_NOTIFY="0", CSJD_TEST_OUTBOX_POLL_INTERVAL="0.5")
    worker = site.worker()

    web = site.enqueue(1)
    assert web.returncode == 0, web.proc.err()
    assert web.committed_at is not None
    worker.wait_for(lambda: site.runs() >= 1, timeout=10, what="the job's run")
    latency = ran_at(site)[web.ids[0]] - web.committed_at
    relayed = site.stop_worker(worker)
    counts = site.counts()
    print(f"\npolling every 0.5 s: the job started {latency:.3f} s after its commit; {counts}")

    assert "listening for outbox commits" not in worker.err()
    assert 0 <= latency < PROMPT
    assert site.ran() == {web.ids[0]: 1}
    assert (counts.rows_left, relayed.relayed) == (0, 1)
