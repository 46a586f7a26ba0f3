"""Jobs of the Flask dashboard tests, on an extension of their own (it has a schedule, which
no other test's app should tick)."""

from __future__ import annotations

from csjd_core import every, permanent
from csjd_flask import CSJD

dash = CSJD()

SCRIPT = "<script>alert(1)</script>"


@dash.job("dash.rejects")
def rejects(note: str = "") -> None:
    """Fails for good at once, with markup in its error."""
    raise permanent(ValueError(f"bad input {SCRIPT}"))


@dash.job("dash.order")
def order(number: int) -> int:
    return number


@dash.job("dash.digest", schedule=every(hours=1), schedule_name="digest")
def digest() -> str:
    return "sent"
