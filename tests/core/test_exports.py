"""The public surface of csjd_core: a sorted __all__, names from the spec, no framework imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import csjd_core

# SPEC section 2: the names tests outside this repository import from csjd_core.
SPEC_NAMES = {
    "App",
    "BackendUnavailable",
    "BatchLoader",
    "CSJDError",
    "Config",
    "DispatcherClosed",
    "Dispatcher",
    "DuplicateJob",
    "FileJobStore",
    "InvalidJob",
    "Job",
    "JobContext",
    "JobState",
    "JobStoreLocked",
    "MetricsSnapshot",
    "PermanentError",
    "QueueFull",
    "RetryPolicy",
    "StopReport",
    "StoreCorrupted",
    "TTLCache",
    "UnknownJobType",
    "permanent",
}


def test_all_is_sorted_unique_and_importable() -> None:
    names = csjd_core.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(csjd_core, name, None) is not None, f"csjd_core.{name} is missing"


def test_every_public_attribute_is_listed() -> None:
    public = {
        name
        for name, value in vars(csjd_core).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("csjd_core")
    }
    assert public <= set(csjd_core.__all__), (
        f"exported but not in __all__: {public - set(csjd_core.__all__)}"
    )


def test_the_spec_names_are_exported() -> None:
    missing = SPEC_NAMES - set(csjd_core.__all__)
    assert not missing, f"SPEC section 2 names missing from csjd_core.__all__: {sorted(missing)}"


def test_the_distributed_spec_names_are_exported() -> None:
    names = {"DistributedConfig", "RedisConfig", "RedisDistributedDispatcher"}
    missing = names - set(csjd_core.__all__)
    assert not missing, f"missing from csjd_core.__all__: {sorted(missing)}"
    for name in names:
        assert getattr(csjd_core, name) is not None


def test_errors_form_one_tree() -> None:
    for name in (
        "BackendUnavailable",
        "DispatcherClosed",
        "DuplicateJob",
        "InvalidJob",
        "JobStoreLocked",
        "PermanentError",
        "QueueFull",
        "StoreCorrupted",
        "UnknownJobType",
        "JobNotFound",
        "JobFailed",
    ):
        assert issubclass(getattr(csjd_core, name), csjd_core.CSJDError), name


def test_csjd_core_never_imports_django_or_flask() -> None:
    """Importing csjd_core, and every one of its modules, loads neither framework."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import csjd_core
        assert not any(m.startswith(("django", "flask")) for m in sys.modules), "csjd_core"
        for info in pkgutil.walk_packages(csjd_core.__path__, "csjd_core."):
            importlib.import_module(info.name)
            leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "flask"))
            assert not leaked, f"{info.name} imported {leaked}"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_csjd_core_starts_no_thread_and_reads_no_environment() -> None:
    code = textwrap.dedent(
        """
        import os, threading
        class Spy(dict):
            def __getitem__(self, key):
                raise AssertionError(f"environment read at import: {key}")
            def get(self, key, default=None):
                raise AssertionError(f"environment read at import: {key}")
        os.environ = Spy(os.environ)
        before = threading.active_count()
        import csjd_core
        assert threading.active_count() == before
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
