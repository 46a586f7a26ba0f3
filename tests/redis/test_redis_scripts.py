"""What each Lua script touches, watched with MONITOR on a private server (issue 13).

A real workload on two queues runs every script: enqueue, read, read ahead, start at
hand-over, run, report progress, retry, promote, dead-letter, requeue, renew, a stalled
consumer's entry reclaimed and the consumer collected, entries handed back at stop. Every
command a script ran is attributed to its ``EVALSHA``, and its keys are read with ``COMMAND
GETKEYS``: each script stays in its queue's hash tag (one Cluster slot), and only the scripts
listed in
docs/architecture.md touch a key not passed in ``KEYS``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from redis_support import DEADLINE, fast_config

from csjd_core import App, Job, JobContext, JobState, every, permanent
from csjd_core.backends.base import SlotOp, SlotVerdict
from csjd_core.backends.redis.connection import SCRIPTS, _load_script
from csjd_core.config import RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.periodic import make_schedule
from csjd_core.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
#: The scripts that name job records from data they read (docs/architecture.md says why).
DATA_KEYED = {"enqueue", "read_start", "promote", "reclaim"}
QUEUES = ("alpha", "beta")
GROUP = "csjd-workers"

_LINE = re.compile(r"^\S+ \[\d+ (?P<client>[^\]]+)\] (?P<args>.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}


def _unquote(text: str) -> str:
    """One MONITOR argument (Redis's sdscatrepr quoting) back to its text."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1] == "x":
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out += _ESCAPES[text[i + 1]]
            i += 2
            continue
        out += text[i].encode()
        i += 1
    return out.decode("utf-8", "replace")


class Monitor:
    """Collects every command the server runs, as (from a script?, arguments)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.conn = self.client.connection_pool.get_connection()
        self.conn.send_command("MONITOR")
        assert self.conn.read_response() in (b"OK", "OK")
        self.lines: list[tuple[bool, list[str]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                line = self.conn.read_response()
            except (redis.ConnectionError, OSError, ValueError):
                return
            match = _LINE.match(line.decode() if isinstance(line, bytes) else line)
            if match is not None:
                args = [_unquote(a) for a in _ARG.findall(match["args"])]
                self.lines.append((match["client"] == "lua", args))

    def close(self) -> None:
        self.conn.disconnect()
        self.thread.join(5)


def script_calls(
    lines: list[tuple[bool, list[str]]], names: dict[str, str]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(script name, declared KEYS, the commands it ran) for every script call.

    MONITOR shows a script call before the commands it runs, and nothing in between: a
    script is one atomic step.
    """
    calls: list[tuple[str, list[str], list[list[str]]]] = []
    for from_script, args in lines:
        if from_script:
            assert calls, f"a script command with no script call before it: {args}"
            calls[-1][2].append(args)
        elif args and args[0].upper() == "EVALSHA":
            count = int(args[2])
            calls.append((names[args[1]], args[3 : 3 + count], []))
        else:
            calls.append(("", [], []))  # a plain command: ends the previous script's commands
    return [call for call in calls if call[0]]


def touched(client: redis.Redis, command: list[str]) -> list[str]:
    """The keys ``command`` reads or writes, as the server says."""
    try:
        return [k.decode() if isinstance(k, bytes) else k for k in client.command_getkeys(*command)]
    except redis.ResponseError:  # TIME and other commands without keys
        return []


def tag(key: str) -> str:
    """A key's hash tag (the text between its first ``{`` and the next ``}``)."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_every_script_stays_in_its_queue_slot_and_declares_what_it_can(
    redis_server_factory: Any,
) -> None:
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url)
    monitor = Monitor(server.url)
    first_runs: dict[str, int] = defaultdict(int)
    slow_started = threading.Event()

    def handler(ctx: JobContext, job: Job) -> str:
        kind = job.payload["kind"]
        if kind == "flaky" and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        if kind == "bad":
            raise permanent(ValueError("never works"))
        if kind == "slow":
            slow_started.set()
            # progress.lua: written by the maintenance thread while the attempt runs.
            ctx.set_progress(1, 2, "slow")
            record = f"csjd:jobs:{{{job.queue}}}:job:{job.id}"
            wait_until(lambda: admin.hexists(record, "progress"), DEADLINE)
            time.sleep(0.3)
        first_runs[job.id] += 1
        return kind

    def dispatcher(**config: Any) -> RedisDistributedDispatcher:
        d = RedisDistributedDispatcher(
            RedisConfig(url=server.url), fast_config(queues=QUEUES, **config)
        )
        d.register_handler("work", handler)
        d.register_handler("tick", lambda ctx, job: None)
        return d

    def job(job_id: str, kind: str, queue: str, **options: Any) -> Job:
        return Job(job_id, "work", {"kind": kind}, queue=queue, **options)

    d = dispatcher(workers=2, prefetch=4)  # entries held ahead are started at hand-over
    try:
        # A stalled consumer holds two entries: after the lease the reclaimer takes one and
        # dead-letters the other (delivered more than max_deliveries times); the consumer (no
        # heartbeat, nothing pending) is collected afterwards.
        d.submit_batch([job("stalled", "ok", "alpha"), job("worn-out", "ok", "alpha")])
        stream = "csjd:jobs:{alpha}"
        admin.xgroup_create(stream, GROUP, "0", mkstream=True)
        ((_, entries),) = admin.xreadgroup(GROUP, "ghost", {stream: ">"}, count=2)
        admin.xclaim(stream, GROUP, "ghost", 0, [entries[1][0]], retrycount=10, justid=True)
        for job_id in ("stalled", "worn-out"):  # started by the ghost, as a worker would
            admin.hset(f"csjd:jobs:{{alpha}}:job:{job_id}", "state", "running")
        soon = datetime.now(UTC) + timedelta(seconds=0.5)
        for q in QUEUES:  # a batch is one queue; priorities: the band streams (enqueue,
            # promote of a retry and of a run_at, requeue of a dead letter, reads, settles)
            d.submit_batch([job(f"{q}-{kind}", kind, q) for kind in ("ok", "flaky", "slow")])
            d.submit_batch([job(f"{q}-high", "flaky", q, priority=5), job(f"{q}-n", "ok", q)])
        d.submit(job("bad", "bad", "beta", priority=-5))
        d.submit(job("later", "ok", "alpha", run_at=soon, priority=3))
        # A schedule's slots: the second reads the first's record (max_running) by its id.
        definitions = App()
        tick = definitions.job("tick", queue="alpha")(lambda: None)
        every_second = make_schedule(tick, every(seconds=1))
        verdicts = [d.admit_slot(every_second, SlotOp.SLOT, slot) for slot in (1000.0, 1001.0)]
        assert verdicts == [SlotVerdict.ENQUEUED, SlotVerdict.OVERLAP]
        d.submit(job("doomed", "ok", "beta"))  # cancel.lua on a queued job
        assert d.cancel("doomed", "beta") is True
        d.start()
        wait_until(lambda: d.pending() == 0, DEADLINE)
        (dead,) = d.dead_letters("beta")
        assert d.requeue_dead(dead.entry_id, "beta")
        wait_until(lambda: d.dead_count("beta") == 1 and d.pending() == 0, DEADLINE)
        d.submit(job("after-idle", "ok", "beta"))  # read by the blocking XREADGROUP + start.lua

        def ghost_collected() -> bool:
            return all(c["name"] != b"ghost" for c in admin.xinfo_consumers(stream, GROUP))

        wait_until(ghost_collected, DEADLINE)
        wait_until(lambda: d.pending() == 0, DEADLINE)
        assert d.status("stalled", "alpha").state is JobState.SUCCEEDED
        (worn_out,) = d.dead_letters("alpha")
        assert (worn_out.job_id, worn_out.reason) == ("worn-out", "max_deliveries")
    finally:
        d.stop(5)
    # Entries read ahead and never run are handed back at stop (release.lua).
    prefetching = dispatcher(workers=1, prefetch=4, block=0.05)
    prefetching.submit_batch([job(f"ahead-{i}", "slow", "alpha") for i in range(4)])
    slow_started.clear()
    prefetching.start()
    assert slow_started.wait(DEADLINE)  # one runs, the others wait in the read-ahead buffer
    prefetching.stop(5)
    finisher = dispatcher(workers=4)
    finisher.start()
    try:
        wait_until(lambda: finisher.pending() == 0, DEADLINE)
    finally:
        finisher.stop(5)
    monitor.close()

    assert all(first_runs[f"ahead-{i}"] == 1 for i in range(4))
    names = {_sha(name): name for name in SCRIPTS}
    calls = script_calls(monitor.lines, names)
    assert {name for name, _, _ in calls} == set(SCRIPTS)  # the workload ran every script
    undeclared: dict[str, set[str]] = defaultdict(set)
    for name, declared, commands in calls:
        assert declared, f"{name} declares no key"
        slot = tag(declared[0])
        assert slot in QUEUES
        for command in commands:
            for key in touched(admin, command):
                assert tag(key) == slot, f"{name} touched {key} outside {{{slot}}}: {command}"
                if key not in declared:
                    undeclared[name].add(key)
    assert set(undeclared) == DATA_KEYED, dict(undeclared)
    for name, keys in undeclared.items():
        assert all(":job:" in key for key in keys), (name, keys)  # only job records


def _sha(name: str) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha1(_load_script(name).encode()).hexdigest()


def test_the_architecture_page_lists_the_scripts_that_name_keys_from_data() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)\.lua` \|[^\n]*\*\*named from data\*\*", page, re.M))
    assert listed == DATA_KEYED
    for name in SCRIPTS:  # and each of them, only them, takes a key prefix in ARGV
        header = [line for line in _load_script(name).splitlines() if line.startswith("--")]
        assert any("KEYS[1]" in line for line in header), name
        takes_prefix = any("key prefix" in line for line in header)
        assert takes_prefix == (name in DATA_KEYED), name
