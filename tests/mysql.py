"""Throwaway MySQL/MariaDB databases for the outbox tests of row locking (``SKIP LOCKED``).

The server is the one the machine runs (``CSJD_TEST_MYSQL_URL``, default
``mysql+pymysql://root@127.0.0.1:3306/``; ``.ci/run`` installs and starts MariaDB when it is
missing). Each test gets a database of its own, created and dropped here.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

ADMIN_ENV = "CSJD_TEST_MYSQL_URL"
DEFAULT_ADMIN_URL = "mysql+pymysql://root@127.0.0.1:3306/"


def admin_url() -> str:
    return os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_URL


def _connect() -> Any:
    import pymysql  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    url = make_url(admin_url())
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        connect_timeout=5,
        autocommit=True,
    )


def server_problem() -> str | None:
    """Why the server cannot be used (``None``: it answers)."""
    try:
        import pymysql  # noqa: PLC0415
    except ImportError as exc:
        return f"PyMySQL is not installed ({exc}): pip install -e '.[dev]'"
    try:
        _connect().close()
    except pymysql.Error as exc:
        return f"cannot reach MySQL/MariaDB at {admin_url()} ({ADMIN_ENV}): {exc}"
    return None


@contextlib.contextmanager
def throwaway_database(prefix: str = "csjd_test") -> Iterator[str]:
    """Create a database, yield its SQLAlchemy URL, drop it."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connection = _connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()
