"""How a notification names its limit line and the line's period, for people and for
machines (SPEC 11.5): the e-mails, ``Notification.__str__`` and the admin use these."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.utils import formats
from django.utils.translation import gettext, ngettext

from accounts.windows import PeriodKind
from config.dates import day_text


def _day(value: date) -> str:
    # Day, month name and year in every language ("2 December 2026", "1er décembre 2026").
    return day_text(value)


def period_text(
    *, kind: str, window_days: int | None, day: date, start: datetime, zone: ZoneInfo
) -> str:
    """The period a notification is about, in the active language: ``November 2026``,
    ``week of 30 November 2026``, ``day of 2 December 2026``, ``2 December 2026, hour
    starting 14:00``, ``the last 7 days, to 2 December 2026``.

    ``day`` and ``start`` are the notification's ``period`` and ``period_start``: a rolling
    line's is the day its window reached the threshold, named as the window's last day.
    ``zone`` (the account's) gives the local time of an hour or a minute.
    """
    local = start.astimezone(zone)
    if kind == PeriodKind.MONTH:
        return formats.date_format(day, "YEAR_MONTH_FORMAT")
    if kind == PeriodKind.WEEK:
        return gettext("week of %(date)s") % {"date": _day(day)}
    if kind == PeriodKind.DAY:
        return gettext("day of %(date)s") % {"date": _day(day)}
    if kind == PeriodKind.HOUR:
        return gettext("%(date)s, hour starting %(time)s") % {
            "date": _day(day),
            "time": formats.time_format(local, "H:i"),
        }
    if kind == PeriodKind.MINUTE:
        return gettext("%(date)s, minute starting %(time)s") % {
            "date": _day(day),
            "time": formats.time_format(local, "H:i"),
        }
    days = window_days or 1
    return ngettext(
        "the last %(days)s day, to %(date)s",
        "the last %(days)s days, to %(date)s",
        days,
    ) % {"days": days, "date": _day(day)}
