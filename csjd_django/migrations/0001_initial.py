"""The dashboard's permissions (an unmanaged model: no table is created)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Dashboard",
            fields=[
                (
                    "id",
                    models.AutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "verbose_name": "jobs dashboard",
                "verbose_name_plural": "jobs dashboard",
                "permissions": [
                    ("view_csjd_dashboard", "Can view the CSJD dashboard"),
                    ("manage_dead_letters", "Can requeue and delete CSJD dead letters"),
                ],
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
