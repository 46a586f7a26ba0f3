"""Flask and Django on one Redis: each example has its own queue, and ``example.greet``
(registered by both) sent by one framework to the other's queue is executed by the other's
worker process — while neither worker touches the other's queue."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask
from flask_support import DEADLINE, DJANGO_EXAMPLE, FLASK_EXAMPLE, flask_env, worker_pid

from csjd_core import JobState


def django_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The Django example's environment (django-environ) in Redis mode, its database in
    ``tmp_path``; pytest-django's DJANGO_SETTINGS_MODULE is not inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CSJD_", "FLASK_", "DJANGO_", "DATABASE_URL"))
    }
    env.update(
        CSJD_MODE="redis",
        CSJD_REDIS_URL=redis_url,
        CSJD_STORE_PATH=str(tmp_path / "django-jobs.json"),
        CSJD_OUTBOX="false",  # the example's database is not migrated here: no outbox table
        DATABASE_URL=f"sqlite:///{tmp_path / 'django.sqlite3'}",
        DJANGO_SETTINGS_MODULE="shop_site.settings",
    )
    return env


def run_logged(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, int, str]:
    """Run a process to the end; (pid, exit status, its output)."""
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.pid, code, log.read_text()


def test_a_job_from_flask_is_run_by_the_django_worker(
    example_app: Flask, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    from flask_example.jobs import greet  # noqa: PLC0415

    with example_app.app_context():
        handle = greet.apply_async(["from flask"], queue="shop")  # the Django site's queue
        own = greet.delay("stays in the flask queue")
    pid, code, output = run_logged(
        [sys.executable, "manage.py", "csjd_worker", "--burst"],
        DJANGO_EXAMPLE,
        django_env(redis_config["CSJD_REDIS_URL"], tmp_path),
        tmp_path / "django-worker.log",
    )
    assert code == 0, output
    assert "example.greet" in output  # the Django worker's banner lists the type
    assert handle.result(DEADLINE) == "hello from flask"
    assert worker_pid(handle.status().worker_id) == pid  # run by manage.py csjd_worker
    assert own.status().state is JobState.QUEUED  # the shop's worker left the Flask queue alone


def test_a_job_from_django_is_run_by_the_flask_worker(
    example_app: Flask, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    from flask_example.extensions import csjd  # noqa: PLC0415

    enqueue = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from shop.jobs import greet; "
            "print(greet.apply_async(['from django'], queue='flask_example').id)",
        ],
        cwd=DJANGO_EXAMPLE,
        env=django_env(redis_config["CSJD_REDIS_URL"], tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enqueue.returncode == 0, enqueue.stderr
    job_id = enqueue.stdout.strip().splitlines()[-1]
    with example_app.app_context():
        queued = csjd.status(job_id)  # the Flask app reads the job Django wrote
        assert (queued.type, queued.payload) == (
            "example.greet",
            {"args": ["from django"], "kwargs": {}},
        )
    pid, code, output = run_logged(
        [sys.executable, "-m", "flask", "--app", "flask_example", "csjd", "run", "--burst"],
        FLASK_EXAMPLE,
        flask_env(redis_config),
        tmp_path / "flask-worker.log",
    )
    assert code == 0, output
    status = csjd.status(job_id, app=example_app)
    assert status.result == "hello from django", output
    assert worker_pid(status.worker_id) == pid  # run by flask csjd run
