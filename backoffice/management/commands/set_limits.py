"""``manage.py set_limits ACCOUNT --metric M [--warning N] [--blocked N] [--*-recipient ...]``."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from accounts.metrics import METRICS
from accounts.models import Level
from accounts.selectors import LimitsDocument, limits_document_get
from accounts.services import AccountNotEnterprise, LimitsInvalid
from backoffice.services import limits_patch

NONE = "none"
_INTEGER = re.compile(r"-?[0-9]+")
RECIPIENTS_LINE = {
    Level.WARNING: _("warning recipients: %(recipients)s"),
    Level.BLOCKED: _("blocked recipients: %(recipients)s"),
}


def _threshold(value: str) -> Any:
    """``none`` clears, an integer sets; anything else goes to the service, which refuses it."""
    if value.lower() == NONE:
        return None
    if _INTEGER.fullmatch(value):
        return int(value)
    return value


def _recipients(values: list[str]) -> list[dict[str, str]]:
    """``EMAIL[:LANG]`` items; a lone ``none`` empties the list."""
    if [value.lower() for value in values] == [NONE]:
        return []
    recipients = []
    for value in values:
        email, colon, language = value.rpartition(":")
        # Without ":LANG" the service gives the address the account's language.
        recipients.append({"email": email, "language": language} if colon else {"email": value})
    return recipients


def _format(document: LimitsDocument) -> list[str]:
    """A table of every metric's thresholds, then both recipient lists."""
    rows = [("metric", Level.WARNING.value, Level.BLOCKED.value)] + [
        (
            code,
            NONE if thresholds.warning is None else str(thresholds.warning),
            NONE if thresholds.blocked is None else str(thresholds.blocked),
        )
        for code, thresholds in document.limits.items()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        f"{code:<{widths[0]}}  {warning:>{widths[1]}}  {blocked:>{widths[2]}}"
        for code, warning, blocked in rows
    ]
    for level, specs in document.recipients.items():
        listed = ", ".join(f"{spec.email} ({spec.language})" for spec in specs) or NONE
        lines.append(RECIPIENTS_LINE[level] % {"recipients": listed})
    return lines


class Command(OpsCommand):
    help = _(
        "Change the limits of the Enterprise account ACCOUNT (its id or external id), "
        "with the same rules and messages as PATCH /api/v1/accounts/{id}/limits/: only the "
        "thresholds given for --metric change (“none” clears one), and a recipient option, "
        "repeatable, replaces that level's whole list (“none” alone empties it); the rest "
        "stays as it is. A change that breaks a rule is refused whole and nothing is changed. "
        "Prints the resulting limits of every metric and both recipient lists."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "account", metavar="ACCOUNT", help=gettext("The account's id or external id.")
        )
        parser.add_argument(
            "--metric",
            metavar="M",
            help=gettext("The metric whose thresholds change, one of: %(metrics)s.")
            % {"metrics": ", ".join(METRICS)},
        )
        parser.add_argument(
            "--warning",
            metavar="N",
            help=gettext("Warning threshold, in the metric's unit, or “none”."),
        )
        parser.add_argument(
            "--blocked",
            metavar="N",
            help=gettext("Blocked threshold, in the metric's unit, or “none”."),
        )
        recipient_help = {
            Level.WARNING: gettext(
                "An address notified at the warning level, in LANG (en or fr; the account's "
                "language when left out). Repeat it for several; together they replace the "
                "warning list. “none” alone empties the list."
            ),
            Level.BLOCKED: gettext(
                "An address notified at the blocked level, in LANG (en or fr; the account's "
                "language when left out). Repeat it for several; together they replace the "
                "blocked list. “none” alone empties the list."
            ),
        }
        for level in Level.values:
            parser.add_argument(
                f"--{level}-recipient",
                dest=f"{level}_recipients",
                action="append",
                metavar="EMAIL[:LANG]",
                help=recipient_help[level],
            )

    def handle(self, *args: Any, **options: Any) -> None:
        metric: str | None = options["metric"]
        thresholds = {
            level: _threshold(options[level])
            for level in Level.values
            if options[level] is not None
        }
        recipients = {
            level: _recipients(options[f"{level}_recipients"])
            for level in Level.values
            if options[f"{level}_recipients"] is not None
        }
        if thresholds and metric is None:
            raise CommandError(gettext("--metric is required with --warning or --blocked."))
        if not thresholds and not recipients:
            raise CommandError(
                gettext(
                    "Nothing to change: give --warning or --blocked with --metric, "
                    "or --warning-recipient or --blocked-recipient."
                )
            )

        account = self.get_account(options["account"])

        patch: dict[str, Any] = {}
        if metric is not None:
            patch["limits"] = {metric: thresholds}
        if recipients:
            patch["recipients"] = recipients
        before = limits_document_get(account=account)
        try:
            after = limits_patch(account=account, data=patch, actor=None, reason="command")
        except LimitsInvalid as refused:
            raise CommandError(
                "; ".join(f"{path}: {message}" for path, message in refused.messages())
            ) from refused
        except AccountNotEnterprise as refused:
            raise CommandError(str(refused.message)) from refused

        names = {"name": account.name, "external_id": account.external_id}
        if after == before:
            self.stdout.write(
                gettext(
                    "No change for %(name)s (%(external_id)s): the limits already were as given."
                )
                % names
            )
        else:
            self.stdout.write(gettext("Limits changed for %(name)s (%(external_id)s):") % names)
        for line in _format(after):
            self.stdout.write(line)
