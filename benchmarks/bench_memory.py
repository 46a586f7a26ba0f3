"""Redis memory per queued job: ``used_memory`` over N small jobs submitted through the public
API, and where the bytes go.

Run: ``python benchmarks/bench_memory.py [--jobs N] [--against LABEL=DIR ...] [--json PATH]``

Each measurement starts its own throwaway ``redis-server`` (a free port, a temporary directory,
persistence off; every other setting the server's default, which the report prints: the figure
must hold on a default server) and runs in a child process with the measured ``csjd_core`` first
on ``sys.path``: this checkout's, and one more per ``--against LABEL=DIR`` (DIR holding another
``csjd_core``, for example ``git archive main csjd_core | tar -x -C DIR``), so a change is
measured beside what it replaces, on the same machine, in the same run.

A **small job**: id a 32-character uuid4 hex (what ``App.delay`` makes), type ``email.send``,
payload ``{"args": [...], "kwargs": {...}}`` of exactly 100 bytes as compact JSON (the shape of
``App``'s payloads), the default queue, no timeout, no ``run_at``, ``max_attempts`` left to
``default_max_attempts``.

The child, a producer only (it never starts consuming):

1. submits one warm-up batch, so the stream, the counter and the scripts exist before counting;
2. reads ``INFO memory`` (``used_memory``), ``MEMORY STATS`` and each key's ``MEMORY USAGE``;
3. submits N small jobs with ``RedisDistributedDispatcher.submit_batch`` in batches of 1,000;
4. reads them again: (after - before) / N is **bytes per job**, broken down into the job record
   (``MEMORY USAGE ... SAMPLES 0`` of 200 records, which counts the key's name, its dict entry
   and its value; their encoding and fields), the stream entry's share (the stream's growth / N),
   the main keyspace's bucket array (``MEMORY STATS`` ``overhead.hashtable.main`` growth / N,
   less the dict entries and object headers ``MEMORY USAGE`` counted already), the
   pending counter (one key per queue: its size / N), the connection's buffers and what is left.

The split between the keyspace's buckets and the rest follows Redis 7's ``MEMORY STATS``
accounting (``--server`` runs another binary, e.g. Valkey's, whose keyspace is built
differently: there only the total and the record compare).

Scenarios: ``queued`` (the figure of docs/performance.md, "Memory per queued job") and
``scheduled`` (the same jobs with ``run_at`` an hour ahead: no stream entry; the record holds the
job's data until it is promoted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import load_test_module

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "default"
TYPE = "email.send"
BATCH = 1000
RECORD_SAMPLES = 200
GOAL = 512  # bytes per queued small job (issue 17)
#: What MEMORY STATS counts per key in ``overhead.hashtable.main`` beside the bucket array: the
#: dict entry (24 bytes) and the value's object header (16), which MEMORY USAGE counts too.
KEY_OVERHEAD = 40
#: The server settings that decide how the records and the stream are encoded.
SETTINGS = (
    "hash-max-listpack-entries",
    "hash-max-listpack-value",
    "stream-node-max-bytes",
    "stream-node-max-entries",
    "zset-max-listpack-entries",
    "zset-max-listpack-value",
)


def small_payload() -> dict[str, Any]:
    """The payload of a small job: exactly 100 bytes as compact JSON."""
    payload: dict[str, Any] = {
        "args": ["user@example.org", 42],
        "kwargs": {"template": "welcome", "locale": "en-GB", "ref": ""},
    }
    pad = 100 - len(json.dumps(payload, separators=(",", ":")))
    payload["kwargs"]["ref"] = "x" * pad
    assert len(json.dumps(payload, separators=(",", ":"))) == 100
    return payload


# ------------------------------------------------------------------------------ the child
def child_main(spec: dict[str, Any]) -> None:
    """Measure one package against one server; print ``RESULT <json>``."""
    if not spec.get("pythonpath"):  # this checkout, installed or not
        sys.path.insert(0, str(ROOT))
    import redis  # noqa: PLC0415

    import csjd_core  # noqa: PLC0415
    from csjd_core import Job  # noqa: PLC0415
    from csjd_core.backends.redis import QueueKeys  # noqa: PLC0415
    from csjd_core.config import DistributedConfig, RedisConfig  # noqa: PLC0415
    from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415

    client = redis.Redis.from_url(spec["url"])
    jobs, scenario = spec["jobs"], spec["scenario"]
    keys = QueueKeys(DistributedConfig().stream, QUEUE)
    payload = small_payload()
    run_at = (
        datetime.now(UTC) + timedelta(hours=1) if scenario == "scheduled" else None
    )  # the same moment for every job: one score
    dispatcher = RedisDistributedDispatcher(
        RedisConfig(url=spec["url"]), DistributedConfig(max_pending_jobs=10 * jobs + BATCH)
    )

    def submit(n: int) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(n)]
        for start in range(0, n, BATCH):
            dispatcher.submit_batch(
                [Job(i, TYPE, payload, run_at=run_at) for i in ids[start : start + BATCH]]
            )
        return ids

    def key_usage(key: str) -> int:
        return int(client.memory_usage(key, samples=0) or 0)

    def snapshot() -> dict[str, int]:
        stats = client.memory_stats()
        db = stats.get("db.0") or {}
        return {
            "used_memory": int(client.info("memory")["used_memory"]),
            "keys": int(client.dbsize()),
            "hashtable_main": int(db.get("overhead.hashtable.main", 0)),
            "hashtable_expires": int(db.get("overhead.hashtable.expires", 0)),
            "clients": int(stats.get("clients.normal", 0)),
            "stream": key_usage(keys.stream),
            "delayed": key_usage(keys.delayed),
            "pending": key_usage(keys.pending),
        }

    submit(BATCH)  # warm-up: keys and scripts exist, the client's buffers have their size
    before = snapshot()
    ids = submit(jobs)
    after = snapshot()
    sample = random.Random(17).sample(ids, min(RECORD_SAMPLES, len(ids)))
    records = [key_usage(keys.job(i)) for i in sample]
    one = keys.job(sample[0])
    record = sum(records) / len(records)
    total = (after["used_memory"] - before["used_memory"]) / jobs
    parts = {
        "job record": record,
        "stream entry": (after["stream"] - before["stream"]) / jobs,
        "delayed set": (after["delayed"] - before["delayed"]) / jobs,
        "keyspace hash table": (
            after["hashtable_main"]
            - before["hashtable_main"]
            - KEY_OVERHEAD * (after["keys"] - before["keys"])
        )
        / jobs,
        "pending counter": after["pending"] / jobs,
        "client buffers": (after["clients"] - before["clients"]) / jobs,
    }
    parts["rest"] = total - sum(parts.values())
    info = client.info("server")
    out = {
        "package": str(Path(csjd_core.__file__).parent),
        "scenario": scenario,
        "jobs": jobs,
        "bytes_per_job": total,
        "breakdown": parts,
        "record": {
            "encoding": client.object("encoding", one).decode(),
            "fields": sorted(k.decode() for k in client.hkeys(one)),
            "min": min(records),
            "max": max(records),
        },
        "server": {
            "version": (
                f"valkey {info['valkey_version']}"
                if "valkey_version" in info
                else f"redis {info.get('redis_version')}"
            ),
            "allocator": client.info("memory").get("mem_allocator"),
            **{name: client.config_get(name).get(name) for name in SETTINGS},
        },
    }
    dispatcher.stop()
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ the parent
def measure(
    server_mod: Any, binary: str, tmp: Path, spec: dict[str, Any], pythonpath: str | None
) -> dict[str, Any]:
    """One scenario of one package on a fresh server."""
    server = server_mod.RedisServerProcess(binary, tmp / f"redis-{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
        child = {**spec, "url": server.url, "pythonpath": pythonpath}
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(child)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        results = [
            json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")
        ]
        if done.returncode != 0 or not results:
            raise RuntimeError(f"child failed rc={done.returncode}:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = results[0]
        return result
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(server.directory)


def table(runs: list[dict[str, Any]]) -> str:
    """Bytes per job and the breakdown, one column per package and scenario."""
    columns = [(run["label"], s) for run in runs for s in run["scenarios"]]
    heads = [f"{label} {name}" for label, name in columns]
    lines = [f"{'bytes per job':24}" + "".join(f"{h[:18]:>19}" for h in heads)]
    cells = [run["scenarios"][s] for run in runs for s in run["scenarios"]]
    lines.append(
        f"{'total (used_memory)':24}" + "".join(f"{c['bytes_per_job']:>19.1f}" for c in cells)
    )
    for part in cells[0]["breakdown"]:
        lines.append(f"  {part:22}" + "".join(f"{c['breakdown'][part]:>19.1f}" for c in cells))
    lines.append(
        f"{'record encoding':24}" + "".join(f"{c['record']['encoding']:>19}" for c in cells)
    )
    lines.append("")
    for (label, name), c in zip(columns, cells, strict=True):
        lines.append(f"{label} {name}: record fields {', '.join(c['record']['fields'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per scenario")
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also measure the csjd_core in DIR (repeatable)",
    )
    parser.add_argument("--label", default="this checkout", help="this checkout's label")
    parser.add_argument(
        "--scenarios", default="queued,scheduled", help="comma-separated: queued, scheduled"
    )
    parser.add_argument("--server", default=None, help="redis-server binary (default: PATH)")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    server_mod = load_test_module("redis_server")
    binary = os.path.abspath(
        args.server or server_mod.find_server_binary(os.environ.get(server_mod.SERVER_ENV))
    )
    packages: list[tuple[str, str | None]] = []
    for item in args.against:
        label, sep, directory = item.partition("=")
        if not sep or not (Path(directory) / "csjd_core").is_dir():
            parser.error(f"--against {item!r}: expected LABEL=DIR with DIR/csjd_core")
        packages.append((label, str(Path(directory).resolve())))
    packages.append((args.label, None))
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-memory-"))
    runs = []
    try:
        for label, pythonpath in packages:
            run: dict[str, Any] = {"label": label, "scenarios": {}}
            for scenario in scenarios:
                spec = {"jobs": args.jobs, "scenario": scenario}
                result = measure(server_mod, binary, tmp, spec, pythonpath)
                run["package"] = result["package"]
                run["scenarios"][scenario] = result
                print(
                    f"  {label} {scenario}: {result['bytes_per_job']:.1f} bytes/job "
                    f"({result['package']})",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(run)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    server = runs[-1]["scenarios"][scenarios[0]]["server"]
    print(
        f"server: {server['version']} ({server['allocator']}), "
        + ", ".join(f"{k} {server[k]}" for k in SETTINGS)
        + f"; jobs per scenario: {args.jobs}; goal: <= {GOAL} bytes per queued job"
    )
    print(table(runs))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "job": {
                        "id": "uuid4 hex, 32 characters",
                        "type": TYPE,
                        "payload": small_payload(),
                        "queue": QUEUE,
                    },
                    "goal_bytes_per_queued_job": GOAL,
                    "server": server,
                    "runs": runs,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
