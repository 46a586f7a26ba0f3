"""Throwaway PostgreSQL databases for the outbox tests.

The server is the one the machine runs (``CSJD_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``.ci/run`` installs and starts PostgreSQL
when it is missing). Each test gets a database of its own, created and dropped here.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

ADMIN_ENV = "CSJD_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_URL


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def server_problem() -> str | None:
    """Why the server cannot be used (``None``: it answers)."""
    try:
        import psycopg  # noqa: PLC0415
    except ImportError as exc:
        return f"psycopg 3 is not installed ({exc}): pip install -e '.[dev]'"
    try:
        with psycopg.connect(admin_url(), connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot reach PostgreSQL at {admin_url()} ({ADMIN_ENV}): {exc}"
    return None


@contextlib.contextmanager
def throwaway_database(prefix: str = "csjd_test") -> Iterator[str]:
    """Create a database, yield its URL, drop it (closing what still holds it)."""
    import psycopg  # noqa: PLC0415

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url(), name)
    finally:
        with psycopg.connect(admin_url(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_database(url: str) -> dict[str, object]:
    """A ``DATABASES`` entry for the database at ``url``."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }
