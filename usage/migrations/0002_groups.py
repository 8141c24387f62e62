from django.db import migrations

from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES, grant_permissions


def grant(apps, schema_editor):
    grant_permissions(
        apps,
        ACCOUNT_MANAGERS,
        [
            "usage.view_usagecounter",
            "usage.view_usageevent",
            "usage.view_extension",
            "usage.add_extension",
            "usage.view_counterrepair",
        ],
    )
    grant_permissions(
        apps,
        USAGE_SERVICES,
        ["usage.add_usageevent", "usage.view_usagecounter", "usage.check_usage"],
    )


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial"), ("accounts", "0002_groups")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
