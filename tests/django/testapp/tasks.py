"""Django Tasks framework tasks of the test app (run on CSJD through CSJDBackend)."""

from __future__ import annotations

from csjd_django.compat import TaskContext

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task  # type: ignore[no-redef]

ATTEMPTS: list[int] = []


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(takes_context=True)
def with_context(context: TaskContext, word: str) -> str:
    return f"{word}:{context.attempt}"


@task()
def explode(message: str) -> None:
    raise ValueError(message)


@task()
async def async_double(n: int) -> int:
    return n * 2


FLAKY_CALLS: list[str] = []


@task()
def fails_twice(key: str) -> str:
    """Fails on its first two attempts, then succeeds."""
    FLAKY_CALLS.append(key)
    if FLAKY_CALLS.count(key) <= 2:
        raise ConnectionError(f"attempt {FLAKY_CALLS.count(key)} of {key} failed")
    return key
