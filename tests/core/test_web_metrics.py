"""`csjd_core.web_metrics`: the metrics settings without prometheus_client installed, nothing
optional imported unless metrics are on, and the bearer-token check. (What the views serve is
tested through them: tests/django/test_metrics_view.py, tests/flask/test_flask_metrics.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from csjd_core import App
from csjd_core.web_metrics import MetricsSettings, TokenCheck, WebMetrics, metrics_settings

TOKEN = "core-metrics-token-0123456789"


def run_without_prometheus(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter where prometheus_client cannot be imported."""
    prelude = "import sys; sys.modules['prometheus_client'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_metrics_on_without_the_extra_is_a_settings_error_naming_it() -> None:
    result = run_without_prometheus(
        f"""
        from csjd_core.errors import SettingsError
        from csjd_core.web_metrics import metrics_settings
        assert metrics_settings({{}}) == metrics_settings({{"CSJD_METRICS": False}})
        for settings in ({{"CSJD_METRICS": True}}, {{"CSJD_METRICS_TOKEN": "{TOKEN}"}}):
            try:
                metrics_settings(settings)
            except SettingsError as exc:
                print(exc.setting, "|", exc)
            else:
                raise SystemExit("accepted")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("CSJD_METRICS |")
    assert lines[1].startswith("CSJD_METRICS_TOKEN |")
    for line in lines:
        assert "pip install 'csjd[prometheus]'" in line
        assert TOKEN not in line


def test_the_frameworks_import_prometheus_client_only_when_metrics_are_on() -> None:
    code = """
        import sys
        import csjd_core.web_metrics, csjd_flask
        from flask import Flask
        from csjd_flask import CSJD
        CSJD(Flask("off"))
        assert "prometheus_client" not in sys.modules, "imported with metrics off"
        app = Flask("on")
        app.config["CSJD_METRICS"] = True
        CSJD(app)
        assert "prometheus_client" in sys.modules
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_token_is_compared_whole_and_never_shown() -> None:
    settings = metrics_settings({"CSJD_METRICS_TOKEN": TOKEN})
    assert settings == MetricsSettings(enabled=True, token=TOKEN)
    assert TOKEN not in repr(settings)
    metrics = WebMetrics(App(mode="immediate"), token=settings.token)
    assert metrics.check_token(None) is TokenCheck.ABSENT
    assert metrics.check_token(f"Bearer {TOKEN}") is TokenCheck.VALID
    assert metrics.check_token(f"BEARER   {TOKEN} ") is TokenCheck.VALID
    for header in (
        "",
        "Bearer",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}0",
        f"Token {TOKEN}",
        f"Bearer {TOKEN.upper()}",
        "Bearer ünïcödé",
    ):
        assert metrics.check_token(header) is TokenCheck.INVALID, header
    untokened = WebMetrics(App(mode="immediate"))
    assert untokened.check_token(f"Bearer {TOKEN}") is TokenCheck.INVALID
    assert not untokened.has_token
