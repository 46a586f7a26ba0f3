from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),  # the CSJD dashboard: /admin/csjd_django/dashboard/
    path("", include("shop.urls")),
]
