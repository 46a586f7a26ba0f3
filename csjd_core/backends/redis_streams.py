"""Kept for imports written before the Redis backend became a package: see
`csjd_core.backends.redis`."""

from csjd_core.backends.redis import DeadLetter, QueueKeys, RedisStreamsBackend

__all__ = ["DeadLetter", "QueueKeys", "RedisStreamsBackend"]
