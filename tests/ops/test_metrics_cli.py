"""``csjd worker --metrics-port``: /metrics scraped from real worker processes on a real Redis,
the figures counted against the jobs run; /healthz; bad ports.

Jobs (opsapp): ``record`` succeeds, ``flaky`` fails its first attempt then succeeds,
``explode`` fails for good on its only attempt, and a type no worker registers is
dead-lettered (counted under ``other``: it creates no series).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ops_support import APP, Cli, pids_started, states
from prometheus_client.parser import text_string_to_metric_families

from csjd_core.testing import wait_until

RECORDS, FLAKIES, EXPLODES = 5, 3, 2
HOUR = timedelta(hours=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) → value."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def enqueue_mix(cli: Cli) -> list[str]:
    ids = cli.enqueue([f"rec{i}" for i in range(RECORDS)])
    ids += cli.enqueue([f"fl{i}" for i in range(FLAKIES)], type="flaky")
    ids += cli.enqueue(
        [f"ex{i}" for i in range(EXPLODES)], type="explode", args=["x"], max_attempts=1
    )
    ids += cli.enqueue(["stranger"], type="attacker-chosen-type")
    return ids


def check_counts(scraped: dict[Any, float]) -> None:
    attempts = "csjd_attempts_total"
    q = {"queue": "default"}
    assert value(scraped, attempts, **q, type="record", outcome="succeeded") == RECORDS
    assert value(scraped, attempts, **q, type="flaky", outcome="retried") == FLAKIES
    assert value(scraped, attempts, **q, type="flaky", outcome="succeeded") == FLAKIES
    assert value(scraped, attempts, **q, type="explode", outcome="failed") == EXPLODES
    assert value(scraped, attempts, queue="other", type="other", outcome="failed") == 1
    total = sum(v for (name, _), v in scraped.items() if name == attempts)
    assert total == RECORDS + 2 * FLAKIES + EXPLODES + 1  # nothing else was counted
    # Every attempt that ran has its duration and its lag observed.
    count = "csjd_attempt_duration_seconds_count"
    assert value(scraped, count, **q, type="record") == RECORDS
    assert value(scraped, count, **q, type="flaky") == 2 * FLAKIES
    assert value(scraped, "csjd_job_lag_seconds_count", **q, type="record") == RECORDS
    # The unregistered type made no series, under any metric.
    assert not [key for key in scraped if ("type", "attacker-chosen-type") in key[1]]


def test_a_worker_serves_exact_counts_queue_gauges_and_health(
    cli: Cli, redis_server_factory: Any
) -> None:
    server = redis_server_factory()  # its own: the test kills it
    cli.url = server.url
    cli.env["CSJD_TEST_REDIS_URL"] = server.url
    ids = enqueue_mix(cli)
    port = free_port()
    worker = cli.start("worker", APP, "--metrics-port", port)
    worker.wait_for(lambda: get(port, "/healthz")[0] == 200, what="a healthy worker")
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(server.url)
    wait_until(
        lambda: (
            sum(states(client, ids).values()) == len(ids)
            and states(client, ids)["succeeded"] == RECORDS + FLAKIES
        ),
        30,
    )
    scraped = {}

    def settled() -> bool:  # the last outcome is counted just after its record is written
        nonlocal scraped
        scraped = samples(port)
        return value(scraped, "csjd_queue_dead_letters", queue="default") == EXPLODES + 1 and (
            sum(v for (n, _), v in scraped.items() if n == "csjd_attempts_total")
            == RECORDS + 2 * FLAKIES + EXPLODES + 1
        )

    wait_until(settled, 15)
    check_counts(scraped)
    gauges = {name: value(scraped, name, queue="default") for name in ("csjd_queue_length",)}
    assert gauges == {"csjd_queue_length": 0}
    assert value(scraped, "csjd_queue_consumers", queue="default") == 1
    assert value(scraped, "csjd_queue_unfinished", queue="default") == 0
    assert value(scraped, "csjd_in_flight", queue="default", type="record") == 0
    # Redis gone: the probe says so, the scrape still answers.
    server.kill()
    wait_until(lambda: get(port, "/healthz")[0] == 503, 15)
    assert "redis unreachable" in get(port, "/healthz")[1]
    assert get(port, "/metrics")[0] == 200
    assert get(port, "/nothing")[0] == 404


def test_queue_gauges_follow_the_queue(cli: Cli, redis_client: Any) -> None:
    """Known states of queue "b" (no worker): 4 waiting, 2 scheduled, 1 of them taken by a
    consumer; read by the collector the exporter serves, cached between scrapes."""
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    from csjd_core import App  # noqa: PLC0415
    from csjd_core.config import DistributedConfig, RedisConfig  # noqa: PLC0415
    from csjd_core.operations import redis_queues  # noqa: PLC0415
    from csjd_core.prometheus import QueueCollector  # noqa: PLC0415

    cli.enqueue([f"w{i}" for i in range(4)], type="record_b", queue="b")
    cli.enqueue(["s0", "s1"], type="record_b", queue="b", run_at=datetime.now(UTC) + HOUR)
    app = App(
        mode="redis",
        redis=RedisConfig.from_url(cli.url),
        distributed=DistributedConfig(queues=("b",), group="csjd-workers"),
    )
    with redis_queues(app) as dispatcher:
        reader = dispatcher.backend.reader
        reader.ensure_groups()
        stream = dispatcher.backend.keys_for("b").stream
        redis_client.xreadgroup("csjd-workers", "someone", {stream: ">"}, count=1)
        collector = QueueCollector(dispatcher.backend.admin.gauges, ttl=60)
        registry = CollectorRegistry()
        registry.register(collector)
        body = generate_latest(registry).decode()
        redis_client.xadd(stream, {"id": "late", "d": "{}"})  # within the ttl: not seen
        assert generate_latest(registry).decode() == body
    assert collector.reads == 1
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    expected = {
        "csjd_queue_length": 4,
        "csjd_queue_waiting": 3,
        "csjd_queue_in_flight": 1,
        "csjd_queue_scheduled": 2,
        "csjd_queue_unfinished": 6,
        "csjd_queue_dead_letters": 0,
        "csjd_queue_consumers": 0,  # "someone" never wrote a heartbeat
    }
    assert {name: value(scraped, name, queue="b") for name in expected} == expected
    age = value(scraped, "csjd_queue_oldest_waiting_age_seconds", queue="b")
    assert 0.0 <= age < 60.0
    assert value(scraped, "csjd_queue_scrape_errors_total") == 0


@pytest.mark.parametrize(
    ("port", "message"),
    [("0", "0 is not in the range"), ("70000", "70000 is not in the range")],
)
def test_a_bad_metrics_port_is_a_usage_error(cli: Cli, port: str, message: str) -> None:
    done = cli.run("worker", APP, "--metrics-port", port)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_a_port_in_use_is_a_clear_error(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli.run("worker", APP, "--metrics-port", port)
    assert done.returncode == 2, done.stderr
    assert f"--metrics-port: cannot listen on port {port}: the port is in use" in done.stderr


@pytest.mark.slow  # about 6 s: children start, run, recycle and start again
def test_supervised_children_add_up_across_recycling(cli: Cli, tmp_path: Path) -> None:
    """``--processes 2 --max-jobs 4``: children recycle; the supervisor's scrape still counts
    every attempt exactly once, and the multiprocess directory keeps no dead child's files."""
    jobs = 24
    ids = cli.enqueue([f"r{i:02}" for i in range(jobs)], args=[0.1])
    directory = tmp_path / "multiproc"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: wiped
    port = free_port()
    sup = cli.start(
        "worker",
        APP,
        "--processes",
        "2",
        "--max-jobs",
        "4",
        "--metrics-port",
        port,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    wait_until(lambda: cli.ran() and sum(cli.ran().values()) == jobs, 90)
    # Every child ran past --max-jobs: both recycle (their files folded into the archive).
    sup.wait_for_line("worker child recycled", count=2, timeout=60)
    scraped: dict[Any, float] = {}

    def counted() -> bool:
        nonlocal scraped
        scraped = samples(port)
        return (
            value(
                scraped, "csjd_attempts_total", queue="default", type="record", outcome="succeeded"
            )
            == jobs
        )

    wait_until(counted, 30)
    assert len(pids_started(sup)) > 2, sup.err()  # children were recycled
    total = sum(v for (n, _), v in scraped.items() if n == "csjd_attempts_total")
    assert total == jobs
    # The queue gauges come from the supervisor's own read (children may be restarting).
    assert ("csjd_queue_consumers", (("queue", "default"),)) in scraped
    # Only the archive and the live children's files remain (no pile-up, the stale one gone).
    live = {str(pid) for pid in pids_started(sup)[-2:]}
    for path in directory.iterdir():
        owner = path.stem.rsplit("_", 1)[-1]
        assert owner == "archive" or owner in live, sorted(p.name for p in directory.iterdir())
    assert get(port, "/healthz")[0] == 200
    sup.signal(15)
    assert sup.wait(timeout=60) == 0, sup.err()
    assert states(cli_client(cli), ids) == {"succeeded": jobs}


def cli_client(cli: Cli) -> Any:
    import redis  # noqa: PLC0415

    return redis.Redis.from_url(cli.url)
