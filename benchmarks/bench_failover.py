"""What a failover loses without ``durable_enqueue``, and what ``durable_enqueue`` costs.

Run: ``python benchmarks/bench_failover.py [--jobs N] [--repeat R] [--quick] [--json PATH]``

Starts its own throwaway servers (``tests/redis_server.py``, ``tests/redis_cluster.py``:
persistence off, free ports, temporary directories; never 127.0.0.1:6379) and measures, in one
run:

- loss, lagging replica: a master and its replica, which replicates through a small TCP proxy.
  The proxy cuts the link (drops every byte both ways: a partition, made deterministic) while
  a producer submits ``--lag-jobs`` jobs one by one; then the master is killed (SIGKILL) and
  the replica promoted (``REPLICAOF NO ONE``, as Sentinel does). Counted: submits that
  returned (acknowledged), that raised, and acknowledged jobs whose record is missing on the
  promoted replica — with ``durable_enqueue`` off, and on (``durable_timeout`` 0.05 s). A
  fresh pair for each. (Stopping the replica's process, SIGSTOP or ``DEBUG SLEEP``, shows no
  loss for a few hundred small jobs: the kernel's socket buffers keep the stream for it.)
- loss, under load: a 3-master Redis Cluster with a replica each, nothing cut: two producers
  submit at full speed, the queue's master is killed and the cluster promotes its replica;
  acknowledged jobs missing from it are counted (the window of ordinary asynchronous
  replication, on one machine), off and on, ``--repeat`` times each.
- cost: one master and its replica (standalone), the same pair for both: ``submit`` one by
  one (``--jobs`` jobs) and ``submit_batch(100)``, in jobs/s, and the p50/p99 latency of one
  ``submit``, with ``durable_enqueue`` on (``durable_timeout`` 1.0) and off, interleaved;
  each figure the median of ``--repeat`` runs, the ratio on/off of the same run.

The package measured is whichever ``csjd_core`` imports first; the header prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import csjd_core
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))
    import csjd_core

# The suite's throwaway servers; last, so that tests/redis/ cannot shadow redis-py.
sys.path.append(str(ROOT / "tests"))

import redis  # noqa: E402
from bench_redis import percentile  # noqa: E402
from redis.crc import key_slot  # noqa: E402
from redis_cluster import RedisClusterProcess  # noqa: E402

from csjd_core import BackendUnavailable, DuplicateJob, Job  # noqa: E402
from csjd_core.config import DistributedConfig, RedisConfig  # noqa: E402
from csjd_core.distributed import RedisDistributedDispatcher  # noqa: E402

from redis_server import RedisServerProcess  # noqa: E402

BIG_CAP = 10**9
TYPE = "bench"
PAYLOAD = {"n": 1, "user": "alice"}
QUEUE_TAG = b"default"  # the default queue's hash tag: its slot picks the master to kill


def record_key(job_id: str) -> str:
    return f"csjd:jobs:{{default}}:job:{job_id}"


def producer(url: str, durable: bool, timeout: float = 1.0) -> RedisDistributedDispatcher:
    config = DistributedConfig(
        max_pending_jobs=BIG_CAP, durable_enqueue=durable, durable_timeout=timeout
    )
    return RedisDistributedDispatcher(RedisConfig(url=url, socket_timeout=2.0), config)


def replicated(master: RedisServerProcess, key: str = "csjd-bench:{default}") -> bool:
    """The master's replica is online and acknowledges a write made since (a replica fresh
    from its full sync is sent the write stream only after its first acknowledgement)."""
    with redis.Redis(master.host, master.port, single_connection_client=True) as m:
        if m.info("replication").get("slave0", {}).get("state") != "online":
            return False
        m.set(key, 1)
        return int(m.execute_command("WAIT", 1, 2000)) >= 1


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def role(node: RedisServerProcess) -> str:
    with redis.Redis(node.host, node.port) as client:
        return str(client.info("replication")["role"])


def missing_on(node: RedisServerProcess, ids: list[str]) -> list[str]:
    with (
        redis.Redis(node.host, node.port) as client,
        client.pipeline(transaction=False) as pipe,
    ):
        for job_id in ids:
            pipe.exists(record_key(job_id))
        return [job_id for job_id, n in zip(ids, pipe.execute(), strict=True) if not n]


# ------------------------------------------------------------------------------ loss
class Failover:
    """A fresh 3-master cluster with a replica each; the queue's master and its replica."""

    def __init__(self, server: str, directory: Path) -> None:
        self.cluster = RedisClusterProcess(server, directory, masters=3, replicas=1).start()
        slot = key_slot(QUEUE_TAG)
        ranges = self.cluster.slot_ranges()
        [index] = [i for i, (lo, hi) in enumerate(ranges) if lo <= slot <= hi]
        self.master = self.cluster.masters[index]
        [self.replica] = self.cluster.replicas_of[index]
        wait_for(lambda: replicated(self.master), 30, "the replica to be in sync")

    def promoted(self, killed: float) -> float:
        """Seconds from ``killed`` until the replica is promoted and the cluster is ok."""
        wait_for(lambda: role(self.replica) == "master" and self.cluster.ok(), 60, "the promotion")
        return time.monotonic() - killed

    def stop(self) -> None:
        self.cluster.stop()


class LinkProxy:
    """A TCP forwarder between a replica and its master, whose link can be cut: from then on
    the bytes in either direction are dropped and new connections are refused — the replica
    stays connected, hears nothing and acknowledges nothing, as behind a network partition.
    (Stopping the replica's process instead loses nothing: the kernel buffers the stream.)"""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.cut_off.is_set():
                    sink.sendall(data)

    def cut(self) -> None:
        self.cut_off.set()

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def lagging_replica(server: str, tmp: Path, durable: bool, jobs: int) -> dict[str, Any]:
    """Acknowledged jobs lost when the master dies while its replica's link is cut: ``jobs``
    submits land on the master, it is killed, the replica is promoted (``REPLICAOF NO ONE``,
    as Sentinel would) with what it had received."""
    mode = "on" if durable else "off"
    master = RedisServerProcess(server, tmp / f"lag-{mode}-master")
    master.start(extra_args=["--repl-diskless-sync-delay", "0"])
    assert master.port is not None
    proxy = LinkProxy(master.host, master.port)
    replica = RedisServerProcess(server, tmp / f"lag-{mode}-replica")
    try:
        replica.start(extra_args=["--replicaof", master.host, str(proxy.port)])
        wait_for(lambda: replicated(master), 30, "the replica to be in sync")
        p = producer(master.url, durable, timeout=0.05)
        p.submit(Job("warm", TYPE, PAYLOAD))
        # The replica has everything up to the cut (else the last submits before it, not yet
        # replicated, would be lost too with durable_enqueue off: the same window, smaller).
        wait_for(lambda: replicated(master), 30, "the replica to have the warm-up job")
        acknowledged: list[str] = []
        refused = 0
        proxy.cut()
        began = time.monotonic()
        for i in range(jobs):
            job_id = f"lag-{i}"
            try:
                p.submit(Job(job_id, TYPE, PAYLOAD))
            except BackendUnavailable:
                refused += 1
                continue
            acknowledged.append(job_id)
        cut_for = time.monotonic() - began
        p.close()
        master.kill()
        with redis.Redis(replica.host, replica.port) as promoted:
            promoted.execute_command("REPLICAOF", "NO", "ONE")
        lost = missing_on(replica, acknowledged)
        stored = jobs - len(missing_on(replica, [f"lag-{i}" for i in range(jobs)]))
        warm_kept = not missing_on(replica, ["warm"])
    finally:
        proxy.close()
        replica.stop()
        master.stop()
    return {
        "submitted": jobs,
        "acknowledged": len(acknowledged),
        "refused": refused,
        "acknowledged_lost": len(lost),
        "on_promoted_replica": stored,
        "warm_job_kept": warm_kept,
        "link_cut_s": round(cut_for, 2),
    }


def under_load(server: str, tmp: Path, durable: bool, tag: str) -> dict[str, Any]:
    """Acknowledged jobs lost by a failover under two full-speed producers (nothing stalled)."""
    failover = Failover(server, tmp / f"load-{tag}")
    acknowledged: list[str] = []
    stop = threading.Event()

    def produce(name: str) -> None:
        p = producer(failover.cluster.url, durable)
        try:
            for i in range(10**7):
                if stop.is_set():
                    return
                try:
                    p.submit(Job(f"{name}-{i}", TYPE, PAYLOAD))
                except (BackendUnavailable, DuplicateJob):
                    continue  # not acknowledged: not counted (no retry needed here)
                acknowledged.append(f"{name}-{i}")
        finally:
            p.close()

    threads = [threading.Thread(target=produce, args=(f"p{k}",)) for k in range(2)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acknowledged) >= 2000, 60, "2,000 acknowledged submits")
        failover.master.kill()
        killed = time.monotonic()
        at_kill = list(acknowledged)
        promotion = failover.promoted(killed)
        stop.set()
        for thread in threads:
            thread.join(30)
        lost = missing_on(failover.replica, at_kill)
    finally:
        stop.set()
        failover.stop()
    return {
        "acknowledged": len(at_kill),
        "acknowledged_lost": len(lost),
        "promotion_s": round(promotion, 2),
    }


# ------------------------------------------------------------------------------ cost
def cost(server: str, tmp: Path, jobs: int, repeat: int) -> dict[str, dict[str, Any]]:
    """submit and submit_batch(100) with durable_enqueue on and off, against one pair."""
    master = RedisServerProcess(server, tmp / "cost-master")
    replica = RedisServerProcess(server, tmp / "cost-replica")
    master.start(extra_args=["--repl-diskless-sync-delay", "0"])
    replica.start(extra_args=["--replicaof", master.host, str(master.port)])
    runs: dict[str, dict[str, list[Any]]] = {
        mode: {"single": [], "batch": [], "p50": [], "p99": []} for mode in ("off", "on")
    }
    try:
        wait_for(lambda: replicated(master), 30, "the replica to be in sync")
        client = redis.Redis(master.host, master.port)
        for r in range(repeat):
            for mode in ("off", "on"):  # interleaved: the machine's load falls on both alike
                client.flushall()
                replicated(master)
                p = producer(master.url, mode == "on")
                p.submit(Job("warm", TYPE, PAYLOAD))
                submit = p.submit
                latencies = []
                t0 = time.perf_counter()
                for i in range(jobs):
                    t = time.perf_counter()
                    submit(Job(f"s{r}-{i}", TYPE, PAYLOAD))
                    latencies.append(time.perf_counter() - t)
                runs[mode]["single"].append(jobs / (time.perf_counter() - t0))
                runs[mode]["p50"].append(percentile(latencies, 50) * 1000)
                runs[mode]["p99"].append(percentile(latencies, 99) * 1000)
                batch = [Job(f"b{r}-{i}", TYPE, PAYLOAD) for i in range(jobs)]
                t0 = time.perf_counter()
                for i in range(0, jobs, 100):
                    p.submit_batch(batch[i : i + 100])
                runs[mode]["batch"].append(jobs / (time.perf_counter() - t0))
                p.close()
        client.close()
    finally:
        replica.stop()
        master.stop()
    out: dict[str, dict[str, Any]] = {
        mode: {name: statistics.median(values) for name, values in figures.items()}
        | {"all_single": [round(v) for v in figures["single"]]}
        for mode, figures in runs.items()
    }
    # Each run's on/off, from figures taken back to back (the machine's load moves slower).
    out["ratio_per_run"] = {
        name: [
            round(on / off, 2) for on, off in zip(runs["on"][name], runs["off"][name], strict=True)
        ]
        for name in ("single", "batch", "p50", "p99")
    }
    return out


# ------------------------------------------------------------------------------ output
def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'section':8} {'measure':46} {'on':>10} {'off':>10} {'on/off':>7}  unit"]
    for row in rows:
        on, off = row["value"], row["base"]
        ratio = f"{on / off:>7.2f}" if off else f"{'':>7}"
        fmt = "{:>10,.0f}" if row["unit"] in ("jobs/s", "jobs") else "{:>10.2f}"
        lines.append(
            f"{row['section']:8} {row['name']:46} {fmt.format(on)} {fmt.format(off)} "
            f"{ratio}  {row['unit']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="submits per cost run")
    parser.add_argument("--lag-jobs", type=int, default=100, help="submits while stalled")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="small N, one repeat")
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args()
    args.jobs = args.jobs or (2_000 if args.quick else 10_000)
    args.repeat = args.repeat or (1 if args.quick else 3)

    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-failover-"))
    rows: list[dict[str, Any]] = []
    try:
        with RedisServerProcess(args.server, tmp / "probe") as probe:
            version = probe.version()
        print(
            f"csjd_core: {Path(csjd_core.__file__).parent}  redis-py {redis.__version__}  "
            f"server {version}  jobs={args.jobs} repeat={args.repeat}  cpus={os.cpu_count()}",
            file=sys.stderr,
            flush=True,
        )
        lag = {
            mode: lagging_replica(args.server, tmp, mode == "on", args.lag_jobs)
            for mode in ("off", "on")
        }
        print(f"  lagging replica: {lag}", file=sys.stderr, flush=True)
        for what, key in (
            ("acknowledged, then lost", "acknowledged_lost"),
            ("acknowledged", "acknowledged"),
            ("refused (BackendUnavailable)", "refused"),
        ):
            rows.append(
                {
                    "section": "loss",
                    "name": f"lagging replica: {what}",
                    "value": lag["on"][key],
                    "base": lag["off"][key],
                    "unit": "jobs",
                    "detail": lag if key == "acknowledged_lost" else None,
                }
            )
        load: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for r in range(args.repeat):
            for mode in ("off", "on"):
                load[mode].append(under_load(args.server, tmp, mode == "on", f"{mode}{r}"))
        print(f"  under load: {load}", file=sys.stderr, flush=True)
        rows.append(
            {
                "section": "loss",
                "name": f"under load: acknowledged, then lost ({args.repeat} runs)",
                "value": sum(run["acknowledged_lost"] for run in load["on"]),
                "base": sum(run["acknowledged_lost"] for run in load["off"]),
                "unit": "jobs",
                "detail": load,
            }
        )
        figures = cost(args.server, tmp, args.jobs, args.repeat)
        for name, key, unit in (
            ("submit one by one", "single", "jobs/s"),
            ("submit_batch(100)", "batch", "jobs/s"),
            ("submit latency p50", "p50", "ms"),
            ("submit latency p99", "p99", "ms"),
        ):
            rows.append(
                {
                    "section": "cost",
                    "name": name,
                    "value": figures["on"][key],
                    "base": figures["off"][key],
                    "unit": unit,
                    "detail": figures if key == "single" else None,
                }
            )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)

    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
