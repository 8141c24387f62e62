"""``manage.py evaluate_thresholds [--account ACCOUNT]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from notifications.models import Notification
from notifications.services import thresholds_evaluate


class Command(OpsCommand):
    help = _(
        "Run the notifications sweep now, for every active Enterprise account with limits "
        "(limits of other plans are inactive), or only for ACCOUNT (its id or external id): "
        "every threshold reached in the current period and not yet notified gets its "
        "notification, and its e-mails are sent (queued to the workers when a broker is "
        "configured). Thresholds already notified are left alone. Prints one line per "
        "notification created (account external id, metric, level, threshold), then how "
        "many were created."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--account",
            metavar="ACCOUNT",
            help=gettext("Only this account (its id or external id)."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account_ids = None
        if options["account"] is not None:
            account = self.get_account(options["account"])
            account_ids = [account.pk]

        created = thresholds_evaluate(account_ids=account_ids)

        rows = [
            (external_id, metric, level, str(threshold))
            for external_id, metric, level, threshold in Notification.objects.filter(pk__in=created)
            .order_by("account__external_id", "metric", "level")
            .values_list("account__external_id", "metric", "level", "threshold")
        ]
        if rows:
            widths = [max(len(row[column]) for row in rows) for column in range(4)]
            for external_id, metric, level, threshold in rows:
                self.stdout.write(
                    f"{external_id:<{widths[0]}}  {metric:<{widths[1]}}  "
                    f"{level:<{widths[2]}}  {threshold:>{widths[3]}}"
                )
        self.stdout.write(gettext("%(count)s notification(s) created.") % {"count": len(created)})
