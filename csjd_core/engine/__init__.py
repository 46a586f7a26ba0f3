"""The execution engine shared by every mode: workers, timeouts, outcomes, stop."""

from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.registry import HandlerRegistry

__all__ = ["BaseDispatcher", "HandlerRegistry"]
