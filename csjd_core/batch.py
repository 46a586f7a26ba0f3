"""Kept for imports written before the utilities moved: see `csjd_core.utilities.batch`."""

from csjd_core.utilities.batch import AsyncBatchLoader, BatchLoader

__all__ = ["AsyncBatchLoader", "BatchLoader"]
