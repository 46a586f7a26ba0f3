"""The ``csjd`` commands on a Redis Cluster: the application changes only its URL
(``redis+cluster://``). Its three queues hash to the three masters' slots ("b" 3300, "default"
5718, "a" 15495), so one worker's reads, settles and the operator's reads span every node."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ops_support import APP, Cli
from redis.cluster import RedisCluster
from redis_cluster import RedisClusterProcess

QUEUES = ("default", "a", "b")


@pytest.fixture
def cli(tmp_path: Path, redis_cluster_url: str) -> Iterator[Cli]:
    made = Cli(tmp_path, redis_cluster_url)
    made.env["CSJD_OPS_QUEUES"] = ",".join(QUEUES)
    try:
        yield made
    finally:
        made.close()


def test_the_queues_live_on_three_masters(redis_cluster: RedisClusterProcess) -> None:
    with RedisCluster(redis_cluster.masters[0].host, redis_cluster.masters[0].port) as client:
        nodes = {client.get_node_from_key(f"csjd:jobs:{{{q}}}").port for q in QUEUES}
    assert nodes == {node.port for node in redis_cluster.masters}


def test_worker_stats_and_dead_letters_across_the_masters(
    cli: Cli, redis_cluster: RedisClusterProcess
) -> None:
    for queue in QUEUES:
        cli.enqueue([f"{queue}-{i}" for i in range(20)], queue=queue)
        cli.enqueue([f"{queue}-bad"], queue=queue, type="explode", args=["c"], max_attempts=1)
    done = cli.run("worker", APP, "--burst")
    assert done.returncode == 0, done.stderr
    assert cli.ran() == Counter({f"{q}-{i}": 1 for q in QUEUES for i in range(20)})

    figures = json.loads(cli.run("stats", APP, "--json").stdout)
    for queue in QUEUES:
        q = figures[queue]
        assert (q["unfinished"], q["in_flight"], q["dead"]) == (0, 0, 1), (queue, q)
        assert q["counters"] == {
            "processed": 21,
            "succeeded": 20,
            "retried": 0,
            "failed": 1,
            "cancelled": 0,
        }

    listed = cli.run("dead", APP, "list", "--queue", "a")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines()]
    assert row[1] == "a-bad"
    requeued = cli.run("dead", APP, "requeue", row[0], "--queue", "a", "--yes")
    assert "requeued 1 of 1" in requeued.stdout, requeued.stderr
    # Each queue's keys are on its own master only: nothing crossed a slot.
    for node in redis_cluster.masters:
        with redis.Redis(node.host, node.port) as client:
            tags = {key.decode().split("}")[0] + "}" for key in client.keys("csjd:*")}
            assert len(tags) == 1, tags
