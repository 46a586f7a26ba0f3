"""csjd_flask.CSJD: init_app, configuration, several apps, errors, app context, the modes."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import flaskjobs
import pytest
from flask import Flask, current_app, g
from flaskjobs import (
    async_whoami,
    attempt,
    blocks,
    csjd,
    fails,
    flaky,
    greet,
    report_progress,
    whoami,
)

import csjd_flask
from csjd_core import App, Hooks, Job, JobFailed, JobNotFound, JobState
from csjd_core.settings import SettingsError
from csjd_core.testing import wait_until
from csjd_flask import (
    CSJD,
    AlreadyInitialized,
    CSJDState,
    FlaskJobFunction,
    NoAppContext,
    NotInitialized,
)

DEADLINE = 5.0

MakeApp = Callable[..., Flask]


def csjd_workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("csjd-worker"))


# -- init_app and the factory pattern ------------------------------------------------------


def test_init_app_keeps_per_app_state_in_extensions() -> None:
    ext = CSJD()
    app = Flask("factory")
    app.config["CSJD_MODE"] = "immediate"
    assert "csjd" not in app.extensions
    ext.init_app(app)
    state = app.extensions["csjd"]
    assert isinstance(state, CSJDState)
    assert state.extension is ext
    assert isinstance(state.core, App) and state.core.name == "factory"
    assert ext.core_app(app) is state.core
    assert not hasattr(ext, "app")  # never bound to one app
    assert "csjd" in app.cli.commands


def test_constructor_with_an_app_initialises_it() -> None:
    app = Flask("direct")
    ext = CSJD(app)
    assert app.extensions["csjd"].extension is ext
    assert ext.core_app(app).mode == "inprocess"  # the default


def test_init_app_reads_the_csjd_config_keys(make_app: MakeApp) -> None:
    app = make_app(
        CSJD_MODE="inprocess",
        CSJD_WORKERS=7,
        CSJD_MAX_PENDING_JOBS=12,
        CSJD_RETRY={"base_delay": 0.5, "max_delay": 2.0},
        OTHER_SETTING="ignored",
    )
    core = csjd.core_app(app)
    assert core.mode == "inprocess"
    assert core.config.workers == 7
    assert core.config.max_pending_jobs == 12
    assert core.config.retry.base_delay == 0.5


def test_redis_config_keys(make_app: MakeApp) -> None:
    app = make_app(
        CSJD_MODE="redis",
        CSJD_REDIS_URL="redis://127.0.0.1:1/3",
        CSJD_QUEUES="emails, reports",
        CSJD_BLOCK=0.25,
        CSJD_WORKERS=3,
    )
    core = csjd.core_app(app)
    assert core.mode == "redis"
    assert core.redis is not None and core.redis.url == "redis://127.0.0.1:1/3"
    assert core.distributed.queues == ("emails", "reports")
    assert core.distributed.block == 0.25
    assert core.distributed.workers == 3


@pytest.mark.parametrize(
    ("config", "setting", "text"),
    [
        ({"CSJD_WORKRS": 4}, "CSJD_WORKRS", "unknown setting"),
        ({"CSJD_MODE": "threads"}, "CSJD_MODE", "must be one of"),
        ({"CSJD_WORKERS": 0}, "CSJD_WORKERS", "got 0"),
        ({"CSJD_MODE": "redis"}, "CSJD_REDIS_URL", "required"),
        ({"CSJD_RETRY": {"base": 1}}, "CSJD_RETRY", "unknown keys"),
        ({"CSJD_MODE": "redis", "CSJD_REDIS_URL": "http://x"}, "CSJD_REDIS_URL", "redis://"),
        (
            {"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis+cluster://h:7000/1"},
            "CSJD_REDIS_URL",
            "a Redis Cluster has only database 0",
        ),
    ],
)
def test_bad_config_fails_at_init_app_naming_the_key(
    config: dict[str, Any], setting: str, text: str
) -> None:
    app = Flask("bad-config")
    app.config.update(config)
    with pytest.raises(SettingsError, match=text) as info:
        csjd.init_app(app)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")
    assert "csjd" not in app.extensions  # nothing half-initialised
    assert "csjd" not in app.cli.commands


def test_a_second_init_app_on_the_same_app_is_an_error(make_app: MakeApp) -> None:
    app = make_app()
    state = app.extensions["csjd"]
    with pytest.raises(AlreadyInitialized, match="already initialised on Flask app 'flask-test'"):
        csjd.init_app(app)
    with pytest.raises(AlreadyInitialized):
        CSJD().init_app(app)  # another extension object: same answer
    assert app.extensions["csjd"] is state


# -- one extension, several apps -----------------------------------------------------------


def test_one_extension_serves_two_apps_with_their_own_core_apps(make_app: MakeApp) -> None:
    first = make_app("first", GREETING="hi")
    second = make_app("second", GREETING="salut", CSJD_MODE="inprocess")
    one, two = csjd.core_app(first), csjd.core_app(second)
    assert one is not two
    assert one.registry is not two.registry
    assert one.mode == "immediate" and two.mode == "inprocess"
    assert set(one.registry.types()) == set(two.registry.types()) == set(csjd.jobs)

    with first.app_context():
        handle_one = whoami.delay()
    with second.app_context():
        handle_two = whoami.delay()
    assert handle_one.result(DEADLINE)["app"] == "first"
    assert handle_one.result()["greeting"] == "hi"
    assert handle_two.result(DEADLINE)["app"] == "second"
    assert handle_two.result()["greeting"] == "salut"
    with pytest.raises(JobNotFound):
        csjd.status(handle_one.id, app=second)  # each app has its own queue


def test_jobs_defined_after_init_app_reach_every_app() -> None:
    ext = CSJD()
    before = Flask("before")
    before.config["CSJD_MODE"] = "immediate"
    ext.init_app(before)

    @ext.job("late.job")
    def late(x: int) -> dict[str, Any]:
        return {"x": x, "app": current_app.name}

    after = Flask("after")
    after.config["CSJD_MODE"] = "immediate"
    ext.init_app(after)
    for app in (before, after):
        assert "late.job" in ext.core_app(app).registry
        with app.app_context():
            assert late.delay(2).result() == {"x": 2, "app": app.name}


def test_job_options_and_duplicate_types_are_checked_by_the_core_decorator() -> None:
    ext = CSJD()
    with pytest.raises(ValueError, match="max_attempts"):
        ext.job("x", max_attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        ext.job("x", timeout=-1)
    with pytest.raises(ValueError, match="priority must be an int from -100 to 100"):
        ext.job("x", priority=101)

    @ext.job("urgent", priority=20)
    def urgent() -> None: ...

    assert urgent.priority == 20
    assert urgent.build_job().priority == 20
    assert urgent.build_job(priority=-3).priority == -3

    @ext.job("dup")
    def one() -> None: ...

    def other() -> None: ...

    with pytest.raises(ValueError, match="already has handler"):
        ext.job("dup")(other)

    @ext.job()
    def default_name() -> None: ...

    assert default_name.type.endswith("default_name")
    assert isinstance(one, FlaskJobFunction) and one.extension is ext


def test_hooks_reach_every_apps_dispatcher() -> None:
    seen: list[str] = []

    class Record(Hooks):
        def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
            seen.append(result)

    ext = CSJD(hooks=[Record()])

    @ext.job("hooked")
    def hooked() -> str:
        return current_app.name

    for name in ("h1", "h2"):
        app = Flask(name)
        app.config["CSJD_MODE"] = "immediate"
        ext.init_app(app)
        with app.app_context():
            hooked.delay()
    assert seen == ["h1", "h2"]
    with pytest.raises(TypeError, match="hooks must be a sequence"):
        CSJD(hooks=Record())  # type: ignore[arg-type]


# -- clear errors --------------------------------------------------------------------------


def test_enqueue_outside_an_app_context_is_a_clear_error(make_app: MakeApp) -> None:
    make_app()
    with pytest.raises(NoAppContext, match=r"job 'flask.greet': no Flask application context"):
        greet.delay("x")
    with pytest.raises(NoAppContext, match=r"app\.app_context"):
        csjd.core_app()
    assert greet("inline") == "hello inline"  # calling the function needs no app


def test_a_missing_init_app_is_a_clear_error() -> None:
    app = Flask("never-initialised")
    with (
        app.app_context(),
        pytest.raises(
            NotInitialized,
            match=r"'never-initialised' is not initialised with CSJD; call "
            r"csjd.init_app\(app\)",
        ),
    ):
        greet.delay("x")
    with pytest.raises(NotInitialized):
        csjd.wait(app=app)


def test_an_app_initialised_by_another_extension_is_a_clear_error() -> None:
    app = Flask("other-extension")
    app.config["CSJD_MODE"] = "immediate"
    CSJD(app)
    with app.app_context(), pytest.raises(NotInitialized, match="another CSJD extension"):
        greet.delay("x")


def test_bad_arguments_fail_at_the_call(make_app: MakeApp) -> None:
    app = make_app()
    with app.app_context():
        with pytest.raises(TypeError, match=r"flask\.greet"):
            greet.delay()  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="argument 'name'"):
            greet.delay({1, 2})  # type: ignore[arg-type]


# -- the application context inside jobs ---------------------------------------------------


@pytest.mark.parametrize("mode", ["immediate", "inprocess"])
def test_every_job_runs_in_a_fresh_app_context_of_its_app(make_app: MakeApp, mode: str) -> None:
    app = make_app("ctx-app", CSJD_MODE=mode, GREETING="bonjour")
    torn_down: list[str] = []
    app.teardown_appcontext(lambda exc: torn_down.append(current_app.name))
    with app.test_request_context("/"):
        g.marker = "set-by-request"
        handles = [whoami.delay() for _ in range(3)]
        csjd.wait(DEADLINE)
    for handle in handles:
        seen = handle.result(DEADLINE)
        assert seen["app"] == "ctx-app"
        assert seen["greeting"] == "bonjour"
        assert seen["g_before"] is None  # not the request's g, not a previous job's g
    if mode == "inprocess":
        assert all(h.result()["thread"].startswith("csjd-worker") for h in handles)
    wait_until(lambda: len(torn_down) >= 4, DEADLINE, message="teardown ran per job")


def test_async_jobs_and_takes_context_run_in_the_app_context(make_app: MakeApp) -> None:
    app = make_app("async-app", CSJD_MODE="inprocess")
    with app.app_context():
        assert async_whoami.delay().result(DEADLINE) == "async-app"
        assert attempt.delay("a").result(DEADLINE) == {
            "label": "a",
            "attempt": 1,
            "app": "async-app",
        }


@pytest.mark.parametrize("mode", ["immediate", "inprocess"])
def test_progress_is_read_through_status(make_app: MakeApp, mode: str) -> None:
    app = make_app("progress-app", CSJD_MODE=mode)
    with app.app_context():
        handle = report_progress.delay(5)
        assert handle.result(DEADLINE) == 5
        progress = csjd.status(handle.id).progress
    assert progress is not None
    assert (progress.current, progress.total, progress.message) == (5, 5, "item 5 of 5")
    assert handle.status().progress == progress


def test_job_handles_work_outside_the_app_context(make_app: MakeApp) -> None:
    app = make_app(CSJD_MODE="inprocess")
    with app.app_context():
        handle = greet.delay("later")
    assert handle.result(DEADLINE) == "hello later"
    assert handle.status().state is JobState.SUCCEEDED


# -- the modes -----------------------------------------------------------------------------


def test_immediate_mode_runs_at_enqueue_and_records_failures(make_app: MakeApp) -> None:
    app = make_app()
    with app.app_context():
        handle = greet.apply_async(args=["now"], countdown=3600)  # countdowns not waited for
        assert handle.status().state is JobState.SUCCEEDED
        assert handle.result() == "hello now"
        failed = fails.delay()
        assert flaky.delay(3).result() == 3  # retried back to back
    with pytest.raises(JobFailed, match="bad input"):
        failed.result()


def test_inprocess_mode_starts_lazily_and_waits(make_app: MakeApp) -> None:
    before = csjd_workers()
    app = make_app(CSJD_MODE="inprocess", CSJD_WORKERS=3)

    @app.post("/greet/<name>")
    def enqueue(name: str) -> dict[str, str]:
        return {"id": greet.delay(name).id}

    assert csjd_workers() == before  # init_app starts nothing
    client = app.test_client()
    ids = [client.post(f"/greet/n{i}").json["id"] for i in range(10)]
    assert csjd_workers() == before + 3  # started by the first enqueue
    with app.app_context():
        assert csjd.wait(DEADLINE)
        assert [csjd.status(i).result for i in ids] == [f"hello n{i}" for i in range(10)]
    csjd.stop(app=app)
    assert csjd_workers() == before


def test_async_enqueue_variants(make_app: MakeApp) -> None:
    import asyncio  # noqa: PLC0415

    app = make_app(CSJD_MODE="inprocess")

    async def enqueue() -> list[str]:
        with app.app_context():
            handles = [await greet.adelay("a"), await greet.aapply_async(args=["b"])]
        return [await h.aresult(DEADLINE) for h in handles]

    assert asyncio.run(enqueue()) == ["hello a", "hello b"]


def _run_in_child(body: Callable[[], int], timeout: float = 10.0) -> int:
    """Fork, run ``body`` in the child, return its exit code (the child never returns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            code = body()
        except BaseException:
            code = 71
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child hung for {timeout} s")
        time.sleep(0.005)  # polling a child's exit: there is no event to wait on


def test_a_forked_child_starts_its_own_dispatcher(make_app: MakeApp) -> None:
    app = make_app("forking", CSJD_MODE="inprocess", CSJD_WORKERS=2)
    with app.app_context():
        assert greet.delay("parent").result(DEADLINE) == "hello parent"
        parent_dispatcher = csjd.core_app().dispatcher
        held = blocks.delay()  # a job running in the parent while it forks

    def child() -> int:
        with app.app_context():
            core = csjd.core_app()
            if core.dispatcher is parent_dispatcher:
                return 10
            try:
                csjd.status(held.id)
                return 11  # the parent's jobs are not the child's
            except JobNotFound:
                pass
            handle = whoami.delay()
            if handle.result(5.0)["app"] != "forking":
                return 12
            return 0 if csjd.wait(5.0) else 13

    assert _run_in_child(child) == 0
    flaskjobs.release.set()
    assert held.result(DEADLINE) == "released"
    with app.app_context():
        assert csjd.core_app().dispatcher is parent_dispatcher


# -- the public surface --------------------------------------------------------------------


def test_exports_are_sorted_and_importable() -> None:
    names = csjd_flask.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(csjd_flask, name) is not None
    assert issubclass(NoAppContext, RuntimeError) and issubclass(NotInitialized, RuntimeError)
