"""The suite's throwaway Redis Cluster (tests/redis_cluster.py): it forms, serves every slot,
spreads keys over its masters, and promotes a replica when its master is killed."""

from __future__ import annotations

import threading
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


def test_move_slot_moves_every_key_while_a_client_writes(
    redis_cluster_factory: Callable[..., RedisClusterProcess],
) -> None:
    cluster = redis_cluster_factory(masters=3)
    slot = cluster.keyslot("{moved}")
    source = cluster.owner(slot)
    target = next(node for node in cluster.masters if node is not source)
    with client(cluster) as cluster_client:
        for i in range(100):
            cluster_client.set(f"{{moved}}:{i}", i)
        written = 100
        stop = threading.Event()

        def write() -> None:  # new keys land on the target, old ones are followed (ASK)
            nonlocal written
            while not stop.is_set():
                cluster_client.set(f"{{moved}}:{written}", written)
                cluster_client.incr("{moved}:0")
                written += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            move = cluster.move_slot(slot, target, batch=5, pause=0.01)
        finally:
            stop.set()
            writer.join()
        assert cluster.owner(slot) is target
        assert move.slot == slot and move.keys >= 100 and move.batches >= 20
        assert move.seconds >= 20 * 0.01
        assert redis.Redis(source.host, source.port).dbsize() == 0
        assert redis.Redis(target.host, target.port).dbsize() == written
        assert int(cluster_client.get("{moved}:0")) == written - 100
        assert [int(cluster_client.get(f"{{moved}}:{i}")) for i in range(1, written)] == list(
            range(1, written)
        )
