"""manage.py csjd_worker / csjd_stats / csjd_dead / csjd_replay and the system checks."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

import csjd_django as csjd
from csjd_core import FileJobStore, Job, JobState
from csjd_django.checks import check_settings
from testapp import jobs, tasks
from testapp.models import Order, Receipt

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_burst_runs_jobs_and_tasks_enqueued_to_redis(
    redis_mode: object, capsys: pytest.CaptureFixture[str]
) -> None:
    order = Order.objects.create(number="R-1", customer="bob@example.com")
    handle = jobs.send_receipt.delay(order.pk)
    task_result = tasks.add.enqueue(20, 22)
    assert handle.status().state is JobState.QUEUED  # a web process only produces
    call_command("csjd_worker", "--burst", "--workers", "2")
    assert handle.status().state is JobState.SUCCEEDED
    assert Receipt.objects.filter(order=order).count() == 1
    assert tasks.add.get_result(task_result.id).return_value == 42
    assert "manage.py csjd_worker: queues=default" in capsys.readouterr().err


def test_the_project_runs_on_a_redis_cluster_by_changing_its_url(
    redis_cluster_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    order = Order.objects.create(number="C-1", customer="bob@example.com")
    settings = {"CSJD_MODE": "redis", "CSJD_REDIS_URL": redis_cluster_url, "CSJD_BLOCK": 0.2}
    with override_settings(**settings, CSJD_QUEUES=["default", "reports"]):
        handle = jobs.send_receipt.delay(order.pk)
        task_result = tasks.add.enqueue(20, 22)
        call_command("csjd_worker", "--burst", "--workers", "2")
        assert handle.status().state is JobState.SUCCEEDED
        assert tasks.add.get_result(task_result.id).return_value == 42
        call_command("csjd_stats", "--json")
        figures = json.loads(capsys.readouterr().out)
    assert figures["default"]["counters"]["succeeded"] == 2
    assert figures["reports"]["unfinished"] == 0
    assert Receipt.objects.filter(order=order).count() == 1


def test_stats_and_dead_commands(
    redis_mode: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.always_fails.delay()
    call_command("csjd_worker", "--burst")
    capsys.readouterr()
    call_command("csjd_stats")
    assert "dead=1" in capsys.readouterr().out
    call_command("csjd_dead", "list")
    listing = capsys.readouterr().out
    assert "always.fails" not in listing or "bad input" in listing
    entry_id = listing.split()[0]
    call_command("csjd_dead", "requeue", entry_id, "--yes")
    assert "requeued 1 of 1" in capsys.readouterr().out
    call_command("csjd_worker", "--burst")  # fails again: a dead letter again
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal (cron, CI)
    with pytest.raises(CommandError, match="Aborted"):
        call_command("csjd_dead", "purge")
    assert "dead=1" in _stats(capsys)
    call_command("csjd_dead", "purge", "--yes")
    assert "dead=0" in _stats(capsys)
    with pytest.raises(CommandError, match="not both") as usage:
        call_command("csjd_dead", "requeue", entry_id, "--all")
    assert usage.value.returncode == 2


def _stats(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    call_command("csjd_stats")
    return capsys.readouterr().out


def test_worker_refuses_inprocess_mode() -> None:
    with override_settings(CSJD_MODE="inprocess"), pytest.raises(CommandError, match="Redis"):
        call_command("csjd_worker", "--burst")


def test_replay_lists_a_store(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{tmp_path}/jobs.json"
    with FileJobStore(path) as store:
        store.enqueue([Job("j1", "flaky", {"args": [0], "kwargs": {}})])
    call_command("csjd_replay", path)
    assert "1 unfinished job" in capsys.readouterr().out
    with override_settings(CSJD_MODE="inprocess"):
        call_command("csjd_replay", path, "--run")
    assert "1 succeeded" in capsys.readouterr().out


def test_checks_report_bad_settings_with_ids() -> None:
    with override_settings(CSJD_WORKERS=0):
        [error] = check_settings()
        assert error.id == "csjd.E001"
        assert "CSJD_WORKERS" in error.msg
    with override_settings(CSJD_WORKRS=2):
        assert check_settings()[0].id == "csjd.E002"
    with override_settings(CSJD_MODE="inprocess"):
        assert [m.id for m in check_settings()] == ["csjd.W001"]
    with override_settings(CSJD_MODE="immediate"):
        assert check_settings() == []
    assert csjd.app.mode in ("immediate", "inprocess", "redis")


@pytest.mark.parametrize(
    ("argv", "need"),
    [
        (["csjd_stats"], "manage.py csjd_stats works on Redis queues, but CSJD_MODE is"),
        (["csjd_dead", "list"], "manage.py csjd_dead list works on Redis queues, but CSJD_MODE"),
        (["csjd_worker", "--burst"], "manage.py csjd_worker works on Redis queues, but"),
    ],
)
def test_redis_commands_name_their_own_need_in_inprocess_mode(argv: list[str], need: str) -> None:
    # Was: "--into-redis needs CSJD_MODE='redis'", an option never passed.
    with override_settings(CSJD_MODE="inprocess"), pytest.raises(CommandError) as error:
        call_command(*argv)
    assert str(error.value).startswith(need)
    assert "--into-redis" not in str(error.value)


def test_cancel_command_and_csjd_cancel(
    redis_mode: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``manage.py csjd_cancel`` prints what ``csjd cancel`` prints (tests/ops)."""
    first = jobs.order_number.delay(1)
    second = jobs.order_number.delay(2)
    later = jobs.order_number.apply_async(args=[3], countdown=3600)
    other = jobs.always_fails.delay()
    call_command("csjd_cancel", first.id)
    assert capsys.readouterr().out.splitlines() == [f"cancelled {first.id}"]
    assert first.status().state is JobState.CANCELLED
    call_command("csjd_cancel", first.id, "--queue", "default")
    assert capsys.readouterr().out.splitlines() == [
        f"not cancelled {first.id}: it had already ended"
    ]
    with pytest.raises(CommandError, match="1 of 1 job"):
        call_command("csjd_cancel", "nobody")
    assert "no job nobody" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal: no is the answer
    with pytest.raises(CommandError, match="Aborted"):
        call_command("csjd_cancel", "--type", "order.number")
    assert "cancel 2 waiting job(s) of type order.number? [y/N]" in capsys.readouterr().out
    call_command("csjd_cancel", "--type", "order.number", "--yes")
    assert capsys.readouterr().out.splitlines() == [
        "cancelled 2 waiting job(s) of type order.number"
    ]
    assert second.status().state is later.status().state is JobState.CANCELLED
    assert csjd.cancel(other.id) is True  # the project's own function
    assert other.status().cancel_reason == "cancelled"
    with pytest.raises(CommandError, match="not both") as usage:
        call_command("csjd_cancel", "x", "--all")
    assert usage.value.returncode == 2


def test_cancel_command_refuses_a_mode_a_command_cannot_reach() -> None:
    with override_settings(CSJD_MODE="inprocess"), pytest.raises(CommandError, match="own memory"):
        call_command("csjd_cancel", "x")
