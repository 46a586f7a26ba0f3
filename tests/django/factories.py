"""factory-boy factories for the csjd_django tests."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    """A user who can log in with `PASSWORD`; ``permissions=["app.codename", ...]`` grants
    permissions, ``is_staff=True`` opens the admin."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password(PASSWORD)
    is_staff = False

    @factory.post_generation
    def permissions(self, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        for name in extracted or ():
            app_label, codename = name.split(".", 1)
            self.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


class StaffFactory(UserFactory):
    """A staff user (admin access, no permission unless given)."""

    is_staff = True
