"""``manage.py usage_report [ACCOUNT] [--period YYYY-MM] [--format table|csv|json]``."""

from __future__ import annotations

import csv
import json
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from rest_framework.utils.encoders import JSONEncoder

from accounts.management.base import OpsCommand
from usage.periods import FIRST_PERIOD_CODE, LAST_PERIOD_CODE
from usage.selectors import REPORT_COLUMNS, usage_report_rows

FORMATS = ("table", "csv", "json")
# The table leaves out the account's id and name, which csv and json carry.
TABLE_COLUMNS = (
    "external_id",
    "period",
    "line",
    "metric",
    "used",
    "warning",
    "blocked",
    "extension",
    "remaining",
    "status",
)
NUMERIC_COLUMNS = frozenset({"used", "warning", "blocked", "extension", "remaining"})
UNSET = "-"


def _line(row: dict[str, Any]) -> str:
    """The line in the table: its period kind, its days for a rolling window, its labels."""
    days = f"/{row['window_days']}" if row["window_days"] is not None else ""
    labels = f"[{row['labels']}]" if row["labels"] else ""
    return f"{row['period_kind']}{days}{labels}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    rows = [{**row, "line": _line(row)} for row in rows]
    cells = [list(TABLE_COLUMNS)] + [
        [UNSET if row[column] is None else str(row[column]) for column in TABLE_COLUMNS]
        for row in rows
    ]
    widths = [max(len(line[index]) for line in cells) for index in range(len(TABLE_COLUMNS))]
    return [
        "  ".join(
            cell.rjust(width) if column in NUMERIC_COLUMNS else cell.ljust(width)
            for cell, width, column in zip(line, widths, TABLE_COLUMNS, strict=True)
        ).rstrip()
        for line in cells
    ]


class Command(OpsCommand):
    help = _(
        "Print the usage of every metric of every active account (or of ACCOUNT alone) in "
        "the current period, or in the month given by --period in each account's time zone: "
        "used, warning and blocked thresholds, extensions, remaining and status. In the "
        "current period, each scoped limit follows, over its current window (line: "
        "period/days[labels]). A threshold that is not set is “-” in the table, empty in csv "
        "and null in json. Changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "account",
            nargs="?",
            metavar="ACCOUNT",
            help=gettext("The account's id or external id; every active account when left out."),
        )
        parser.add_argument(
            "--period",
            metavar="YYYY-MM",
            help=gettext("The month to report; each account's current period by default."),
        )
        parser.add_argument(
            "--format", choices=FORMATS, default="table", help=gettext("Output format (table).")
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = None
        if options["account"] is not None:
            account = self.get_account(options["account"])
        try:
            rows = usage_report_rows(account=account, period_code=options["period"])
        except ValueError as refused:
            raise CommandError(
                _(
                    "Invalid period “%(period)s”: expected a month from %(first)s to %(last)s, "
                    "as YYYY-MM."
                )
                % {
                    "period": options["period"],
                    "first": FIRST_PERIOD_CODE,
                    "last": LAST_PERIOD_CODE,
                }
            ) from refused

        data = [row.as_data() for row in rows]
        if options["format"] == "json":
            self.stdout.write(json.dumps(data, cls=JSONEncoder, indent=2, ensure_ascii=False))
        elif options["format"] == "csv":
            # Each row is one write ending in a newline, as OutputWrapper expects.
            writer = csv.DictWriter(self.stdout, fieldnames=REPORT_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(data)
        else:
            for line in _table(data):
                self.stdout.write(line)
