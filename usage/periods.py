"""Billing periods: calendar months starting on the 1st at 00:00 in the account's time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

PERIOD_CODE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Period:
    """One calendar month in one time zone; ``start`` included, ``end`` excluded."""

    year: int
    month: int
    zone: ZoneInfo

    @property
    def code(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def next(self) -> Period:
        if self.month == 12:
            return Period(self.year + 1, 1, self.zone)
        return Period(self.year, self.month + 1, self.zone)

    @property
    def previous(self) -> Period:
        if self.month == 1:
            return Period(self.year - 1, 12, self.zone)
        return Period(self.year, self.month - 1, self.zone)

    @property
    def end_day(self) -> date:
        """The first day of the next period (excluded)."""
        return self.next.first_day

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=self.zone)

    @property
    def end(self) -> datetime:
        return self.next.start


def period_containing(moment: datetime, zone: ZoneInfo) -> Period:
    """The period in ``zone`` that contains the aware datetime ``moment``."""
    local = moment.astimezone(zone)
    return Period(local.year, local.month, zone)


def period_from_code(code: str, zone: ZoneInfo) -> Period:
    """Parse ``YYYY-MM``; raises ``ValueError`` for anything else."""
    match = PERIOD_CODE.match(code or "")
    if not match:
        raise ValueError(code)
    return Period(int(match[1]), int(match[2]), zone)


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar day of ``moment`` in ``zone`` (the day whose counter it counts in)."""
    return moment.astimezone(zone).date()
