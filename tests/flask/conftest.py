"""Fixtures for the csjd_flask tests: a fresh Flask app per test, built by a factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flaskjobs
import pytest
from flask import Flask
from flask_support import FLASK_EXAMPLE

#: Fast retries so that failing jobs finish quickly.
FAST_RETRY = {"base_delay": 0.001, "max_delay": 0.01}


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """``make_app(name="flask-test", **config)``: a new Flask app initialised with the tests'
    extension (immediate mode unless ``CSJD_MODE`` is given); every app's dispatcher is
    stopped at teardown."""
    apps: list[Flask] = []

    def build(name: str = "flask-test", **config: Any) -> Flask:
        app = Flask(name)
        app.config.update(TESTING=True, CSJD_MODE="immediate", CSJD_RETRY=FAST_RETRY)
        app.config.update(config)
        flaskjobs.csjd.init_app(app)
        apps.append(app)
        return app

    try:
        yield build
    finally:
        flaskjobs.release.set()
        for app in apps:
            flaskjobs.csjd.stop(timeout=2.0, app=app)
        flaskjobs.release.clear()


@pytest.fixture
def redis_config(redis_url: str, redis_client: object) -> dict[str, Any]:
    """``CSJD_*`` keys for Redis mode against the suite's server (flushed), with short
    intervals so that burst workers start and finish quickly."""
    return {
        "CSJD_MODE": "redis",
        "CSJD_REDIS_URL": redis_url,
        "CSJD_BLOCK": 0.2,
        "CSJD_LEASE": 2.0,
        "CSJD_HEARTBEAT_INTERVAL": 0.3,
        "CSJD_CLAIM_INTERVAL": 0.3,
    }


@pytest.fixture
def example_app(redis_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The Flask example app (example_project/flask_app), built in this process in Redis
    mode against the suite's server."""
    monkeypatch.syspath_prepend(str(FLASK_EXAMPLE))
    from flask_example import create_app  # noqa: PLC0415
    from flask_example.extensions import csjd  # noqa: PLC0415

    app = create_app(redis_config)
    try:
        yield app
    finally:
        csjd.stop(app=app)
