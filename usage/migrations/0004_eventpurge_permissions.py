from django.db import migrations

from accounts.roles import ACCOUNT_MANAGERS, grant_permissions


def grant(apps, schema_editor):
    # Account managers see the purges of raw events in the admin, as they see repairs.
    grant_permissions(apps, ACCOUNT_MANAGERS, ["usage.view_eventpurge"])


class Migration(migrations.Migration):
    dependencies = [("usage", "0003_eventpurge")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
