"""The Flask metrics blueprint (``csjd.metrics_blueprint()``): refused when nobody could be let
in, who may read it (token, ``authorize``), what it serves in in-process mode (this process's
attempts, counted) and Redis mode (the queue gauges of a real Redis), and bad settings — as the
Django view is tested (tests/django/test_metrics_view.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flaskjobs
import pytest
from flask import Flask
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from csjd_core import web_metrics
from csjd_core.errors import SettingsError
from csjd_flask import CSJD, MetricsRefused

TOKEN = "flask-metrics-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_blueprint(app: Flask, **options: Any) -> Flask:
    app.register_blueprint(flaskjobs.csjd.metrics_blueprint(**options), url_prefix="/csjd")
    return app


def scrape(app: Flask) -> Samples:
    response = app.test_client().get("/csjd/metrics", headers=BEARER)
    assert response.status_code == 200, response.data
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


# -- refused at registration -----------------------------------------------------------------
def test_a_blueprint_nobody_could_read_is_refused(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(MetricsRefused, match="set CSJD_METRICS_TOKEN"):
        with_blueprint(make_app(CSJD_METRICS=True))  # no token, no authorize
    with pytest.raises(MetricsRefused, match="metrics are off"):
        with_blueprint(make_app("off"), authorize=lambda: True)
    with pytest.raises(MetricsRefused, match="not initialised"):
        with_blueprint(Flask("bare"), authorize=lambda: True)
    other = CSJD()
    app = make_app("other", CSJD_METRICS_TOKEN=TOKEN)
    with pytest.raises(MetricsRefused, match="another CSJD extension"):
        app.register_blueprint(other.metrics_blueprint())
    with pytest.raises(TypeError, match="authorize must be a callable"):
        flaskjobs.csjd.metrics_blueprint(authorize=True)  # type: ignore[arg-type]


# -- who may read it ---------------------------------------------------------------------------
def test_the_token_alone(make_app: Callable[..., Flask]) -> None:
    client = with_blueprint(make_app(CSJD_METRICS_TOKEN=TOKEN)).test_client()
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}0"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.get("/csjd/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="csjd-metrics"')
        assert response.headers["Cache-Control"] == "no-store"
        assert b"csjd_" not in response.data
    response = client.get("/csjd/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == choose_encoder("")[1]
    assert response.headers["Cache-Control"] == "no-store"
    assert "csjd_attempts" in {f.name for f in text_string_to_metric_families(response.text)}
    accept = "application/openmetrics-text; version=1.0.0"
    response = client.get("/csjd/metrics", headers={**BEARER, "Accept": accept})
    assert response.headers["Content-Type"] == choose_encoder(accept)[1]
    assert client.head("/csjd/metrics", headers=BEARER).status_code == 200
    for method in (client.post, client.put, client.delete, client.options):
        assert method("/csjd/metrics", headers=BEARER).status_code == 405, method


def test_authorize_decides_for_requests_without_a_token(make_app: Callable[..., Flask]) -> None:
    allowed = {"now": False}
    calls: list[int] = []

    def authorize() -> bool:
        calls.append(1)
        return allowed["now"]

    app = with_blueprint(make_app(CSJD_METRICS_TOKEN=TOKEN), authorize=authorize)
    client = app.test_client()
    assert client.get("/csjd/metrics").status_code == 403
    allowed["now"] = True
    assert client.get("/csjd/metrics").status_code == 200
    assert len(calls) == 2
    # A wrong token is refused whatever authorize says; the right one does not ask it.
    assert client.get("/csjd/metrics", headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.get("/csjd/metrics", headers=BEARER).status_code == 200
    assert len(calls) == 2
    # Without a token configured (CSJD_METRICS = True), only authorize opens it.
    app = with_blueprint(make_app("no-token", CSJD_METRICS=True), authorize=authorize)
    assert app.test_client().get("/csjd/metrics").status_code == 200
    assert app.test_client().get("/csjd/metrics", headers=BEARER).status_code == 401


# -- what it serves ----------------------------------------------------------------------------
def test_inprocess_mode_counts_this_process_attempts_exactly(
    make_app: Callable[..., Flask],
) -> None:
    app = with_blueprint(make_app(CSJD_MODE="inprocess", CSJD_METRICS_TOKEN=TOKEN))
    greets, fails = 4, 2
    with app.app_context():
        assert value(scrape(app), "csjd_pending_jobs") == 0
        for i in range(greets):
            flaskjobs.greet.delay(f"n{i}")
        for _ in range(fails):
            flaskjobs.fails.delay()
        flaskjobs.greet.apply_async(args=["x"], queue="attacker-queue")
        assert flaskjobs.csjd.wait(timeout=20)
    scraped = scrape(app)
    attempts = "csjd_attempts_total"
    q = {"queue": "default"}
    assert value(scraped, attempts, **q, type="flask.greet", outcome="succeeded") == greets
    assert value(scraped, attempts, **q, type="flask.fails", outcome="failed") == fails
    assert value(scraped, attempts, queue="other", type="other", outcome="succeeded") == 1
    assert sum(v for (name, _), v in scraped.items() if name == attempts) == greets + fails + 1
    assert value(scraped, "csjd_pending_jobs") == 0
    assert "attacker-queue" not in {v for _, pairs in scraped for _, v in pairs}


def test_redis_mode_serves_the_queue_gauges(
    make_app: Callable[..., Flask], redis_config: dict[str, Any]
) -> None:
    app = with_blueprint(make_app(**redis_config, CSJD_METRICS_TOKEN=TOKEN))
    waiting = 3
    with app.app_context():
        for i in range(waiting):
            flaskjobs.greet.delay(f"n{i}")
    scraped = scrape(app)
    assert value(scraped, "csjd_queue_waiting", queue="default") == waiting
    assert value(scraped, "csjd_queue_unfinished", queue="default") == waiting
    assert value(scraped, "csjd_queue_dead_letters", queue="default") == 0
    assert not [key for key in scraped if key[0].startswith("csjd_attempt")]


def test_redis_down_is_a_counted_scrape_error_not_a_failed_scrape(
    make_app: Callable[..., Flask],
    redis_config: dict[str, Any],
    redis_server_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web_metrics, "QUEUE_TTL", 0.0)  # every scrape reads Redis
    server = redis_server_factory()  # its own: the test kills it
    config = {**redis_config, "CSJD_REDIS_URL": server.url, "CSJD_METRICS_TOKEN": TOKEN}
    app = with_blueprint(make_app(**config))
    with app.app_context():
        flaskjobs.greet.delay("before")
    scraped = scrape(app)
    assert value(scraped, "csjd_queue_waiting", queue="default") == 1
    assert value(scraped, "csjd_queue_scrape_errors_total") == 0
    server.kill()
    scraped = scrape(app)  # still 200: the failure is a figure
    assert value(scraped, "csjd_queue_scrape_errors_total") == 1
    assert not [key for key in scraped if key[0] == "csjd_queue_waiting"]


# -- bad settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({"CSJD_METRICS": 1}, "CSJD_METRICS"),
        ({"CSJD_METRICS_TOKEN": "tooshort"}, "CSJD_METRICS_TOKEN"),
        ({"CSJD_METRICS": False, "CSJD_METRICS_TOKEN": TOKEN}, "CSJD_METRICS_TOKEN"),
        ({"CSJD_METRICS_TOKN": TOKEN}, "CSJD_METRICS_TOKN"),  # a typo is unknown, not ignored
    ],
)
def test_bad_settings_fail_init_app(
    make_app: Callable[..., Flask], config: dict[str, Any], setting: str
) -> None:
    with pytest.raises(SettingsError, match=setting) as caught:
        make_app(**config)
    assert caught.value.setting == setting
    assert TOKEN not in str(caught.value)
