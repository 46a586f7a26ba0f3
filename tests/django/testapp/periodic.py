"""A periodic @csjd.job of the test app. Not autodiscovered (the module is not ``jobs.py``):
the ``periodic_job`` fixture puts its schedule in the app only for the tests that want it, so
no other test's in-process dispatcher ticks it."""

from __future__ import annotations

import csjd_django as csjd
from csjd_core import every

RUNS: list[str] = []

NAME = "report.hourly"


@csjd.job(
    "report.build", schedule=every(hours=1), schedule_name=NAME, schedule_kwargs={"kind": "hourly"}
)
def build_report(kind: str) -> str:
    RUNS.append(kind)
    return f"report:{kind}"


#: Kept here: the fixture removes it from the app after each test and puts it back.
SCHEDULE = csjd.app.schedules.pop(NAME)
