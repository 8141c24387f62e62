"""``manage.py send_test_notification ACCOUNT --level L --language LANG --to EMAIL
[--metric M]``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from accounts.metrics import METRICS
from accounts.models import Language, Level
from notifications.models import Delivery
from notifications.services import notification_send_test


def _one_line(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items()
        )
    return " ".join(error.messages)


class Command(OpsCommand):
    help = _(
        "Send a sample threshold notification of ACCOUNT (its id or external id) to EMAIL "
        "through the real mail path: a test notification and its delivery are recorded, "
        "and the e-mail goes through the task and the provider like any other. The sample "
        "uses the account's current threshold and usage of --metric (by default its first "
        "metric limited at that level). "
        "Prints the delivery's id, then its status once the task has run (queued when a "
        "broker is configured: the worker sends it). Exits non-zero if the sending failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "account", metavar="ACCOUNT", help=gettext("The account's id or external id.")
        )
        parser.add_argument(
            "--level",
            required=True,
            choices=Level.values,
            help=gettext("The level of the sample."),
        )
        parser.add_argument(
            "--language",
            required=True,
            choices=Language.values,
            help=gettext("The e-mail's language."),
        )
        parser.add_argument(
            "--to", required=True, metavar="EMAIL", help=gettext("The address to send to.")
        )
        parser.add_argument(
            "--metric",
            choices=list(METRICS),
            help=gettext("The metric of the sample (default: the first limited at --level)."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = self.get_account(options["account"])
        try:
            delivery = notification_send_test(
                account=account,
                level=options["level"],
                language=options["language"],
                to=options["to"],
                metric=options["metric"],
            )
        except ValidationError as refused:
            raise CommandError(_one_line(refused)) from refused

        self.stdout.write(
            gettext("Test notification queued for %(email)s (delivery #%(id)s).")
            % {"email": delivery.email, "id": delivery.pk}
        )
        delivery.refresh_from_db()
        self.stdout.write(gettext("Delivery status: %(status)s.") % {"status": delivery.status})
        if delivery.status == Delivery.Status.FAILED:
            raise CommandError(
                gettext("Sending failed: %(error)s")
                % {"error": " ".join(delivery.last_error.split())}
            )
