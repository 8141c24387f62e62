"""How a quantity is written: as a number for the API, JSON and CSV, or as text for people.

Quantities are stored in thousandths of their metric's unit (``usage.models.MILLI``);
the functions here are the only places that turn them into something shown, so the API,
the reports, the admin and the e-mails cannot write the same quantity differently: a
number (``quantity_number``), text (``quantity_text``), a threshold or an extension, a
whole number of units (``threshold_text``), the e-mails' text with its unit
(``quantity_with_unit``), and the text with its unit, seconds also as hours and minutes,
that the admin and every title show (``amount_text``, ``threshold_amount_text``).
"""

from __future__ import annotations

from decimal import Decimal

from django.utils import formats
from django.utils.translation import gettext, npgettext

from accounts.metrics import METRICS

from .models import MILLI, from_milli


def _decimal_places(metric: str) -> int:
    spec = METRICS.get(metric)
    # A metric no longer listed (an old history row) is written exactly.
    return 3 if spec is None else spec.decimal_places


def quantity_number(value_milli: int | None, metric: str) -> int | Decimal | None:
    """A quantity as the API writes it: an integer for tokens, up to 3 decimals for seconds.

    ``None`` (no threshold, so nothing remaining to count) stays ``None``.
    """
    if value_milli is None:
        return None
    spec = METRICS.get(metric)  # as ``_decimal_places``, without a call: a hot path
    if spec is not None and spec.decimal_places == 0:
        return value_milli // MILLI
    return from_milli(value_milli)


def quantity_text(value_milli: int, metric: str, *, all_places: bool = False) -> str:
    """A quantity for people, in the active language, grouped by thousands (``3,600.5``).

    Only the decimals needed are written; with ``all_places`` every decimal place of the
    metric is (``12.500``), so that a column of quantities lines up.
    """
    places = _decimal_places(metric) if all_places else None
    return formats.number_format(
        quantity_number(value_milli, metric), places, use_l10n=True, force_grouping=True
    )


def threshold_text(value: int | None, metric: str) -> str:
    """A threshold or an extension, in whole units of ``metric``; ``None`` is unlimited."""
    if value is None:
        return gettext("unlimited")
    return quantity_text(value * MILLI, metric)


def number_text(value: int) -> str:
    """A whole number for people, in the active language, grouped by thousands."""
    return formats.number_format(value, use_l10n=True, force_grouping=True)


def quantity_with_unit(value_milli: int, metric: str) -> str:
    """``36,000 seconds (10 h 0 min)`` / ``36 000 secondes (10 h 0 min)``."""
    amount = quantity_text(value_milli, metric)
    if METRICS[metric].unit == "seconds":
        total_minutes = value_milli // (60 * MILLI)
        return gettext("%(amount)s seconds (%(hours)s h %(minutes)s min)") % {
            "amount": amount,
            "hours": number_text(total_minutes // 60),
            "minutes": total_minutes % 60,
        }
    return gettext("%(amount)s tokens") % {"amount": amount}


def duration_text(value_milli: int) -> str:
    """Seconds as hours and minutes, rounded down to the minute: ``10 h``, ``1 h 5 min``,
    ``36 min``; ``""`` under a minute (the seconds say it all)."""
    total_minutes = value_milli // (60 * MILLI)
    hours, minutes = divmod(total_minutes, 60)
    if not hours:
        return gettext("%(minutes)s min") % {"minutes": minutes} if minutes else ""
    if not minutes:
        return gettext("%(hours)s h") % {"hours": number_text(hours)}
    return gettext("%(hours)s h %(minutes)s min") % {
        "hours": number_text(hours),
        "minutes": minutes,
    }


def unit_label(metric: str, value_milli: int = 2 * MILLI) -> str:
    """The unit of ``metric`` for people, agreeing with ``value_milli`` (``token``,
    ``tokens``, ``seconds``); a metric no longer listed is written by its code."""
    spec = METRICS.get(metric)
    if spec is None:
        return ""
    # Plural forms take whole numbers: a fraction of a unit is written as many.
    count = value_milli // MILLI if value_milli % MILLI == 0 else 2
    if spec.unit == "seconds":
        return npgettext("unit", "second", "seconds", count)
    return npgettext("unit", "token", "tokens", count)


def amount_text(value_milli: int, metric: str) -> str:
    """A quantity with its unit, seconds also as hours and minutes, for the admin and
    every title a person reads: ``800,000 tokens``, ``2,160 seconds (36 min)``,
    ``2 160 secondes (36 min)``."""
    text = gettext("%(quantity)s %(unit)s") % {
        "quantity": quantity_text(value_milli, metric),
        "unit": unit_label(metric, value_milli),
    }
    spec = METRICS.get(metric)
    if spec is not None and spec.unit == "seconds":
        duration = duration_text(value_milli)
        if duration:
            text = gettext("%(amount)s (%(duration)s)") % {"amount": text, "duration": duration}
    return text


def threshold_amount_text(value: int | None, metric: str) -> str:
    """A threshold or an extension in whole units, with ``amount_text``'s unit;
    ``None`` is unlimited."""
    if value is None:
        return gettext("unlimited")
    return amount_text(value * MILLI, metric)
