"""The suite's throwaway Redis Cluster (tests/redis_cluster.py): it forms, serves every slot,
spreads keys over its masters, and promotes a replica when its master is killed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis_cluster import SLOTS, RedisClusterProcess

from csjd_core.testing import wait_until


def client(cluster: RedisClusterProcess) -> RedisCluster:
    nodes = [ClusterNode(node.host, node.port) for node in cluster.masters if node.running]
    return RedisCluster(startup_nodes=nodes, socket_timeout=2)


def test_three_masters_serve_every_slot_and_share_the_keys(
    redis_cluster_factory: Callable[..., RedisClusterProcess],
) -> None:
    cluster = redis_cluster_factory(masters=3)
    assert cluster.url.startswith("redis+cluster://127.0.0.1:")
    assert cluster.slot_ranges() == [(0, 5460), (5461, 10921), (10922, SLOTS - 1)]
    assert cluster.ok()
    with client(cluster) as cluster_client:
        for i in range(300):
            cluster_client.set(f"key:{i}", i)
        assert [int(cluster_client.get(f"key:{i}")) for i in range(300)] == list(range(300))
    sizes = [redis.Redis(node.host, node.port).dbsize() for node in cluster.masters]
    assert sum(sizes) == 300 and all(size > 50 for size in sizes), sizes


@pytest.mark.soak
def test_a_killed_master_is_replaced_by_its_replica(
    redis_cluster_factory: Callable[..., RedisClusterProcess],
) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=1)
    [replica] = cluster.replicas_of[0]
    with client(cluster) as cluster_client:
        cluster_client.set("{a}", "kept")  # slot 15495: the third master's
        cluster_client.set("{b}", "kept")  # slot 3300: the first master's
        wait_until(lambda: redis.Redis(replica.host, replica.port).dbsize() == 1, timeout=10)
    cluster.masters[0].kill()
    wait_until(
        lambda: (
            cluster.cluster_info(replica).get("cluster_state") == "ok"
            and redis.Redis(replica.host, replica.port).info("replication")["role"] == "master"
        ),
        timeout=30,
    )
    with client(cluster) as cluster_client:
        assert cluster_client.get("{b}") == b"kept"
