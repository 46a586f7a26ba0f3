"""``python -m flask --app ... csjd run`` as a real process: supervised children, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from flask_support import DEADLINE, FLASK_EXAMPLE, HERE, flask_env, worker_pid
from flaskjobs import naps

from csjd_core import JobState
from csjd_core.testing import wait_until

MakeApp = Callable[..., Flask]


def test_example_worker_with_supervised_children_runs_the_jobs(
    example_app: Flask, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    from flask_example.jobs import greet, whoami  # noqa: PLC0415

    with example_app.app_context():
        handles = [greet.delay(f"p{i}") for i in range(20)]
        who = whoami.delay()
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "flask_example",
                "csjd",
                "run",
                "--burst",
                "--processes",
                "2",
                "--workers",
                "2",
                "--log-format",
                "json",
                "--log-level",
                "DEBUG",
            ],
            cwd=FLASK_EXAMPLE,
            env=flask_env(redis_config),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    output = log.read_text()
    assert done.returncode == 0, output
    # Every line is a JSON object — the supervisor's and its children's (given the format).
    records = [json.loads(line) for line in output.splitlines()]
    succeeded = [r["job_id"] for r in records if r.get("outcome") == "succeeded"]
    assert sorted(succeeded) == sorted([h.id for h in handles] + [who.id])
    assert "processes=2" in output and "types=example.greet,example.whoami" in output
    assert [h.result(DEADLINE) for h in handles] == [f"hello p{i}" for i in range(20)]
    assert who.result(DEADLINE) == {"app": "flask_example", "mode": "redis"}
    pids = {worker_pid(h.status().worker_id) for h in handles}
    assert os.getpid() not in pids and done.returncode == 0
    assert "worker child started slot=1" in output  # the children ran `flask --app ... csjd run`


def test_sigterm_drains_the_running_job(
    make_app: MakeApp, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    app = make_app(**redis_config)
    with app.app_context():
        handle = naps.delay(1.0, str(tmp_path / "started"))
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "flask_worker_app", "csjd", "run"],
            cwd=HERE,
            env=flask_env(redis_config),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                (tmp_path / "started").exists,
                20.0,
                message=lambda: f"the handler never started; worker log:\n{log.read_text()}",
            )
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    status = handle.status()
    assert status.state is JobState.SUCCEEDED, log.read_text()
    assert status.result == "slept 1.0"
    assert worker_pid(status.worker_id) == worker.pid
    assert "signal received; draining in-flight jobs" in log.read_text()
