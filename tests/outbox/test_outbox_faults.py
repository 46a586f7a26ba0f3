"""The outbox under faults, with real processes on PostgreSQL: Redis down when the web process
commits, the web process SIGKILLed right after its commit, a relay SIGKILLed between the
admission and the deletion of its rows, a queue at its cap (a worker, and a burst worker), a
rolled-back transaction; and two races found with them: ``status()`` while a relay moves the job,
a worker of other queues relaying a job. Every job is counted where it ran (``testapp_jobrun``):
jobs run == jobs committed, each once, and the outbox is left empty."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from outbox_support import ALREADY_RELAYED, Site, relay_counters

from redis_server import RedisServerProcess

pytestmark = pytest.mark.timeout(180)


def assert_each_ran_once(site: Site, ids: list[str]) -> None:
    ran = site.ran()
    assert set(ran) == set(ids), (
        f"never ran {len(set(ids) - set(ran))}, ran but never committed {len(set(ran) - set(ids))}"
    )
    twice = {job_id: n for job_id, n in ran.items() if n > 1}
    assert not twice, f"ran more than once: {twice}"


def test_redis_down_at_commit_time_the_commit_succeeds_and_every_job_runs_later(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    count = 100
    server = redis_server_factory()
    site = sites(server.url)
    server.kill()

    web = site.enqueue(count)  # the web process never touches Redis: the commit succeeds

    assert web.returncode == 0, web.proc.err()
    assert len(web.ids) == count
    assert site.rows_left() == count
    server.restart()  # same port, empty (no persistence): the rows are all there is
    worker = site.worker()
    worker.wait_for(lambda: site.runs() >= count, timeout=60, what=f"{count} runs")
    relayed = site.stop_worker(worker)
    counts = site.counts()
    print(f"\nredis down at commit: committed={len(web.ids)} {counts} relay={relayed}")

    assert_each_ran_once(site, web.ids)
    assert (counts.runs, counts.duplicates, counts.rows_left) == (count, 0, 0)
    assert (counts.stream, counts.pending, counts.succeeded) == (0, 0, count)
    assert (relayed.relayed, relayed.skipped) == (count, 0)


def test_the_web_process_killed_right_after_its_commit_loses_no_job(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    count = 100
    server = redis_server_factory()
    site = sites(server.url)
    worker = site.worker()

    web = site.enqueue(count, "--kill-after-commit")

    assert web.returncode == -signal.SIGKILL, web.proc.err()
    assert len(web.ids) == count
    worker.wait_for(lambda: site.runs() >= count, timeout=60, what=f"{count} runs")
    relayed = site.stop_worker(worker)
    counts = site.counts()
    print(f"\nweb killed after commit: committed={len(web.ids)} {counts} relay={relayed}")

    assert_each_ran_once(site, web.ids)
    assert (counts.runs, counts.duplicates, counts.rows_left) == (count, 0, 0)
    assert (counts.stream, counts.pending, counts.succeeded) == (0, 0, count)
    assert (relayed.relayed, relayed.skipped) == (count, 0)


def test_a_relay_killed_between_the_admission_and_the_delete_admits_nothing_twice(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    count = 200  # one batch (Relay's 500)
    server = redis_server_factory()
    site = sites(server.url)
    web = site.enqueue(count)
    assert web.returncode == 0, web.proc.err()

    # Redis admitted the batch, then the relay died before its DELETE and COMMIT.
    killed, code = site.run("outbox_relay_killed")
    assert code == -signal.SIGKILL, killed.err()
    assert killed.out() == f"admitted {count} of {count}\n"
    assert site.rows_left() == count  # the claim's transaction died with the process
    assert site.stream_ids() == web.ids  # ...after the admission

    # The next relay finds every id taken: it deletes the rows and admits nothing.
    relay, code = site.run("csjd_relay", "--burst")
    assert code == 0, relay.err()
    relayed = relay_counters(relay.err())
    deleted = [int(n) for n in ALREADY_RELAYED.findall(relay.err())]
    assert site.rows_left() == 0
    assert site.stream_ids() == web.ids

    worker = site.worker()
    worker.wait_for(lambda: site.runs() >= count, timeout=60, what=f"{count} runs")
    worker_relayed = site.stop_worker(worker)
    counts = site.counts()
    print(
        f"\nrelay killed before its delete: committed={len(web.ids)} the next relay: "
        f"{relayed} logged deleted={deleted}; {counts} worker relay={worker_relayed}"
    )

    assert (relayed.relayed, relayed.skipped) == (0, count)
    assert deleted == [count]
    assert_each_ran_once(site, web.ids)
    assert (counts.runs, counts.duplicates, counts.rows_left) == (count, 0, 0)
    assert (counts.stream, counts.pending, counts.succeeded) == (0, 0, count)
    assert (worker_relayed.relayed, worker_relayed.skipped) == (0, 0)


def test_rows_over_the_pending_cap_wait_with_backoff_and_all_run_once(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    count, cap = 300, 50
    server = redis_server_factory()
    site = sites(server.url, CSJD_TEST_MAX_PENDING=str(cap))
    web = site.enqueue(count)
    assert web.returncode == 0, web.proc.err()

    worker = site.worker()
    most_pending = most_attempts = 0

    def all_ran() -> bool:
        nonlocal most_pending, most_attempts
        most_pending = max(most_pending, site.counts().pending)
        tries = site.query("SELECT coalesce(max(attempts), 0) FROM csjd_outbox")
        most_attempts = max(most_attempts, int(tries))
        return site.runs() >= count

    worker.wait_for(all_ran, timeout=90, what=f"{count} runs")
    relayed = site.stop_worker(worker)
    counts = site.counts()
    waits = worker.err().count("queue full: outbox rows wait")
    print(
        f"\nqueue at its cap ({cap}): committed={len(web.ids)} {counts} relay={relayed} "
        f"'queue full' lines={waits} most pending seen={most_pending} most postponements of a "
        f"row seen={most_attempts}"
    )

    assert_each_ran_once(site, web.ids)
    assert (counts.runs, counts.duplicates, counts.rows_left) == (count, 0, 0)
    assert (counts.stream, counts.pending, counts.succeeded) == (0, 0, count)
    assert (relayed.relayed, relayed.skipped, relayed.set_aside) == (count, 0, 0)
    assert relayed.postponed >= count - cap  # every row past the first cap-full waited
    assert waits >= 1 and most_attempts >= 1
    assert most_pending <= cap


# In the soak tier (the default run's time budget): tests/django/test_outbox.py and
# tests/flask/test_flask_outbox.py prove a rollback in the default run.
@pytest.mark.soak
def test_a_rolled_back_transaction_relays_nothing_and_runs_nothing(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    server = redis_server_factory()
    site = sites(server.url)
    worker = site.worker()

    rolled_back = site.enqueue(50, "--rollback")
    assert rolled_back.returncode == 0, rolled_back.proc.err()
    assert rolled_back.proc.out() == "rolled back 50\n"
    assert site.rows_left() == 0
    # A control commit after it: the worker relays and runs jobs (so the 0 below means
    # something), then runs on for a few seconds.
    control = site.enqueue(1)
    assert control.returncode == 0, control.proc.err()
    worker.wait_for(lambda: site.runs() >= 1, timeout=30, what="the control job's run")
    time.sleep(3.0)
    relayed = site.stop_worker(worker)
    counts = site.counts()
    print(f"\nrolled back 50, then committed 1: {counts} relay={relayed}")

    assert site.ran() == {control.ids[0]: 1}
    assert (counts.runs, counts.rows_left, counts.stream, counts.pending) == (1, 0, 0, 0)
    assert (relayed.relayed, relayed.skipped) == (1, 0)


def test_a_burst_worker_exits_only_once_the_outbox_is_empty_too(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    # `csjd_worker --burst` exits "once no job is left": a committed job still in the outbox
    # (waiting for room under the cap here) is a job left, queued as far as `status` says.
    count, cap = 150, 50
    server = redis_server_factory()
    site = sites(server.url, CSJD_TEST_MAX_PENDING=str(cap))
    web = site.enqueue(count)
    assert web.returncode == 0, web.proc.err()

    worker, code = site.run("csjd_worker", "--burst", timeout=90)
    relayed = relay_counters(worker.err())
    counts = site.counts()
    print(f"\nburst worker, cap {cap}: committed={len(web.ids)} exit={code} {counts} {relayed}")

    assert code == 0, worker.err()
    assert_each_ran_once(site, web.ids)
    assert (counts.runs, counts.duplicates, counts.rows_left) == (count, 0, 0)
    assert (counts.stream, counts.pending, counts.succeeded) == (0, 0, count)
    assert relayed.relayed == count and relayed.postponed >= count - cap


def test_status_of_a_job_the_relay_moves_meanwhile_is_queued_not_not_found(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    # status() looks in the queue (not there yet), then in the outbox: a relay that commits
    # between the two looks has moved the job to the queue. It exists all along.
    server = redis_server_factory()
    site = sites(server.url)
    web = site.enqueue(1)
    assert web.returncode == 0, web.proc.err()

    probe, code = site.run("outbox_status_race", web.ids[0])
    print(f"\nstatus while the relay moves the job: {probe.out().split()} {site.counts()}")

    assert code == 0, probe.err()
    assert probe.out() == "relayed meanwhile 1\nstatus queued\n"
    assert site.rows_left() == 0 and site.stream_ids() == web.ids


def test_a_worker_of_other_queues_relays_a_job_into_the_queue_it_was_committed_for(
    sites: Callable[..., Site], redis_server_factory: Callable[..., RedisServerProcess]
) -> None:
    # The jobs name no queue: the app's default queue ("default"), as `delay()` would admit
    # them. The only relay runs in a worker of queue "other" (`--queues other`).
    count = 20
    server = redis_server_factory()
    site = sites(server.url)
    other = site.worker("--queues", "other")
    web = site.enqueue(count)
    assert web.returncode == 0, web.proc.err()
    other.wait_for(lambda: site.rows_left() == 0, what="the rows relayed")
    time.sleep(1.0)  # time enough for the worker of "other" to run what it was given
    before = site.counts()

    default = site.worker()
    default.wait_for(lambda: site.runs() >= count, timeout=60, what=f"{count} runs")
    pids = set(site.query("SELECT array_agg(DISTINCT pid) FROM testapp_jobrun"))
    for worker in (other, default):
        site.stop_worker(worker)
    counts = site.counts()
    print(
        f"\nrelayed by a worker of 'other': then default stream={before.stream} runs="
        f"{before.runs}; after a worker of 'default' ran: {counts} pids={pids} (other="
        f"{other.pid}, default={default.pid})"
    )

    assert (before.stream, before.runs) == (count, 0)
    assert_each_ran_once(site, web.ids)
    assert pids == {default.pid}
    assert (counts.runs, counts.rows_left, counts.stream, counts.pending) == (count, 0, 0, 0)
