"""The CSJD Flask example: ``create_app()`` wires the extension, the jobs and the routes.

Run it (from example_project/flask_app):

    flask --app flask_example run                      # in-process mode (the default)
    FLASK_CSJD_MODE=redis FLASK_CSJD_REDIS_URL=redis://localhost:6379/0 \\
        flask --app flask_example csjd run             # a Redis worker (and the same for `run`)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from flask_example.extensions import csjd


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``FLASK_*`` environment variables (``FLASK_CSJD_MODE=redis``
    sets ``CSJD_MODE``), then ``test_config``; CSJD reads its ``CSJD_*`` keys in ``init_app``."""
    app = Flask(__name__)
    app.config.from_mapping(
        CSJD_MODE="inprocess",  # worker threads in the web process, started on first enqueue
        CSJD_WORKERS=2,
        # Redis mode: this app's own queue. A queue belongs to one set of job types (a worker
        # dead-letters a type it does not know), so apps sharing a Redis each use their own.
        CSJD_QUEUES="flask_example",
    )
    app.config.from_prefixed_env()  # FLASK_CSJD_MODE, FLASK_CSJD_REDIS_URL, ...
    if test_config is not None:
        app.config.from_mapping(test_config)

    csjd.init_app(app)

    from flask_example import jobs, views  # noqa: F401, PLC0415 - registers the jobs

    app.register_blueprint(views.bp)
    return app
