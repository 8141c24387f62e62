"""Limit windows: the period kinds of scoped limits (SPEC sections 11.2, 11.3 and 11.5).

A window is a half-open interval of instants ``[start, end)``, held as aware UTC
datetimes, computed from the local clock of the account's time zone:

- ``month``: from the first day of a calendar month, 00:00, to the first day of the next;
- ``week``: from Monday 00:00 (ISO week) to the next Monday 00:00;
- ``day``: from 00:00 to the next day's 00:00 (23 or 25 hours on a DST change);
- ``hour``: the 60 minutes from a full hour of the local clock;
- ``minute``: the 60 seconds from a full minute of the local clock;
- ``rolling`` (``days`` = N, 1 to 366): the local day of the instant and the N - 1 days
  before it; it moves at local midnight, so it is exact to the local day, never to the hour.

The local clock does not always tick: where it jumps (DST, or a zone changing its offset),
these rules decide (see ``docs/how-it-works.md``, "Limit windows"):

- A day (hence a week, a month, a rolling window) starts at the first instant whose local
  date is that day: at 00:00, or at the end of the jump when 00:00 is skipped, or at the
  first 00:00 when it repeats, and ends where the next day starts: where the clock goes
  back across midnight (America/Goose_Bay, 1987 to 2010), the minutes of the day before
  that it repeats count in the new day. Days of 23 or 25 hours are whole windows.
- ``hour`` and ``minute`` windows never straddle a change of UTC offset: a repeated hour is
  two windows of 60 minutes (``02:00+02:00`` then ``02:00+01:00`` in Paris), a skipped
  hour has no window, and a half-hour shift (Australia/Lord_Howe) makes a window of 30
  minutes on either side of the change. Within such a window the offset is constant.

Hence minutes tile hours, hours tile days, and days tile weeks, months and rolling
windows: ``cover`` lists the smaller windows that make up a larger one, so counters kept
per local hour (or day) add up to any window exactly.

Keys name a window within its kind (and zone, and ``days`` for rolling), as SPEC 11.5
writes them in ``X-Usage-Period``: ``YYYY-MM`` for a month, else the window's start instant
in ISO 8601 with its local offset (``2027-10-31T02:00:00+01:00``, the offset telling a
repeated hour apart). A rolling window's key is the start of its last day, which SPEC 11.5
calls the rolling line's "period start": the window itself starts ``days`` - 1 days earlier.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo

from django.db import models
from django.utils.translation import gettext_lazy as _

MAX_ROLLING_DAYS = 366
MONTH_KEY = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

_TICK = timedelta(microseconds=1)


class PeriodKind(models.TextChoices):
    """The period of a limit line (SPEC 11.2)."""

    MONTH = "month", _("Calendar month")
    WEEK = "week", _("Week")
    DAY = "day", _("Day")
    HOUR = "hour", _("Hour")
    MINUTE = "minute", _("Minute")
    ROLLING = "rolling", _("Rolling window")


_CALENDAR = frozenset({PeriodKind.MONTH, PeriodKind.WEEK, PeriodKind.DAY, PeriodKind.ROLLING})
_CLOCK = {PeriodKind.HOUR: timedelta(hours=1), PeriodKind.MINUTE: timedelta(minutes=1)}
# Which kinds a window of each kind is made of, exactly (``cover``).
_MADE_OF = {
    PeriodKind.MONTH: {PeriodKind.MONTH, PeriodKind.DAY, PeriodKind.HOUR, PeriodKind.MINUTE},
    PeriodKind.WEEK: {PeriodKind.WEEK, PeriodKind.DAY, PeriodKind.HOUR, PeriodKind.MINUTE},
    PeriodKind.ROLLING: {PeriodKind.DAY, PeriodKind.HOUR, PeriodKind.MINUTE},
    PeriodKind.DAY: {PeriodKind.DAY, PeriodKind.HOUR, PeriodKind.MINUTE},
    PeriodKind.HOUR: {PeriodKind.HOUR, PeriodKind.MINUTE},
    PeriodKind.MINUTE: {PeriodKind.MINUTE},
}


@dataclass(frozen=True)
class Window:
    """One window of a period kind in one time zone; ``start`` included, ``end`` excluded.

    ``start`` and ``end`` are aware UTC datetimes; ``days`` is set for ``rolling`` only.
    """

    kind: PeriodKind
    start: datetime
    end: datetime
    key: str
    zone: ZoneInfo
    days: int | None = None

    @property
    def local_start(self) -> datetime:
        """``start`` in the account's time zone, as the API shows it (``start_time``)."""
        return self.start.astimezone(self.zone)

    @property
    def local_end(self) -> datetime:
        """``end`` in the account's time zone (``end_time``, and ``valid_until``)."""
        return self.end.astimezone(self.zone)

    @cached_property
    def local_start_text(self) -> str:
        """``local_start`` in ISO 8601, as the API writes it; computed once per window."""
        return self.local_start.isoformat()

    @cached_property
    def local_end_text(self) -> str:
        """``local_end`` in ISO 8601, as the API writes it; computed once per window."""
        return self.local_end.isoformat()

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def last_day(self) -> Window:
        """The local day that ends the window (for ``rolling``: the day its key names)."""
        return window_containing(kind=PeriodKind.DAY, instant=self.end - _TICK, zone=self.zone)

    def contains(self, instant: datetime) -> bool:
        return self.start <= _aware(instant) < self.end

    def next(self) -> Window:
        """The window after this one; for ``rolling``, the window one local day later."""
        return window_containing(kind=self.kind, instant=self.end, zone=self.zone, days=self.days)

    def previous(self) -> Window:
        """The window before this one; for ``rolling``, the window one local day earlier."""
        anchor = self.last_day.start if self.kind == PeriodKind.ROLLING else self.start
        return window_containing(
            kind=self.kind, instant=anchor - _TICK, zone=self.zone, days=self.days
        )


def period_kind(kind: str) -> PeriodKind:
    """``kind`` as a ``PeriodKind``; ``ValueError`` naming the kinds for anything else."""
    try:
        return PeriodKind(kind)
    except ValueError:
        raise ValueError(
            _("“%(value)s” is not a valid period. Expected one of: %(kinds)s.")
            % {"value": kind, "kinds": ", ".join(PeriodKind.values)}
        ) from None


def window_days_check(kind: str, days: int | None) -> None:
    """SPEC 11.2: ``window_days`` (1 to 366) is required with ``rolling``, ``None`` otherwise."""
    if kind == PeriodKind.ROLLING:
        if days is None:
            raise ValueError(_("A rolling period needs a number of days."))
        if isinstance(days, bool) or not isinstance(days, int):
            raise ValueError(_("A valid integer is required."))
        if not 1 <= days <= MAX_ROLLING_DAYS:
            raise ValueError(
                _("A rolling window is from 1 to %(limit)s days.") % {"limit": MAX_ROLLING_DAYS}
            )
    elif days is not None:
        raise ValueError(_("Only a rolling period takes a number of days."))


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(_("Datetime has no UTC offset. Use ISO 8601 with a UTC offset."))
    return instant.astimezone(UTC)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """The local clock's reading at ``instant`` (naive)."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _first_instant_reading(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the local clock reads ``wall`` or later (UTC).

    Where ``wall`` repeats, that is its first occurrence; where the clock skips it, the
    instant of the jump, found by bisection to the microsecond.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(first, second), max(first, second)
    if _wall(low, zone) == wall:
        return low
    # Skipped: the clock reads less than ``wall`` at ``low``, and ``wall`` or more at ``high``.
    while high - low > _TICK:
        middle = low + (high - low) // 2
        if _wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high


@lru_cache(maxsize=8192)
def _day_start(day: date, zone: ZoneInfo) -> datetime:
    # Cached: a request asks for the same few days of the same zones for each of its lines.
    midnight = datetime(day.year, day.month, day.day)  # noqa: DTZ001 (a local clock reading)
    return _first_instant_reading(midnight, zone)


def _offset_change(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in ``(low, high]`` whose UTC offset is not the one at ``low``,
    given that the offset at ``high`` differs (one change in between), to the microsecond."""
    offset = low.astimezone(zone).utcoffset()
    while high - low > _TICK:
        middle = low + (high - low) // 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high


def _first_day(kind: PeriodKind, day: date, days: int | None) -> date:
    if kind == PeriodKind.MONTH:
        return day.replace(day=1)
    if kind == PeriodKind.WEEK:
        return day - timedelta(days=day.weekday())
    if kind == PeriodKind.ROLLING:
        assert days is not None
        return day - timedelta(days=days - 1)
    return day


def _day_after(kind: PeriodKind, day: date) -> date:
    """The first day after the window whose first day is ``day`` (rolling: its last day)."""
    if kind == PeriodKind.MONTH:
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    if kind == PeriodKind.WEEK:
        return day + timedelta(days=7)
    return day + timedelta(days=1)


def _key(kind: PeriodKind, anchor: datetime, zone: ZoneInfo) -> str:
    local = anchor.astimezone(zone)
    if kind == PeriodKind.MONTH:
        return f"{local.year:04d}-{local.month:02d}"
    return local.isoformat()


def _calendar_window(
    kind: PeriodKind, instant: datetime, zone: ZoneInfo, days: int | None
) -> Window:
    # The window's last day is the local date at ``instant``, or a later one where the
    # clock has gone back across midnight (the later day had already started).
    anchor_day = _wall(instant, zone).date()
    if kind == PeriodKind.ROLLING:
        last_day = anchor_day
        while instant >= _day_start(last_day + timedelta(days=1), zone):
            last_day += timedelta(days=1)
        first_day = _first_day(kind, last_day, days)
        anchor = _day_start(last_day, zone)
        return Window(
            kind=kind,
            start=_day_start(first_day, zone),
            end=_day_start(last_day + timedelta(days=1), zone),
            key=_key(kind, anchor, zone),
            zone=zone,
            days=days,
        )
    first_day = _first_day(kind, anchor_day, days)
    end = _day_start(_day_after(kind, first_day), zone)
    while instant >= end:
        first_day = _day_after(kind, first_day)
        end = _day_start(_day_after(kind, first_day), zone)
    start = _day_start(first_day, zone)
    return Window(kind=kind, start=start, end=end, key=_key(kind, start, zone), zone=zone)


def _clock_window(kind: PeriodKind, instant: datetime, zone: ZoneInfo) -> Window:
    length = _CLOCK[kind]
    local = instant.astimezone(zone)
    offset = local.utcoffset()
    assert offset is not None
    floor = local.replace(tzinfo=None, second=0, microsecond=0)
    if kind == PeriodKind.HOUR:
        floor = floor.replace(minute=0)
    # Where the offset holds, the local clock is UTC plus ``offset``.
    start = (floor - offset).replace(tzinfo=UTC)
    end = start + length
    if start.astimezone(zone).utcoffset() != offset:
        start = _offset_change(start, instant, zone)
    if (end - _TICK).astimezone(zone).utcoffset() != offset:
        end = _offset_change(instant, end - _TICK, zone)
    return Window(kind=kind, start=start, end=end, key=_key(kind, start, zone), zone=zone)


def window_containing(
    *, kind: str, instant: datetime, zone: ZoneInfo, days: int | None = None
) -> Window:
    """The window of ``kind`` in ``zone`` that contains the aware datetime ``instant``.

    ``days`` is the rolling window's length (SPEC ``window_days``), ``None`` for other kinds.
    """
    kind = period_kind(kind)
    window_days_check(kind, days)
    instant = _aware(instant)
    if kind in _CALENDAR:
        return _calendar_window(kind, instant, zone, days)
    return _clock_window(kind, instant, zone)


# The last window ``window_current`` found for each kind, zone and days, with the first
# instant it is the current one from: most requests of a minute ask for the same few.
_current: dict[tuple[str, ZoneInfo, int | None], tuple[datetime, Window]] = {}
MAX_CURRENT = 4096


def window_current(
    *, kind: str, instant: datetime, zone: ZoneInfo, days: int | None = None
) -> Window:
    """``window_containing``, remembered per process: the window found last for this kind,
    zone and days is answered again while ``instant`` is within the part of it where it is
    the current one (all of it, as windows of a kind tile time; for ``rolling``, its last
    day, as successive rolling windows overlap); else it is computed and kept."""
    key = (kind, zone, days)
    found = _current.get(key)
    if found is not None and instant.tzinfo is not None and found[0] <= instant < found[1].end:
        return found[1]
    window = window_containing(kind=kind, instant=instant, zone=zone, days=days)
    if len(_current) >= MAX_CURRENT:
        _current.clear()
    _current[key] = (
        window.last_day.start if window.kind == PeriodKind.ROLLING else window.start,
        window,
    )
    return window


def window_from_key(*, kind: str, key: str, zone: ZoneInfo, days: int | None = None) -> Window:
    """The window that ``key`` names (see the module's docstring); ``ValueError`` otherwise.

    A month is ``YYYY-MM`` exactly. Other kinds take an ISO 8601 instant with an offset,
    which must be the window's start (rolling: its last day's start); any offset naming
    that instant is accepted, and the window's own ``key`` is the canonical spelling.
    """
    kind = period_kind(kind)
    window_days_check(kind, days)
    if not isinstance(key, str):
        raise ValueError(_("A valid string is required."))
    if kind == PeriodKind.MONTH:
        match = MONTH_KEY.match(key)
        if not match:
            raise ValueError(
                _("“%(value)s” is not a month: use YYYY-MM, e.g. 2027-03.") % {"value": key}
            )
        return window_containing(
            kind=kind, instant=_day_start(date(int(match[1]), int(match[2]), 1), zone), zone=zone
        )
    try:
        instant = datetime.fromisoformat(key)
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            _("“%(value)s” is not an ISO 8601 instant with a UTC offset.") % {"value": key}
        )
    window = window_containing(kind=kind, instant=instant, zone=zone, days=days)
    anchor = window.last_day.start if kind == PeriodKind.ROLLING else window.start
    # In UTC: an aware datetime in a gap or a fold never equals one of another zone.
    if anchor != instant.astimezone(UTC):
        raise ValueError(
            _("“%(value)s” does not start a period of this kind: did you mean “%(key)s”?")
            % {"value": key, "key": window.key}
        )
    return window


def cover(window: Window, *, kind: str) -> Iterator[Window]:
    """The windows of ``kind`` that make up ``window`` exactly, in order.

    ``kind`` must be ``window``'s own kind or a smaller one that tiles it (``hour`` tiles
    every kind but ``minute``; ``day`` tiles days and longer; a week is not made of
    months). The first window starts at ``window.start`` and the last ends at ``window.end``.
    """
    kind = period_kind(kind)
    if kind not in _MADE_OF[window.kind]:
        raise ValueError(f"a {window.kind} window is not made of {kind} windows")
    if kind == window.kind and kind != PeriodKind.ROLLING:
        yield window
        return
    instant = window.start
    while instant < window.end:
        part = window_containing(kind=kind, instant=instant, zone=window.zone)
        yield part
        instant = part.end
