"""CI runs exactly the test command the README gives users.

The command lives in README.md ("## Quick start") and, once more, as `TEST_COMMAND='...'` in
.ci/run; the nox sessions install the same target (`TEST_INSTALL` in noxfile.py). Change them
together: these tests fail when they drift apart.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
NOXFILE = ROOT / "noxfile.py"


def _quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _readme_test_command() -> str:
    commands = [command for command in _quick_start_commands() if "pytest" in command]
    assert len(commands) == 1, f"expected one pytest command in Quick start, found {commands}"
    return commands[0]


def _ci_run_text() -> str:
    return CI_RUN.read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command() -> None:
    assigned = re.findall(r"^TEST_COMMAND='([^']*)'$", _ci_run_text(), re.MULTILINE)
    assert assigned == [_readme_test_command()]
    assert 'eval "$TEST_COMMAND"' in _ci_run_text()


def test_nox_sessions_install_the_readme_target() -> None:
    words = shlex.split(_readme_test_command())
    assert words[:3] == ["pip", "install", "-e"], words
    readme_target = words[3]
    constants = {
        target.id: node.value.value
        for node in ast.parse(NOXFILE.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert constants.get("TEST_INSTALL") == readme_target


def test_ci_script_is_executable_bash_that_parses() -> None:
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable (chmod +x)"
    assert _ci_run_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in _ci_run_text()
    result = subprocess.run(
        ["bash", "-n", str(CI_RUN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
