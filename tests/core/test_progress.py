"""``ctx.set_progress`` and `Progress` (issue 18): the checks at the call, the stored form, and
the engine carrying a handler's value to ``status().progress`` in process."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import pytest

from csjd_core import Config, Dispatcher, Job, JobContext, JobState, Progress
from csjd_core.limits import MAX_PROGRESS_MESSAGE
from csjd_core.progress import from_json, make_progress, to_json


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        (("3",), TypeError, "current must be a number"),
        ((True,), TypeError, "current must be a number"),
        ((1, "10"), TypeError, "total must be a number"),
        ((1, None, 7), TypeError, "message must be a str"),
        ((-1,), ValueError, "current must be >= 0"),
        ((math.nan,), ValueError, "current must be a finite number"),
        ((1, math.inf), ValueError, "total must be a finite number"),
        ((10**400,), ValueError, "current must be a finite number"),
        ((11, 10), ValueError, "current (11) must not exceed total (10)"),
    ],
)
def test_bad_values_are_refused_at_the_call_naming_the_problem(
    args: tuple[object, ...], error: type[Exception], text: str
) -> None:
    ctx = JobContext("j", 1)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        ctx.set_progress(*args)  # type: ignore[arg-type]
    assert ctx.progress is None


def test_a_value_is_kept_stamped_and_its_message_clipped() -> None:
    ctx = JobContext("j", 1)
    before = datetime.now(UTC)
    ctx.set_progress(2.5, 10, "x" * (MAX_PROGRESS_MESSAGE + 10))
    progress = ctx.progress
    assert progress is not None
    assert (progress.current, progress.total, progress.fraction) == (2.5, 10, 0.25)
    assert progress.message is not None
    assert progress.message.startswith("x" * MAX_PROGRESS_MESSAGE)
    assert progress.message.endswith("... [10 more characters]")
    assert before <= progress.at <= datetime.now(UTC)
    assert make_progress(0, 0).fraction is None  # no work: no fraction
    assert make_progress(3).fraction is None


def test_the_stored_form_is_compact_and_reads_back() -> None:
    progress = make_progress(3, 4, "rows")
    text = to_json(progress)
    assert text.startswith('{"c":3,"t":4,"m":"rows","at":')
    back = from_json(text)
    assert back is not None
    assert (back.current, back.total, back.message) == (3, 4, "rows")
    assert abs((back.at - progress.at).total_seconds()) < 0.001
    assert to_json(make_progress(1)).startswith('{"c":1,"at":')
    # Advisory: a damaged value reads as none, never an error in status().
    for damaged in (None, "", "{", "[]", '{"c":-1,"at":1}', '{"c":1}', '{"c":1,"m":3,"at":1}'):
        assert from_json(damaged) is None


def test_a_handler_reports_progress_the_dispatcher_shows_while_it_runs() -> None:
    reported, release = threading.Event(), threading.Event()
    with Dispatcher(Config(workers=1)) as dispatcher:

        @dispatcher.handler("import")
        def handler(ctx: JobContext, job: Job) -> None:
            for row in range(1, 1001):
                ctx.set_progress(row, 1000, f"row {row}")
            reported.set()
            release.wait(10)

        dispatcher.submit(Job("j", "import"))
        assert reported.wait(10)
        running = dispatcher.status("j")
        assert running.state is JobState.RUNNING
        assert running.progress is not None
        assert (running.progress.current, running.progress.message) == (1000, "row 1000")
        release.set()
        assert dispatcher.join(10)
        done = dispatcher.status("j")
        assert done.state is JobState.SUCCEEDED
        assert isinstance(done.progress, Progress) and done.progress.fraction == 1.0
        assert dispatcher.status("j").progress == running.progress
