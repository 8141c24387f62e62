"""``manage.py create_api_token USERNAME``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from knox.models import AuthToken

from accounts.management.base import OpsCommand


class Command(OpsCommand):
    help = _(
        "Print a new API token for the existing, active user USERNAME (e.g. an account "
        "manager). The token never expires until revoked in the admin and is shown once, "
        "alone on the last line. The user's other tokens and groups are left as they are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="USERNAME", help=gettext("The user's username."))

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(gettext("Unknown user “%(username)s”.") % {"username": username})
        if not user.is_active:
            raise CommandError(
                gettext("User “%(username)s” is inactive; activate it first.")
                % {"username": username}
            )
        _token, key = AuthToken.objects.create(user=user, expiry=None)
        self.stdout.write(
            gettext("New API token for user %(username)s (shown once):") % {"username": username}
        )
        self.stdout.write(key)
