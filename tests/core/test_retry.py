"""RetryPolicy: the delay formula, jitter bounds, validation and overflow safety."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from csjd_core import RetryPolicy
from csjd_core.limits import MAX_DURATION
from csjd_core.retry import Backoff


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.base_delay, policy.factor, policy.max_delay, policy.jitter) == (
        1.0,
        2.0,
        300.0,
        "full",
    )


def test_ceiling_is_min_of_cap_and_exponential() -> None:
    policy = RetryPolicy(base_delay=0.5, factor=3.0, max_delay=10.0, jitter=None)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0]


def test_no_jitter_is_exact() -> None:
    policy = RetryPolicy(base_delay=0.25, factor=2, max_delay=1.0, jitter=None)
    assert [policy.delay(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_full_jitter_spans_zero_to_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=2.0, max_delay=8.0, jitter="full")
    assert policy.delay(3, rand=lambda: 0.0) == 0.0
    assert policy.delay(3, rand=lambda: 1.0) == 4.0
    assert policy.delay(3, rand=lambda: 0.5) == 2.0


def test_equal_jitter_spans_half_to_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=2.0, max_delay=8.0, jitter="equal")
    assert policy.delay(3, rand=lambda: 0.0) == 2.0
    assert policy.delay(3, rand=lambda: 1.0) == 4.0
    assert policy.delay(10, rand=lambda: 0.0) == 4.0  # capped: half of max_delay


def test_full_jitter_actually_varies() -> None:
    rng = random.Random(1234)
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0, jitter="full")
    delays = {policy.delay(1, rand=rng.random) for _ in range(50)}
    assert len(delays) > 40
    assert all(0.0 <= d <= 1.0 for d in delays)


def test_timedelta_durations_are_seconds() -> None:
    policy = RetryPolicy(base_delay=timedelta(milliseconds=10), max_delay=timedelta(seconds=2))
    assert policy.base_delay == 0.01
    assert policy.max_delay == 2.0


def test_zero_base_delay_means_immediate_retries() -> None:
    policy = RetryPolicy(base_delay=0, max_delay=0, jitter=None)
    assert policy.delay(1) == 0.0
    assert policy.delay(10**9) == 0.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_is_one_based(attempt: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        RetryPolicy().delay(attempt)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_delay": -1}, "RetryPolicy.base_delay"),
        ({"base_delay": float("nan")}, "RetryPolicy.base_delay"),
        ({"base_delay": float("inf")}, "RetryPolicy.base_delay"),
        ({"base_delay": "1"}, "RetryPolicy.base_delay"),
        ({"base_delay": True}, "RetryPolicy.base_delay"),
        ({"max_delay": -0.1}, "RetryPolicy.max_delay"),
        ({"max_delay": None}, "RetryPolicy.max_delay"),
        ({"factor": 0.5}, "RetryPolicy.factor"),
        ({"factor": float("inf")}, "RetryPolicy.factor"),
        ({"factor": float("nan")}, "RetryPolicy.factor"),
        ({"factor": "2"}, "RetryPolicy.factor"),
        ({"factor": False}, "RetryPolicy.factor"),
        ({"jitter": "half"}, "RetryPolicy.jitter"),
        ({"jitter": True}, "RetryPolicy.jitter"),
        ({"base_delay": 5.0, "max_delay": 1.0}, "RetryPolicy.max_delay"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        RetryPolicy(**kwargs)


def test_is_frozen_and_keyword_only() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.base_delay = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(1.0)  # type: ignore[misc]


positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
# base * spread stays within MAX_DURATION (ten years): longer delays are refused.
spreads = st.floats(min_value=1.0, max_value=100.0)
factors = st.floats(min_value=1.0, max_value=100.0, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=200)


@settings(max_examples=200, deadline=None)
@given(base=positive, spread=spreads, factor=factors, n=attempts)
def test_ceiling_matches_the_formula(base: float, spread: float, factor: float, n: int) -> None:
    max_delay = base * spread
    policy = RetryPolicy(base_delay=base, factor=factor, max_delay=max_delay, jitter=None)
    try:
        expected = min(max_delay, base * factor ** (n - 1))
    except OverflowError:
        expected = max_delay
    assert policy.ceiling(n) == pytest.approx(expected, rel=1e-12)
    assert policy.delay(n) == policy.ceiling(n)


@settings(max_examples=200, deadline=None)
@given(
    base=positive,
    spread=spreads,
    factor=factors,
    n=attempts,
    u=st.floats(min_value=0.0, max_value=1.0),
    jitter=st.sampled_from(["full", "equal"]),
)
def test_jittered_delay_stays_within_bounds(
    base: float, spread: float, factor: float, n: int, u: float, jitter: str
) -> None:
    policy = RetryPolicy(base_delay=base, factor=factor, max_delay=base * spread, jitter=jitter)  # type: ignore[arg-type]
    ceiling = policy.ceiling(n)
    delay = policy.delay(n, rand=lambda: u)
    low = 0.0 if jitter == "full" else ceiling / 2
    assert low <= delay <= ceiling
    assert delay <= policy.max_delay


@settings(max_examples=200, deadline=None)
@given(base=positive, spread=spreads, factor=factors, n=attempts)
def test_ceiling_is_monotone_and_capped(base: float, spread: float, factor: float, n: int) -> None:
    policy = RetryPolicy(base_delay=base, factor=factor, max_delay=base * spread)
    assert base <= policy.ceiling(1) <= policy.ceiling(n) <= policy.ceiling(n + 1)
    assert policy.ceiling(n + 1) <= policy.max_delay


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(min_value=0.0, max_value=MAX_DURATION, allow_subnormal=True),
    max_delay=st.floats(min_value=0.0, max_value=MAX_DURATION, allow_subnormal=True),
    factor=st.floats(min_value=1.0, max_value=1e300),
    n=st.integers(min_value=1, max_value=10**18),
)
def test_huge_attempt_numbers_and_extreme_settings_never_overflow(
    base: float, max_delay: float, factor: float, n: int
) -> None:
    assume(max_delay >= base)
    policy = RetryPolicy(base_delay=base, factor=factor, max_delay=max_delay, jitter="equal")
    ceiling = policy.ceiling(n)
    assert math.isfinite(ceiling)
    assert 0.0 <= ceiling <= max_delay
    assert 0.0 <= policy.delay(n) <= max_delay


@pytest.mark.parametrize(
    ("base", "max_delay"),
    [(5e-324, 1.0), (1e-300, 1e8), (1e-200, 1e8)],
    ids=["subnormal-base", "huge-ratio", "big-ratio"],
)
def test_extreme_base_to_cap_ratio_does_not_overflow(base: float, max_delay: float) -> None:
    # max_delay / base_delay overflows to inf: the overflow guard must still cap the power.
    policy = RetryPolicy(base_delay=base, max_delay=max_delay, factor=2.0, jitter=None)
    assert policy.ceiling(10**6) == max_delay
    assert policy.ceiling(1) == base


def test_power_that_overflows_alone_while_the_product_fits() -> None:
    # 10.0**319 is not a float, yet 1e-315 * 10**319 == 1e4 is a fine delay below the cap.
    policy = RetryPolicy(base_delay=1e-315, factor=10.0, max_delay=1e8, jitter=None)
    assert policy.ceiling(320) == pytest.approx(1e4, rel=1e-6)  # a subnormal base: 1e-8 exact
    assert policy.ceiling(700) == 1e8


def test_backoff_doubles_up_to_its_cap_with_or_without_jitter() -> None:
    fixed = Backoff(base=0.5, cap=30.0, jitter=False)  # the supervisor's restarts
    assert [fixed.next_delay() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    fixed.reset()
    assert fixed.next_delay() == 0.5
    jittered = Backoff(base=0.5, cap=30.0)
    for step in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0):
        assert step / 2 <= jittered.next_delay() <= step
