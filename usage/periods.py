"""Billing periods: calendar months starting on the 1st at 00:00 in the account's time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

PERIOD_CODE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
# The months a period code may name. Before 2000 no usage exists (events are refused, see
# ``usage.ingest.EARLIEST_OCCURRED_YEAR``); the end of 9999-12 would be in year 10000, which
# no date holds.
FIRST_PERIOD = (2000, 1)
LAST_PERIOD = (9999, 11)
FIRST_PERIOD_CODE = f"{FIRST_PERIOD[0]:04d}-{FIRST_PERIOD[1]:02d}"
LAST_PERIOD_CODE = f"{LAST_PERIOD[0]:04d}-{LAST_PERIOD[1]:02d}"
# The same months as a regular expression, for the OpenAPI schema's ``pattern`` (ECMA 262,
# ASCII digits only): years 2000 to 9998 with any month, then 9999-01 to 9999-11.
PERIOD_PATTERN = (
    r"^(?:(?:[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(?:0[1-9]|1[0-2])"
    r"|9999-(?:0[1-9]|1[01]))$"
)


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
    """Parse ``YYYY-MM`` from ``FIRST_PERIOD_CODE`` to ``LAST_PERIOD_CODE``; raises
    ``ValueError`` for anything else."""
    match = PERIOD_CODE.fullmatch(code) if isinstance(code, str) else None
    if not match:
        raise ValueError(code)
    year, month = int(match[1]), int(match[2])
    if not FIRST_PERIOD <= (year, month) <= LAST_PERIOD:
        raise ValueError(code)
    return Period(year, month, zone)


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar day of ``moment`` in ``zone`` (the day whose counter it counts in)."""
    return moment.astimezone(zone).date()
