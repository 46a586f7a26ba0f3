"""CSJD_OUTBOX on the Django ORM (SQLite here; PostgreSQL and real processes in
tests/outbox/): rows written in the caller's transaction, relayed by `Relay`, counted."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from factories import StaffFactory

import csjd_django as csjd
from csjd_core import JobNotFound, JobState
from csjd_core.errors import InvalidJob, SettingsError
from csjd_core.job import Job
from csjd_core.operations import worker_dispatcher
from csjd_core.outbox import Relay, decode_row, encode_job
from csjd_core.testing import wait_until
from csjd_django.checks import check_outbox_relays, check_settings
from csjd_django.models import VIEW_PERMISSION, OutboxJob, OutboxRelay
from testapp import jobs, tasks
from testapp.models import Order, Receipt

pytestmark = pytest.mark.django_db(transaction=True)


def make_order(number: str = "A-1") -> Order:
    return Order.objects.create(number=number, customer="ann@example.com", total_cents=1999)


@pytest.fixture
def outbox_redis(redis_mode: Any) -> Iterator[Any]:
    """Redis mode with ``CSJD_OUTBOX = True``; yields a redis client."""
    with override_settings(CSJD_OUTBOX=True):
        yield redis_mode


def relay_once(**distributed: Any) -> Relay:
    """One relay pass into the project's Redis queues, as a worker's relay would do."""
    app = csjd.app
    app.configure_from_settings()
    dispatcher = worker_dispatcher(app)
    relay = Relay(app.outboxes[0], dispatcher)
    try:
        while relay.relay_once():
            pass
    finally:
        dispatcher.stop(1)
    return relay


def stream_jobs(client: Any, queue: str = "default") -> int:
    return int(client.xlen(f"csjd:jobs:{{{queue}}}"))


def test_a_committed_job_waits_in_the_outbox_until_a_relay_admits_it(outbox_redis: Any) -> None:
    order = make_order()
    with transaction.atomic():
        handle = jobs.send_receipt.delay_on_commit(order.pk)
        row = OutboxJob.objects.get()  # written in this transaction, the id known at once
        assert row.job_id == handle.id
    assert stream_jobs(outbox_redis) == 0  # the web process never touches Redis
    status = handle.status()
    assert status.state is JobState.QUEUED
    assert status.type == "email.receipt"
    assert status.payload == {"args": [order.pk], "kwargs": {}}

    relay = relay_once()

    assert relay.counters.relayed == 1
    assert not OutboxJob.objects.exists()
    assert stream_jobs(outbox_redis) == 1
    assert handle.status().state is JobState.QUEUED  # now the queue's record


def test_a_rolled_back_transaction_leaves_nothing_to_relay(outbox_redis: Any) -> None:
    order = make_order()
    with pytest.raises(RuntimeError), transaction.atomic():
        handle = jobs.send_receipt.delay_on_commit(order.pk)
        raise RuntimeError("rolled back")
    assert not OutboxJob.objects.exists()
    assert relay_once().counters.relayed == 0
    assert stream_jobs(outbox_redis) == 0
    with pytest.raises(JobNotFound):
        handle.status()


def test_outside_a_transaction_the_row_is_committed_at_once(outbox_redis: Any) -> None:
    handle = jobs.flaky.apply_async_on_commit((0,), queue="default")
    assert OutboxJob.objects.filter(job_id=handle.id).exists()


def test_rows_relayed_before_a_crash_are_deleted_not_admitted_twice(outbox_redis: Any) -> None:
    handles = [jobs.flaky.delay_on_commit(0) for _ in range(5)]
    # A relay admitted them and died before its transaction deleted the rows:
    app = csjd.app
    dispatcher = worker_dispatcher(app)
    rows = [decode_row(r.data) for r in OutboxJob.objects.all()]
    assert {r.verdict for r in dispatcher.relay(rows)} == {"admitted"}
    dispatcher.stop(1)

    relay = relay_once()

    assert (relay.counters.relayed, relay.counters.skipped) == (0, 5)
    assert not OutboxJob.objects.exists()
    assert stream_jobs(outbox_redis) == 5
    assert {h.status().state for h in handles} == {JobState.QUEUED}


def test_rows_over_the_pending_cap_wait_with_backoff_and_none_is_lost(outbox_redis: Any) -> None:
    with override_settings(CSJD_MAX_PENDING_JOBS=2):
        for _ in range(5):
            jobs.flaky.delay_on_commit(0)
        relay = relay_once()
        assert (relay.counters.relayed, relay.counters.postponed) == (2, 3)
        waiting = list(OutboxJob.objects.order_by("id"))
        assert len(waiting) == 3
        assert all(r.attempts == 1 and r.available_at > timezone.now() for r in waiting)
        assert relay_once().counters.relayed == 0  # not due yet: not even claimed
        assert stream_jobs(outbox_redis) == 2

    # The queue drains (here: its cap is raised) and their backoff is over.
    OutboxJob.objects.update(available_at=None)
    with override_settings(CSJD_MAX_PENDING_JOBS=10):
        assert relay_once().counters.relayed == 3
    assert stream_jobs(outbox_redis) == 5
    assert not OutboxJob.objects.exists()


def test_poison_rows_are_set_aside_with_the_reason_and_the_rest_goes(
    outbox_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.flaky.delay_on_commit(0)
    OutboxJob.objects.create(job_id="bad-json", data="{not json")
    OutboxJob.objects.create(job_id="no-type", data='{"id": "no-type"}')
    huge = Job("huge", "flaky", {"args": ["x" * 2_000_000], "kwargs": {}})
    OutboxJob.objects.create(job_id="huge", data=encode_job(huge))
    jobs.flaky.delay_on_commit(0)

    with caplog.at_level(logging.ERROR, "csjd_core.outbox"):
        relay = relay_once()

    assert (relay.counters.relayed, relay.counters.set_aside) == (2, 3)
    problems = dict(OutboxJob.objects.values_list("job_id", "problem"))
    assert set(problems) == {"bad-json", "no-type", "huge"}
    assert "not JSON" in problems["bad-json"]
    assert "malformed job record" in problems["no-type"]
    assert "max_payload_bytes" in problems["huge"]
    assert caplog.text.count("outbox row set aside") == 3
    assert relay_once().counters.set_aside == 0  # never claimed again
    stats = csjd.app.outboxes[0].stats()
    assert (stats.depth, stats.set_aside) == (0, 3)


def test_status_of_a_set_aside_row_is_failed_saying_why(outbox_redis: Any) -> None:
    OutboxJob.objects.create(job_id="bad", data="{not json", problem="malformed")
    with pytest.raises(JobNotFound):
        csjd.status("bad")  # names no job
    job = jobs.flaky.build_job((0,), job_id="refused")
    OutboxJob.objects.create(job_id=job.id, data=encode_job(job), problem="over the limit")
    status = csjd.status("refused")
    assert status.state is JobState.FAILED
    assert status.last_error == "set aside by the outbox relay: over the limit"


def test_a_job_over_the_payload_limit_is_refused_in_the_transaction(outbox_redis: Any) -> None:
    with override_settings(CSJD_MAX_PAYLOAD_BYTES=1024):
        with pytest.raises(InvalidJob, match="max_payload_bytes=1024"):
            jobs.flaky.delay_on_commit("x" * 5000)
        jobs.flaky.delay_on_commit("x" * 500)
    assert OutboxJob.objects.count() == 1


def test_status_of_a_waiting_job_while_redis_is_down_is_queued(
    outbox_redis: Any, redis_server_factory: Any
) -> None:
    server = redis_server_factory()
    with override_settings(CSJD_REDIS_URL=server.url):
        handle = jobs.flaky.delay_on_commit(0)
        server.stop()
        assert handle.status().state is JobState.QUEUED


def test_a_tasks_enqueue_in_a_transaction_writes_the_outbox(outbox_redis: Any) -> None:
    with transaction.atomic():
        result = tasks.add.enqueue(2, 3)
        assert OutboxJob.objects.filter(job_id=result.id).exists()
    assert result.status == "READY"
    assert tasks.add.get_backend().get_result(result.id).status == "READY"
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled = tasks.add.enqueue(1, 1)
        raise RuntimeError("rolled back")
    assert not OutboxJob.objects.filter(job_id=rolled.id).exists()
    assert relay_once().counters.relayed == 1


def test_a_database_without_an_outbox_is_refused(outbox_redis: Any) -> None:
    with pytest.raises(SettingsError, match="'other' is not a database of DATABASES"):
        jobs.flaky.apply_async_on_commit((0,), using="other")
    databases = {**settings.DATABASES, "other": settings.DATABASES["default"]}
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES=databases),  # (only the name is read: no connection)
        pytest.raises(SettingsError) as refused,
    ):
        jobs.flaky.apply_async_on_commit((0,), using="other")
    expected = (
        "database 'other' has no outbox (CSJD_OUTBOX covers 'default'): list it, e.g. "
        "CSJD_OUTBOX = ['default', 'other'], and migrate --database other"
    )
    assert expected in str(refused.value)
    assert not OutboxJob.objects.exists()


def test_a_bad_job_is_refused_in_the_transaction_and_nothing_is_written(
    outbox_redis: Any,
) -> None:
    with pytest.raises(InvalidJob, match="order_id"):
        jobs.send_receipt.delay_on_commit(object())
    with pytest.raises(TypeError):
        jobs.send_receipt.delay_on_commit(1, 2, 3)
    assert not OutboxJob.objects.exists()


def test_stats_and_heartbeats(outbox_redis: Any) -> None:
    jobs.flaky.delay_on_commit(0)
    outbox = csjd.app.outboxes[0]
    before = outbox.stats()
    assert (before.depth, before.set_aside, before.relays) == (1, 0, {})
    assert before.oldest is not None and before.oldest_age(timezone.now()) < 60
    relay = relay_once()
    after = outbox.stats()
    assert (after.depth, after.oldest) == (0, None)
    assert set(after.relays) == {relay.name}


def test_immediate_mode_runs_the_job_at_the_commit_without_an_outbox() -> None:
    order = make_order()
    with override_settings(CSJD_OUTBOX=True), transaction.atomic():
        jobs.send_receipt.delay_on_commit(order.pk)
        assert not Receipt.objects.exists()
        assert not OutboxJob.objects.exists()
    assert Receipt.objects.filter(order=order).count() == 1


def test_in_process_mode_with_a_store_relays_into_it_at_the_commit(tmp_path: Path) -> None:
    order = make_order()
    settings = {"CSJD_MODE": "inprocess", "CSJD_STORE_PATH": str(tmp_path / "store")}
    with override_settings(CSJD_OUTBOX=True, **settings):
        with transaction.atomic():
            handle = jobs.order_number.delay_on_commit(order.pk)
        wait_until(lambda: csjd.app.dispatcher.metrics().processed == 1, timeout=10)
        assert handle.result(timeout=5) == "A-1"
        assert not OutboxJob.objects.exists()


def test_in_process_mode_relays_rows_left_by_a_crash_on_the_first_request(
    tmp_path: Path, client: Any
) -> None:
    order = make_order()
    job = jobs.order_number.build_job((order.pk,), job_id="left-by-a-crash")
    OutboxJob.objects.create(job_id=job.id, data=encode_job(job))
    settings = {"CSJD_MODE": "inprocess", "CSJD_STORE_PATH": str(tmp_path / "store")}
    with override_settings(CSJD_OUTBOX=True, **settings):
        client.get("/admin/login/")  # any request starts the dispatcher, and with it the relay
        wait_until(lambda: csjd.app.dispatcher.metrics().processed == 1, timeout=10)
        assert csjd.status("left-by-a-crash").result == "A-1"
        assert csjd.status("left-by-a-crash").state is JobState.SUCCEEDED


def test_memory_only_in_process_mode_refuses_the_outbox() -> None:
    with override_settings(CSJD_OUTBOX=True, CSJD_MODE="inprocess"):
        ids = [m.id for m in check_settings()]
        assert "csjd.E030" in ids
        with pytest.raises(SettingsError, match="the outbox needs a queue that survives"):
            jobs.flaky.delay_on_commit(0)
    assert not OutboxJob.objects.exists()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CSJD_OUTBOX", "yes", "must be True, False or a list of database aliases"),
        ("CSJD_OUTBOX", ["nope"], "'nope' is not a database"),
        ("CSJD_OUTBOX", [], "an empty list names no database (False: no outbox)"),
        ("CSJD_OUTBOX_POLL_INTERVAL", "1", "must be seconds (a number or timedelta)"),
        ("CSJD_OUTBOX_NOTIFY", 1, "must be True or False"),
        ("CSJD_OUTBOX_POLL_INTERVAL", 0, "from 0.01 to 3600"),
    ],
)
def test_bad_outbox_settings_are_reported_by_the_checks(
    name: str, value: Any, message: str
) -> None:
    with override_settings(**{name: value}):
        errors = [m for m in check_settings() if m.id == "csjd.E031"]
    assert len(errors) == 1
    assert message in errors[0].msg and errors[0].obj == name


def test_the_database_check_warns_when_no_relay_ran_recently(outbox_redis: Any) -> None:
    jobs.flaky.delay_on_commit(0)
    assert check_outbox_relays(databases=None) == []  # only with --database
    warnings = check_outbox_relays(databases=["default"])
    assert [w.id for w in warnings] == ["csjd.W003"]
    assert "no outbox relay has ever run on database 'default' (1 job(s) waiting" in (
        warnings[0].msg
    )
    OutboxRelay.objects.create(name="host:1", seen_at=timezone.now())
    assert check_outbox_relays(databases=["default"]) == []
    OutboxRelay.objects.update(seen_at=timezone.now() - timedelta(minutes=6))
    [silent] = check_outbox_relays(databases=["default"])
    assert silent.id == "csjd.W003" and "no outbox relay has run for 6 minutes" in silent.msg


def test_the_database_check_says_when_the_tables_are_missing(outbox_redis: Any) -> None:
    with connection.schema_editor() as editor:
        editor.delete_model(OutboxJob)
    try:
        [missing] = check_outbox_relays(databases=["default"])
        assert missing.id == "csjd.W004"
        assert "the outbox's tables cannot be read on database 'default'" in missing.msg
        assert missing.hint.startswith("Run manage.py migrate --database default")
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(OutboxJob)


def test_settings_a_relay_reads_are_known_and_take_a_timedelta() -> None:
    with override_settings(CSJD_OUTBOX_POLL=2):
        [unknown] = [m for m in check_settings() if m.id == "csjd.E002"]
    assert "CSJD_OUTBOX_POLL" in unknown.msg
    assert "CSJD_OUTBOX, CSJD_OUTBOX_NOTIFY, CSJD_OUTBOX_POLL_INTERVAL" in unknown.msg
    with override_settings(CSJD_OUTBOX_POLL_INTERVAL=timedelta(seconds=2)):
        assert not [m for m in check_settings() if m.id.startswith("csjd.E")]


def test_worker_burst_relays_then_runs_and_stats_show_the_outbox(
    outbox_redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    order = make_order()
    with transaction.atomic():
        handle = jobs.order_number.delay_on_commit(order.pk)
    call_command("csjd_stats")
    assert "outbox django:default: waiting=1 " in capsys.readouterr().out
    call_command("csjd_worker", "--burst")  # relays the row, runs the job, then exits
    assert "outbox=django:default" in capsys.readouterr().err  # the banner
    assert handle.status().state is JobState.SUCCEEDED
    assert handle.status().result == "A-1"
    call_command("csjd_stats", "--json")
    document = json.loads(capsys.readouterr().out)
    [outbox] = document["{outbox}"]
    assert (outbox["name"], outbox["waiting"], outbox["oldest_age"]) == ("django:default", 0, None)
    assert len(outbox["relays"]) == 1 and outbox["relays_running"] == 1


def test_worker_no_relay_leaves_the_rows_and_csjd_relay_moves_them(
    outbox_redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        jobs.flaky.delay_on_commit(0)
    call_command("csjd_worker", "--burst", "--no-relay")
    assert "outbox=off (--no-relay)" in capsys.readouterr().err
    assert OutboxJob.objects.count() == 3
    call_command("csjd_relay", "--burst")
    assert "manage.py csjd_relay: outbox=django:default" in capsys.readouterr().err
    assert not OutboxJob.objects.exists()
    assert stream_jobs(outbox_redis) == 3


def test_csjd_relay_without_an_outbox_says_how_to_configure_one(redis_mode: Any) -> None:
    with pytest.raises(CommandError, match=r"no outbox to relay .*CSJD_OUTBOX = True"):
        call_command("csjd_relay", "--burst")


def test_stats_of_an_outbox_that_cannot_be_read_say_why_and_show_the_queues(
    outbox_redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with connection.schema_editor() as editor:
        editor.delete_model(OutboxJob)
    try:
        call_command("csjd_stats")
        out = capsys.readouterr().out
        assert "queue default: " in out
        assert "outbox django:default: cannot read the outbox; is the database up, and " in out
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(OutboxJob)


def test_the_dashboard_shows_the_outbox(outbox_redis: Any, client: Any) -> None:
    jobs.flaky.delay_on_commit(0)
    OutboxJob.objects.create(job_id="bad", data="{", problem="malformed outbox row")
    client.force_login(StaffFactory(permissions=[VIEW_PERMISSION]))
    page = client.get(reverse("admin:csjd_django_dashboard_changelist")).content.decode()
    row = page[page.index('data-outbox="django:default"') :]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)[:3]
    assert cells[0] == "1" and cells[1].endswith(" s") and cells[2] == "1"
    assert "none has run" in row


def test_a_worker_or_relay_that_cannot_read_the_outbox_exits_1_saying_why(
    outbox_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with connection.schema_editor() as editor:  # a database the deploy forgot to migrate
        editor.delete_model(OutboxJob)
    try:
        for command in ("csjd_worker", "csjd_relay"):
            caplog.clear()
            with pytest.raises(SystemExit) as exited:
                call_command(command, "--burst")
            assert exited.value.code == 1
            assert "cannot read the outbox; is the database up, and migrated?" in caplog.text
            assert "outbox=django:default" in caplog.text
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(OutboxJob)


def test_rows_of_a_draining_queue_wait_briefly_of_a_stuck_one_longer(outbox_redis: Any) -> None:
    def wait_of_the_rows() -> list[float]:
        now = timezone.now()
        return [(r.available_at - now).total_seconds() for r in OutboxJob.objects.all()]

    with override_settings(CSJD_MAX_PENDING_JOBS=2):
        for _ in range(5):
            jobs.flaky.delay_on_commit(0)
        csjd.app.configure_from_settings()
        dispatcher = worker_dispatcher(csjd.app)
        relay = Relay(csjd.app.outboxes[0], dispatcher)
        try:
            relay.relay_once()  # 2 admitted: the queue drains, the rest is tried again soon
            assert all(0 < wait <= 0.25 for wait in wait_of_the_rows())
            for stuck in (1, 2, 3):  # nothing admitted: 0.25 s doubled each time
                OutboxJob.objects.update(available_at=None)
                relay.relay_once()
                assert all(
                    0.25 * 2**stuck * 0.7 < wait <= 0.25 * 2**stuck for wait in wait_of_the_rows()
                )
        finally:
            dispatcher.stop(1)
    assert relay.counters.relayed == 2
    assert OutboxJob.objects.filter(attempts=4).count() == 3
