"""``--log-format json`` and the per-attempt log records: a real ``csjd worker`` prints only JSON
lines, one record per attempt whose fields are counted against the jobs run; the text format
keeps its lines; a bad value is a usage error."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ops_support import APP, Cli

from csjd_core.logs import ATTEMPT_FIELDS


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of ``stderr`` as a JSON object (fails on the first that is not one)."""
    objects = []
    for line in stderr.splitlines():
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line: {line!r}\n{stderr}") from exc
    return objects


def test_a_json_worker_logs_one_object_per_attempt_with_its_fields(cli: Cli) -> None:
    ok = cli.enqueue([f"ok{i}" for i in range(5)])
    bad = cli.enqueue(["bad0", "bad1"], type="explode", args=["<x>"], max_attempts=2)

    result = cli.run("worker", APP, "--burst", "--log-format", "json", "--log-level", "debug")

    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    assert records[0]["message"].startswith("csjd worker")  # the banner is an object too
    attempts = [r for r in records if "outcome" in r]
    assert Counter(r["outcome"] for r in attempts) == {"succeeded": 5, "retried": 2, "failed": 2}
    assert Counter(r["job_id"] for r in attempts) == {
        **dict.fromkeys(ok, 1),
        **dict.fromkeys(bad, 2),
    }
    for record in attempts:
        assert set(ATTEMPT_FIELDS) <= set(record), record
        assert record["logger"] == "csjd_core.engine"
        assert record["queue"] == "default"
        assert record["duration"] >= 0
        assert record["lag"] >= 0
        outcome = record["outcome"]
        assert record["attempt"] == (1 if outcome != "failed" else 2)
        assert record["terminal"] is (outcome != "retried")
        assert (record["retry_in"] is not None) is (outcome == "retried")
        if outcome == "succeeded":
            assert record["level"] == "DEBUG"
            assert record["job_type"] == "record"
            assert record["error_class"] is None
        else:
            assert record["level"] == ("ERROR" if outcome == "failed" else "WARNING")
            assert record["job_type"] == "explode"
            assert record["error_class"] == "RuntimeError"
            assert "boom: <x>" in record["message"]
            assert "RuntimeError: boom: <x>" in record["exception"]  # the traceback's text


def test_the_text_format_prints_a_line_per_attempt_at_debug(cli: Cli) -> None:
    cli.enqueue(["t0", "t1"])

    result = cli.run("worker", APP, "--burst", "--log-level", "debug")

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "job succeeded" in line]
    assert len(lines) == 2
    assert " DEBUG csjd_core.engine job succeeded id='t" in lines[0]
    assert "duration=" in lines[0]


def test_json_before_the_command_applies_too_and_info_logs_only_the_problems(cli: Cli) -> None:
    cli.enqueue(["w0"])
    cli.enqueue(["w1"], type="explode", args=["x"], max_attempts=1)

    result = cli.run("--log-format", "json", "worker", APP, "--burst")

    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    assert [r["job_id"] for r in records if "outcome" in r] == ["w1"]  # the default: INFO


def test_a_bad_log_format_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("worker", APP, "--burst", "--log-format", "xml")
    assert result.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in result.stderr
