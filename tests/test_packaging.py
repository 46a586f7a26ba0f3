"""The installed package as users' tools see it: type checkers find it and its types."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_CODE = textwrap.dedent(
    """
    from csjd_core import App

    app = App()


    @app.job("reports.build")
    def build(day: int) -> int:
        return day


    handle = build.delay("monday")
    reveal_type(handle.result())

    from datetime import timedelta

    from csjd_core import Config
    from csjd_core.config import DistributedConfig

    Config(default_timeout=timedelta(seconds=5), result_ttl=60)
    distributed = DistributedConfig(lease=timedelta(minutes=1), block=2.0)
    reveal_type(distributed.lease)
    """
)


def test_mypy_checks_user_code_against_the_installed_package(tmp_path: Path) -> None:
    # Outside the repository, as a user's project is: an editable install must be a path
    # entry mypy follows (an import hook it cannot follow made this "Cannot find
    # implementation or library stub for module named csjd_core").
    (tmp_path / "user_jobs.py").write_text(USER_CODE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "user_jobs.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Cannot find implementation" not in output, output
    # The ParamSpec of @app.job reaches the user: a wrong argument is an error, the result
    # type is the function's.
    assert 'Argument 1 to "delay" of "JobFunction" has incompatible type "str"' in output, output
    assert 'Revealed type is "int"' in output or 'Revealed type is "builtins.int"' in output, output
    # Durations are given as seconds or a timedelta, and read as seconds.
    assert "timedelta" not in output, output
    assert 'Revealed type is "float"' in output or 'Revealed type is "builtins.float"' in output
    assert "Found 1 error" in output, output  # the delay("monday") above, nothing else
