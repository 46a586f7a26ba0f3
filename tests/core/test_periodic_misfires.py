"""Misfires after an outage are counted and logged by the one ticker whose step added them to
the schedule's mark, not by every ticker that planned from the same mark (found by
tests/periodic/test_schedule_redis_restart.py: two workers each warned "missed=3" for one hole
of three slots)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from csjd_core import App, Config, Dispatcher, every
from csjd_core.backends.base import SlotOp, SlotVerdict
from csjd_core.engine.ticker import Ticker


def test_two_tickers_racing_after_an_outage_count_its_misfires_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App(mode="inprocess")

    @app.job("tick", schedule=every(seconds=1), max_running=None)
    def tick() -> None: ...

    schedule = app.schedules["tick"]
    dispatcher = Dispatcher(Config(), registry=app.registry)
    try:
        dispatcher.admit_slot(schedule, SlotOp.INIT, 1000.0)
        now = 1004.5  # slots 1001..1004 due: 1004 enqueued, three passed over
        first = Ticker(app.schedules, dispatcher, clock=lambda: now)
        second = Ticker(app.schedules, dispatcher, clock=lambda: now)
        real_admit = dispatcher.admit_slot
        verdicts: list[SlotVerdict] = []

        def admit_after_the_other(*args: Any, **kwargs: Any) -> SlotVerdict:
            # `second` has read the mark (1000) and planned; `first` wins the race now.
            first.tick(now)
            verdicts.append(real_admit(*args, **kwargs))
            return verdicts[-1]

        with caplog.at_level(logging.WARNING, logger="csjd_core.periodic"):
            second.dispatcher = _Admitting(dispatcher, admit_after_the_other)
            second.tick(now)
        state = dispatcher.schedule_state("tick")
    finally:
        dispatcher.stop(timeout=5)
    assert verdicts == [SlotVerdict.DONE]
    assert state is not None and state.mark == 1004.0 and state.misfires == 3
    assert (first.counters.enqueued, first.counters.misfires) == (1, 3)
    assert (second.counters.refused, second.counters.misfires) == (1, 0)
    warnings = [r.getMessage() for r in caplog.records if "slots missed" in r.getMessage()]
    assert warnings == [
        "schedule slots missed while no ticker ran name=tick not_enqueued=3 enqueued=1 "
        "catch_up=latest"
    ]


class _Admitting:
    """A dispatcher whose ``admit_slot`` is replaced (everything else passes through)."""

    def __init__(self, dispatcher: Dispatcher, admit_slot: Any) -> None:
        self._dispatcher = dispatcher
        self.admit_slot = admit_slot

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)
