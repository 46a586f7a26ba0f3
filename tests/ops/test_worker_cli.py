"""``csjd worker`` in one process: banner, queues, burst, progress, SIGTERM, credentials."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from ops_support import APP, Cli, keys, states

from csjd_core import JobState
from csjd_core.config import RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.worker import EXIT_FORCED


def test_burst_consumes_every_listed_queue_and_exits_0(cli: Cli, redis_client: Any) -> None:
    a = cli.enqueue([f"a{i}" for i in range(12)], queue="a")
    b = cli.enqueue([f"b{i}" for i in range(12)], queue="b")
    cli.enqueue(["c0"], queue="c")  # not listed: left alone

    result = cli.run(
        "worker", APP, "--queues", "a,b", "--burst", "--workers", "3", "--log-level", "warning"
    )

    assert result.returncode == 0, result.stderr
    assert cli.ran() == Counter(dict.fromkeys(a + b, 1))
    assert states(redis_client, a, "a") == {"succeeded": 12}
    assert states(redis_client, b, "b") == {"succeeded": 12}
    assert states(redis_client, ["c0"], "c") == {"queued": 1}
    banner = result.stderr.splitlines()[0]
    assert "queues=a,b" in banner
    assert "workers=3" in banner
    assert f"redis={cli.url}" in banner
    assert " INFO " not in result.stderr  # --log-level on the worker command itself


def test_burst_on_empty_queues_exits_at_once(cli: Cli) -> None:
    result = cli.run("worker", APP, "--burst", timeout=30)
    assert result.returncode == 0, result.stderr
    assert cli.ran() == Counter()


def test_progress_line_each_second_then_sigterm_drains_and_exits_0(
    cli: Cli, redis_client: Any
) -> None:
    ids = cli.enqueue(["s0", "s1", "s2", "s3"], args=[2.5])  # 2 worker threads: 2 run, 2 wait
    worker = cli.start("worker", APP)
    lines = worker.wait_for_line(r"progress jobs_per_s=\d+ in_flight=2 ", count=2)
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in lines[:2]]
    assert (stamps[1] - stamps[0]).total_seconds() >= 0.9  # one line a second, not more
    running = {i for i in ids if states(redis_client, [i]) == {"running": 1}}
    assert running

    worker.signal(signal.SIGTERM)

    assert worker.wait() == 0, worker.err()
    assert "signal received; draining" in worker.err()
    ran = cli.ran()
    assert running <= set(ran)  # the running jobs finished
    assert set(ran.values()) == {1}
    after = states(redis_client, ids)
    assert after["succeeded"] == len(ran)
    assert after["queued"] == len(ids) - len(ran)  # the rest wait in Redis, none is running
    # A later worker finishes them: nothing lost, nothing run twice.
    result = cli.run("worker", APP, "--burst")
    assert result.returncode == 0, result.stderr
    assert cli.ran() == Counter(dict.fromkeys(ids, 1))


def test_second_sigterm_exits_at_once_and_a_later_worker_recovers_the_jobs(
    cli: Cli, redis_client: Any
) -> None:
    ids = cli.enqueue(["f0", "f1"], args=[0, 60])  # 60 s on the first attempt only
    worker = cli.start("worker", APP)
    # Both handlers entered (read is not enough: a read entry no worker thread has taken yet is
    # handed back to the queue when the drain begins).
    worker.wait_for(lambda: cli.began() == Counter(ids), what="both handlers running")

    worker.signal(signal.SIGTERM)
    worker.wait_for_line("signal received; draining")
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=15) == EXIT_FORCED
    assert "second signal, exiting now without draining" in worker.err()
    assert cli.ran() == Counter()
    assert states(redis_client, ids) == {"running": 2}  # left in Redis, not lost
    # Another worker reclaims them once their lease (1 s) runs out.
    result = cli.run("worker", APP, "--burst")
    assert result.returncode == 0, result.stderr
    assert cli.ran() == Counter(dict.fromkeys(ids, 1))
    assert "reclaimed entries from stalled consumers" in result.stderr


def test_worker_refuses_an_in_process_app(cli: Cli) -> None:
    result = cli.run("worker", "opsapp:inprocess")
    assert result.returncode == 1
    # The one wording every front end uses (RedisModeRequired).
    assert "csjd worker works on Redis queues, but CSJD_MODE is 'inprocess'" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_without_redis_exits_1_with_a_clear_message(cli: Cli) -> None:
    result = cli.run("worker", APP, env={"CSJD_TEST_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 1
    assert "cannot start the worker: Redis at redis://127.0.0.1:1/0 unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_app_specs_are_clear_errors(cli: Cli) -> None:
    for spec, message in (
        ("opsapp", "expected module:attr"),
        ("no_such_module:app", "cannot import 'no_such_module'"),
        ("opsapp:nothing", "has no attribute 'nothing'"),
        ("opsapp:LEASE", "not a csjd_core.App"),
    ):
        result = cli.run("stats", spec)
        assert result.returncode == 2, (spec, result.stderr)
        assert message in result.stderr, (spec, result.stderr)
        assert "Traceback" not in result.stderr
    # A zero-argument factory is accepted.
    assert cli.run("stats", "opsapp:make_app").returncode == 0


def test_the_csjd_script_is_installed() -> None:
    script = shutil.which("csjd", path=os.path.dirname(sys.executable))
    assert script is not None, "pip install -e . should install the csjd script"
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0
    for command in ("worker", "stats", "health", "dead", "replay"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), result.stdout


# The least-privilege ACL users that docs/production.md documents: if a command CSJD needs is
# missing here, one of the commands below fails with NOPERM (or the ACL log shows a refusal).
WORKER_ACL = (
    "+xadd +xreadgroup +xack +xdel +xclaim +xautoclaim +xpending +xgroup|create "
    "+xgroup|delconsumer +xinfo|consumers +xlen +xrange +evalsha +script|load +zadd +zrem +zrange "
    "+zrangebyscore +zcard +hset +hget +hgetall +hdel +hincrby +get +set +incr +incrby +decr "
    "+pexpire +del +exists +time"
)
PRODUCER_ACL = (
    "+evalsha +script|load +time +get +hget +hgetall +hset +del +xadd +zadd +incrby +xrange"
)
# A web process that also cancels jobs (cancel.lua).
CANCEL_ACL = PRODUCER_ACL + " +zrem +xpending +xdel +pexpire +hincrby"
MONITOR_ACL = "+xinfo|consumers +xpending +xlen +xrange +zcard +get +hgetall"  # read-only keys
PASSWORD = "pw-Zq81-never-printed"


def test_least_privilege_acl_users_and_no_password_in_any_output(
    redis_server_factory: Any, tmp_path: Path
) -> None:
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url)
    for user, keys_rule, rules in (
        ("csjd-worker", "~csjd:*", WORKER_ACL),
        ("csjd-web", "~csjd:*", PRODUCER_ACL),
        ("csjd-canceller", "~csjd:*", CANCEL_ACL),
        ("csjd-monitor", "%R~csjd:*", MONITOR_ACL),
    ):
        admin.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}", keys_rule, "resetchannels",
            "-@all", *rules.split(),
        )  # fmt: skip
    admin.execute_command("ACL", "LOG", "RESET")
    url = f"redis://csjd-worker:{PASSWORD}@{server.host}:{server.port}/0"
    web_url = url.replace("csjd-worker", "csjd-web")
    cli = Cli(tmp_path, url)
    web = Cli(tmp_path, web_url)  # a web process only submits and reads statuses
    outputs: list[str] = []
    try:
        ids = web.enqueue([f"j{i}" for i in range(10)])
        web.enqueue(["bad"], type="explode", args=["acl"], max_attempts=1)
        web.enqueue(["later"], run_at=datetime.now(UTC) + timedelta(hours=1))
        web.enqueue(["doomed"])
        web.enqueue(["doomed-later"], run_at=datetime.now(UTC) + timedelta(hours=1))
        canceller = {"CSJD_TEST_REDIS_URL": url.replace("csjd-worker", "csjd-canceller")}
        cancelled = cli.run("cancel", APP, "doomed", "doomed-later", env=canceller)
        outputs += [cancelled.stdout, cancelled.stderr]
        assert cancelled.stdout.splitlines() == ["cancelled doomed", "cancelled doomed-later"]
        reader = RedisDistributedDispatcher(RedisConfig.from_url(web_url))
        queued = reader.status("j0")  # a queued job's data is read from its stream entry
        assert (queued.state, queued.payload) == (JobState.QUEUED, {"args": [], "kwargs": {}})
        worker = cli.start("worker", APP)
        worker.wait_for(lambda: len(cli.ran()) == 10, what="10 jobs done")
        worker.wait_for(lambda: admin.xlen(keys().dead) == 1, what="a dead letter")

        monitor = {"CSJD_TEST_REDIS_URL": url.replace("csjd-worker", "csjd-monitor")}
        health = cli.run("health", APP, env=monitor)
        stats = cli.run("stats", APP, "--json", env=monitor)
        dead = cli.run("dead", APP, "list", env=monitor)
        outputs += [result.stdout + result.stderr for result in (health, stats, dead)]
        assert health.returncode == 0, health.stderr
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["default"]["scheduled"] == 1
        assert dead.returncode == 0 and "bad" in dead.stdout, dead.stderr
        requeue = cli.run("dead", APP, "requeue", "--all", "--yes")
        outputs += [requeue.stdout, requeue.stderr]
        assert "requeued 1 of 1" in requeue.stdout, requeue.stderr
        worker.wait_for(lambda: admin.xlen(keys().dead) == 1, what="dead-lettered again")
        purge = cli.run("dead", APP, "purge", "--yes")
        outputs += [purge.stdout, purge.stderr]
        assert "purged 1" in purge.stdout, purge.stderr

        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.err()
        outputs += [worker.out(), worker.err()]
        assert cli.ran() == Counter(dict.fromkeys(ids, 1))
        assert f"redis=redis://csjd-worker:***@{server.host}:{server.port}/0" in worker.err()
        assert reader.status("j0").state is JobState.SUCCEEDED
        assert reader.status("later").state is JobState.SCHEDULED
        reader.close()

        wrong = cli.run("health", APP, env={"CSJD_TEST_REDIS_URL": url.replace(PASSWORD, "x")})
        outputs += [wrong.stdout, wrong.stderr]
        assert wrong.returncode == 1
        assert "unhealthy: cannot reach Redis" in wrong.stderr
    finally:
        cli.close()
    assert not [text for text in outputs if PASSWORD in text]
    log = admin.acl_log()
    # Only the wrong password; no command or key was refused (redis-py may announce itself with
    # CLIENT SETINFO and ignore the refusal: harmless).
    assert {entry["reason"] for entry in log if entry["object"] != "client|setinfo"} == {"auth"}
    admin.close()
