"""``manage.py check``: the ``CSJD_*`` settings, validated with clear messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from csjd_core.app import Mode
from csjd_core.errors import SettingsError
from csjd_core.web_metrics import metrics_settings
from csjd_django import schedules
from csjd_django.conf import csjd_settings, in_memory, options_from_settings
from csjd_django.outbox import OUTBOX_IN_MEMORY, DjangoOutbox, outbox_settings

__all__ = ["check_outbox_relays", "check_schedules", "check_settings"]

#: ``csjd.W003``: no relay's heartbeat within this long.
RELAY_SILENCE = timedelta(minutes=5)


@checks.register("csjd")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """csjd.E001 bad value, csjd.E002 unknown setting, csjd.W001 in-process without a store;
    ``CSJD_SCHEDULE`` (`check_schedules`): csjd.E020-E023, csjd.W002; the outbox: csjd.E030
    (in memory), csjd.E031 (a bad ``CSJD_OUTBOX*`` value); csjd.E040 a bad ``CSJD_METRICS*``
    value, or metrics on without prometheus_client."""
    try:
        options = options_from_settings()
    except SettingsError as exc:
        unknown = "unknown setting" in str(exc)
        return [
            checks.Error(
                str(exc),
                hint=(
                    "Check the spelling; CSJD settings are listed in docs/django.md."
                    if unknown
                    else "Fix the value of this setting."
                ),
                obj=exc.setting,
                id="csjd.E002" if unknown else "csjd.E001",
            )
        ]
    messages: list[checks.CheckMessage] = []
    try:
        metrics_settings(csjd_settings())
    except SettingsError as exc:
        messages.append(
            checks.Error(
                str(exc),
                hint='See docs/observability.md, "Web processes".',
                obj=exc.setting,
                id="csjd.E040",
            )
        )
    memory_only = in_memory(options)
    if memory_only:
        messages.append(
            checks.Warning(
                "CSJD_MODE='inprocess' without CSJD_STORE_PATH keeps jobs in memory only: a "
                "restart or crash of the web process loses every job that has not run",
                hint="Set CSJD_STORE_PATH for a durable file store (one process), or use "
                "CSJD_MODE='redis' for several processes.",
                id="csjd.W001",
            )
        )
    messages.extend(check_schedules(in_memory=memory_only))
    try:
        outbox = outbox_settings()
    except SettingsError as exc:
        messages.append(
            checks.Error(str(exc), hint="See docs/outbox.md.", obj=exc.setting, id="csjd.E031")
        )
    else:
        if outbox.databases and memory_only:
            messages.append(
                checks.Error(
                    OUTBOX_IN_MEMORY,
                    hint="Set CSJD_STORE_PATH (in-process mode with a file store) or "
                    "CSJD_MODE='redis', or remove CSJD_OUTBOX.",
                    obj="CSJD_OUTBOX",
                    id="csjd.E030",
                )
            )
    return messages


@checks.register("csjd", checks.Tags.database)
def check_outbox_relays(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """csjd.W003: ``CSJD_OUTBOX`` is on and no relay has beaten on one of its databases in
    the last `RELAY_SILENCE`; csjd.W004: the outbox's tables cannot be read there although
    csjd_django's migrations are recorded as applied. Database checks: run only by
    ``check --database`` and ``migrate`` — which runs them before it migrates, hence
    warnings, not errors, and nothing about a database not migrated yet."""
    if not databases:
        return []
    try:
        outbox = outbox_settings()
        mode = options_from_settings()["mode"]
    except SettingsError:
        return []  # csjd.E001/E031 say why
    if mode is Mode.IMMEDIATE:
        return []  # no relay: jobs run at the commit
    messages: list[checks.CheckMessage] = []
    now = timezone.now()
    for alias in outbox.databases:
        if alias not in databases:
            continue
        try:
            stats = DjangoOutbox(alias).stats()
        except DatabaseError as exc:
            if not _migrated(alias):
                # Not migrated yet there: `migrate` is about to create them (it runs this check
                # first) — a warning to run it would be false there, and Django's own
                # "unapplied migrations" notice says it elsewhere.
                continue
            messages.append(
                checks.Warning(
                    f"the outbox's tables cannot be read on database {alias!r} "
                    f"({type(exc).__name__}: {str(exc).strip().splitlines()[0]})",
                    hint=f"Run manage.py migrate --database {alias} (csjd_django's migrations "
                    "create them).",
                    obj="CSJD_OUTBOX",
                    id="csjd.W004",
                )
            )
            continue
        last = stats.last_relay()
        if last is not None and now - last <= RELAY_SILENCE:
            continue
        waiting = f"{stats.depth} job(s) waiting"
        age = stats.oldest_age(now)
        if age is not None:
            waiting += f", the oldest for {age:.0f} s"
        silence = (
            "no outbox relay has ever run"
            if last is None
            else f"no outbox relay has run for {(now - last).total_seconds() / 60:.0f} minutes"
        )
        messages.append(
            checks.Warning(
                f"CSJD_OUTBOX is on but {silence} on database {alias!r} ({waiting})",
                hint="Start workers (manage.py csjd_worker relays unless --no-relay) or "
                "manage.py csjd_relay; a relay beats every 10 s while it runs.",
                obj="CSJD_OUTBOX",
                id="csjd.W003",
            )
        )
    return messages


def _migrated(alias: str) -> bool:
    """Whether some migration of csjd_django is recorded as applied on database ``alias``."""
    recorder = MigrationRecorder(connections[alias])
    try:
        return recorder.has_table() and any(
            app == "csjd_django" for app, _ in recorder.applied_migrations()
        )
    except DatabaseError:
        return False


#: The hint of each ``CSJD_SCHEDULE`` problem, by check id.
_SCHEDULE_HINTS = {
    schedules.BAD_ENTRY: "Entries take the keys " + ", ".join(schedules.ENTRY_KEYS) + "; see "
    "docs/django.md (Periodic jobs).",
    schedules.BAD_TIMING: "Give a cron expression such as '0 3 * * *' (with an IANA "
    "'timezone' such as 'Europe/Paris'), or a period such as {'minutes': 5}.",
    schedules.BAD_TASK: "Give the dotted path of a function decorated with @task, whose "
    "TASKS backend is csjd_django.backends.CSJDBackend.",
    schedules.DUPLICATE: "Schedule names are unique: an @csjd.job(schedule=...) schedule is "
    "named after its job type unless it has a schedule_name=.",
}


def check_schedules(*, in_memory: bool) -> list[checks.CheckMessage]:
    """csjd.E020 bad entry or option, csjd.E021 bad cron expression / period / time zone,
    csjd.E022 unknown task, csjd.E023 duplicate name (each entry of ``CSJD_SCHEDULE``); and
    csjd.W002 when schedules tick in memory (``in_memory``: in-process without a store)."""
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily

    messages: list[checks.CheckMessage] = []
    for problem in schedules.schedule_problems(app, app.setting_schedules):
        check_id = getattr(problem, "check_id", schedules.BAD_ENTRY)
        messages.append(
            checks.Error(
                problem.message, hint=_SCHEDULE_HINTS[check_id], obj=problem.setting, id=check_id
            )
        )
    if in_memory and (app.schedules or getattr(settings, schedules.SETTING, None)):
        messages.append(
            checks.Warning(
                "CSJD_MODE='inprocess' without CSJD_STORE_PATH and with schedules: each "
                "process ticks its own schedule (a slot runs once per web process, and a "
                "restart forgets which slots ran)",
                hint="Use CSJD_MODE='redis' (workers tick, each slot runs once) or "
                "CSJD_STORE_PATH (one process) in production.",
                id="csjd.W002",
            )
        )
    return messages
