"""The Prometheus metrics view (``csjd_django.metrics.metrics_view`` at ``/csjd/metrics`` of the
test project): who may read it, what it serves in Redis mode (the queue gauges, against a real
Redis, read once per cache period) and in in-process mode (this process's attempts, counted),
and bad settings refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from factories import StaffFactory, UserFactory
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

import csjd_django as csjd
from csjd_core import web_metrics
from csjd_core.errors import SettingsError, UnknownJobType
from csjd_core.job import Job
from csjd_django.checks import check_settings
from csjd_django.models import VIEW_PERMISSION
from testapp import jobs

pytestmark = pytest.mark.django_db

TOKEN = "s3cr3t-metrics-token_0123456789"
BEARER = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
FAST_RETRY = {"base_delay": 0.001, "max_delay": 0.01}
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
#: The content types prometheus_client's exposition gives (the one Prometheus asks for, and
#: the default).
TEXT = choose_encoder("")[1]
OPENMETRICS = choose_encoder(OPENMETRICS_ACCEPT)[1]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def url() -> str:
    return reverse("csjd-metrics")


def scrape(client: Client) -> Samples:
    response = client.get(url(), **BEARER)
    assert response.status_code == 200, response.content
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def token_set() -> Iterator[None]:
    with override_settings(CSJD_METRICS_TOKEN=TOKEN):
        yield


# -- who may read it ---------------------------------------------------------------------------
@pytest.mark.usefixtures("token_set")
def test_anonymous_and_wrong_tokens_get_401_with_a_bearer_challenge(client: Client) -> None:
    for headers in (
        {},
        {"HTTP_AUTHORIZATION": "Bearer not-the-token-at-all-0000"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        {"HTTP_AUTHORIZATION": "Bearer"},
        {"HTTP_AUTHORIZATION": "Bearer tôken-with-non-ascii-ééééé"},
    ):
        response = client.get(url(), **headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith('Bearer realm="csjd-metrics"')
        assert "no-store" in response["Cache-Control"]
        assert b"csjd_" not in response.content
    wrong = client.get(url(), HTTP_AUTHORIZATION="Bearer nope-nope-nope-nope")
    assert 'error="invalid_token"' in wrong["WWW-Authenticate"]


@pytest.mark.usefixtures("token_set")
def test_the_token_opens_the_scrape_with_the_exposition_content_type(client: Client) -> None:
    response = client.get(url(), **BEARER)
    assert response.status_code == 200
    assert response["Content-Type"] == TEXT
    assert "no-store" in response["Cache-Control"]
    names = {f.name for f in text_string_to_metric_families(response.content.decode())}
    assert "csjd_attempts" in names  # immediate mode (the test project's): this process's jobs
    # The scheme is case-insensitive (RFC 7235); OpenMetrics when the scraper asks for it.
    response = client.get(
        url(),
        HTTP_AUTHORIZATION=f"bearer {TOKEN}",
        HTTP_ACCEPT=OPENMETRICS_ACCEPT,
    )
    assert response.status_code == 200
    assert response["Content-Type"] == OPENMETRICS
    assert response.content.decode().endswith("# EOF\n")
    assert client.head(url(), **BEARER).status_code == 200


@pytest.mark.usefixtures("token_set")
def test_users_need_the_dashboard_permission(client: Client) -> None:
    client.force_login(UserFactory())
    assert client.get(url()).status_code == 403
    client.force_login(StaffFactory())  # staff alone is not enough
    assert client.get(url()).status_code == 403
    client.force_login(StaffFactory(permissions=[VIEW_PERMISSION]))
    response = client.get(url())
    assert response.status_code == 200
    assert response["Content-Type"] == TEXT
    # A wrong token is refused whoever is logged in.
    refused = client.get(url(), HTTP_AUTHORIZATION="Bearer wrong-wrong-wrong-wrong")
    assert refused.status_code == 401


def test_the_permission_alone_opens_it_without_a_token(client: Client) -> None:
    with override_settings(CSJD_METRICS=True):
        assert client.get(url()).status_code == 401
        # No token configured: any bearer is wrong.
        assert client.get(url(), **BEARER).status_code == 401
        client.force_login(UserFactory(permissions=[VIEW_PERMISSION]))
        assert client.get(url()).status_code == 200


@pytest.mark.usefixtures("token_set")
def test_only_get_and_head(client: Client) -> None:
    for method in (client.post, client.put, client.delete, client.options):
        response = method(url(), **BEARER)
        assert response.status_code == 405, method
        assert response["Allow"] == "GET, HEAD"


def test_metrics_off_is_a_404(client: Client) -> None:
    assert client.get(url(), **BEARER).status_code == 404
    with override_settings(CSJD_METRICS=False):
        assert client.get(url(), **BEARER).status_code == 404


# -- what it serves ----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_redis_mode_serves_the_queue_gauges_read_once_per_period(
    client: Client, redis_mode: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """M dead letters (made by a real worker) and N waiting jobs; two scrapes within the cache
    period send Redis nothing the second time."""
    monkeypatch.setattr(web_metrics, "QUEUE_TTL", 60.0)
    dead, waiting = 2, 5
    with override_settings(CSJD_METRICS_TOKEN=TOKEN):
        for _ in range(dead):
            jobs.always_fails.delay()
        call_command("csjd_worker", "--burst")
        for i in range(waiting):
            jobs.flaky.delay(i)
        redis_mode.config_resetstat()
        scraped = scrape(client)
        first = _commands(redis_mode)
        expected = {
            "csjd_queue_waiting": waiting,
            "csjd_queue_length": waiting,
            "csjd_queue_in_flight": 0,
            "csjd_queue_scheduled": 0,
            "csjd_queue_unfinished": waiting,
            "csjd_queue_dead_letters": dead,
        }
        assert {name: value(scraped, name, queue="default") for name in expected} == expected
        assert value(scraped, "csjd_queue_scrape_errors_total") == 0
        # A web process runs no job: no attempt series, no pending gauge.
        assert not [key for key in scraped if key[0].startswith("csjd_attempt")]
        assert ("csjd_pending_jobs", ()) not in scraped
        assert first > 0
        jobs.flaky.delay(99)  # one more, within the period: not seen, nothing read
        after_enqueue = _commands(redis_mode)
        assert scrape(client) == scraped
        assert _commands(redis_mode) == after_enqueue


def _commands(client: Any) -> int:
    """Commands Redis has run since the last ``CONFIG RESETSTAT``, these reads left out."""
    own = ("cmdstat_info", "cmdstat_config|resetstat")
    return sum(v["calls"] for k, v in client.info("commandstats").items() if k not in own)


@pytest.mark.django_db(transaction=True)
def test_inprocess_mode_counts_this_process_attempts_exactly(client: Client) -> None:
    flakies, failures = 3, 2
    with override_settings(
        CSJD_MODE="inprocess", CSJD_METRICS_TOKEN=TOKEN, CSJD_RETRY=FAST_RETRY, CSJD_WORKERS=2
    ):
        before = scrape(client)  # scraping builds nothing that runs (workers start at enqueue)
        assert value(before, "csjd_pending_jobs") == 0
        assert not csjd.app.dispatcher.started
        for _ in range(flakies):
            jobs.flaky.delay(1)  # fails attempt 1, succeeds attempt 2
        for _ in range(failures):
            jobs.always_fails.delay()  # fails for good at once
        jobs.flaky.apply_async(args=[0], queue="attacker-queue")  # a queue no job names
        with pytest.raises(UnknownJobType):  # refused at admission: counted nowhere
            csjd.app.enqueue(Job(id="stranger", type="attacker-chosen-type"))
        jobs.PROGRESS_GATE.clear()
        jobs.PROGRESS_REPORTED.clear()
        jobs.report_progress.delay("held", hold=True)  # runs until the gate opens
        try:
            assert jobs.PROGRESS_REPORTED.wait(10)
            running = scrape(client)
            held = {"queue": "default", "type": "progress.report"}
            assert value(running, "csjd_in_flight", **held) == 1
            assert (value(running, "csjd_pending_jobs") or 0) >= 1  # the held one at least
        finally:
            jobs.PROGRESS_GATE.set()
        assert csjd.wait(timeout=20)
        scraped = scrape(client)
    attempts = "csjd_attempts_total"
    q = {"queue": "default"}
    assert value(scraped, attempts, **q, type="flaky", outcome="retried") == flakies
    assert value(scraped, attempts, **q, type="flaky", outcome="succeeded") == flakies
    assert value(scraped, attempts, **q, type="always.fails", outcome="failed") == failures
    assert value(scraped, attempts, queue="other", type="other", outcome="succeeded") == 1
    assert value(scraped, attempts, **q, type="progress.report", outcome="succeeded") == 1
    total = sum(v for (name, _), v in scraped.items() if name == attempts)
    assert total == 2 * flakies + failures + 2  # nothing else was counted
    count = "csjd_attempt_duration_seconds_count"
    assert value(scraped, count, **q, type="flaky") == 2 * flakies
    assert not [key for key in scraped if key[0] == "csjd_in_flight"]  # none runs now
    assert value(scraped, "csjd_pending_jobs") == 0
    labels = {v for _, pairs in scraped for _, v in pairs}
    assert "attacker-chosen-type" not in labels
    assert "attacker-queue" not in labels


# -- bad settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "setting", "message"),
    [
        ({"CSJD_METRICS": "yes"}, "CSJD_METRICS", "must be True or False, got 'yes'"),
        ({"CSJD_METRICS_TOKEN": "short"}, "CSJD_METRICS_TOKEN", "at least 16 characters"),
        ({"CSJD_METRICS_TOKEN": 12345}, "CSJD_METRICS_TOKEN", "must be a string, got a int"),
        (
            {"CSJD_METRICS_TOKEN": "has spaces in it, which a header cannot carry"},
            "CSJD_METRICS_TOKEN",
            "at least 16 characters of A-Z",
        ),
        (
            {"CSJD_METRICS": False, "CSJD_METRICS_TOKEN": TOKEN},
            "CSJD_METRICS_TOKEN",
            "CSJD_METRICS = False turns the metrics view off",
        ),
    ],
)
def test_bad_settings_are_check_errors_and_refused_at_first_use(
    client: Client, overrides: dict[str, Any], setting: str, message: str
) -> None:
    with override_settings(**overrides):
        errors = [m for m in check_settings() if m.id == "csjd.E040"]
        assert len(errors) == 1, check_settings()
        assert errors[0].obj == setting
        assert message in errors[0].msg
        assert "has spaces" not in errors[0].msg  # a token is never echoed
        with pytest.raises(SettingsError, match=setting):
            client.get(url(), **BEARER)
        with pytest.raises(SettingsError, match=setting):
            jobs.flaky.delay(0)  # the app refuses to start with them, not only the view
