from django.db import migrations

from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES, grant_permissions


def create_groups(apps, schema_editor):
    grant_permissions(
        apps,
        ACCOUNT_MANAGERS,
        [
            "accounts.view_account",
            "accounts.view_limit",
            "accounts.add_limit",
            "accounts.change_limit",
            "accounts.delete_limit",
            "accounts.view_recipient",
            "accounts.add_recipient",
            "accounts.change_recipient",
            "accounts.delete_recipient",
        ],
    )
    grant_permissions(apps, USAGE_SERVICES, ["accounts.view_account"])


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(
        name__in=[ACCOUNT_MANAGERS, USAGE_SERVICES]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
