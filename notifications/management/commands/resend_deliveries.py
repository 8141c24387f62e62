"""``manage.py resend_deliveries [--account ACCOUNT] [--status queued|failed]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from notifications.models import Delivery
from notifications.services import deliveries_requeue

STATUSES = [Delivery.Status.QUEUED.value, Delivery.Status.FAILED.value]


class Command(OpsCommand):
    help = _(
        "Hand e-mail and webhook deliveries to the workers again, for every account or only "
        "ACCOUNT (its id or external id). By default (--status failed) the failed deliveries "
        "are queued again and sent, their attempts kept; with --status queued the queued "
        "deliveries are enqueued again, for when their task was lost (the sweep does so too, "
        "later). Deliveries being sent are left to their worker. Prints how many deliveries, "
        "in how many notifications, were handed over."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--account",
            metavar="ACCOUNT",
            help=gettext("Only this account (its id or external id)."),
        )
        parser.add_argument(
            "--status",
            choices=STATUSES,
            default=Delivery.Status.FAILED.value,
            help=gettext("The deliveries to hand over (failed)."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account_id = None
        if options["account"] is not None:
            account_id = self.get_account(options["account"]).pk

        done = deliveries_requeue(status=options["status"], account_id=account_id)

        counts = {"deliveries": done.deliveries, "notifications": done.notifications}
        if options["status"] == Delivery.Status.FAILED:
            line = _(
                "Failed deliveries queued again: %(deliveries)s "
                "(notifications enqueued: %(notifications)s)."
            )
        else:
            line = _(
                "Queued deliveries enqueued again: %(deliveries)s "
                "(notifications enqueued: %(notifications)s)."
            )
        self.stdout.write(line % counts)
