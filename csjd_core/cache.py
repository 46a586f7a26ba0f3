"""Kept for imports written before the utilities moved: see `csjd_core.utilities.cache`."""

from csjd_core.utilities.cache import CacheStats, TTLCache

__all__ = ["CacheStats", "TTLCache"]
