"""The rough edges a new user hit in the ``csjd`` command line (issue: hardening), as real
subprocesses: the version, what APP is, empty dead-letter lists, the demo's store lock, its
Ctrl-C and its kill-and-recover walk-through."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ops_support import APP, Cli

import csjd_core
from csjd_core import FileJobStore


def test_version_and_what_app_means(cli: Cli) -> None:
    version = cli.run("--version")
    assert (version.returncode, version.stdout.strip()) == (
        0,
        f"csjd, version {csjd_core.__version__}",
    )
    for command in ("worker", "stats", "health", "dead", "replay"):
        shown = cli.run(command, "--help")
        assert shown.returncode == 0, shown.stderr
        assert "module:attr" in " ".join(shown.stdout.split()), (command, shown.stdout)


def test_empty_dead_letters_are_said_to_be_empty(cli: Cli, redis_client: Any) -> None:
    listed = cli.run("dead", APP, "list")
    assert (listed.returncode, listed.stdout.strip()) == (0, "no dead letters in queue default")
    # Nothing to delete: no question ("delete 0 dead letter(s)?"), stdin is closed.
    purged = cli.run("dead", APP, "purge")
    assert (purged.returncode, purged.stdout.strip()) == (
        0,
        "no dead letters to purge in queue default",
    )
    stats = cli.run("stats", APP)
    assert "dead=0 (kept: about 10000)" in stats.stdout, stats.stderr


def test_the_demo_on_a_locked_store_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    with FileJobStore(path):  # another process (here: the test) holds the store
        locked = cli.run("demo", "--store", path)
    assert locked.returncode == 1
    assert "Traceback" not in locked.stderr
    assert re.search(r"Error: job store .*jobs\.json is locked by pid \d+", locked.stderr)


def test_the_demo_drains_on_ctrl_c_and_the_rest_runs_next_time(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    demo = cli.start("demo", "--store", path, "--slow", "1")
    line = demo.wait_for(lambda: re.search(r"pid (\d+): `kill -9 \1`", demo.out()), what="pid")
    assert int(line.group(1)) == demo.pid  # the pid to kill is printed
    # Half a second of progress (lines every 0.25 s; under load one may print t= 0.6s).
    demo.wait_for(lambda: any(float(t) >= 0.5 for t in re.findall(r"t=\s*(\d+\.\d)s", demo.out())))
    demo.signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    assert demo.wait(60) == 130
    out = demo.out()
    assert "interrupted: draining for up to 10 s" in out
    assert "stop report: StopReport(" in out and "still_running=0" in out
    assert "Traceback" not in demo.err()
    # What did not run stays in the store; the next run recovers and finishes it.
    again = cli.run("demo", "--store", path, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    remaining = cli.run("replay", path)
    assert remaining.stdout.startswith(f"{path}: 0 unfinished jobs"), remaining.stdout


def test_redis_commands_without_the_redis_extra_say_what_to_install(cli: Cli) -> None:
    # Was: "No such command 'worker'" after `pip install csjd` (no [redis] extra).
    without_redis = (
        "import sys; sys.modules['redis'] = None; "  # as if redis-py were not installed
        "from csjd_core.cli import main; main()"
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", without_redis, *argv],
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    shown = run("worker", "--help")  # the command is there, its help too
    assert shown.returncode == 0 and "module:attr" in shown.stdout, shown.stderr
    for argv in (["worker", APP], ["dead", APP, "list"], ["stats", APP]):
        result = run(*argv)
        assert result.returncode == 1, result.stderr
        command = "csjd dead list" if argv[0] == "dead" else f"csjd {argv[0]}"
        needs = f"Error: {command} needs the redis extra: pip install 'csjd[redis]'"
        assert result.stderr.startswith(needs), result.stderr
        assert "No such command" not in result.stderr and "Traceback" not in result.stderr


def test_bad_option_values_are_usage_errors_naming_the_option(cli: Cli) -> None:
    for argv, message in (
        (["worker", APP, "--workers", "0"], "--workers"),
        (["worker", APP, "--max-memory", "lots"], "--max-memory: expected a size like 512M"),
        (["worker", APP, "--max-memory", "0"], "--max-memory: must be >= 1"),
        (["worker", APP, "--queues", "a b"], "--queues: "),
        (["stats", APP, "--queues", "a b"], "--queues: "),
        (["health", APP, "--queues", "a b"], "--queues: "),
        (["worker", APP, "--drain-timeout", "-1"], "--drain-timeout"),
    ):
        result = cli.run(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr


def test_drain_timeout_zero_is_accepted(cli: Cli, redis_client: Any) -> None:
    # 0: stop without waiting (the idle worker threads still alive at that instant make the
    # report say timed_out, status 1, as before this option was shared).
    result = cli.run("worker", APP, "--burst", "--drain-timeout", "0")
    assert result.returncode in (0, 1), result.stderr
    assert "worker stopped" in result.stderr


def test_health_tells_a_wrong_mode_from_an_unreachable_redis(cli: Cli) -> None:
    wrong_mode = cli.run("health", "opsapp:inprocess")
    assert wrong_mode.returncode == 1
    assert "csjd health works on Redis queues, but CSJD_MODE is 'inprocess'" in wrong_mode.stderr
    assert "cannot reach Redis" not in wrong_mode.stderr
    down = cli.run("health", APP, env={"CSJD_TEST_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 1
    assert "unhealthy: cannot reach Redis" in down.stderr
    assert "Traceback" not in wrong_mode.stderr + down.stderr


def test_dead_letter_commands_say_what_they_did_not_do(cli: Cli, redis_client: Any) -> None:
    skipped = cli.run("dead", APP, "requeue", "999-0", "--yes")
    assert skipped.returncode == 1  # nothing was requeued: not a success
    assert "skipped 999-0 (queue default): no such dead letter" in skipped.stderr
    assert "requeued 0 of 1" in skipped.stdout
    assert "1 of 1 dead letter(s) not requeued" in skipped.stderr
    missing = cli.run("dead", APP, "show", "999-0", "--queue", "emails")
    assert missing.returncode == 1
    assert "no dead letter 999-0 in queue emails" in missing.stderr
    for argv in (["requeue", "1-0", "--all", "--yes"], ["requeue", "--yes"]):
        usage = cli.run("dead", APP, *argv)
        assert usage.returncode == 2, usage.stderr
        assert "give dead-letter entry ids or --all (not both)" in usage.stderr
    bad_queue = cli.run("dead", APP, "list", "--queue", "a b")
    assert bad_queue.returncode == 2
    assert "--queue: queue must be" in bad_queue.stderr


def test_an_app_module_that_fails_is_a_usage_error_saying_where(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "broken_jobs.py").write_text("app = None\nratio = 1 / 0\n")
    env = {"PYTHONPATH": f"{tmp_path}:{cli.env['PYTHONPATH']}"}
    broken = cli.run("stats", "broken_jobs:app", env=env)
    assert broken.returncode == 2
    assert "cannot import 'broken_jobs': ZeroDivisionError: division by zero" in broken.stderr
    assert "broken_jobs.py:2)" in broken.stderr
    factory = cli.run("stats", "opsapp:needs_arguments")
    assert factory.returncode == 2
    assert "opsapp:needs_arguments() (an App factory, called without arguments) raised" in (
        factory.stderr
    )
    assert "Traceback" not in broken.stderr + factory.stderr
