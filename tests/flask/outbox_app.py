"""The app of the outbox tests: Flask-SQLAlchemy and ``CSJD(outbox=db)``, built in the test
process (``create_app(config)``) or by a worker process (``python -m flask --app outbox_app
csjd run``, from tests/flask, configured by ``FLASK_*`` environment variables).

``POST /orders/<label>`` writes an order and enqueues ``outbox.record`` in the same
transaction; ``?rollback=1`` rolls it back, ``?fail=1`` raises before the commit. The job writes
a row of ``outbox_test_runs``: the side effect the tests count.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column, Integer, String, func, insert, select

from csjd_flask import CSJD

db = SQLAlchemy()
csjd = CSJD(outbox=db)

orders = db.Table(
    "outbox_test_orders",
    Column("id", Integer, primary_key=True),
    Column("label", String(200), nullable=False),
)
runs = db.Table(
    "outbox_test_runs",
    Column("id", Integer, primary_key=True),
    Column("label", String(200), nullable=False),
)


@csjd.job("outbox.record")
def record(label: str) -> str:
    db.session.execute(insert(runs).values(label=label))
    db.session.commit()
    return label


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask("flask-outbox-app")
    app.config.from_prefixed_env()
    app.config.update(config or {})
    db.init_app(app)
    csjd.init_app(app)

    @app.post("/orders/<label>")
    def order(label: str) -> dict[str, str]:
        db.session.execute(insert(orders).values(label=label))
        handle = record.delay_on_commit(label)
        if request.args.get("fail"):
            raise RuntimeError("the view failed before its commit")
        if request.args.get("rollback"):
            db.session.rollback()
        else:
            db.session.commit()
        return {"job_id": handle.id}

    return app


def ran(app: Flask) -> list[str]:
    """The labels the jobs wrote, in order."""
    with app.app_context():
        return list(db.session.scalars(select(runs.c.label).order_by(runs.c.id)))


def count(app: Flask, table: Any) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(table)) or 0
