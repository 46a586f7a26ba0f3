"""``manage.py csjd_replay PATH``: list, export, run or move into Redis a file store's jobs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core.cli import main as csjd_cli


class Command(BaseCommand):
    help = "List, export (--export), run (--run) or move into Redis (--into-redis) a store's jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", help="The store (default: CSJD_STORE_PATH).")
        parser.add_argument("--export", action="store_true", help="Print jobs as JSON lines.")
        parser.add_argument(
            "--run", action="store_true", help="Run the stored jobs with this project's handlers."
        )
        parser.add_argument(
            "--into-redis",
            action="store_true",
            help="Move them into the Redis queues of CSJD_REDIS_URL.",
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="Open a log corrupted in the middle (keeps a copy).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings  # noqa: PLC0415

        path = options["path"] or getattr(settings, "CSJD_STORE_PATH", None)
        if not path:
            raise CommandError("give a store path or set CSJD_STORE_PATH")
        argv = ["replay", str(path)]
        if options["export"]:
            argv.append("--export")
        if options["repair"]:
            argv.append("--repair")
        if options["run"]:
            argv += ["--run", "csjd_django.management.commands.csjd_replay:replay_app"]
        if options["into_redis"]:
            argv += ["--into-redis", "csjd_django.management.commands.csjd_replay:redis_app"]
        try:
            csjd_cli.main(args=argv, prog_name="manage.py csjd_replay", standalone_mode=False)
        except Exception as exc:  # click reports usage errors as exceptions here
            raise CommandError(str(exc)) from exc


def replay_app() -> Any:
    """This project's app in in-process mode (handlers from the autodiscovered jobs)."""
    from csjd_django import app  # noqa: PLC0415

    app.configure_from_settings()
    return app


def redis_app() -> Any:
    """This project's app, which must be in Redis mode (for ``--into-redis`` and the commands
    that run the core ``csjd`` commands on the Redis queues)."""
    from csjd_django import management  # noqa: PLC0415

    return management.redis_app("manage.py csjd_replay --into-redis")
