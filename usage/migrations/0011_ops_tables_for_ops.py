from django.db import migrations

from accounts.roles import ACCOUNT_MANAGERS

# Counter repairs and purges of raw events are ops' records (``rebuild_usage``,
# ``purge_usage_events``): account managers do not act on them, and their lists only
# crowded the admin they work in. Superusers and ops still see them.
OPS_PERMISSIONS = ["view_counterrepair", "view_eventpurge"]


def revoke(apps, schema_editor):
    group = apps.get_model("auth", "Group").objects.filter(name=ACCOUNT_MANAGERS).first()
    if group is None:
        return
    permission_model = apps.get_model("auth", "Permission")
    group.permissions.remove(
        *permission_model.objects.filter(
            content_type__app_label="usage", codename__in=OPS_PERMISSIONS
        )
    )


def grant(apps, schema_editor):
    group = apps.get_model("auth", "Group").objects.filter(name=ACCOUNT_MANAGERS).first()
    if group is None:
        return
    permission_model = apps.get_model("auth", "Permission")
    group.permissions.add(
        *permission_model.objects.filter(
            content_type__app_label="usage", codename__in=OPS_PERMISSIONS
        )
    )


class Migration(migrations.Migration):
    dependencies = [("usage", "0010_reservation")]

    operations = [migrations.RunPython(revoke, grant)]
