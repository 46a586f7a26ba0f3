"""Settings of the Django project the csjd_django tests run against."""

from __future__ import annotations

import importlib.util
import os

import django

SECRET_KEY = "csjd-tests-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "testproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's CSS in the browser test (live_server serves it)
    "csjd_django",
    "testapp",
]
if importlib.util.find_spec("django.tasks") is None:  # Django 5.2: the backport
    INSTALLED_APPS.insert(0, "django_tasks")

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CSJD_TEST_DB", ":memory:"),
        "TEST": {"NAME": os.environ.get("CSJD_TEST_DB") or None},
    }
}

if os.environ.get("CSJD_TEST_DATABASE_URL"):  # tests/outbox: a throwaway PostgreSQL database
    from postgres import django_database  # tests/postgres.py (tests/ on the subprocess's path)

    DATABASES["default"] = django_database(os.environ["CSJD_TEST_DATABASE_URL"])

STATIC_URL = "/static/"
# Fast hashing for the test users (Django's testing advice); never in a real project.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if django.VERSION >= (6, 1):  # Django 6.1 replaced EMAIL_BACKEND with MAILERS
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

CSJD_MODE = os.environ.get("CSJD_TEST_MODE", "immediate")
if os.environ.get("CSJD_TEST_REDIS_URL"):
    CSJD_REDIS_URL = os.environ["CSJD_TEST_REDIS_URL"]
    CSJD_LEASE = 2.0
    CSJD_HEARTBEAT_INTERVAL = 0.3
    CSJD_CLAIM_INTERVAL = 0.3
    CSJD_BLOCK = 0.2
CSJD_RETRY = {"base_delay": 0.001, "max_delay": 0.01}
# The outbox fault tests (tests/outbox/) set these in their subprocesses' environment.
if os.environ.get("CSJD_TEST_OUTBOX") == "1":
    CSJD_OUTBOX = True
    CSJD_OUTBOX_NOTIFY = os.environ.get("CSJD_TEST_OUTBOX_NOTIFY", "1") == "1"
    if os.environ.get("CSJD_TEST_OUTBOX_POLL_INTERVAL"):
        CSJD_OUTBOX_POLL_INTERVAL = float(os.environ["CSJD_TEST_OUTBOX_POLL_INTERVAL"])
if os.environ.get("CSJD_TEST_MAX_PENDING"):
    CSJD_MAX_PENDING_JOBS = int(os.environ["CSJD_TEST_MAX_PENDING"])
if os.environ.get("CSJD_TEST_LEASE"):
    CSJD_LEASE = float(os.environ["CSJD_TEST_LEASE"])

TASKS = {
    "default": {
        "BACKEND": "csjd_django.backends.CSJDBackend",
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    },
    # No MAX_ATTEMPTS: tasks get CSJD_DEFAULT_MAX_ATTEMPTS (3).
    "plain": {"BACKEND": "csjd_django.backends.CSJDBackend"},
}
