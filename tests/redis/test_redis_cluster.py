"""Redis Cluster under resharding (issue 17): the slot of a busy queue moved to another master
and back while worker subprocesses consume it and producer subprocesses submit to it.

Counted as in test_redis_faults.py: every worker appends the ids it finished to its own file,
so loss is an accepted id in no file and a duplicate an id in them twice. What clients see while
a slot migrates, and why, is in docs/scaling.md (Resharding).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from procs import Proc
from redis_cluster import RedisClusterProcess
from redis_support import DEADLINE, ENV, ROOT, SCRIPT, Dispatchers, Workers, lines

from csjd_core import BackendUnavailable, Job
from csjd_core.backends.redis.connection import SLOT_MIGRATING
from csjd_core.testing import WaitTimeout, wait_until

GROUP = "csjd-workers"
#: Slots 9669 and 15968: the second and the third master's. A worker consumes both, so its
#: reads and settles span two nodes while one of its queues moves.
MOVED, STEADY = "resharded", "steady"
WORKERS, THREADS = 3, 4

#: Log lines of the workers counted in the test's report (pytest -s prints it).
LOG_LINES = {
    "slot migrating": "queue slot migrating",
    "reads paused": "its entries wait until it ends",
    "outcome retried": "slot migrating while recording an outcome",
    "lost claim": "lost its claim",
    "lease lost": "lease lost",
    "reclaimed": "reclaimed entries from stalled consumers",
    "poison": "poison entry dead-lettered",
    "failed": " failed",  # "reader cycle failed", "maintenance failed"...
    "non local key": "non local key",
}


def test_no_script_acts_on_a_queue_whose_slot_is_half_migrated(
    redis_cluster_factory: Callable[..., RedisClusterProcess],
) -> None:
    # Before the fix: promote.lua took the due ids out of the delayed set, then was refused
    # reading a record that had moved (on the source) or read it as missing (on the target):
    # the jobs were lost. read_start.lua delivered entries, then was refused starting them.
    cluster = redis_cluster_factory(masters=3)  # its own: a slot is left half-moved a while
    made = Dispatchers(cluster.url)
    try:
        backend = made(queues=(MOVED,)).backend
        backend.reader.ensure_groups()
        keys = backend.keys_for(MOVED)
        run_at = datetime.now(UTC) + timedelta(seconds=0.2)
        made.made[0].submit_batch(
            [Job(i, "work", queue=MOVED, run_at=run_at) for i in ("early", "late")]
        )
        made.made[0].submit(Job("ready", "work", queue=MOVED))
        wait_until(lambda: datetime.now(UTC) > run_at + timedelta(seconds=0.05), DEADLINE)
        run = backend.connection.run
        group, prefix = backend.config.group, keys.job_prefix

        def scripts() -> tuple[Any, Any, Any]:
            return (
                run("promote", keys.promote(), [prefix, 500, "compact"]),
                run(
                    "read_start",
                    [*keys.streams, keys.pending, keys.stats],
                    [group, "c1", prefix, 3, 0, 1000],
                ),
                run("reclaim", keys.reclaim(), [group, "c1", 0, 5, 10, "0-0", prefix, 1000, 10]),
            )

        # reclaim.lua declares them: Redis itself refuses (TRYAGAIN) a script whose declared
        # key is missing while its slot migrates. Here the script must run, to show what it does.
        client = backend.client
        client.hset(keys.stats, "processed", 0)
        client.xdel(keys.dead, client.xadd(keys.dead, {"id": "none"}))  # an empty stream
        client.hset(keys.schedule("tick"), mapping={"mark": 1, "running": "early"})
        slot = cluster.keyslot(keys.stream)
        target = next(node for node in cluster.masters if node is not cluster.owner(slot))
        source = cluster.begin_move(slot, target)
        on_source = redis.Redis(source.host, source.port)
        # One record moved: the source refuses a script's access to it (after earlier writes).
        assert cluster.migrate(source, target, [keys.job("early"), keys.job("ready")])
        assert scripts() == ([0, -1], 0, [b"0-0", [], [], []])
        # A schedule's slot with max_running reads its runs' records before writing: refused
        # as Redis refuses a command then (TRYAGAIN), which the client waits out, then gives up.
        slot_args = [100, 1000, "compact", "slot", 2, 1, 0, prefix, "", "late", "{}", "", 3, ""]
        with pytest.raises(SLOT_MIGRATING):
            run("enqueue", keys.enqueue(["late"], "tick"), slot_args)
        # The queue's own keys moved too, "late"'s record not yet: the scripts run on the
        # target (ASK), where that record would read as missing.
        queue_keys = [
            *keys.streams,  # every priority band's
            keys.delayed,
            keys.pending,
            keys.dead,
            keys.stats,
            keys.schedule("tick"),
        ]
        assert cluster.migrate(source, target, queue_keys)
        assert on_source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert scripts() == ([0, -1], 0, [b"0-0", [], [], []])
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match="being moved to another Redis Cluster"):
            made.made[0].submit(Job("meanwhile", "work", queue=MOVED))  # TRYAGAIN, waited out
        print(f"\nan enqueue refused after {time.monotonic() - began:.2f} s")

        assert cluster.migrate(source, target, [keys.job("late")])
        cluster.end_move(slot, target)
        on_target = redis.Redis(target.host, target.port)
        assert on_target.zcard(keys.delayed) == 2  # nothing was taken out of it meanwhile
        promoted, read, _ = scripts()
        assert promoted[0] == 2 and on_target.zcard(keys.delayed) == 0
        assert sorted(read[1::6]) == [b"early", b"late", b"ready"]  # started: nothing lost
        assert read[3::6] == [1, 1, 1]
        assert on_target.xpending(keys.stream, group)["pending"] == 3
    finally:
        made.close()


def producer(tmp_path: Path, url: str, name: str, queue: str, count: int, pause: float) -> Proc:
    """A ``worker_proc.py produce`` child submitting ``count`` jobs (ids ``NAME-i``, the --mix
    of plain, delayed and flaky ones) to ``queue``, one every ``pause`` seconds or so, each
    submitted again with its id until Redis takes it."""
    argv = [sys.executable, str(SCRIPT), "produce", "--url", url, "--out",
            str(tmp_path / f"{name}.lines"), "--go", str(tmp_path / "go"), "--queue", queue,
            "--prefix", name, "--count", str(count), "--pause", str(pause), "--mix",
            "--until-stored"]  # fmt: skip
    return Proc(argv, ENV, tmp_path, name, ROOT)


@pytest.mark.soak
@pytest.mark.timeout(240)
def test_a_busy_queue_moved_to_another_master_and_back(
    tmp_path: Path,
    redis_cluster_factory: Callable[..., RedisClusterProcess],
    private_workers: Workers,
) -> None:
    cluster = redis_cluster_factory(masters=3)
    url = cluster.url
    slot = cluster.keyslot(f"{{{MOVED}}}")
    home, steady_home = cluster.owner(slot), cluster.owner(cluster.keyslot(f"{{{STEADY}}}"))
    assert home is not steady_home
    away = next(node for node in cluster.masters if node not in (home, steady_home))
    workers = [
        private_workers(f"w{i}", url=url, workers=THREADS, queues=f"{MOVED},{STEADY}")
        for i in range(WORKERS)
    ]
    makers = [
        producer(tmp_path, url, "m0", MOVED, 1500, 0.004),
        producer(tmp_path, url, "m1", MOVED, 1500, 0.004),
        producer(tmp_path, url, "s0", STEADY, 1000, 0.006),
    ]
    for maker in makers:
        maker.wait_for((tmp_path / f"{maker.name}.lines.ready").exists, what="connected")
    (tmp_path / "go").touch()

    # Once the queue holds some hundreds of keys (finished jobs keep their record), so that
    # MIGRATE takes seconds: 5 keys every 20 ms, as a throttled resharding tool would.
    wait_until(lambda: sum(1 for i in private_workers.done() if i.startswith("m")) >= 600, 30)
    done_before = Counter(job_id[0] for job_id in private_workers.done().elements())
    there = cluster.move_slot(slot, away, batch=5, pause=0.02)
    back = cluster.move_slot(slot, home, batch=5, pause=0.02)
    done_during = Counter(job_id[0] for job_id in private_workers.done().elements())
    done_during.subtract(done_before)  # runs during the two moves: "m" moved, "s" steady
    assert cluster.owner(slot) is home
    for maker in makers:
        assert maker.wait(120) == 0, maker.err()

    verdicts: Counter[str] = Counter()
    accepted: list[str] = []
    for maker in makers:
        for line in lines(tmp_path / f"{maker.name}.lines"):
            verdict, job_id = line.split()
            verdicts[verdict] += 1
            if verdict in ("ok", "stored"):  # stored: a refused attempt had stored it
                accepted.append(job_id)
    with contextlib.suppress(WaitTimeout):  # the report below says what is missing
        wait_until(lambda: set(accepted) <= set(private_workers.done()), 60)
    counts = private_workers.done()
    missing = sorted(set(accepted) - set(counts))
    duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
    logs = "\n".join(w.log() for w in workers)
    refusals = Counter(
        re.sub(r"id=\S+ ", "", line)[:100]
        for maker in makers
        for line in maker.err().splitlines()
        if line.startswith("down ")
    )
    print(
        f"\nresharding {MOVED!r} (slot {slot}): there {there}, back {back}\n"
        f"  runs during the two moves {dict(done_during)}; producers {dict(verdicts)}, "
        f"refusals {dict(refusals)}\n"
        f"  accepted {len(accepted)}, runs {sum(counts.values())}, missing {len(missing)} "
        f"{missing[:20]}, duplicated {len(duplicates)} {sorted(duplicates)[:20]}\n"
        f"  worker log lines { ({k: logs.count(text) for k, text in LOG_LINES.items()}) }"
    )

    assert sorted(accepted) == sorted(set(accepted))
    assert len(accepted) == 4000  # each producer went on until Redis took every job
    assert done_during["s"] > 0  # the other queue went on while this one moved
    assert not missing, "accepted jobs never done"
    # No worker died and no lease is meant to be lost (renewals need only the stream, which a
    # script reaches on either node): a job may run twice only if its attempt lost its lease,
    # so at most the attempts in flight at one moment (each worker's THREADS running plus as
    # many read ahead or waiting to be recorded), as in the SIGKILL test.
    in_flight = WORKERS * 2 * THREADS
    assert sum(n - 1 for n in duplicates.values()) <= in_flight, duplicates
    assert "Exception in thread" not in logs
    assert "non local key" not in logs  # no script stopped half-way (docs/scaling.md)

    watcher = Dispatchers(url)
    try:
        backend = watcher(queues=(MOVED, STEADY)).backend
        wait_until(lambda: backend.pending() == 0, DEADLINE)
        for queue in (MOVED, STEADY):
            assert backend.client.xpending(f"csjd:jobs:{{{queue}}}", GROUP)["pending"] == 0
            assert backend.dead_count(queue) == 0  # the flaky jobs' second attempt succeeded
            assert backend.client.zcard(f"csjd:jobs:{{{queue}}}:delayed") == 0
    finally:
        watcher.close()
