"""What the benchmark scripts share: a process's CPU time, and the test suite's throwaway servers
(``tests/redis_server.py``, ``tests/redis_cluster.py``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["ROOT", "load_test_module", "proc_cpu"]

ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) used so far by ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def load_test_module(name: str) -> ModuleType:
    """``tests/<name>.py`` (e.g. ``redis_server``: the suite's throwaway servers), importable by
    its own name (loaded once)."""
    if name in sys.modules:
        return sys.modules[name]
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
