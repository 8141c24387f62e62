"""``manage.py purge_usage_events --before YYYY-MM-DD [--dry-run]``."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from usage.services import usage_events_purge

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
PROGRESS_EVERY = 100_000  # events deleted between two progress lines


class Command(OpsCommand):
    help = _(
        "Delete the raw usage events of every day before --before (each account's days in "
        "its own time zone), in chunks, keeping the daily counters: usage totals do not "
        "change, and rebuild_usage leaves those days alone from then on. Refuses a date "
        "after the first day of the current period. With --dry-run only counts the events."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before",
            required=True,
            metavar="YYYY-MM-DD",
            help=gettext("Events of earlier days are deleted; this day's are kept."),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=gettext("Count the events that would be deleted; delete nothing."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        raw = options["before"]
        try:
            if not _DAY.fullmatch(raw):
                raise ValueError(raw)
            before = date.fromisoformat(raw)
        except ValueError as refused:
            raise CommandError(
                _("Invalid date “%(value)s”: expected YYYY-MM-DD.") % {"value": raw}
            ) from refused

        self.reported = 0
        try:
            count = usage_events_purge(
                before=before, dry_run=options["dry_run"], progress=self._progress
            )
        except ValueError as refused:
            raise CommandError(str(refused)) from refused

        values = {"count": count, "before": before.isoformat()}
        if options["dry_run"]:
            self.stdout.write(
                _("Events that would be deleted (days before %(before)s): %(count)s.") % values
            )
        else:
            self.stdout.write(
                _("Events deleted (days before %(before)s): %(count)s. Counters kept.") % values
            )

    def _progress(self, deleted: int) -> None:
        if deleted - self.reported >= PROGRESS_EVERY:
            self.reported = deleted
            self.stderr.write(_("Events deleted so far: %(count)s…") % {"count": deleted})
