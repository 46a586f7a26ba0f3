"""csjd_core.testing.wait_until: the polling helper every other test relies on."""

from __future__ import annotations

import itertools
import time

import pytest

from csjd_core.testing import WaitTimeout, wait_until


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: [n] if (n := next(counter)) >= 3 else [], 1.0) == [3]


def test_times_out_with_the_message_as_an_assertion_and_a_timeout_error() -> None:
    calls = itertools.count(1)
    started = time.monotonic()
    with pytest.raises(
        WaitTimeout, match=r"queue never drained \(waited 0\.0\d\d s of 0\.05 s"
    ) as info:
        wait_until(lambda: next(calls) < 0, timeout=0.05, message="queue never drained")
    assert 0.05 <= time.monotonic() - started < 1.0
    assert isinstance(info.value, AssertionError)
    assert isinstance(info.value, TimeoutError)
    assert "last value False" in str(info.value)
    assert next(calls) > 5  # it polled, more than once


def test_message_callable_is_called_only_on_failure() -> None:
    described: list[int] = []

    def describe() -> str:
        described.append(1)
        return "state at the deadline"

    assert wait_until(lambda: True, 1.0, message=describe)
    assert described == []
    with pytest.raises(AssertionError, match="state at the deadline"):
        wait_until(lambda: False, 0.0, message=describe)
    assert described == [1]


def test_predicate_is_called_at_least_once_even_with_no_time() -> None:
    assert wait_until(lambda: "now", timeout=0) == "now"


def test_a_predicate_error_propagates_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0, timeout=5.0)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("timeout", "interval"), [(-1, 0.001), (float("inf"), 0.001), (1.0, -0.1), (1.0, float("nan"))]
)
def test_bad_durations_are_value_errors(timeout: float, interval: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        wait_until(lambda: True, timeout=timeout, interval=interval)
