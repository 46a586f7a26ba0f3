"""A throwaway Redis Cluster for the tests: masters (and replicas) on free ports of 127.0.0.1,
each a `RedisServerProcess` with ``--cluster-enabled yes``, joined and given the 16,384 slots
with plain commands (``CLUSTER MEET``, ``CLUSTER ADDSLOTSRANGE``, ``CLUSTER REPLICATE``), so it
needs no ``redis-cli``. `RedisClusterProcess.move_slot` reshards one slot while clients run, the
way ``redis-cli --cluster reshard`` does (``SETSLOT IMPORTING/MIGRATING``, ``MIGRATE`` in
batches, ``SETSLOT NODE``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis_server import RedisServerError, RedisServerProcess, Reply, _free_port, send_command

__all__ = ["SLOTS", "RedisClusterProcess", "SlotMove"]

#: Hash slots of a Redis Cluster.
SLOTS = 16384


@dataclass(frozen=True)
class SlotMove:
    """What one `RedisClusterProcess.move_slot` did."""

    slot: int
    keys: int  # keys moved by MIGRATE
    batches: int  # MIGRATE commands that moved keys
    seconds: float  # from IMPORTING to the last SETSLOT NODE: the migration window


class RedisClusterProcess:
    """``masters`` masters with ``replicas`` replicas each; `start`, `stop`, `url`.

    Slots are split evenly over the masters in order; replica ``r`` of master ``m`` is
    ``replicas_of[m][r]``.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        directory: str | os.PathLike[str],
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master, and no negative replicas")
        self.directory = Path(directory)
        self.node_timeout_ms = node_timeout_ms
        self.masters = [
            RedisServerProcess(binary, self.directory / f"master-{m}") for m in range(masters)
        ]
        self.replicas_of = [
            [
                RedisServerProcess(binary, self.directory / f"replica-{m}-{r}")
                for r in range(replicas)
            ]
            for m in range(masters)
        ]

    @property
    def nodes(self) -> list[RedisServerProcess]:
        """Every node, masters first."""
        return self.masters + [node for group in self.replicas_of for node in group]

    @property
    def url(self) -> str:
        """``redis+cluster://host:port,host:port,...`` of the masters (the startup nodes)."""
        return "redis+cluster://" + ",".join(node.address for node in self.masters)

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The slots of each master, first and last (inclusive)."""
        count = len(self.masters)
        bounds = [SLOTS * m // count for m in range(count + 1)]
        return [(bounds[m], bounds[m + 1] - 1) for m in range(count)]

    def start(self, timeout: float = 30.0) -> RedisClusterProcess:
        """Start every node, join them, assign the slots and wait for ``cluster_state:ok``.

        Raises:
            RedisServerError: a node did not start, or the cluster was not ok in time.
        """
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]
        bus_ports = {}
        for node in self.nodes:
            # The bus port is its own (the default, port + 10000, passes 65535 for a high port).
            bus_ports[id(node)] = _free_port(node.host)
            node.start(extra_args=[*args, "--cluster-port", str(bus_ports[id(node)])])
        first = self.masters[0]
        for node in self.nodes[1:]:
            bus = str(bus_ports[id(node)])
            self._command(first, "CLUSTER", "MEET", node.host, str(node.port), bus)
        for master, (low, high) in zip(self.masters, self.slot_ranges(), strict=True):
            self._command(master, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        deadline = time.monotonic() + timeout
        self._wait(self._all_known, deadline, "every node to know every other")
        for master, group in zip(self.masters, self.replicas_of, strict=True):
            master_id = str(self._command(master, "CLUSTER", "MYID"))
            for replica in group:
                self._command(replica, "CLUSTER", "REPLICATE", master_id)
        self._wait(self.ok, deadline, "cluster_state:ok on every node")
        return self

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for node in self.nodes:
            node.stop()

    def ok(self) -> bool:
        """Whether every running node says ``cluster_state:ok`` and sees every slot served."""
        for node in self.nodes:
            if not node.running:
                continue
            info = self.cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
        return True

    def cluster_info(self, node: RedisServerProcess) -> dict[str, str]:
        """``CLUSTER INFO`` of ``node``."""
        text = str(self._command(node, "CLUSTER", "INFO"))
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def node_id(self, node: RedisServerProcess) -> str:
        """``node``'s cluster id (``CLUSTER MYID``)."""
        return str(self._command(node, "CLUSTER", "MYID"))

    def keyslot(self, key: str) -> int:
        """The hash slot of ``key`` (``CLUSTER KEYSLOT``)."""
        node = next(node for node in self.masters if node.running)
        slot = self._command(node, "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        return slot

    def owner(self, slot: int) -> RedisServerProcess:
        """The master that serves ``slot`` by its own account (its ``myself`` line of
        ``CLUSTER NODES``).

        Raises:
            RedisServerError: no running master serves it.
        """
        for node in self.masters:
            if node.running and slot in _own_slots(str(self._command(node, "CLUSTER", "NODES"))):
                return node
        raise RedisServerError(f"the test cluster: no running master serves slot {slot}")

    def move_slot(
        self,
        slot: int,
        target: RedisServerProcess,
        *,
        batch: int = 10,
        pause: float = 0.0,
    ) -> SlotMove:
        """Move ``slot`` from its master to ``target`` while clients keep using it.

        `begin_move`, then `migrate` ``batch`` keys at a time until the source has none left
        (new keys of the slot are created on the target meanwhile: the source answers ``ASK``
        for a key it lacks), then `end_move`. ``pause`` seconds between batches stretch the
        migration window, so that it overlaps real work.

        Raises:
            ValueError: ``target`` serves ``slot`` already.
            RedisServerError: a node refused a step (the slot is left half-moved).
        """
        began = time.monotonic()
        source = self.begin_move(slot, target)
        moved = batches = 0
        while True:
            keys = self._command(source, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch))
            assert isinstance(keys, list)
            if not keys:
                break
            if self.migrate(source, target, [str(key) for key in keys]):
                moved += len(keys)
                batches += 1
            if pause > 0:
                time.sleep(pause)
        self.end_move(slot, target)
        return SlotMove(slot, moved, batches, time.monotonic() - began)

    def begin_move(self, slot: int, target: RedisServerProcess) -> RedisServerProcess:
        """Start moving ``slot`` to ``target``: ``CLUSTER SETSLOT IMPORTING`` on the target,
        then ``MIGRATING`` on the master that serves it, which is returned (the source).

        Raises:
            ValueError: ``target`` serves ``slot`` already.
        """
        source = self.owner(slot)
        if source is target:
            raise ValueError(f"slot {slot} is served by that master already")
        self._command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        self._command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))
        return source

    def migrate(
        self, source: RedisServerProcess, target: RedisServerProcess, keys: list[str]
    ) -> bool:
        """``MIGRATE`` ``keys`` from ``source`` to ``target`` (one atomic step per key); False
        if none of them was there any more (``NOKEY``)."""
        assert target.port is not None
        reply = self._command(
            source, "MIGRATE", target.host, str(target.port), "", "0", "5000", "KEYS", *keys
        )
        return reply == "OK"

    def end_move(self, slot: int, target: RedisServerProcess) -> None:
        """Finish moving ``slot``: ``CLUSTER SETSLOT NODE`` on the target first, then on
        every other master (the source among them)."""
        target_id = self.node_id(target)
        for node in [target, *(node for node in self.masters if node is not target)]:
            if node.running:
                self._command(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def _all_known(self) -> bool:
        wanted = str(len(self.nodes))
        return all(
            self.cluster_info(node).get("cluster_known_nodes") == wanted for node in self.nodes
        )

    @staticmethod
    def _command(node: RedisServerProcess, *args: str) -> Reply:
        assert node.port is not None
        return send_command(node.host, node.port, *args)

    @staticmethod
    def _wait(check: Callable[[], bool], deadline: float, what: str) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise RedisServerError(f"the test cluster: timed out waiting for {what}")
            time.sleep(0.05)


def _own_slots(nodes: str) -> set[int]:
    """The slots on the ``myself`` line of a ``CLUSTER NODES`` reply (ranges ``a-b`` and
    single slots; ``[slot->-id]`` migration marks are not served slots)."""
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) > 2 and "myself" in fields[2].split(","):
            slots: set[int] = set()
            for item in fields[8:]:
                if item.startswith("["):
                    continue
                low, _, high = item.partition("-")
                slots.update(range(int(low), int(high or low) + 1))
            return slots
    return set()
