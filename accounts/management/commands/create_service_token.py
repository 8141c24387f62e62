"""``manage.py create_service_token NAME [--account ACCOUNT]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from accounts.roles import USAGE_SERVICES
from accounts.services import ServiceTokenRefused, service_token_create


class Command(OpsCommand):
    help = _(
        "Create a service user NAME (no password, not staff) in the “%(group)s” group, "
        "or reuse it if it already exists, and print a new API token for it, which never "
        "expires until revoked in the admin. The token is shown once, alone on the last line. "
        "Refuses a NAME that belongs to a person (a user with a password, staff or superuser): "
        "use create_api_token for those. With --account, the token may only post usage for, "
        "read and check that account."
    )
    help_values = {"group": USAGE_SERVICES}

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "name", metavar="NAME", help=gettext("Username of the service, e.g. llm-gateway.")
        )
        parser.add_argument(
            "--account",
            metavar="ACCOUNT",
            help=gettext(
                "Bind the token to this account (its id or external id): other accounts are "
                "out of its reach, and its usage events may leave “account” out."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        reference: str | None = options["account"]
        account = self.get_account(reference) if reference is not None else None
        try:
            token = service_token_create(name=name, account=account)
        except ServiceTokenRefused as exc:
            raise CommandError(str(exc.message)) from None
        if account is not None:
            if token.user_created:
                done = gettext(
                    "Created service user %(name)s; its new token for account %(account)s "
                    "only (shown once):"
                )
            else:
                done = gettext(
                    "Reused existing service user %(name)s; its new token for account "
                    "%(account)s only (shown once):"
                )
        elif token.user_created:
            done = gettext("Created service user %(name)s; its new token (shown once):")
        else:
            done = gettext("Reused existing service user %(name)s; its new token (shown once):")
        self.stdout.write(done % {"name": name, "account": account})
        self.stdout.write(token.key)
