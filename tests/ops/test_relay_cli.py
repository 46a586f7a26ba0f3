"""``csjd relay APP`` and the relay of ``csjd worker APP``, with a core `App` whose outbox is
SQLAlchemy on a SQLite file (the Django and Flask forms have their own tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ops_support import Cli
from sqlalchemy import MetaData, create_engine

from csjd_core import Job
from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox, outbox_tables

APP = "opsapp:app"


@pytest.fixture
def outbox(cli: Cli, tmp_path: Path) -> SQLAlchemyOutbox:
    """The ops app's outbox (its tables created); the CLI's processes use the same file."""
    path = tmp_path / "outbox.sqlite3"
    cli.env["CSJD_OPS_OUTBOX_DB"] = str(path)
    metadata = MetaData()
    made = SQLAlchemyOutbox(create_engine(f"sqlite:///{path}"), *outbox_tables(metadata))
    metadata.create_all(made.engine)
    return made


def commit(outbox: SQLAlchemyOutbox, ids: list[str]) -> None:
    """Write ``record`` jobs in one transaction, as an application would."""
    with outbox.engine.begin() as connection:
        for job_id in ids:
            outbox.add(connection, Job(job_id, "record", {"args": [], "kwargs": {}}))


def test_csjd_relay_burst_moves_every_row_then_a_worker_runs_them_once(
    cli: Cli, outbox: SQLAlchemyOutbox, redis_client: Any
) -> None:
    ids = [f"r{i}" for i in range(5)]
    commit(outbox, ids)
    assert "outbox sqlite:ops: waiting=5 " in cli.run("stats", APP).stdout

    relayed = cli.run("relay", APP, "--burst")

    assert relayed.returncode == 0, relayed.stderr
    assert "csjd relay: outbox=sqlite:ops redis=" in relayed.stderr
    assert "counters=RelayCounters(relayed=5, skipped=0, postponed=0, set_aside=0" in (
        relayed.stderr
    )
    assert redis_client.xlen("csjd:jobs:{default}") == 5
    assert outbox.stats().depth == 0
    assert cli.run("worker", APP, "--burst").returncode == 0
    assert cli.ran() == dict.fromkeys(ids, 1)


def test_csjd_worker_relays_unless_no_relay(cli: Cli, outbox: SQLAlchemyOutbox) -> None:
    commit(outbox, ["w1", "w2", "w3"])
    quiet = cli.run("worker", APP, "--burst", "--no-relay")
    assert quiet.returncode == 0, quiet.stderr
    assert "outbox=off (--no-relay)" in quiet.stderr
    assert outbox.stats().depth == 3 and not cli.ran()

    worker = cli.run("worker", APP, "--burst")  # relays, runs, then exits: nothing is left

    assert worker.returncode == 0, worker.stderr
    assert "outbox=sqlite:ops" in worker.stderr
    assert cli.ran() == {"w1": 1, "w2": 1, "w3": 1}
    assert outbox.stats().depth == 0


def test_csjd_relay_needs_an_outbox_and_a_readable_database(cli: Cli, tmp_path: Path) -> None:
    none = cli.run("relay", APP, "--burst")
    assert none.returncode == 1
    assert "the app has no outbox to relay" in none.stderr
    cli.env["CSJD_OPS_OUTBOX_DB"] = str(tmp_path / "never-created.sqlite3")  # no tables
    missing = cli.run("relay", APP, "--burst")
    assert missing.returncode == 1
    assert "cannot read the outbox; is the database up, and migrated?" in missing.stderr
