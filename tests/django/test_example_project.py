"""example_project/django_site: its own test suite, run as a user would run it.

The example is a separate Django project with its own settings module, and pytest-django
configures one settings module per process, so its tests run in a subprocess (from the
example's directory, with its own pytest.ini), against the suite's throwaway Redis for the
Redis-mode test. The query-count test (BatchLoader's N+1 fix) is one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "example_project" / "django_site"

pytestmark = pytest.mark.timeout(180)


def test_the_example_sites_own_tests_pass(redis_url: str, redis_client: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CSJD_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["EXAMPLE_REDIS_URL"] = redis_url
    # Only the plugin the example needs: the dev environment's other pytest plugins (hypothesis,
    # faker, ...) cost seconds of start-up and are no part of the example.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "pytest_django.plugin",
            "-p",
            "no:cacheprovider",
        ],
        cwd=SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for name in (
        "test_placing_an_order_mails_the_customer_and_builds_the_report_on_commit",
        "test_nothing_is_enqueued_when_the_order_is_rolled_back",
        "test_order_list_runs_one_customer_query_however_many_rows[3]",
        "test_order_list_runs_one_customer_query_however_many_rows[30]",
        "test_greet_is_registered_for_other_apps_to_enqueue",
        "test_redis_mode_end_to_end",
    ):
        assert f"{name} PASSED" in output, output
    assert "skipped" not in output.splitlines()[-1], output


def test_the_example_runs_concurrent_jobs_on_sqlite_without_lock_errors(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    # Its first Redis run retried "OperationalError: database is locked" (four worker threads
    # writing to SQLite) with long tracebacks: the example must work out of the box.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CSJD_", "PYTEST_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        DJANGO_SETTINGS_MODULE="shop_site.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        CSJD_MODE="redis",
        CSJD_REDIS_URL=redis_url,
        CSJD_WORKERS="4",
    )

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=SITE,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    migrated = manage("migrate", "-v", "0")
    assert "csjd." not in migrated.stderr  # no false warning on a new database's first migrate
    manage(
        "shell",
        "-c",
        "from shop.forms import OrderForm\n"
        "from shop.views import place_order\n"
        "for i in range(60):\n"
        "    form = OrderForm({'customer_email': f'c{i}@example.com', 'item': 'teapot',"
        " 'quantity': 1, 'unit_price_cents': 100})\n"
        "    assert form.is_valid()\n"
        "    place_order(form)\n",
    )
    env["LOG_FORMAT"] = "json"  # the example's LOGGING writes JSON (csjd_core.logs.JsonFormatter)
    worker = manage("csjd_worker", "--burst", "--log-format", "json")
    assert "database is locked" not in worker.stderr, worker.stderr
    records = [json.loads(line) for line in worker.stderr.splitlines()]  # only JSON lines
    assert records[0]["message"].startswith("manage.py csjd_worker: queues=shop")
    assert {"csjd_core.redis", "csjd_core.outbox"} <= {r["logger"] for r in records}
    counters = json.loads(manage("csjd_stats", "--json").stdout)["shop"]["counters"]
    assert counters.get("retried", 0) == 0 and counters["succeeded"] == 120, counters
