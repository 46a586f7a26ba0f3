"""The Prometheus metrics view of a Django project's web processes.

Include it in the project's URLs (settings ``CSJD_METRICS = True`` and/or
``CSJD_METRICS_TOKEN``; docs/observability.md, "Web processes")::

    from csjd_django.metrics import metrics_view

    urlpatterns = [..., path("csjd/metrics", metrics_view, name="csjd-metrics")]

What it serves is `csjd_core.web_metrics.WebMetrics`'s registry; this module only decides who
may read it: a request carrying ``Authorization: Bearer <CSJD_METRICS_TOKEN>`` (a Prometheus
server), or a logged-in user with the dashboard's permission
(``csjd_django.view_csjd_dashboard``).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from csjd_core.web_metrics import TokenCheck
from csjd_django.models import VIEW_PERMISSION

__all__ = ["metrics_view"]

#: The realm of the 401 answers' ``WWW-Authenticate`` challenge.
REALM = "csjd-metrics"


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The scrape (GET or HEAD; Prometheus text, or OpenMetrics when asked for), never cached.

    Answers 401 with a ``Bearer`` challenge to a request with neither the token nor a
    logged-in user, and to one whose ``Authorization`` header is not the token (whoever is
    logged in); 403 to a user without ``csjd_django.view_csjd_dashboard``; 404 when
    ``CSJD_METRICS`` is off; 405 to other methods.

    Raises:
        SettingsError: a bad ``CSJD_*`` setting (``manage.py check`` lists them).
    """
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily

    app.configure_from_settings()
    metrics = app.web_metrics
    if metrics is None:
        raise Http404("CSJD metrics are off: set CSJD_METRICS = True or CSJD_METRICS_TOKEN")
    verdict = metrics.check_token(request.headers.get("Authorization"))
    if verdict is TokenCheck.INVALID:
        return _challenge('error="invalid_token"')
    if verdict is TokenCheck.ABSENT:
        user = getattr(request, "user", None)  # no AuthenticationMiddleware: anonymous
        if user is None or not user.is_authenticated:
            return _challenge()
        if not user.has_perm(VIEW_PERMISSION):
            raise PermissionDenied
    body, content_type = metrics.scrape(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


def _challenge(error: str = "") -> HttpResponse:
    """401 with the ``WWW-Authenticate: Bearer`` challenge (RFC 6750)."""
    response = HttpResponse(
        "authentication required: Authorization: Bearer <CSJD_METRICS_TOKEN>\n",
        status=401,
        content_type="text/plain",
    )
    response["WWW-Authenticate"] = f'Bearer realm="{REALM}"' + (f", {error}" if error else "")
    return response
