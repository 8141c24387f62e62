"""``manage.py set_limits ACCOUNT --metric M [--period P [--window-days N] [--label KEY=VALUE]...
[--clear]] [--warning N] [--blocked N] [--*-recipient ...]``."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.labels import labels_from_options, labels_key
from accounts.management.base import OpsCommand
from accounts.metrics import METRICS
from accounts.models import Level
from accounts.selectors import LimitsDocument, limits_document_get
from accounts.services import AccountNotEnterprise, LimitsInvalid
from accounts.windows import PeriodKind
from backoffice.services import KEEP, ScopedLimitNotFound, limits_patch, scoped_limit_set

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


def _window_days(value: str | None) -> Any:
    """An integer sets; anything else goes to the service, which refuses it."""
    if value is not None and _INTEGER.fullmatch(value):
        return int(value)
    return value


def _table(rows: list[tuple[str, ...]], numeric_from: int) -> list[str]:
    """``rows`` aligned in columns, those from ``numeric_from`` on to the right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            f"{cell:>{width}}" if column >= numeric_from else f"{cell:<{width}}"
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _format(document: LimitsDocument) -> list[str]:
    """A table of every metric's thresholds, both recipient lists, then the scoped limits
    (if any)."""
    rows = [("metric", Level.WARNING.value, Level.BLOCKED.value)] + [
        (
            code,
            NONE if thresholds.warning is None else str(thresholds.warning),
            NONE if thresholds.blocked is None else str(thresholds.blocked),
        )
        for code, thresholds in document.limits.items()
    ]
    lines = _table(rows, numeric_from=1)
    for level, specs in document.recipients.items():
        listed = ", ".join(f"{spec.email} ({spec.language})" for spec in specs) or NONE
        lines.append(RECIPIENTS_LINE[level] % {"recipients": listed})
    if not document.scoped_limits:
        return lines
    lines.append(gettext("scoped limits:"))
    rows = [("metric", "period", "window_days", "labels", Level.WARNING.value, Level.BLOCKED.value)]
    rows.extend(
        (
            line.metric,
            line.period,
            "-" if line.window_days is None else str(line.window_days),
            labels_key(line.labels) or "-",
            NONE if line.warning is None else str(line.warning),
            NONE if line.blocked is None else str(line.blocked),
        )
        for line in document.scoped_limits
    )
    lines.extend(_table(rows, numeric_from=4))
    return lines


class Command(OpsCommand):
    help = _(
        "Change the limits of the Enterprise account ACCOUNT (its id or external id), "
        "with the same rules and messages as PATCH /api/v1/accounts/{id}/limits/: only the "
        "thresholds given for --metric change (“none” clears one), and a recipient option, "
        "repeatable, replaces that level's whole list (“none” alone empties it); the rest "
        "stays as it is. Without --period the thresholds are the metric's monthly ones; with "
        "--period (and --window-days, --label) they are those of the scoped limit so named: "
        "a threshold left out keeps its value, or is none on a new scoped limit, and --clear "
        "removes it. A change that breaks a rule is refused whole and nothing is changed. "
        "Prints the resulting limits of every metric, both recipient lists and the scoped "
        "limits."
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
            "--period",
            metavar="P",
            help=gettext(
                "The period of a scoped limit, one of: %(periods)s. Left out: the metric's "
                "monthly limit."
            )
            % {"periods": ", ".join(PeriodKind.values)},
        )
        parser.add_argument(
            "--window-days",
            metavar="N",
            help=gettext("Days of a rolling window (1 to 366), with --period rolling only."),
        )
        parser.add_argument(
            "--label",
            dest="labels",
            action="append",
            metavar="KEY=VALUE",
            help=gettext(
                "A label of the scoped limit (repeat it for several): it counts only the "
                "events with every label given."
            ),
        )
        parser.add_argument(
            "--clear",
            action="store_true",
            help=gettext("Remove the scoped limit named by --metric, --period and the rest."),
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
        period: str | None = options["period"]
        clear: bool = options["clear"]
        if period is None and (options["window_days"] is not None or options["labels"] or clear):
            raise CommandError(gettext("--window-days, --label and --clear need --period."))
        if clear and thresholds:
            raise CommandError(gettext("--clear takes no --warning or --blocked."))
        if thresholds and metric is None:
            raise CommandError(gettext("--metric is required with --warning or --blocked."))
        if period is not None and metric is None:
            raise CommandError(gettext("--metric is required with --period."))
        if not thresholds and not recipients and not clear:
            raise CommandError(
                gettext(
                    "Nothing to change: give --warning or --blocked with --metric, "
                    "or --warning-recipient or --blocked-recipient."
                )
            )
        labels, label_errors = labels_from_options(options["labels"] or [])
        if label_errors:
            messages = (
                label_errors.items() if isinstance(label_errors, dict) else [("", label_errors)]
            )
            raise CommandError(
                "; ".join(
                    f"--label {key}: {message}" if key else f"--label: {message}"
                    for key, errors in messages
                    for message in errors
                )
            )

        account = self.get_account(options["account"])

        patch: dict[str, Any] = {}
        if recipients:
            patch["recipients"] = recipients
        before = limits_document_get(account=account)
        try:
            if period is None:
                if metric is not None:
                    patch["limits"] = {metric: thresholds}
                after = limits_patch(account=account, data=patch, actor=None, reason="command")
            else:
                after = scoped_limit_set(
                    account=account,
                    metric=metric,
                    period=period,
                    window_days=_window_days(options["window_days"]),
                    labels=labels,
                    warning=thresholds.get(Level.WARNING, KEEP),
                    blocked=thresholds.get(Level.BLOCKED, KEEP),
                    clear=clear,
                    patch=patch,
                    actor=None,
                    reason="command",
                )
        except LimitsInvalid as refused:
            raise CommandError(
                "; ".join(f"{path}: {message}" for path, message in refused.messages())
            ) from refused
        except (AccountNotEnterprise, ScopedLimitNotFound) as refused:
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
