"""`PrometheusExporter` in process: the per-thread counts a scrape sums are exact across worker
threads, the histograms are cumulative, in-flight attempts are read from the engine, and an
unregistered type makes no series."""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from csjd_core import Config, Dispatcher, Job, JobContext, RetryPolicy
from csjd_core.prometheus import PrometheusExporter
from csjd_core.testing import wait_until


def samples(exporter: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(exporter.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_counts_over_eight_threads_are_exact_and_histograms_cumulative() -> None:
    exporter = PrometheusExporter(["ok", "flaky", "slow"], [])
    dispatcher = Dispatcher(
        Config(
            workers=8,
            hooks=(exporter,),
            retry=RetryPolicy(base_delay=0.001, max_delay=0.002),
            default_max_attempts=2,
        )
    )
    dispatcher.register_handler("ok", lambda ctx, job: None)

    def flaky(ctx: JobContext, job: Job) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("again")

    dispatcher.register_handler("flaky", flaky)
    dispatcher.register_handler("slow", lambda ctx, job: time.sleep(0.03))
    with dispatcher:
        dispatcher.submit_batch([Job(f"ok{i}", "ok") for i in range(3000)])
        dispatcher.submit_batch([Job(f"f{i}", "flaky") for i in range(200)])
        dispatcher.submit_batch([Job(f"s{i}", "slow") for i in range(5)])
        assert dispatcher.join(60)
    scraped = samples(exporter)
    attempts = "csjd_attempts_total"
    assert value(scraped, attempts, queue="default", type="ok", outcome="succeeded") == 3000
    assert value(scraped, attempts, queue="default", type="flaky", outcome="retried") == 200
    assert value(scraped, attempts, queue="default", type="flaky", outcome="succeeded") == 200
    duration = "csjd_attempt_duration_seconds"
    slow = {"queue": "default", "type": "slow"}
    assert value(scraped, f"{duration}_count", **slow) == 5
    assert value(scraped, f"{duration}_bucket", le="0.025", **slow) == 0
    assert value(scraped, f"{duration}_bucket", le="0.05", **slow) == 5  # cumulative from here
    assert value(scraped, f"{duration}_bucket", le="+Inf", **slow) == 5
    assert 0.15 <= value(scraped, f"{duration}_sum", **slow) < 5 * 0.5
    assert value(scraped, "csjd_job_lag_seconds_count", queue="default", type="ok") == 3000


def test_in_flight_is_read_from_the_engine_and_other_types_make_no_series() -> None:
    exporter = PrometheusExporter(["hold"], [])
    dispatcher = Dispatcher(Config(workers=2, hooks=(exporter,)))
    release = threading.Event()
    dispatcher.register_handler("hold", lambda ctx, job: release.wait(10))
    dispatcher.register_handler("<script>", lambda ctx, job: None)  # registered, not labelled
    with dispatcher:
        exporter.bind(dispatcher.detached_running, dispatcher.running_jobs)
        dispatcher.submit(Job("h", "hold"))
        wait_until(
            lambda: value(samples(exporter), "csjd_in_flight", queue="default", type="hold") == 1,
            10,
        )
        dispatcher.submit(Job("x", "<script>"))
        release.set()
        assert dispatcher.join(10)
    scraped = samples(exporter)
    assert value(scraped, "csjd_in_flight", queue="default", type="hold") == 0
    assert (
        value(scraped, "csjd_attempts_total", queue="other", type="other", outcome="succeeded") == 1
    )
    assert not [key for key in scraped if ("type", "<script>") in key[1]]
