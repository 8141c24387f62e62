"""``manage.py create_service_token NAME``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError, CommandParser
from django.db import transaction
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from knox.models import AuthToken

from accounts.management.base import OpsCommand
from accounts.roles import USAGE_SERVICES


class Command(OpsCommand):
    help = _(
        "Create a service user NAME (no password, not staff) in the “%(group)s” group, "
        "or reuse it if it already exists, and print a new API token for it, which never "
        "expires until revoked in the admin. The token is shown once, alone on the last line. "
        "Refuses a NAME that belongs to a person (a user with a password, staff or superuser): "
        "use create_api_token for those."
    )
    help_values = {"group": USAGE_SERVICES}

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "name", metavar="NAME", help=gettext("Username of the service, e.g. llm-gateway.")
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        if not name.strip():
            raise CommandError(gettext("NAME may not be blank."))
        user_model = get_user_model()
        with transaction.atomic():
            group = Group.objects.filter(name=USAGE_SERVICES).first()
            if group is None:
                raise CommandError(
                    gettext("The “%(group)s” group is missing: run migrate first.")
                    % {"group": USAGE_SERVICES}
                )
            user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: name}).first()
            created = user is None
            if user is None:
                user = user_model(**{user_model.USERNAME_FIELD: name}, is_staff=False)
                user.set_unusable_password()
                user.save()
            elif user.has_usable_password() or user.is_staff or user.is_superuser:
                # Adding a person to the services group would widen their rights silently.
                raise CommandError(
                    gettext(
                        "User “%(name)s” exists and is not a service user (it has a password or "
                        "staff rights); use create_api_token to give it a token."
                    )
                    % {"name": name}
                )
            elif not user.is_active:
                raise CommandError(
                    gettext("Service user “%(name)s” is inactive; activate it first.")
                    % {"name": name}
                )
            user.groups.add(group)
            _token, key = AuthToken.objects.create(user=user, expiry=None)
        if created:
            done = gettext("Created service user %(name)s; its new token (shown once):")
        else:
            done = gettext("Reused existing service user %(name)s; its new token (shown once):")
        self.stdout.write(done % {"name": name})
        self.stdout.write(key)
