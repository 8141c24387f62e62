"""``manage.py rebuild_usage [--account ACCOUNT] [--period YYYY-MM] [--check]``."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.management.base import OpsCommand
from usage.periods import FIRST_PERIOD_CODE, LAST_PERIOD_CODE, Period, period_from_code
from usage.services import Drift, RebuildProgress, counters_rebuild

MAX_LISTED = 100  # drifts listed one per line; beyond, only counted
REPAIRED_BY = "rebuild_usage command"


class Command(OpsCommand):
    help = _(
        "Compare every daily usage counter (of ACCOUNT alone with --account, of the month "
        "given by --period) with the sum of its events, and set each drifted counter to that "
        "sum, recording a counter repair. With --check nothing is changed: drifts are listed "
        "and the command exits with status 1 if there is any. Days whose events were purged "
        "are left alone. Prints progress on stderr and ends with the counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--account",
            metavar="ACCOUNT",
            help=gettext("The account's id or external id; every account when left out."),
        )
        parser.add_argument(
            "--period",
            metavar="YYYY-MM",
            help=gettext(
                "Only the days of this month (in each account's time zone); every day by default."
            ),
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help=gettext("Only report drifts, change nothing; exit with status 1 if there is any."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = None
        if options["account"] is not None:
            account = self.get_account(options["account"])
        period: Period | None = None
        if options["period"] is not None:
            try:
                period = period_from_code(
                    options["period"], account.zone if account else ZoneInfo("UTC")
                )
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

        check = options["check"]
        self.checked = 0
        drifts = counters_rebuild(
            account=account,
            period=period,
            repair=not check,
            repaired_by=REPAIRED_BY,
            progress=self._progress,
        )
        self._summary(drifts, check=check)
        if check and drifts:
            raise CommandError(
                _("%(count)s counters drifted; run rebuild_usage without --check to repair them.")
                % {"count": len(drifts)},
                returncode=1,
            )

    def _progress(self, progress: RebuildProgress) -> None:
        self.checked = progress.checked
        self.stderr.write(
            _(
                "Accounts: %(done)s of %(total)s; "
                "counters checked: %(checked)s, drifted: %(drifted)s."
            )
            % {
                "done": progress.accounts_done,
                "total": progress.accounts_total,
                "checked": progress.checked,
                "drifted": progress.drifted,
            }
        )

    def _summary(self, drifts: list[Drift], *, check: bool) -> None:
        for drift in drifts[:MAX_LISTED]:
            self.stdout.write(
                _("%(account)s %(metric)s %(day)s: counter %(found)s, events %(expected)s")
                % {
                    "account": drift.external_id,
                    "metric": drift.metric,
                    "day": drift.place,
                    # Exact, not in the metric's unit: a corrupt counter may hold
                    # a fraction of a token, and rounding would hide it.
                    "found": "-" if drift.found_milli is None else drift.found,
                    "expected": drift.expected,
                }
            )
        if len(drifts) > MAX_LISTED:
            self.stdout.write(_("… and %(count)s more.") % {"count": len(drifts) - MAX_LISTED})
        counts = {"checked": self.checked, "drifted": len(drifts)}
        if check:
            self.stdout.write(_("Counters checked: %(checked)s, drifted: %(drifted)s.") % counts)
        else:
            self.stdout.write(
                _("Counters checked: %(checked)s, drifted: %(drifted)s, repaired: %(drifted)s.")
                % counts
            )
