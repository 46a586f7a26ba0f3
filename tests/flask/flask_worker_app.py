"""The app the worker-process tests run: ``python -m flask --app flask_worker_app csjd run``
(from tests/flask), configured by ``FLASK_CSJD_*`` environment variables."""

from __future__ import annotations

import flaskjobs
from flask import Flask


def create_app() -> Flask:
    app = Flask("flask-worker-app")
    app.config.from_prefixed_env()
    flaskjobs.csjd.init_app(app)
    return app
