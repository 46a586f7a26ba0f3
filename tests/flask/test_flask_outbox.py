"""The transactional outbox of a Flask app (``CSJD(app, outbox=db)``, Flask-SQLAlchemy): jobs
written in the app's transaction, relayed by real ``flask csjd run`` / ``flask csjd relay``
processes (or in-process) to the suite's Redis, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import outbox_app
import pytest
from flask import Flask
from flask_support import HERE
from flaskjobs import greet
from outbox_app import count, db, ran, record
from procs import Proc
from sqlalchemy import func, insert, select, text

from csjd_core import Job, JobState
from csjd_core.errors import CSJDError, InvalidJob, JobNotFound, SettingsError
from csjd_core.operations import queue_stats, worker_dispatcher
from csjd_core.outbox import Relay, encode_job
from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox
from csjd_core.testing import wait_until
from csjd_flask import NoOutbox
from csjd_flask.extension import EXTENSION_KEY, CSJDState

Build = Callable[..., Flask]


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    return postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["postgresql", "mariadb"])
def locking_url(request: pytest.FixtureRequest) -> str:
    """A database with row locks and ``SKIP LOCKED``: PostgreSQL, then MariaDB (MySQL 8's
    syntax)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("mysql_url"))


def database_config(url: str) -> dict[str, Any]:
    config: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": url}
    if url.startswith("sqlite"):  # the worker, the relay and the test share the file
        config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": 20}}
    return config


@pytest.fixture
def build() -> Iterator[Build]:
    """``build(url, **config)``: the outbox app on the database at ``url``, its tables created;
    dispatchers stopped and engines disposed at teardown."""
    apps: list[Flask] = []

    def make(url: str, **config: Any) -> Flask:
        app = outbox_app.create_app({"TESTING": True, **database_config(url), **config})
        apps.append(app)
        with app.app_context():
            db.create_all()
        return app

    try:
        yield make
    finally:
        for app in apps:
            outbox_app.csjd.stop(timeout=5.0, app=app)
            with app.app_context():
                for engine in db.engines.values():
                    engine.dispose()


def sqlalchemy_outbox(app: Flask) -> SQLAlchemyOutbox:
    flask_outbox = CSJDState.of(app).outbox
    assert flask_outbox is not None and flask_outbox.outbox is not None
    return flask_outbox.outbox


def outbox_rows(app: Flask) -> list[dict[str, Any]]:
    table = sqlalchemy_outbox(app).jobs
    with app.app_context():
        return [
            dict(row._mapping) for row in db.session.execute(select(table).order_by(table.c.id))
        ]


def core_status(app: Flask, job_id: str) -> Any:
    return CSJDState.of(app).core.status(job_id)


def queued(app: Flask) -> tuple[int, int]:
    """(entries in the default queue's stream, unfinished jobs) in Redis."""
    stats = queue_stats(CSJDState.of(app).core)["default"]
    return stats.stream_length, stats.unfinished


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["csjd", *args])


def flask_process(tmp_path: Path, name: str, config: dict[str, Any], *args: str) -> Proc:
    """``python -m flask --app outbox_app csjd ARGS`` with ``config`` as ``FLASK_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "CSJD_"))}
    env.update(
        {f"FLASK_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    )
    argv = [sys.executable, "-m", "flask", "--app", "outbox_app", "csjd", *args]
    return Proc(argv, env, tmp_path, name, cwd=HERE)


def post(app: Flask, label: str, query: str = "") -> str:
    response = app.test_client().post(f"/orders/{label}{query}")
    assert response.status_code == 200, response.data
    return str(response.json["job_id"])  # type: ignore[index]


# -- a real worker relays what the app committed ---------------------------------------------
def test_no_relay_worker_leaves_the_rows_then_a_worker_relays_and_runs_them(
    build: Build, sqlite_url: str, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    app = build(sqlite_url, **redis_config)
    job_ids = [post(app, f"o{i}") for i in range(5)]
    assert count(app, outbox_app.orders) == 5
    assert [row["job_id"] for row in outbox_rows(app)] == job_ids
    assert queued(app) == (0, 0)  # nothing reached Redis: the rows wait for a relay

    config = {**redis_config, **database_config(sqlite_url)}
    idle = flask_process(tmp_path, "no-relay", config, "run", "--burst", "--no-relay")
    try:
        assert idle.wait() == 0, idle.err()
    finally:
        idle.stop()
    assert "outbox=off (--no-relay)" in idle.err()
    assert len(outbox_rows(app)) == 5 and ran(app) == [] and queued(app) == (0, 0)

    worker = flask_process(tmp_path, "worker", config, "run", "--workers", "2")
    try:
        worker.wait_for(lambda: len(ran(app)) == 5, what="the 5 committed jobs ran")
        assert worker.terminate() == 0, worker.err()
    finally:
        worker.stop()
    assert "outbox=flask:flask-outbox-app" in worker.err()
    assert sorted(ran(app)) == [f"o{i}" for i in range(5)]  # each once
    assert outbox_rows(app) == []
    with app.app_context():
        assert [record.app.status(job_id).state for job_id in job_ids] == [JobState.SUCCEEDED] * 5


def test_postgres_worker_hears_the_commit_without_polling(
    build: Build, pg_url: str, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    # Polling every 60 s: a job run within the wait below was relayed on the commit's NOTIFY.
    config = {**redis_config, **database_config(pg_url), "CSJD_OUTBOX_POLL_INTERVAL": 60}
    app = build(pg_url, **config)
    worker = flask_process(tmp_path, "worker", config, "run")
    try:

        def listening() -> bool:
            with app.app_context():
                return bool(
                    db.session.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE "
                            "datname = current_database() AND query = 'LISTEN csjd_outbox'"
                        )
                    )
                )

        worker.wait_for(listening, what="the worker's relay listens")
        job_id = post(app, "heard")
        worker.wait_for(lambda: ran(app) == ["heard"], timeout=15.0, what="the job ran")
        assert worker.terminate() == 0, worker.err()
    finally:
        worker.stop()
    assert outbox_rows(app) == []
    with app.app_context():
        assert record.app.status(job_id).result == "heard"


def test_flask_csjd_relay_burst_relays_every_row_and_exits(
    build: Build, sqlite_url: str, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    app = build(sqlite_url, **redis_config)
    job_ids = {post(app, f"r{i}") for i in range(12)}
    relay = flask_process(
        tmp_path, "relay", {**redis_config, **database_config(sqlite_url)}, "relay", "--burst"
    )
    try:
        assert relay.wait() == 0, relay.err()
    finally:
        relay.stop()
    assert "flask csjd relay: outbox=flask:flask-outbox-app" in relay.err()
    assert "relayed=12" in relay.err()
    assert queued(app) == (12, 12)
    assert outbox_rows(app) == [] and ran(app) == []  # relayed, not run
    core = CSJDState.of(app).core
    assert {core.status(job_id).state for job_id in job_ids} == {JobState.QUEUED}
    assert len(sqlalchemy_outbox(app).stats().relays) == 1  # the relay's heartbeat


# -- the transaction decides ------------------------------------------------------------------
def test_a_rolled_back_transaction_enqueues_nothing(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config)
    post(app, "rolled-back", "?rollback=1")
    app.config["TESTING"] = False  # the view's error is a 500, and the session is removed
    assert app.test_client().post("/orders/failed?fail=1").status_code == 500
    with app.app_context():
        record.delay_on_commit("never-committed")  # the app context ends without a commit
    assert count(app, outbox_app.orders) == 0 and outbox_rows(app) == []
    result = invoke(app, "relay", "--burst")
    assert result.exit_code == 0, result.output
    assert queued(app) == (0, 0)
    result = invoke(app, "run", "--burst")
    assert result.exit_code == 0, result.output
    assert ran(app) == []


def test_status_is_queued_while_the_job_waits_in_the_outbox(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config)
    with app.app_context():
        handle = record.delay_on_commit("s")
        with pytest.raises(JobNotFound):
            handle.status()  # not committed: no other connection sees the row
        db.session.commit()
    status = handle.status()
    assert status.state is JobState.QUEUED and status.attempts == 0
    assert status.type == "outbox.record" and status.payload == {"args": ["s"], "kwargs": {}}
    assert status.enqueued_at is not None and status.enqueued_at.tzinfo is not None
    assert abs(datetime.now(UTC) - status.enqueued_at) < timedelta(minutes=1)
    assert queued(app) == (0, 0)  # the outbox answered, not Redis
    assert invoke(app, "relay", "--burst").exit_code == 0
    assert outbox_rows(app) == [] and handle.status().state is JobState.QUEUED  # from Redis
    assert invoke(app, "run", "--burst").exit_code == 0
    assert handle.result(5) == "s"


def test_a_row_names_the_apps_queue_for_a_relay_that_consumes_others(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config, CSJD_QUEUES="default,other")
    with app.app_context():
        handle = record.delay_on_commit("q")
        db.session.commit()
    [row] = outbox_rows(app)
    assert (row["queue"], json.loads(row["data"])["queue"]) == ("default", "default")
    # A worker of "other" only relays it, into the queue it was committed for.
    assert invoke(app, "run", "--burst", "--queues", "other").exit_code == 0
    assert queued(app) == (1, 1)
    assert handle.status().queue == "default"


def test_poison_rows_are_set_aside_with_the_reason_and_the_rest_is_relayed(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config, CSJD_MAX_PAYLOAD_BYTES=2048)
    jobs = sqlalchemy_outbox(app).jobs
    huge = Job("huge", "outbox.record", {"args": ["x" * 4000], "kwargs": {}})
    now = datetime.now(UTC)
    with app.app_context():  # the oldest rows first: were they blocking, the rest would wait
        for job_id, data in [
            ("not-json", "{not json"),
            ("not-a-job", json.dumps({"id": "not-a-job"})),
            ("huge", encode_job(huge)),
        ]:
            db.session.execute(insert(jobs).values(job_id=job_id, data=data, created_at=now))
        db.session.commit()
    good = [post(app, f"g{i}") for i in range(3)]
    result = invoke(app, "relay", "--burst")
    assert result.exit_code == 0, result.output
    assert queued(app) == (3, 3)
    left = {row["job_id"]: row["problem"] for row in outbox_rows(app)}
    assert set(left) == {"not-json", "not-a-job", "huge"}
    assert "not JSON" in left["not-json"]
    assert "type" in left["not-a-job"]  # the missing field
    assert "max_payload_bytes=2048" in left["huge"]
    stats = sqlalchemy_outbox(app).stats()
    assert (stats.depth, stats.set_aside, stats.oldest) == (0, 3, None)
    huge = core_status(app, "huge")  # set aside: failed for good, saying why
    assert huge.state is JobState.FAILED and "max_payload_bytes=2048" in (huge.last_error or "")
    assert sqlalchemy_outbox(app).find("not-json") is None  # names no job
    with sqlalchemy_outbox(app).claim(10) as claim:
        assert claim.rows == []  # never claimed again
    assert invoke(app, "relay", "--burst").exit_code == 0
    assert queued(app) == (3, 3) and len(outbox_rows(app)) == 3
    assert invoke(app, "run", "--burst").exit_code == 0
    assert sorted(ran(app)) == ["g0", "g1", "g2"]
    core = CSJDState.of(app).core
    assert {core.status(job_id).state for job_id in good} == {JobState.SUCCEEDED}


def test_rows_over_the_pending_cap_wait_with_backoff(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config, CSJD_MAX_PENDING_JOBS=2)
    for i in range(4):
        post(app, f"c{i}")
    assert invoke(app, "relay", "--burst").exit_code == 0
    assert queued(app) == (2, 2)
    rows = outbox_rows(app)
    assert [row["attempts"] for row in rows] == [1, 1]
    naive_now = datetime.now(UTC).replace(tzinfo=None)  # SQLite keeps UTC without its zone
    assert all(row["available_at"] > naive_now for row in rows)
    assert invoke(app, "relay", "--burst").exit_code == 0  # not due yet: left alone
    assert [row["attempts"] for row in outbox_rows(app)] == [1, 1]
    assert sqlalchemy_outbox(app).stats().depth == 2


# -- PostgreSQL and MariaDB: relays share the rows --------------------------------------------
def test_claims_skip_the_rows_another_relay_holds(
    build: Build, locking_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(locking_url, **redis_config)
    outbox = sqlalchemy_outbox(app)
    assert outbox.concurrent
    with app.app_context():
        for i in range(6):
            record.delay_on_commit(f"k{i}")
        db.session.commit()
    second: list[Any] = []
    with outbox.claim(3) as first:

        def claim_the_rest() -> None:
            with outbox.claim(10) as claim:
                second.extend(row.key for row in claim.rows)
                claim.done.extend(second)

        thread = threading.Thread(target=claim_the_rest)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the second claim waited for the first one's rows"
        first.done.extend(row.key for row in first.rows)
        keys = [row.key for row in first.rows]
    assert len(keys) == 3 and len(second) == 3 and not set(keys) & set(second)
    assert outbox_rows(app) == []


def test_two_relays_relay_2000_rows_exactly_once(
    build: Build, locking_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(locking_url, **redis_config, CSJD_MAX_PENDING_JOBS=5000)
    outbox = sqlalchemy_outbox(app)
    core = CSJDState.of(app).core
    with app.app_context():
        jobs = [record.build_job([f"n{i}"]) for i in range(2000)]
        db.session.execute(
            insert(outbox.jobs),
            [
                {"job_id": job.id, "data": encode_job(job), "created_at": datetime.now(UTC)}
                for job in jobs
            ],
        )
        db.session.commit()
    dispatchers = [worker_dispatcher(core) for _ in range(2)]
    relays = [
        Relay(outbox, dispatcher, batch=100, name=f"relay-{index}")
        for index, dispatcher in enumerate(dispatchers)
    ]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def relay_all(relay: Relay) -> None:
        try:
            start.wait(10)
            while relay.relay_once():
                pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=relay_all, args=(relay,)) for relay in relays]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop(5.0)
    assert errors == []
    counters = [relay.counters for relay in relays]
    assert sum(c.relayed for c in counters) == 2000
    assert [c.skipped for c in counters] == [0, 0]  # no row was claimed twice
    assert all(c.relayed > 0 for c in counters), counters  # both took a share
    assert queued(app) == (2000, 2000)
    assert outbox_rows(app) == []
    assert set(outbox.stats().relays) == {"relay-0", "relay-1"}


# -- SQLite: relays take turns -----------------------------------------------------------------
def test_sqlite_claims_take_turns_on_the_write_lock(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config)
    outbox = sqlalchemy_outbox(app)
    assert not outbox.concurrent
    for i in range(3):
        post(app, f"t{i}")
    second: list[Any] = []
    with outbox.claim(10) as first:

        def claim_again() -> None:
            with outbox.claim(10) as claim:
                second.extend(row.key for row in claim.rows)

        thread = threading.Thread(target=claim_again)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the first claim's transaction
        assert len(first.rows) == 3
        first.done.extend(row.key for row in first.rows)
    thread.join(20)
    assert not thread.is_alive() and second == []  # it saw the rows the first one deleted
    assert outbox_rows(app) == []


def test_sqlite_round_trips_aware_utc_datetimes_and_prunes_old_heartbeats(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config)
    outbox = sqlalchemy_outbox(app)
    before = datetime.now(UTC)
    job_id = post(app, "d")
    found = outbox.find(job_id)
    assert found is not None and found.problem is None
    job, written_at = found.job, found.written_at
    assert written_at is not None
    assert job.id == job_id and job.payload == {"args": ["d"], "kwargs": {}}
    assert written_at.tzinfo is UTC and before - timedelta(seconds=1) <= written_at
    with app.app_context():
        db.session.execute(
            insert(outbox.relays).values(name="gone", seen_at=before - timedelta(days=2))
        )
        db.session.commit()
    outbox.beat("here")
    outbox.beat("here")  # again: an update
    stats = outbox.stats()
    assert set(stats.relays) == {"here"} and stats.relays["here"].tzinfo is UTC
    assert stats.depth == 1 and stats.oldest == written_at


# -- in-process and immediate modes -----------------------------------------------------------
def test_in_process_mode_relays_into_the_local_store_at_the_commit(
    build: Build, sqlite_url: str, tmp_path: Path
) -> None:
    # Polling every 60 s: the second job ran because the commit woke the relay.
    app = build(
        sqlite_url,
        CSJD_MODE="inprocess",
        CSJD_STORE_PATH=str(tmp_path / "store"),
        CSJD_OUTBOX_POLL_INTERVAL=60,
    )
    first = post(app, "first")
    core = CSJDState.of(app).core
    assert core.status(first).state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    assert core.dispatcher.started  # started by the commit
    wait_until(lambda: ran(app) == ["first"], 10.0, message="the first job never ran")
    second = post(app, "second")
    wait_until(lambda: ran(app) == ["first", "second"], 10.0, message="no wake at the commit")
    assert outbox_rows(app) == []
    assert [core.status(job_id).result for job_id in (first, second)] == ["first", "second"]


def test_outbox_in_memory_only_in_process_mode_is_refused(sqlite_url: str) -> None:
    with pytest.raises(SettingsError, match="CSJD_STORE_PATH") as caught:
        outbox_app.create_app({**database_config(sqlite_url), "CSJD_MODE": "inprocess"})
    assert "a crash empties" in str(caught.value)


def test_immediate_mode_runs_the_job_at_the_commit_only(build: Build, sqlite_url: str) -> None:
    app = build(sqlite_url, CSJD_MODE="immediate")
    assert CSJDState.of(app).core.outboxes == ()
    with app.app_context():
        handle = record.delay_on_commit("committed")
        assert ran(app) == [] and outbox_rows_of_immediate(app) == 0  # no row, not yet run
        db.session.commit()
        assert handle.result(1) == "committed"

        record.delay_on_commit("rolled-back")
        db.session.rollback()
        db.session.commit()
        record.delay_on_commit("closed-without-a-commit")
        db.session.close()
        db.session.commit()

        savepoint = db.session.begin_nested()
        record.delay_on_commit("in-a-rolled-back-savepoint")
        savepoint.rollback()
        savepoint = db.session.begin_nested()
        record.delay_on_commit("in-a-released-savepoint")
        savepoint.commit()
        assert ran(app) == ["committed"]  # a savepoint's release is not the commit
        db.session.commit()
    assert ran(app) == ["committed", "in-a-released-savepoint"]


def outbox_rows_of_immediate(app: Flask) -> int:
    jobs = CSJDState.of(app).outbox.jobs_table  # type: ignore[union-attr]
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(jobs)) or 0


# -- errors -------------------------------------------------------------------------------------
def test_delay_on_commit_without_an_outbox_says_how_to_configure_one(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()  # the other tests' extension: no outbox
    with app.app_context(), pytest.raises(NoOutbox, match=r"CSJD\(app, outbox=db\)") as caught:
        greet.delay_on_commit("x")
    assert isinstance(caught.value, CSJDError)


def test_bad_arguments_fail_in_the_caller_and_write_nothing(
    build: Build, sqlite_url: str, redis_config: dict[str, Any]
) -> None:
    app = build(sqlite_url, **redis_config)
    with app.app_context():
        with pytest.raises(TypeError, match=r"outbox\.record"):
            record.delay_on_commit("a", "b")  # type: ignore[call-arg]
        with pytest.raises(InvalidJob, match="label"):
            record.delay_on_commit(object())  # type: ignore[arg-type]
        with pytest.raises(InvalidJob, match="countdown or eta"):
            record.apply_async_on_commit(
                ["a"], countdown=1, eta=datetime.now(UTC) + timedelta(minutes=1)
            )
        with pytest.raises(TypeError, match="Session"):
            record.apply_async_on_commit(["a"], session=object())  # type: ignore[arg-type]
        db.session.commit()
    assert outbox_rows(app) == []


def test_bad_outbox_configuration_is_refused_at_init(sqlite_url: str) -> None:
    with pytest.raises(SettingsError, match="CSJD_OUTBOX_POLL_INTERVAL"):
        outbox_app.create_app({**database_config(sqlite_url), "CSJD_OUTBOX_POLL_INTERVAL": 0})
    app = Flask("not-sqlalchemy")
    with pytest.raises(TypeError, match="Flask-SQLAlchemy"):
        outbox_app.csjd.init_app(app, outbox=object())  # type: ignore[arg-type]
    assert EXTENSION_KEY not in app.extensions
    with pytest.raises(SettingsError, match=r"not a Flask setting: .*CSJD\(app, outbox=db\)"):
        outbox_app.create_app({**database_config(sqlite_url), "CSJD_OUTBOX": True})
    with pytest.raises(SettingsError, match=r"known: .*CSJD_OUTBOX_POLL_INTERVAL"):
        outbox_app.create_app({**database_config(sqlite_url), "CSJD_OUTBOX_POL": 1})


def test_relay_command_needs_an_outbox_and_redis(
    make_app: Callable[..., Flask],
    build: Build,
    sqlite_url: str,
    redis_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    result = invoke(make_app(**redis_config), "relay", "--burst")
    assert result.exit_code == 1 and "has no outbox" in result.output
    app = build(sqlite_url, CSJD_MODE="inprocess", CSJD_STORE_PATH=str(tmp_path / "store"))
    result = invoke(app, "relay", "--burst")
    assert result.exit_code == 1 and "works on Redis queues" in result.output
