"""``manage.py create_api_token USERNAME``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser
from knox.models import AuthToken

from accounts.management.base import OpsCommand


class Command(OpsCommand):
    help = (
        "Print a new API token for the existing, active user USERNAME (e.g. an account "
        "manager). The token never expires until revoked in the admin and is shown once, "
        "alone on the last line. The user's other tokens and groups are left as they are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="USERNAME")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"Unknown user “{username}”.")
        if not user.is_active:
            raise CommandError(f"User “{username}” is inactive; activate it first.")
        _, key = AuthToken.objects.create(user=user, expiry=None)
        self.stdout.write(f"New API token for user {username} (shown once):")
        self.stdout.write(key)
