from django.db import migrations

from accounts.roles import ACCOUNT_MANAGERS, grant_permissions


def grant(apps, schema_editor):
    grant_permissions(
        apps,
        ACCOUNT_MANAGERS,
        [
            "notifications.view_notification",
            "notifications.view_delivery",
            "notifications.change_delivery",
        ],
    )


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial"), ("accounts", "0002_groups")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
