"""Cancelling jobs that real worker subprocesses hold (issue 18): a running job in another
process notices its cancellation within the heartbeat interval (renew.lua's flag, read on the
heartbeat's round trip), and cancel racing completion ends every job in exactly one final state
(cancel.lua against settle.lua, each one atomic step).

Workers are ``tests/redis/worker_proc.py worker`` children (``patient``: waits on ``ctx.wait``;
``work``: sleeps, ignoring any cancellation).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from redis_support import DEADLINE, Dispatchers, Workers, lines

from csjd_core import Job, JobState
from csjd_core.testing import wait_until

HEARTBEAT = 0.2  # the workers' heartbeat_interval


@pytest.mark.parametrize("server_url", ["redis", "cluster"], indirect=True)
def test_a_running_job_in_another_process_notices_within_the_heartbeat(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    worker = workers("w", workers=2, heartbeat=HEARTBEAT)
    producer = dispatchers()
    producer.submit_batch([Job(f"p{i}", "patient", {"s": 30}) for i in range(2)])
    wait_until(lambda: sorted(worker.started()) == ["p0", "p1"], DEADLINE)
    asked = time.time()
    assert producer.cancel("p0") is True
    noticed = worker.path("noticed")
    wait_until(lambda: lines(noticed), DEADLINE)
    [(job_id, at)] = [line.split() for line in lines(noticed)]
    assert job_id == "p0"
    delay = float(at) - asked
    assert delay < HEARTBEAT + 0.5, f"noticed {delay:.3f} s after the cancel"
    wait_until(lambda: producer.status("p0").state is JobState.CANCELLED, DEADLINE)
    status = producer.status("p0")
    assert (status.cancel_reason, status.result, status.attempts) == ("cancelled", "stopped", 1)
    assert producer.status("p1").state is JobState.RUNNING  # the other one runs on
    assert producer.cancel("p1") is True
    wait_until(lambda: producer.status("p1").state is JobState.CANCELLED, DEADLINE)
    stats = next(iter(producer.stats().values()))
    assert (stats.counters.cancelled, stats.counters.succeeded, stats.unfinished) == (2, 0, 0)


def test_cancel_racing_completion_in_a_worker_process(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    """1,000 races (about 2 s)."""
    run_races(workers, dispatchers, 1000)


def run_races(workers: Workers, dispatchers: Dispatchers, races: int) -> None:
    """Jobs of 0-3 ms each, cancelled by four threads at a random moment after they start:
    every job ends in exactly one final state, which the cancel's answer predicts (True:
    ``cancelled``, the result kept if the handler finished; False: ``succeeded``), and no job
    runs twice."""
    workers("w", workers=4, heartbeat=HEARTBEAT)
    producer = dispatchers()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def race(thread: int) -> None:
        rng = random.Random(thread)
        try:
            for i in range(thread, races, 4):
                job_id = f"race-{i}"
                producer.submit(Job(job_id, "work", {"ms": rng.uniform(0, 3)}))
                if i % 10:  # most around the completion, a few while it waits
                    wait_until(
                        lambda j=job_id: producer.status(j).state is not JobState.QUEUED,
                        DEADLINE,
                    )
                time.sleep(rng.uniform(0, 0.003))  # a random moment, not a synchronisation
                answer = producer.cancel(job_id)
                wait_until(lambda j=job_id: producer.status(j).state.finished, DEADLINE)
                status = producer.status(job_id)
                if answer:
                    assert status.state is JobState.CANCELLED, job_id
                    kind = "cancelled, result kept" if status.result else "cancelled, no result"
                    if status.attempts == 0:
                        kind = "cancelled, never ran"
                else:
                    assert status.state is JobState.SUCCEEDED, job_id
                    assert status.result == "w"
                    kind = "succeeded first"
                with lock:
                    counts[kind] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(counts.values()) == races
    done = workers.done()
    assert max(done.values(), default=1) == 1, "a job ran twice"
    stats = next(iter(producer.stats().values()))
    cancelled = races - counts["succeeded first"]
    assert (stats.counters.cancelled, stats.counters.succeeded, stats.unfinished) == (
        cancelled,
        counts["succeeded first"],
        0,
    )
    # Every flag cancel.lua set was consumed by the outcome that read it (settle.lua reads job
    # records for flags only while some are unconsumed: a count that never returns to 0 would
    # cost an HGET per success forever).
    client = producer.backend.client
    assert int(client.hget(producer.backend.keys_for(None).stats, "flagged") or 0) == 0
    print(f"cancel races in a worker process ({races}):", dict(counts))


def test_a_full_form_record_is_cancelled_too(dispatchers: Dispatchers, redis_client: Any) -> None:
    """The full form (as 0.1.0 wrote it) does not name the job's entry: cancel.lua finds it."""
    producer = dispatchers(record_format="full")
    producer.submit_batch([Job(f"f{i}", "work", {"ms": 0}) for i in range(1500)])
    assert producer.cancel("f1400") is True
    assert producer.status("f1400").state is JobState.CANCELLED
    assert redis_client.xlen("csjd:jobs:{default}") == 1499
    assert producer.pending() == 1499
