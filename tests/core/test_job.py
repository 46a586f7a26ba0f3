"""Job admission checks, the wire format, and the JobState enum."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csjd_core import Config, CSJDError, Dispatcher, InvalidJob, Job, JobContext, JobState
from csjd_core.job import check_json, validate_job


class Opaque:
    """A value json cannot encode."""


def test_a_plain_job_is_valid() -> None:
    validate_job(Job("id-1", "email", {"to": "a@example.com", "n": [1, 2.5, None, True]}))
    validate_job(Job("id-2", "email"))  # payload None is fine


@pytest.mark.parametrize("bad_id", ["", None, 7, b"id", ["x"]])
def test_id_must_be_a_non_empty_string(bad_id: Any) -> None:
    with pytest.raises(InvalidJob, match="job id must be a non-empty string") as info:
        validate_job(Job(bad_id, "email"))
    assert isinstance(info.value, CSJDError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad_type", ["", None, 3, b"email"])
def test_type_must_be_a_non_empty_string(bad_type: Any) -> None:
    with pytest.raises(InvalidJob, match="job type must be a non-empty string"):
        validate_job(Job("id", bad_type))


@pytest.mark.parametrize(
    "payload",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        {"x": float("nan")},
        [1, [2, {"deep": float("inf")}]],
        Opaque(),
        {"when": datetime.now(UTC)},
        {"raw": b"bytes"},
        {1, 2},
        {(1, 2): "tuple key"},
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "nested-nan",
        "deep-inf",
        "object",
        "datetime",
        "bytes",
        "set",
        "tuple-key",
    ],
)
def test_payload_must_be_json(payload: Any) -> None:
    with pytest.raises(InvalidJob, match=r"payload of job 'j' is not JSON-serializable"):
        validate_job(Job("j", "t", payload))


def test_circular_payload_is_invalid() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidJob, match="refers to itself"):
        validate_job(Job("j", "t", loop))


def test_absurdly_deep_payload_is_invalid_not_a_crash() -> None:
    # In a subprocess: the RecursionError json raises inside leaves CPython 3.11 in a state where
    # pytest's later ast.parse of a failing test raises SystemError (an INTERNALERROR).
    code = textwrap.dedent(
        """
        from csjd_core import InvalidJob, Job
        from csjd_core.job import validate_job
        deep = []
        for _ in range(100_000):
            deep = [deep]
        try:
            validate_job(Job("j", "t", deep))
        except InvalidJob as exc:
            print("invalid:", "deeper than 64 levels" in str(exc))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "invalid: True"), result.stderr


def test_check_json_names_what_it_checked() -> None:
    with pytest.raises(InvalidJob, match="argument 'when'"):
        check_json(Opaque(), "argument 'when'")
    check_json({"a": [1, 2.0, "x", None, False]}, "anything")


def test_run_at_must_be_timezone_aware() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    with pytest.raises(InvalidJob, match="run_at must be timezone-aware"):
        validate_job(Job("j", "t", run_at=naive))
    with pytest.raises(InvalidJob, match="run_at must be a datetime"):
        validate_job(Job("j", "t", run_at=1234.5))  # type: ignore[arg-type]
    validate_job(Job("j", "t", run_at=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=2)))))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_max_attempts_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(InvalidJob, match="max_attempts must be an int >= 1"):
        validate_job(Job("j", "t", max_attempts=bad))


@pytest.mark.parametrize(
    "bad", [0, -0.5, float("nan"), float("inf"), True, "5", timedelta(0), timedelta(seconds=-1)]
)
def test_timeout_must_be_positive_seconds(bad: Any) -> None:
    with pytest.raises(InvalidJob, match="timeout must be"):
        validate_job(Job("j", "t", timeout=bad))


def test_timeout_accepts_seconds_and_timedelta() -> None:
    validate_job(Job("j", "t", timeout=0.05))
    validate_job(Job("j", "t", timeout=3))
    validate_job(Job("j", "t", timeout=timedelta(milliseconds=50)))


def test_admission_leaves_the_callers_job_as_it_was_and_a_timedelta_timeout_applies() -> None:
    deadlines: list[float | None] = []

    def handler(ctx: JobContext, job: Job) -> None:
        deadlines.append(ctx.deadline)

    job = Job("j", "t", timeout=timedelta(seconds=30))
    with Dispatcher(Config(workers=1)) as d:
        d.register_handler("t", handler)
        d.start()
        d.submit(job)
        assert d.join(10)
    assert job.timeout == timedelta(seconds=30)
    (deadline,) = deadlines
    assert deadline is not None
    assert 25 < deadline - time.monotonic() <= 30


@pytest.mark.parametrize("bad", ["", 5])
def test_queue_must_be_a_non_empty_string_or_none(bad: Any) -> None:
    with pytest.raises(InvalidJob, match="queue must be 1 to 200 letters"):
        validate_job(Job("j", "t", queue=bad))


@pytest.mark.parametrize("bad", [101, -101, 10**100, True, False, None, 1.0, "1", [1]])
def test_validate_refuses_a_priority_that_is_not_an_int_from_minus_100_to_100(bad: Any) -> None:
    with pytest.raises(
        InvalidJob, match=r"priority must be an int from -100 to 100 .*\(job id='j'\)"
    ):
        validate_job(Job("j", "t", priority=bad))


@pytest.mark.parametrize("good", [-100, -1, 0, 1, 100])
def test_validate_accepts_priorities_from_minus_100_to_100(good: int) -> None:
    validate_job(Job("j", "t", priority=good))


def test_a_priority_round_trips_and_0_is_not_written() -> None:
    assert "priority" not in Job("j", "t").to_dict()  # what releases before priorities wrote
    data = Job("j", "t", priority=-7).to_dict()
    assert data["priority"] == -7
    assert Job.from_dict(data).priority == -7
    assert Job.from_dict({"id": "j", "type": "t"}).priority == 0
    with pytest.raises(InvalidJob, match="priority"):
        Job.from_dict({"id": "j", "type": "t", "priority": 500})


def test_validate_refuses_things_that_are_not_jobs() -> None:
    with pytest.raises(InvalidJob, match="expected a Job, got dict"):
        validate_job({"id": "j", "type": "t"})  # type: ignore[arg-type]


def test_to_dict_from_dict_round_trip() -> None:
    job = Job(
        "j-1",
        "email",
        {"to": ["a@example.com"], "n": 3, "f": 0.25, "ok": True, "none": None},
        max_attempts=5,
        timeout=1.5,
        run_at=datetime(2030, 5, 17, 8, 30, 15, 123456, tzinfo=UTC),
        queue="mail",
    )
    data = job.to_dict()
    assert data == {
        "id": "j-1",
        "type": "email",
        "payload": {"to": ["a@example.com"], "n": 3, "f": 0.25, "ok": True, "none": None},
        "max_attempts": 5,
        "timeout": 1.5,
        "run_at": job.run_at.timestamp(),  # type: ignore[union-attr]
        "queue": "mail",
    }
    back = Job.from_dict(data)
    assert back == job
    assert back.run_at is not None
    assert back.run_at.tzinfo is not None


def test_to_dict_normalises_a_timedelta_timeout_to_seconds() -> None:
    data = Job("j", "t", timeout=timedelta(milliseconds=250)).to_dict()
    assert data["timeout"] == 0.25
    assert Job.from_dict(data).timeout == 0.25


def test_round_trip_keeps_the_instant_of_a_non_utc_run_at() -> None:
    paris = timezone(timedelta(hours=2))
    run_at = datetime(2031, 3, 1, 9, 0, tzinfo=paris)
    back = Job.from_dict(Job("j", "t", run_at=run_at).to_dict())
    assert back.run_at == run_at  # same instant (aware datetimes compare by instant)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "t"},
        {"id": "j"},
        {"id": "j", "type": "t", "run_at": "tomorrow"},
        {"id": "j", "type": "t", "run_at": float("nan")},
        {"id": "j", "type": "t", "run_at": 1e300},
        {"id": "", "type": "t"},
        {"id": "j", "type": "t", "payload": {"x": float("nan")}},
        {"id": "j", "type": "t", "timeout": "soon"},
        {"id": "j", "type": "t", "max_attempts": 0},
    ],
)
def test_from_dict_rejects_malformed_records(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob):
        Job.from_dict(data)


@pytest.mark.parametrize("data", [None, [("id", "j"), ("type", "t")], "job", 5])
def test_from_dict_rejects_a_record_that_is_not_a_mapping(data: Any) -> None:
    # A corrupted log line or a hand-edited message must be InvalidJob, never AttributeError.
    with pytest.raises(InvalidJob, match="malformed job record"):
        Job.from_dict(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    payload=json_values,
    stamp=st.datetimes(
        # run_at at most ten years ahead (MAX_DURATION)
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2030, 1, 1),
        timezones=st.just(UTC),
    ),
    timeout=st.none() | st.floats(min_value=1e-3, max_value=1e6),
    attempts=st.none() | st.integers(min_value=1, max_value=1000),
)
def test_round_trip_property(
    payload: Any, stamp: datetime, timeout: float | None, attempts: int | None
) -> None:
    job = Job("j", "t", payload, max_attempts=attempts, timeout=timeout, run_at=stamp)
    validate_job(job)
    back = Job.from_dict(job.to_dict())
    assert back.payload == payload
    assert back.timeout == timeout
    assert back.max_attempts == attempts
    assert back.run_at is not None
    # A float timestamp carries the instant to within a microsecond.
    assert abs((back.run_at - stamp).total_seconds()) <= 1e-6


def test_job_states_are_str_enum_values() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "scheduled",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert JobState("running") is JobState.RUNNING
    assert JobState.SUCCEEDED == "succeeded"
    assert [s for s in JobState if s.finished] == [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    ]


def test_non_finite_float_is_rejected_even_as_a_bare_scalar() -> None:
    for value in (math.nan, math.inf):
        with pytest.raises(InvalidJob, match="not JSON-serializable"):
            check_json(value, "payload")


# -- headers ---------------------------------------------------------------------------------


def test_headers_are_written_only_when_set_and_read_back() -> None:
    assert "headers" not in Job("a", "t").to_dict()
    assert "headers" not in Job("a", "t", headers={}).to_dict()
    job = Job("a", "t", headers={"traceparent": "00-x", "tracestate": "k=v"})
    assert Job.from_dict(job.to_dict()) == job
    assert Job.from_dict({"id": "a", "type": "t"}).headers is None  # a record before headers


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (["traceparent"], "headers must be a dict of str to str"),
        ({"trace parent": "x"}, "names must be 1 to 128 letters"),
        ({"": "x"}, "names must be 1 to 128 letters"),
        ({1: "x"}, "names must be 1 to 128 letters"),
        ({"traceparent": 1}, r"headers\['traceparent'\] must be text"),
        ({"traceparent": "\udcff"}, r"headers\['traceparent'\] must be text"),
        ({f"h{i}": "x" for i in range(17)}, "at most 16 .csjd_core.limits.MAX_HEADERS"),
        ({"tracestate": "x" * 4096}, "at most 4096 .csjd_core.limits.MAX_HEADERS_LENGTH"),
    ],
)
def test_bad_headers_are_refused_naming_the_limit(headers: object, message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        validate_job(Job("a", "t", headers=headers))  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match=message):  # read back from a record, the same rules
        Job.from_dict({"id": "a", "type": "t", "headers": headers})
