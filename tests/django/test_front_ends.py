"""``csjd``, ``manage.py`` and ``flask csjd`` stay in step by construction: one list of worker
options with one set of defaults, and the same library calls underneath."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from csjd_core.cli import worker as csjd_worker
from csjd_core.cli_options import WORKER_OPTIONS
from csjd_core.errors import InvalidConfig
from csjd_core.logs import LOG_FORMATS
from csjd_core.operations import OPTIONS, WORKER_BOUNDS, WorkerOptions
from csjd_django.management.commands.csjd_worker import Command as DjangoWorker
from csjd_flask.cli import run as flask_run


def click_options(command: click.Command) -> dict[str, Any]:
    return {
        param.opts[0]: param.default
        for param in command.params
        if isinstance(param, click.Option) and param.opts[0] not in LOG_OPTIONS
    }


#: Options of the logging set up around the worker (``csjd``'s inherit the group's values).
LOG_OPTIONS = ("--log-level", "--log-format")


def argparse_options() -> dict[str, Any]:
    parser = DjangoWorker().create_parser("manage.py", "csjd_worker")
    flags = {option.flag for option in WORKER_OPTIONS}
    return {
        action.option_strings[0]: action.default
        for action in parser._actions
        if action.option_strings and action.option_strings[0] in flags
    }


def test_the_three_worker_commands_offer_the_same_options_and_defaults() -> None:
    expected = {option.flag: option.default for option in WORKER_OPTIONS}
    assert click_options(csjd_worker) == expected
    assert click_options(flask_run) == expected
    assert argparse_options() == expected
    # The defaults are WorkerOptions' own: one place.
    defaults = {f.name: f.default for f in dataclasses.fields(WorkerOptions)}
    assert expected["--processes"] == defaults["processes"] == 1
    assert expected["--drain-timeout"] == defaults["drain_timeout"] == 30.0


def test_the_three_worker_commands_offer_the_same_log_formats() -> None:
    for command in (csjd_worker, flask_run):
        [option] = [p for p in command.params if p.opts[0] == "--log-format"]
        assert isinstance(option.type, click.Choice)
        assert list(option.type.choices) == list(LOG_FORMATS)
    parser = DjangoWorker().create_parser("manage.py", "csjd_worker")
    [action] = [a for a in parser._actions if "--log-format" in a.option_strings]
    assert list(action.choices or ()) == list(LOG_FORMATS)
    assert action.default == "text"


def test_bad_worker_options_are_refused_alike() -> None:
    # The parsers' bounds are WorkerOptions' own (WORKER_BOUNDS), in every front end.
    for front_end in (csjd_worker, flask_run):
        for flag, dest in (("--processes", "processes"), ("--drain-timeout", "drain_timeout")):
            option = next(p for p in front_end.params if p.opts[0] == flag)
            assert isinstance(option.type, click.IntRange | click.FloatRange)
            assert (option.type.min, option.type.max) == WORKER_BOUNDS[dest]
    parser = DjangoWorker().create_parser("manage.py", "csjd_worker")
    for bad in (["--processes", "0"], ["--workers", "100000"], ["--drain-timeout", "-1"]):
        with pytest.raises(CommandError, match="must be"):  # not a SystemExit: a clear error
            parser.parse_args(bad)
    assert parser.parse_args(["--drain-timeout", "0"]).drain_timeout == 0.0
    for field, (minimum, _) in WORKER_BOUNDS.items():  # and the library refuses the same
        with pytest.raises(InvalidConfig, match="must be") as error:
            WorkerOptions(**{field: minimum - 1})
        assert (error.value.owner, error.value.field) == (OPTIONS, field)


def test_a_value_only_the_library_can_check_is_a_usage_error_in_manage_py() -> None:
    settings = {"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis://127.0.0.1:1/0"}
    with override_settings(**settings), pytest.raises(CommandError) as error:
        call_command("csjd_worker", "--queues", "a b")
    assert error.value.returncode == 2  # as argparse's own usage errors
    assert str(error.value).startswith("--queues: ")
