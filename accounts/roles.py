"""The two groups of API users (SPEC section 5) and how migrations grant them permissions."""

from __future__ import annotations

from typing import Any

ACCOUNT_MANAGERS = "Account managers"
USAGE_SERVICES = "Usage services"


def grant_permissions(apps: Any, group_name: str, permissions: list[str]) -> None:
    """Give ``group_name`` the ``app_label.codename`` permissions, creating what is missing.

    Called from data migrations: on a fresh database Django creates permissions only after
    every migration ran, so the ones needed here are created first.
    """
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    group, _ = group_model.objects.get_or_create(name=group_name)
    for dotted in permissions:
        app_label, codename = dotted.split(".")
        group.permissions.add(
            permission_model.objects.get(content_type__app_label=app_label, codename=codename)
        )
