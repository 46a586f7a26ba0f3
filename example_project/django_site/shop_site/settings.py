"""Settings of the CSJD example shop, read from the environment with django-environ.

Every variable is documented in ``.env.example``; copy it to ``.env`` (read if present; the
process environment wins over it) or export the variables. The defaults run the site in CSJD's
in-process mode with a durable file store and SQLite, printing mail to the console.
"""

from __future__ import annotations

from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="insecure-example-key-set-DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=True)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "csjd_django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_site.urls"
WSGI_APPLICATION = "shop_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write at once (CSJD's workers, in the web process or in csjd_worker):
    # take the write lock when a transaction begins (no "database is locked" on a lock upgrade),
    # let readers run beside a writer (WAL), and wait for a busy lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        transaction_mode="IMMEDIATE",
        timeout=20,
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Mail goes through Django's mail API; the console backend prints it where runserver (in-process
# mode) or csjd_worker (Redis mode) runs.
_EMAIL_BACKEND = env.str(
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
)
if django.VERSION >= (6, 1):  # Django 6.1 replaced EMAIL_BACKEND with MAILERS
    MAILERS = {"default": {"BACKEND": _EMAIL_BACKEND}}
else:
    EMAIL_BACKEND = _EMAIL_BACKEND
DEFAULT_FROM_EMAIL = env.str("DJANGO_DEFAULT_FROM_EMAIL", default="shop@example.com")

# -- CSJD (every CSJD_* setting: docs/django.md) -----------------------------------------------
# inprocess: workers run inside the web process, jobs kept in a durable file store (one process
# only: the store is locked); redis: the web process only enqueues and `manage.py csjd_worker`
# runs the jobs; immediate: jobs run at enqueue (tests).
CSJD_MODE = env.str("CSJD_MODE", default="inprocess")
CSJD_STORE_PATH = env.str("CSJD_STORE_PATH", default=str(BASE_DIR / "var" / "jobs.json"))
if env.str("CSJD_REDIS_URL", default=""):
    CSJD_REDIS_URL = env.str("CSJD_REDIS_URL")
# The shop's own queue: a queue belongs to one set of job types, and a worker dead-letters a type
# it does not know (unknown_type), so another app sharing this Redis must use its own queue.
CSJD_QUEUES = env.list("CSJD_QUEUES", default=["shop"])
CSJD_WORKERS = env.int("CSJD_WORKERS", default=4)
CSJD_DEFAULT_MAX_ATTEMPTS = env.int("CSJD_DEFAULT_MAX_ATTEMPTS", default=5)
CSJD_RETRY = {"base_delay": 1.0, "max_delay": 60.0}
# The transactional outbox (docs/outbox.md): delay_on_commit writes the job into the order's own
# transaction; the process running the jobs (this one in-process, csjd_worker in Redis mode)
# relays it. A committed order always gets its mail, whatever happens after the commit.
CSJD_OUTBOX = env.bool("CSJD_OUTBOX", default=True)

# LOG_FORMAT=json: one JSON object per line (csjd_core.logs.JsonFormatter; run the worker with
# `--log-format json` too, so that its banner is one as well).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "csjd_core.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="text"),
        }
    },
    "loggers": {
        "csjd_core": {"handlers": ["console"], "level": "INFO"},
        "csjd_django": {"handlers": ["console"], "level": "INFO"},
    },
}
