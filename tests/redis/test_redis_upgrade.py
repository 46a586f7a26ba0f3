"""Mixed versions (issue 17): job records of 0.1.0, which repeat the job's data, beside the
compact form (docs/distributed.md, "Upgrading").

The old side is the real thing: the package of commit `OLD_FORMAT` (the last one writing 0.1.0's
records), taken from the git history with ``git archive``. Its Lua scripts run as they were, so
the records and entries they write are 0.1.0's byte for byte, and its worker runs in a
subprocess (``worker_proc.py`` with that package first on ``PYTHONPATH``).

- New code reads 0.1.0's records: new workers run, retry, dead-letter, reclaim and promote jobs
  that an old producer or an old worker left in Redis, ``status()`` reads them and
  ``requeue_dead`` moves their dead letters back.
- ``record_format="full"`` writes records byte for byte as 0.1.0 did (the stream entry and the
  dead letter never changed form), and 0.1.0's worker runs them — successes, retries, dead
  letters, scheduled and requeued jobs — next to a new worker in the same mode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, ROOT, Dispatchers, Workers, submit_all

from csjd_core import Job, JobContext, JobState
from csjd_core.backends.redis import QueueKeys, codec
from csjd_core.testing import wait_until

#: The last commit of main whose records repeat the job's data (0.1.0's form).
OLD_FORMAT = "f7b9f15505cba723cb13fcb818884602e526aece"
GROUP = "csjd-workers"
PREFIX = "csjd:jobs"
KEYS = QueueKeys(PREFIX, "default")
MAX_PAYLOAD = 1024 * 1024


@pytest.fixture(scope="module")
def old_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``csjd_core`` of `OLD_FORMAT`."""
    directory = tmp_path_factory.mktemp("csjd-old")
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", OLD_FORMAT, "csjd_core"],
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        pytest.fail(f"the upgrade tests need git to take the old package: {exc}", pytrace=False)
    if archive.returncode != 0:
        pytest.fail(
            f"the upgrade tests take commit {OLD_FORMAT[:12]} (0.1.0's record form) from the "
            f"git history, which this checkout lacks (a shallow clone? git fetch --unshallow): "
            f"{archive.stderr.decode(errors='replace').strip()}",
            pytrace=False,
        )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


@pytest.fixture(scope="module")
def old_scripts(old_package: Path) -> dict[str, str]:
    """The old package's Lua scripts by name."""
    lua = old_package / "csjd_core" / "backends" / "redis" / "lua"
    return {path.stem: path.read_text() for path in lua.glob("*.lua")}


def data_of(job: Job) -> str:
    """A job's entry data (the ``d`` field), as both versions encode it."""
    return codec.encode(job, 3, MAX_PAYLOAD)[0]


def old_enqueue(client: Any, scripts: dict[str, str], keys: QueueKeys, jobs: list[Job]) -> None:
    """0.1.0's admission: its enqueue.lua, with its arguments."""
    args: list[Any] = [1000, 600_000, ""]
    for job in jobs:
        data, max_attempts = codec.encode(job, 3, MAX_PAYLOAD)
        args += [job.id, data, codec.run_at_ms(job), max_attempts]
    records = [keys.job(job.id) for job in jobs]
    script_keys = [keys.stream, keys.delayed, keys.pending, *records]
    assert client.eval(scripts["enqueue"], len(script_keys), *script_keys, *args) == [b"ok"]


def record(client: Any, job_id: str) -> dict[str, str]:
    """A job record of the default queue, without the fields that hold a moment."""
    raw = client.hgetall(KEYS.job(job_id))
    moments = {"enqueued_at", "started_at", "finished_at"}
    return {codec.text(k): codec.text(v) for k, v in raw.items() if codec.text(k) not in moments}


def entries(client: Any) -> list[dict[bytes, bytes]]:
    """The fields of the default queue's stream entries."""
    return [fields for _, fields in client.xrange(KEYS.stream)]


def test_the_full_form_is_what_0_1_0_wrote_byte_for_byte(
    dispatchers: Dispatchers,
    redis_client: Any,
    redis_url: str,
    old_package: Path,
    old_scripts: dict[str, str],
) -> None:
    # The entry form never changed: 0.1.0's codec encodes a job as this one does.
    job = Job("x", "email.send", {"to": "a@example.org", "n": [1, 2]}, max_attempts=4, timeout=9)
    old_encode = subprocess.run(
        [
            sys.executable,
            "-c",
            "from csjd_core import Job; from csjd_core.backends.redis import codec; "
            "print(codec.encode(Job('x', 'email.send', {'to': 'a@example.org', 'n': [1, 2]}, "
            "max_attempts=4, timeout=9), 3, 1 << 20)[0], end='')",
        ],
        capture_output=True,
        text=True,
        cwd=old_package,  # its csjd_core first on sys.path
        check=True,
    )
    assert old_encode.stdout == data_of(job)

    # The same jobs, written by 0.1.0's scripts into database 1 and by new code in the full
    # form into database 0: the same keys, the same fields, the same bytes.
    old = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    jobs = [
        Job("queued", "work", {"ms": 0}),
        Job("limited", "work", {"ms": 1}, max_attempts=2, timeout=5),
        Job("later", "work", {"ms": 2}, run_at=soon),
    ]
    old_enqueue(old, old_scripts, KEYS, jobs)
    producer = dispatchers(record_format="full")
    producer.submit_batch(jobs)
    for job in jobs:
        assert record(redis_client, job.id) == record(old, job.id), job.id
    assert entries(redis_client) == entries(old)
    assert [f[b"id"] for f in entries(old)] == [b"queued", b"limited"]

    # Promotion: 0.1.0's promote.lua, and the new one in the full form.
    def old_promote() -> Any:
        return old.eval(old_scripts["promote"], 2, KEYS.stream, KEYS.delayed, KEYS.job_prefix, 10)

    def new_promote() -> Any:
        return producer.backend.connection.run(
            "promote", KEYS.promote(), [KEYS.job_prefix, 10, "full"]
        )

    wait_until(lambda: old_promote()[0] == 1, 5.0)
    wait_until(lambda: new_promote()[0] == 1, 5.0)
    assert record(redis_client, "later") == record(old, "later")
    assert entries(redis_client) == entries(old)

    # A dead letter requeued (the dead-letter form never changed either).
    letter = {"id": "gone", "entry": "1-0", "d": data_of(jobs[0]), "error": "x"}
    for client in (old, redis_client):
        client.xadd(KEYS.dead, letter, id="5-0")
    keys = [KEYS.stream, KEYS.dead, KEYS.pending, KEYS.job("gone")]
    assert old.eval(old_scripts["requeue_dead"], 4, *keys, "5-0", "gone", letter["d"]) == 1
    assert producer.requeue_dead("5-0")
    assert record(redis_client, "gone") == record(old, "gone")
    assert entries(redis_client) == entries(old)
    old.close()


def test_new_workers_run_what_0_1_0_left_in_redis(
    dispatchers: Dispatchers, redis_client: Any, old_scripts: dict[str, str]
) -> None:
    client, scripts = redis_client, old_scripts
    # An old worker ("old", now dead) took three jobs: one it left running, one it retried,
    # one it dead-lettered — with 0.1.0's start.lua and settle.lua.
    taken = [Job(i, "work", {"ms": 0}) for i in ("orphan", "retried", "dead")]
    old_enqueue(client, scripts, KEYS, taken)
    client.xgroup_create(KEYS.stream, GROUP, id="0")
    read = client.xreadgroup(GROUP, "old", {KEYS.stream: ">"}, count=3)
    entry = {codec.text(f[b"id"]): codec.text(e) for e, f in read[0][1]}
    started = [KEYS.stream, *(KEYS.job(j.id) for j in taken)]
    client.eval(scripts["start"], len(started), *started, GROUP, "old", *entry.values())
    ops = [
        {"k": "retry", "e": entry["retried"], "id": "retried", "n": 1, "err": "boom", "tb": "",
         "delay": 0, "a": 1},
        {"k": "dead", "e": entry["dead"], "id": "dead", "n": 1, "err": "bad", "tb": "",
         "reason": "error", "a": 1},
    ]  # fmt: skip
    settle = [*KEYS.settle(), KEYS.job("retried"), KEYS.job("dead")]
    settled = client.eval(
        scripts["settle"], len(settle), *settle, GROUP, "old", 60_000, 100, json.dumps(ops)
    )
    assert settled == [1, 1]
    # And an old producer queued four more.
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    queued = [
        Job("ok", "work", {"ms": 0}),
        Job("flaky", "flaky", {"n": 1}),
        Job("doomed", "fail", {"n": 2}, max_attempts=2),
        Job("later", "work", {"ms": 3}, run_at=soon),
    ]
    old_enqueue(client, scripts, KEYS, queued)
    assert "data" in record(client, "ok")  # 0.1.0's form

    worker = dispatchers(workers=2)  # new code, compact records
    expect = {j.id: j for j in [*taken, *queued]}
    for job_id, state in [
        ("orphan", JobState.RUNNING),
        ("retried", JobState.SCHEDULED),
        ("dead", JobState.FAILED),
        ("ok", JobState.QUEUED),
        ("later", JobState.SCHEDULED),
    ]:
        status = worker.status(job_id)
        assert (status.state, status.type, status.payload) == (
            state,
            expect[job_id].type,
            expect[job_id].payload,
        )

    def work(ctx: JobContext, job: Job) -> str:
        return "new"

    def flaky(ctx: JobContext, job: Job) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt")
        return "new"

    def fail(ctx: JobContext, job: Job) -> None:
        raise RuntimeError("always")

    for name, fn in (("work", work), ("flaky", flaky), ("fail", fail)):
        worker.register_handler(name, fn)
    (letter,) = worker.dead_letters()
    assert (letter.job_id, letter.data) == ("dead", data_of(expect["dead"]))
    assert worker.requeue_dead(letter.entry_id)  # written back in the compact form
    worker.start()
    wait_until(lambda: worker.pending() == 0, DEADLINE)
    attempts = {"orphan": 2, "retried": 2, "dead": 1, "ok": 1, "flaky": 2, "later": 1}
    for job_id, job in expect.items():
        status = worker.status(job_id)
        assert status.payload == job.payload, job_id  # kept with the outcome
        if job_id == "doomed":
            assert (status.state, status.attempts) == (JobState.FAILED, 2)
        else:
            assert (status.state, status.attempts, status.result) == (
                JobState.SUCCEEDED,
                attempts[job_id],
                "new",
            ), job_id
    (letter,) = worker.dead_letters()
    assert (letter.job_id, letter.data, letter.attempts) == ("doomed", data_of(queued[2]), 2)


def test_workers_of_0_1_0_run_jobs_written_in_the_full_form(
    workers: Workers, dispatchers: Dispatchers, old_package: Path
) -> None:
    # Step 1 of a rolling upgrade: new producers in the full form, 0.1.0's worker runs it all.
    old = workers("old", pythonpath=old_package)
    assert Path(old.stats()["package"]).is_relative_to(old_package)  # 0.1.0's package
    producer = dispatchers(record_format="full")
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    jobs = [Job(f"w{i}", "work", {"ms": 0}) for i in range(20)]
    jobs += [Job(f"flaky{i}", "flaky", {}) for i in range(3)]
    jobs += [Job(f"later{i}", "work", {"ms": 0}, run_at=soon) for i in range(2)]
    doomed = [Job(f"doomed{i}", "fail", {}, max_attempts=2) for i in range(2)]
    submit_all(producer, jobs + doomed)
    wait_until(lambda: producer.pending() == 0, DEADLINE, message=workers.logs)
    assert set(old.done()) == {j.id for j in jobs}
    for job in jobs + doomed:
        status = producer.status(job.id)
        assert status.payload == job.payload, job.id
    assert {(d.job_id, d.data, d.attempts) for d in producer.dead_letters()} == {
        (j.id, data_of(j), 2) for j in doomed
    }
    # A dead letter requeued by new code in the full form: the old worker runs it again.
    letter = producer.dead_letters()[0]
    assert producer.requeue_dead(letter.entry_id)
    wait_until(lambda: producer.pending() == 0 and producer.dead_count() == 2, DEADLINE)
    assert old.started().count(letter.job_id) == 4  # two attempts, twice

    # A new worker in the full form joins: both versions share the queue.
    new = workers("new", record_format="full")
    more = [Job(f"m{i}", "work", {"ms": 20}) for i in range(40)]
    more += [Job(f"mflaky{i}", "flaky", {}) for i in range(4)]
    submit_all(producer, more)
    wait_until(lambda: producer.pending() == 0, DEADLINE, message=workers.logs)
    counts = workers.done()
    assert all(counts[j.id] == 1 for j in jobs + more)
    assert old.done() and new.done()
    assert producer.dead_count() == 2


def test_a_worker_of_0_1_0_decodes_an_entry_with_an_expiry(old_package: Path) -> None:
    """The entry's optional ``expires`` field (issue 18): a worker from before expiry decodes
    the job (and ignores the field: it runs the job even after its expiry, see
    docs/distributed.md "Wire format"); without an expiry the entry is unchanged."""
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    job = Job("x", "email.send", {"expires": 1}, expires=expires)
    data = data_of(job)
    assert data.startswith('{"expires":1893456000000,"type":"email.send",')
    assert data_of(Job("x", "email.send", {"expires": 1})).startswith('{"type":')
    old_decode = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from csjd_core.backends.redis import codec; "
            "job, _, problem = codec.decode(b'x', sys.argv[1].encode(), 1 << 20); "
            "print(problem, job.type, job.payload)",
            data,
        ],
        capture_output=True,
        text=True,
        cwd=old_package,
        check=True,
    )
    assert old_decode.stdout.strip() == "None email.send {'expires': 1}"
