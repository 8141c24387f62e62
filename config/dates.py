"""Dates and times for people: in a given time zone, named, in the active language.

Django writes the first of a month as ``1 décembre`` in French, where French writes
``1er décembre``; every date the admin shows goes through here to be written right.
"""

from __future__ import annotations

import datetime
import zoneinfo

from django.utils import formats
from django.utils.translation import get_language, gettext


def _french_first(text: str, value: datetime.date) -> str:
    # Django's French formats start with the day ("j F Y"): the first is "1er".
    if value.day == 1 and (get_language() or "").startswith("fr") and text.startswith("1 "):
        return f"1er {text[2:]}"
    return text


def date_text(value: datetime.date) -> str:
    """A day: ``Dec. 1, 2026`` / ``1er décembre 2026``."""
    return _french_first(formats.date_format(value, "DATE_FORMAT"), value)


def day_text(value: datetime.date) -> str:
    """A day with its month written out in every language: ``2 December 2026`` /
    ``1er décembre 2026`` (English's ``DATE_FORMAT`` abbreviates some months)."""
    return _french_first(formats.date_format(value, "j F Y"), value)


def datetime_text(value: datetime.datetime | None, zone: str, *, with_zone: bool = True) -> str:
    """An instant in the time zone ``zone`` (an IANA name), with the zone named:
    ``Dec. 1, 2026, midnight (Europe/Paris)`` / ``1er décembre 2026 00:00 (Europe/Paris)``.

    ``None`` (not yet happened) is ``—``.
    """
    if value is None:
        return "—"
    try:
        local = value.astimezone(zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        local, zone = value.astimezone(datetime.UTC), "UTC"
    text = _french_first(formats.date_format(local, "DATETIME_FORMAT"), local)
    if not with_zone:
        return text
    return gettext("%(datetime)s (%(zone)s)") % {"datetime": text, "zone": zone}


def month_text(first_day: datetime.date) -> str:
    """A calendar month (a period): ``December 2026`` / ``décembre 2026``."""
    return formats.date_format(first_day, "YEAR_MONTH_FORMAT")
