from django.contrib import admin
from django.urls import path

from csjd_django.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("csjd/metrics", metrics_view, name="csjd-metrics"),
]
