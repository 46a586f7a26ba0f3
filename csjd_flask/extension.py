"""`CSJD`, the Flask extension: ``CSJD(app)`` or ``CSJD()`` + ``init_app(app)``.

One extension object keeps the job *definitions* (``@csjd.job``); every Flask app it is
initialised on gets its own core `App` (registry, settings, dispatcher) in
``app.extensions["csjd"]``, which registers every definition — those decorated before and after
``init_app`` — wrapped so that the job runs inside that app's application context.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from flask import Flask, current_app, has_app_context

from csjd_core.app import App
from csjd_core.context import JobContext
from csjd_core.errors import CSJDError, SettingsError
from csjd_core.job import Job, JobStatus
from csjd_core.jobs import JobFunction, JobHandle, JobRegistry
from csjd_core.periodic import Every, Schedule
from csjd_core.settings import app_options
from csjd_core.web_metrics import SETTINGS as METRICS_SETTINGS
from csjd_core.web_metrics import WebMetrics, install_web_metrics, metrics_settings
from csjd_flask.outbox import SETTINGS as OUTBOX_SETTINGS
from csjd_flask.outbox import FlaskOutbox, NoOutbox

if TYPE_CHECKING:
    from flask import Blueprint
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session, scoped_session

__all__ = [
    "CSJD",
    "EXTENSION_KEY",
    "AlreadyInitialized",
    "CSJDState",
    "DashboardRefused",
    "FlaskJobFunction",
    "NoAppContext",
    "NotInitialized",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: The key of the per-app state in ``app.extensions``.
EXTENSION_KEY = "csjd"


class NoAppContext(CSJDError, RuntimeError):
    """CSJD needed ``current_app`` (to know which app's queue to use) outside an app context."""


class NotInitialized(CSJDError, RuntimeError):
    """The Flask app was not initialised with this `CSJD` extension (``init_app`` missing)."""


class AlreadyInitialized(CSJDError, RuntimeError):
    """``init_app`` was called a second time on the same Flask app."""


class DashboardRefused(CSJDError, RuntimeError):
    """The dashboard blueprint cannot be served safely: no authorisation callback was given,
    or the app it is registered on has no ``SECRET_KEY`` (CSRF tokens and messages need a
    signed session) or no CSJD extension."""


class FlaskJobFunction(JobFunction[P, R]):
    """A function decorated with ``@csjd.job``: the core `JobFunction` family.

    ``f(*args)`` runs it inline; ``.delay`` / ``.apply_async`` / ``.adelay`` / ``.aapply_async``
    enqueue it through the CSJD of ``flask.current_app`` (``f.app`` is that app's core `App`),
    so one function serves every app the extension is initialised on. The handle they return
    is bound to that app's core `App` and can be used outside the application context
    afterwards.
    """

    registry: _Definitions

    @property
    def extension(self) -> CSJD:
        """The `CSJD` extension that defined this job."""
        return self.registry.extension

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Write the job into ``db.session`` now; it is enqueued once the app commits that
        session, never if it rolls back (`apply_async_on_commit`)."""
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: Session | scoped_session[Session] | None = None,
        **options: Any,
    ) -> JobHandle[R]:
        """`apply_async` in the transaction of ``session`` (default ``db.session``) of the app
        configured with ``CSJD(app, outbox=db)``: the job is built and validated now, and
        written to the outbox table in that transaction — committed by the app's own
        ``db.session.commit()``, discarded by a rollback; a relay then enqueues it (the
        handle's ``status()`` says ``queued`` meanwhile). In immediate mode the job runs when
        the session commits instead.

        Raises:
            NoOutbox: the app was initialised without ``outbox=``.
            TypeError: the arguments do not match the function's signature.
            InvalidJob: an argument is not JSON, or the options are inconsistent (nothing is
                written).
            NoAppContext, NotInitialized: as for `apply_async`.
        """
        state = self.extension.state(job_type=self.type)
        outbox = state.outbox
        if outbox is None:
            raise NoOutbox(
                f"job {self.type!r}: delay_on_commit needs an outbox: initialise the extension "
                "with your Flask-SQLAlchemy extension, CSJD(app, outbox=db) or "
                "csjd.init_app(app, outbox=db), and create its tables (db.create_all() or a "
                "Flask-Migrate migration); see docs/flask.md"
            )
        job = self.build_job(args, kwargs, **options)
        outbox.enqueue_on_commit(job, session)
        return JobHandle(state.core, job.id, job.queue)


class _Definitions(JobRegistry):
    """The extension's job definitions. It validates ``@csjd.job`` exactly as the core
    ``@app.job`` does (options, default type name, one function per type) and runs nothing:
    each Flask app's own core `App` registers the definitions (see `CSJDState.register`), and
    a job is enqueued through the app of ``current_app``."""

    job_class = FlaskJobFunction

    def __init__(self, extension: CSJD) -> None:
        super().__init__()
        self.extension = extension

    def enqueuer(self, job_type: str) -> App:
        """The core `App` of ``current_app``.

        Raises:
            NoAppContext: no application context is active.
            NotInitialized: ``current_app`` was not initialised with this extension.
        """
        return self.extension.state(job_type=job_type).core


class _InAppContext:
    """The handler a Flask app registers for a job: the job's ``run_job`` inside a fresh
    application context of that app (an ``async def`` job's coroutine runs inside one too)."""

    __slots__ = ("flask_app", "run_job")

    def __init__(self, flask_app: Flask, run_job: Callable[[JobContext, Job], Any]) -> None:
        self.flask_app = flask_app
        self.run_job = run_job

    def __call__(self, ctx: JobContext, job: Job) -> Any:
        with self.flask_app.app_context():
            result = self.run_job(ctx, job)
        if inspect.isawaitable(result):  # an async def job: only the coroutine was created
            return self._await_in_context(result)
        return result

    async def _await_in_context(self, awaitable: Awaitable[Any]) -> Any:
        with self.flask_app.app_context():
            return await awaitable

    def __repr__(self) -> str:
        return f"<{self.run_job!r} in app {self.flask_app.name!r}>"


class CSJDState:
    """What ``app.extensions["csjd"]`` holds: the extension, this app's core `App`, its
    outbox (``CSJD(app, outbox=db)``; ``None`` without) and what its metrics view serves
    (``CSJD_METRICS``; ``None`` when off)."""

    __slots__ = ("core", "extension", "metrics", "outbox")

    def __init__(self, extension: CSJD, core: App, outbox: FlaskOutbox | None = None) -> None:
        self.extension = extension
        self.core = core
        self.outbox = outbox
        self.metrics: WebMetrics | None = None

    @classmethod
    def of(cls, app: Flask, *, job_type: str | None = None) -> CSJDState:
        """The state ``init_app`` stored in ``app.extensions``.

        Raises:
            NotInitialized: ``app`` was not initialised with CSJD.
        """
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, cls):
            raise NotInitialized(
                f"{_subject(job_type)}: Flask app {app.name!r} is not initialised with CSJD; "
                "call csjd.init_app(app) in the application factory (or create CSJD(app))"
            )
        return state

    def register(self, flask_app: Flask, job: FlaskJobFunction[Any, Any]) -> None:
        """Register ``job`` in this app's core registry, run inside ``flask_app``'s context,
        with its schedules (the extension checked their names)."""
        self.core.register_handler(job.type, _InAppContext(flask_app, job.run_job))
        self.core.jobs[job.type] = job
        for name, schedule in job.registry.schedules.items():
            if schedule.job is job:
                self.core.schedules[name] = schedule

    def __repr__(self) -> str:
        return f"<CSJDState {self.core!r}>"


def _subject(job_type: str | None) -> str:
    return f"job {job_type!r}" if job_type else "CSJD"


class CSJD:
    """CSJD background jobs for Flask apps.

    ``csjd = CSJD(app)``, or ``csjd = CSJD()`` then ``csjd.init_app(app)`` in an application
    factory. The ``CSJD_*`` keys of ``app.config`` are read by ``init_app`` (see docs/flask.md).

    Args:
        app: a Flask app to initialise now.
        hooks: core `Hooks` objects added to every app's dispatcher.
        outbox: a Flask-SQLAlchemy extension (``db = SQLAlchemy()``): the transactional
            outbox of every app initialised (unless ``init_app`` is given another), for
            ``delay_on_commit`` (docs/flask.md, "Transactional outbox").
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        hooks: Sequence[object] = (),
        outbox: SQLAlchemy | None = None,
    ) -> None:
        if isinstance(hooks, str | bytes) or not isinstance(hooks, Sequence):
            raise TypeError(f"hooks must be a sequence of Hooks objects, got {hooks!r}")
        self.hooks = tuple(hooks)
        self.outbox = outbox
        self._definitions = _Definitions(self)
        # The apps initialised so far, to register jobs decorated after init_app. Weak: the
        # state lives in app.extensions, the extension never keeps an app alive.
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, outbox: SQLAlchemy | None = None) -> None:
        """Set up CSJD on ``app``: read its ``CSJD_*`` config, build its core `App`, register
        every job, add the ``flask csjd`` commands. Starts nothing (in-process workers start on
        the first enqueue).

        With ``outbox`` (a Flask-SQLAlchemy extension; default: the extension's ``outbox=``),
        the outbox's tables are defined on ``outbox.metadata`` and the app's workers relay
        them (the engine is ``outbox.engine`` of this app, looked up on first use:
        ``outbox.init_app(app)`` may come before or after).

        Raises:
            AlreadyInitialized: ``app`` was already initialised.
            SettingsError: an unknown ``CSJD_*`` key or a bad value, naming the key; an outbox
                in in-process mode without ``CSJD_STORE_PATH``.
            TypeError: ``outbox`` is not a Flask-SQLAlchemy extension.
        """
        from csjd_flask.cli import csjd_group  # noqa: PLC0415 - the CLI imports this module

        if EXTENSION_KEY in app.extensions:
            raise AlreadyInitialized(
                f"CSJD is already initialised on Flask app {app.name!r}; call init_app once per "
                "app (import and use the extension object that initialised it)"
            )
        settings = app.config.get_namespace("CSJD_", lowercase=False, trim_namespace=False)
        if "CSJD_OUTBOX" in settings:  # Django's name: a Flask app gives the extension its db
            raise SettingsError(
                "CSJD_OUTBOX",
                "not a Flask setting: give the extension your Flask-SQLAlchemy db, "
                "CSJD(app, outbox=db) or csjd.init_app(app, outbox=db) (see docs/flask.md)",
            )
        metrics = metrics_settings(settings)
        framework = (*OUTBOX_SETTINGS, *METRICS_SETTINGS)
        core = App(name=app.name, **app_options(settings, hooks=self.hooks, framework=framework))
        db = outbox if outbox is not None else self.outbox
        flask_outbox = None if db is None else FlaskOutbox(app, core, db, settings)
        if flask_outbox is not None and flask_outbox.outbox is not None:
            core.outboxes = (flask_outbox.outbox,)
        state = CSJDState(self, core, flask_outbox)
        with self._lock:
            for job in self._definitions.jobs.values():
                state.register(app, cast(FlaskJobFunction[Any, Any], job))
            # In-process, its exporter joins the hooks of the dispatcher to be built.
            state.metrics = install_web_metrics(core, metrics)
            app.extensions[EXTENSION_KEY] = state
            self._apps.add(app)
        app.cli.add_command(csjd_group)
        logger.debug("csjd initialised app=%s mode=%s jobs=%d", app.name, core.mode, len(core.jobs))

    # -- the decorator ---------------------------------------------------------------------
    # `JobRegistry.job`'s overloads, restated only for their return type (FlaskJobFunction):
    # typing cannot make the job class a parameter of a ParamSpec-generic decorator.
    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        takes_context: Literal[False] = ...,
        schedule: str | Every | None = ...,
        timezone: str | None = ...,
        catch_up: str = ...,
        catch_up_limit: int = ...,
        max_running: int | None = ...,
        schedule_name: str | None = ...,
        schedule_kwargs: Mapping[str, Any] | None = ...,
        schedule_jitter: float | timedelta | None = ...,
    ) -> Callable[[Callable[P, R]], FlaskJobFunction[P, R]]: ...

    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        takes_context: Literal[True],
        schedule: str | Every | None = ...,
        timezone: str | None = ...,
        catch_up: str = ...,
        catch_up_limit: int = ...,
        max_running: int | None = ...,
        schedule_name: str | None = ...,
        schedule_kwargs: Mapping[str, Any] | None = ...,
        schedule_jitter: float | timedelta | None = ...,
    ) -> Callable[[Callable[..., R]], FlaskJobFunction[..., R]]: ...

    def job(
        self,
        type: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
        priority: int = 0,
        takes_context: bool = False,
        schedule: str | Every | None = None,
        timezone: str | None = None,
        catch_up: str = "latest",
        catch_up_limit: int = 100,
        max_running: int | None = 1,
        schedule_name: str | None = None,
        schedule_kwargs: Mapping[str, Any] | None = None,
        schedule_jitter: float | timedelta | None = None,
    ) -> Callable[[Callable[..., Any]], FlaskJobFunction[Any, Any]]:
        """Decorate a function as a job of ``type`` (default: ``module.qualname``) for every
        app this extension is (or will be) initialised on. Options as the core ``@app.job``,
        ``schedule=`` included: the schedule is ticked by every app's ``flask csjd run``
        workers (Redis mode), or by its in-process dispatcher once started.

        Raises:
            ValueError: a bad option, ``type`` already names another function, or a bad or
                duplicate schedule.
        """
        decorate = self._definitions.job(
            type,
            max_attempts=max_attempts,
            timeout=timeout,
            queue=queue,
            priority=priority,
            takes_context=takes_context,
            schedule=schedule,
            timezone=timezone,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            max_running=max_running,
            schedule_name=schedule_name,
            schedule_kwargs=schedule_kwargs,
            schedule_jitter=schedule_jitter,
        )  # type: ignore[call-overload, misc]  # a bool here; the overloads above narrow it

        def register(fn: Callable[..., Any]) -> FlaskJobFunction[Any, Any]:
            with self._lock:
                job = cast(FlaskJobFunction[Any, Any], decorate(fn))
                for app in list(self._apps):
                    app.extensions[EXTENSION_KEY].register(app, job)
            return job

        return register

    @property
    def jobs(self) -> Mapping[str, FlaskJobFunction[Any, Any]]:
        """The job functions defined on this extension, by type."""
        return cast(Mapping[str, FlaskJobFunction[Any, Any]], dict(self._definitions.jobs))

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """The periodic jobs defined on this extension, by schedule name."""
        return dict(self._definitions.schedules)

    # -- per-app state ---------------------------------------------------------------------
    def state(self, app: Flask | None = None, *, job_type: str | None = None) -> CSJDState:
        """The `CSJDState` of ``app`` (default: ``current_app``).

        Raises:
            NoAppContext: ``app`` not given and no application context is active.
            NotInitialized: ``app`` was not initialised with this extension.
        """
        if app is None:
            if not has_app_context():
                raise NoAppContext(
                    f"{_subject(job_type)}: no Flask application context, so no app to enqueue "
                    "to. Enqueue inside a request or a CLI command, or inside "
                    "`with app.app_context():`"
                )
            app = cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        state = CSJDState.of(app, job_type=job_type)
        if state.extension is not self:
            raise NotInitialized(
                f"{_subject(job_type)}: Flask app {app.name!r} was initialised with another CSJD "
                "extension object; define jobs on the one that initialised the app"
            )
        return state

    def core_app(self, app: Flask | None = None) -> App:
        """The core `App` (registry, settings, dispatcher) serving ``app`` (default:
        ``current_app``); see `state` for the errors."""
        return self.state(app).core

    def status(
        self, job_id: str, queue: str | None = None, *, app: Flask | None = None
    ) -> JobStatus:
        """The `JobStatus` of a job enqueued through ``app`` (default: ``current_app``)."""
        return self.core_app(app).status(job_id, queue)

    def cancel(self, job_id: str, queue: str | None = None, *, app: Flask | None = None) -> bool:
        """Cancel a job enqueued through ``app`` (default: ``current_app``), as
        `csjd_core.App.cancel`: True when it was cancelled or its cancellation requested of a
        running attempt, False when it had already ended; `JobNotFound` when no record exists."""
        return self.core_app(app).cancel(job_id, queue)

    def wait(self, timeout: float | timedelta | None = None, *, app: Flask | None = None) -> bool:
        """Block until every job enqueued in this process through ``app`` finished (in-process
        mode, for tests). False on timeout."""
        return self.core_app(app).wait(timeout)

    def stop(self, timeout: float | timedelta | None = None, *, app: Flask | None = None) -> None:
        """Stop this process's dispatcher of ``app`` (a later enqueue starts a new one)."""
        self.core_app(app).stop(timeout)

    # -- the dashboard ---------------------------------------------------------------------
    def dashboard_blueprint(
        self,
        *,
        authorize: Callable[[], bool] | None = None,
        authorize_actions: Callable[[], bool] | None = None,
        user_name: Callable[[], str] | None = None,
        name: str = "csjd_dashboard",
    ) -> Blueprint:
        """The jobs dashboard of the apps this extension is initialised on, as a blueprint to
        register: ``app.register_blueprint(csjd.dashboard_blueprint(authorize=is_admin),
        url_prefix="/admin/jobs")`` (docs/flask.md, "The dashboard").

        Args:
            authorize: called on every request of the dashboard: True lets the user see it,
                False answers 403. Required.
            authorize_actions: called as well on every action (requeue, delete, cancel, pause,
                resume, run now): False answers 403 and hides the buttons. Default:
                ``authorize``.
            user_name: names the user in the actions' log lines (default: the client's
                address).
            name: the blueprint's name.

        Raises:
            DashboardRefused: no ``authorize`` callback; when registered, an app without
                ``SECRET_KEY`` or not initialised with this extension.
        """
        from csjd_flask.dashboard import dashboard_blueprint  # noqa: PLC0415 - Flask-WTF

        return dashboard_blueprint(
            self,
            authorize=authorize,
            authorize_actions=authorize_actions,
            user_name=user_name,
            name=name,
        )

    def metrics_blueprint(
        self, *, authorize: Callable[[], bool] | None = None, name: str = "csjd_metrics"
    ) -> Blueprint:
        """The Prometheus metrics of the apps this extension is initialised on, at
        ``/metrics`` of a blueprint to register: ``app.register_blueprint(
        csjd.metrics_blueprint())`` with ``CSJD_METRICS_TOKEN`` (or ``CSJD_METRICS = True``
        and ``authorize``) in the app's config (docs/observability.md, "Web processes").

        Args:
            authorize: called on a request without an ``Authorization`` header: True lets it
                read the metrics, False answers 403. Required unless the app sets
                ``CSJD_METRICS_TOKEN``.
            name: the blueprint's name.

        Raises:
            MetricsRefused: (when registered) the app is not initialised with this extension,
                has metrics off, or has neither a token nor ``authorize``.
            TypeError: ``authorize`` is not callable.
        """
        from csjd_flask.metrics import metrics_blueprint  # noqa: PLC0415

        return metrics_blueprint(self, authorize=authorize, name=name)

    def __repr__(self) -> str:
        return f"<CSJD jobs={len(self._definitions.jobs)}>"
