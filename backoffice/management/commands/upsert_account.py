"""``manage.py upsert_account EXTERNAL_ID --name NAME [--plan] [--language] [--timezone]``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from accounts.models import Language, Plan
from backoffice.services import account_upsert


def _one_line(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(
            f"{field}: {message}"
            for field, messages in error.message_dict.items()
            for message in messages
        )
    return "; ".join(error.messages)


class Command(OpsCommand):
    help = _(
        "Create the account EXTERNAL_ID, or update it if it exists, as a sync from the CRM "
        "would: the name is always set, the plan, language and time zone only when given "
        "(a new account defaults to plan %(plan)s, language %(language)s, time zone UTC). "
        "Prints the account's id alone on the last line. A bad value is refused and nothing "
        "is changed."
    )
    help_values = {"plan": Plan.ENTERPRISE.value, "language": Language.EN.value}

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "external_id", metavar="EXTERNAL_ID", help=gettext("The account's id in the CRM.")
        )
        parser.add_argument("--name", required=True, help=gettext("The account's display name."))
        parser.add_argument(
            "--plan",
            metavar="CODE",
            help=gettext("One of: %(choices)s.") % {"choices": ", ".join(Plan.values)},
        )
        parser.add_argument(
            "--language",
            help=gettext("Default language of its notifications, one of: %(choices)s.")
            % {"choices": ", ".join(Language.values)},
        )
        parser.add_argument(
            "--timezone",
            metavar="TZ",
            help=gettext("IANA time zone of its periods, e.g. Europe/Paris."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            account, created = account_upsert(
                external_id=options["external_id"],
                name=options["name"],
                plan=options["plan"],
                language=options["language"],
                timezone_name=options["timezone"],
            )
        except ValidationError as error:
            raise CommandError(
                gettext("Account refused: %(reasons)s") % {"reasons": _one_line(error)}
            ) from error
        if created:
            done = gettext(
                "Created account %(name)s (%(external_id)s), plan %(plan)s, "
                "language %(language)s, time zone %(timezone)s:"
            )
        else:
            done = gettext(
                "Updated account %(name)s (%(external_id)s), plan %(plan)s, "
                "language %(language)s, time zone %(timezone)s:"
            )
        self.stdout.write(
            done
            % {
                "name": account.name,
                "external_id": account.external_id,
                "plan": account.plan,
                "language": account.language,
                "timezone": account.timezone,
            }
        )
        self.stdout.write(str(account.pk))
