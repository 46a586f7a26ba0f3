"""Utilities with no tie to the job code: `TTLCache` (single-flight loads, LRU bound,
stale-while-revalidate) and `BatchLoader` (the N+1 fix). Both are exported from ``csjd_core``."""

from csjd_core.utilities.batch import AsyncBatchLoader, BatchLoader
from csjd_core.utilities.cache import CacheStats, TTLCache

__all__ = ["AsyncBatchLoader", "BatchLoader", "CacheStats", "TTLCache"]
