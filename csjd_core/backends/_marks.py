"""The rules of a schedule's mark (`Backend.admit_slot`) for the local backends, kept with
their state in this process. ``lua/enqueue.lua`` is the same rules for Redis; the contract
suite holds both to them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from csjd_core.backends.base import SlotOp, SlotRequest, SlotVerdict
from csjd_core.stats import ScheduleState

__all__ = ["admitted_duplicate", "decode", "encode", "step"]


def step(
    state: ScheduleState, request: SlotRequest, unfinished: Callable[[str], bool]
) -> tuple[SlotVerdict, ScheduleState]:
    """What ``request`` does to ``state``: the verdict, and the state to keep if the caller
    admits the job (`SlotVerdict.ENQUEUED`) or at once (any other verdict). The caller turns
    an ENQUEUED `SlotOp.SLOT` whose job id is taken into `admitted_duplicate` (and refuses a
    `SlotOp.MANUAL` one)."""
    replace = dataclasses.replace
    mark, slot = state.mark, request.slot
    op = request.op
    if op is SlotOp.INIT:
        if mark is not None:
            return SlotVerdict.DONE, state
        return SlotVerdict.INIT, replace(state, mark=slot)
    if op is SlotOp.RESUME:
        if not state.paused:
            return SlotVerdict.DONE, state
        return SlotVerdict.RESUMED, replace(
            state,
            mark=slot if mark is None else max(mark, slot),
            paused=False,
            paused_skips=state.paused_skips + _misfired(state, request),
        )
    if op is not SlotOp.MANUAL and mark is not None and mark >= slot:
        return SlotVerdict.DONE, state
    misfires = state.misfires + _misfired(state, request)
    if op is SlotOp.SKIP:
        return SlotVerdict.SKIPPED, replace(state, mark=slot, misfires=misfires)
    # Without max_running nothing is tracked (enqueue.lua clears the list the same way). The
    # list holds every run that may be unfinished, "run now" runs included: never cut short.
    running = tuple(j for j in state.running if unfinished(j)) if request.max_running else ()
    if op is SlotOp.MANUAL:
        assert request.job is not None
        return SlotVerdict.ENQUEUED, replace(
            state,
            running=_tracked(running, request),
            last_enqueued=request.job.id,
            manual=state.manual + 1,
        )
    state = replace(state, mark=slot, running=running, misfires=misfires)
    if state.paused:
        return SlotVerdict.PAUSED, replace(state, paused_skips=state.paused_skips + 1)
    if request.max_running and len(running) >= request.max_running:
        return SlotVerdict.OVERLAP, replace(state, overlaps=state.overlaps + 1)
    assert request.job is not None
    return SlotVerdict.ENQUEUED, replace(
        state,
        running=_tracked(running, request),
        last_enqueued=request.job.id,
        enqueued=state.enqueued + 1,
    )


def admitted_duplicate(before: ScheduleState, request: SlotRequest) -> ScheduleState:
    """The state after a `SlotOp.SLOT` whose job id was taken: the mark moves past the slot
    (it was enqueued before, under its id), counted as a duplicate."""
    return dataclasses.replace(
        before,
        mark=request.slot,
        misfires=before.misfires + _misfired(before, request),
        duplicates=before.duplicates + 1,
    )


def _misfired(state: ScheduleState, request: SlotRequest) -> int:
    """The missed (or, resuming, paused) slots ``request`` adds: only when the mark is still
    where its plan started."""
    if request.after is None or state.mark != request.after:
        return 0
    return request.misfired


def _tracked(running: tuple[str, ...], request: SlotRequest) -> tuple[str, ...]:
    if not request.max_running or request.job is None:
        return running
    return (*running, request.job.id)


_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleState))


def encode(state: ScheduleState) -> bytes:
    """A mark as a log record's (or snapshot's) JSON: `ScheduleState.to_json`'s fields."""
    fields = {name: getattr(state, name) for name in _FIELDS}
    fields["running"] = list(state.running)
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def decode(data: dict[str, Any]) -> ScheduleState:
    """A mark from its JSON form (unknown fields, from a later version, are ignored).

    Raises:
        TypeError, KeyError, ValueError: not a mark.
    """
    fields = {k: v for k, v in data.items() if k in _FIELDS}
    fields["running"] = tuple(fields.get("running") or ())
    state = ScheduleState(**fields)
    if not isinstance(state.name, str):
        raise TypeError(f"a mark's name must be a string, got {state.name!r}")
    return state
