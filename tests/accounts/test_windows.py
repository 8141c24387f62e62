"""Limit windows follow the account's local clock, across DST changes and odd offsets."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, available_timezones

import pytest
from django.utils import timezone
from django.utils.translation import override
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.windows import (
    PeriodKind,
    Window,
    cover,
    window_containing,
    window_current,
    window_days_check,
    window_from_key,
)
from usage.periods import period_containing

TICK = timedelta(microseconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def window(kind: str, instant: str, zone: str, days: int | None = None) -> Window:
    return window_containing(kind=kind, instant=at(instant), zone=ZoneInfo(zone), days=days)


def bounds(w: Window) -> tuple[str, str, str]:
    return w.key, w.local_start.isoformat(), w.local_end.isoformat()


# (zone, kind, days, instant in UTC, key, local start, local end)
CASES = [
    # Paris moves to summer time on 2027-03-28 at 02:00 CET (01:00 UTC): 02:00-02:59 is skipped.
    ("Europe/Paris", "day", None, "2027-03-27T22:59:59.999999Z",
     "2027-03-27T00:00:00+01:00", "2027-03-27T00:00:00+01:00", "2027-03-28T00:00:00+01:00"),
    ("Europe/Paris", "day", None, "2027-03-27T23:00:00Z",
     "2027-03-28T00:00:00+01:00", "2027-03-28T00:00:00+01:00", "2027-03-29T00:00:00+02:00"),
    ("Europe/Paris", "hour", None, "2027-03-28T00:59:59.999999Z",
     "2027-03-28T01:00:00+01:00", "2027-03-28T01:00:00+01:00", "2027-03-28T03:00:00+02:00"),
    ("Europe/Paris", "hour", None, "2027-03-28T01:00:00Z",
     "2027-03-28T03:00:00+02:00", "2027-03-28T03:00:00+02:00", "2027-03-28T04:00:00+02:00"),
    ("Europe/Paris", "minute", None, "2027-03-28T00:59:30Z",
     "2027-03-28T01:59:00+01:00", "2027-03-28T01:59:00+01:00", "2027-03-28T03:00:00+02:00"),
    ("Europe/Paris", "week", None, "2027-03-28T21:59:59Z",
     "2027-03-22T00:00:00+01:00", "2027-03-22T00:00:00+01:00", "2027-03-29T00:00:00+02:00"),
    ("Europe/Paris", "week", None, "2027-03-28T22:00:00Z",
     "2027-03-29T00:00:00+02:00", "2027-03-29T00:00:00+02:00", "2027-04-05T00:00:00+02:00"),
    ("Europe/Paris", "month", None, "2027-03-31T21:59:59Z",
     "2027-03", "2027-03-01T00:00:00+01:00", "2027-04-01T00:00:00+02:00"),
    ("Europe/Paris", "month", None, "2027-03-31T22:00:00Z",
     "2027-04", "2027-04-01T00:00:00+02:00", "2027-05-01T00:00:00+02:00"),
    ("Europe/Paris", "rolling", 7, "2027-03-28T22:30:00Z",
     "2027-03-29T00:00:00+02:00", "2027-03-23T00:00:00+01:00", "2027-03-30T00:00:00+02:00"),
    # ... and back on 2027-10-31 at 03:00 CEST (01:00 UTC): 02:00-02:59 happens twice.
    ("Europe/Paris", "day", None, "2027-10-31T12:00:00Z",
     "2027-10-31T00:00:00+02:00", "2027-10-31T00:00:00+02:00", "2027-11-01T00:00:00+01:00"),
    ("Europe/Paris", "hour", None, "2027-10-31T00:30:00Z",
     "2027-10-31T02:00:00+02:00", "2027-10-31T02:00:00+02:00", "2027-10-31T02:00:00+01:00"),
    ("Europe/Paris", "hour", None, "2027-10-31T01:30:00Z",
     "2027-10-31T02:00:00+01:00", "2027-10-31T02:00:00+01:00", "2027-10-31T03:00:00+01:00"),
    ("Europe/Paris", "minute", None, "2027-10-31T00:59:59Z",
     "2027-10-31T02:59:00+02:00", "2027-10-31T02:59:00+02:00", "2027-10-31T02:00:00+01:00"),
    ("Europe/Paris", "minute", None, "2027-10-31T01:00:00Z",
     "2027-10-31T02:00:00+01:00", "2027-10-31T02:00:00+01:00", "2027-10-31T02:01:00+01:00"),
    ("Europe/Paris", "week", None, "2027-10-31T22:59:59Z",
     "2027-10-25T00:00:00+02:00", "2027-10-25T00:00:00+02:00", "2027-11-01T00:00:00+01:00"),
    ("Europe/Paris", "month", None, "2027-10-31T22:59:59Z",
     "2027-10", "2027-10-01T00:00:00+02:00", "2027-11-01T00:00:00+01:00"),
    ("Europe/Paris", "rolling", 2, "2027-11-01T00:00:00Z",
     "2027-11-01T00:00:00+01:00", "2027-10-31T00:00:00+02:00", "2027-11-02T00:00:00+01:00"),
    # 29 February and year end in Paris; the ISO week of the new year starts in the old one.
    ("Europe/Paris", "day", None, "2028-02-28T23:00:00Z",
     "2028-02-29T00:00:00+01:00", "2028-02-29T00:00:00+01:00", "2028-03-01T00:00:00+01:00"),
    ("Europe/Paris", "month", None, "2028-02-29T22:59:59Z",
     "2028-02", "2028-02-01T00:00:00+01:00", "2028-03-01T00:00:00+01:00"),
    ("Europe/Paris", "rolling", 2, "2028-03-01T12:00:00Z",
     "2028-03-01T00:00:00+01:00", "2028-02-29T00:00:00+01:00", "2028-03-02T00:00:00+01:00"),
    ("Europe/Paris", "rolling", 366, "2028-12-31T12:00:00Z",
     "2028-12-31T00:00:00+01:00", "2028-01-01T00:00:00+01:00", "2029-01-01T00:00:00+01:00"),
    ("Europe/Paris", "week", None, "2027-12-31T23:00:00Z",
     "2027-12-27T00:00:00+01:00", "2027-12-27T00:00:00+01:00", "2028-01-03T00:00:00+01:00"),
    ("Europe/Paris", "month", None, "2027-12-31T23:00:00Z",
     "2028-01", "2028-01-01T00:00:00+01:00", "2028-02-01T00:00:00+01:00"),
    # Kathmandu is UTC+05:45: its hours and days start at a quarter past a UTC hour.
    ("Asia/Kathmandu", "hour", None, "2027-03-01T00:00:00Z",
     "2027-03-01T05:00:00+05:45", "2027-03-01T05:00:00+05:45", "2027-03-01T06:00:00+05:45"),
    ("Asia/Kathmandu", "day", None, "2027-02-28T18:14:59Z",
     "2027-02-28T00:00:00+05:45", "2027-02-28T00:00:00+05:45", "2027-03-01T00:00:00+05:45"),
    ("Asia/Kathmandu", "month", None, "2027-02-28T18:15:00Z",
     "2027-03", "2027-03-01T00:00:00+05:45", "2027-04-01T00:00:00+05:45"),
    # It moved from +05:30 to +05:45 at 1986-01-01 00:00, which became 00:15: the first hour
    # of that year has 45 minutes.
    ("Asia/Kathmandu", "hour", None, "1985-12-31T18:30:00Z",
     "1986-01-01T00:15:00+05:45", "1986-01-01T00:15:00+05:45", "1986-01-01T01:00:00+05:45"),
    ("Asia/Kathmandu", "day", None, "1985-12-31T18:30:00Z",
     "1986-01-01T00:15:00+05:45", "1986-01-01T00:15:00+05:45", "1986-01-02T00:00:00+05:45"),
    # St John's is UTC-03:30, -02:30 in summer: 02:00 to 03:00 on 2027-03-14, 02:00 to 01:00
    # on 2027-11-07.
    ("America/St_Johns", "hour", None, "2027-03-14T05:29:59Z",
     "2027-03-14T01:00:00-03:30", "2027-03-14T01:00:00-03:30", "2027-03-14T03:00:00-02:30"),
    ("America/St_Johns", "day", None, "2027-03-14T12:00:00Z",
     "2027-03-14T00:00:00-03:30", "2027-03-14T00:00:00-03:30", "2027-03-15T00:00:00-02:30"),
    ("America/St_Johns", "hour", None, "2027-11-07T04:29:59Z",
     "2027-11-07T01:00:00-02:30", "2027-11-07T01:00:00-02:30", "2027-11-07T01:00:00-03:30"),
    ("America/St_Johns", "hour", None, "2027-11-07T04:30:00Z",
     "2027-11-07T01:00:00-03:30", "2027-11-07T01:00:00-03:30", "2027-11-07T02:00:00-03:30"),
    ("America/St_Johns", "month", None, "2027-04-01T02:29:59Z",
     "2027-03", "2027-03-01T00:00:00-03:30", "2027-04-01T00:00:00-02:30"),
    ("America/St_Johns", "month", None, "2027-04-01T02:30:00Z",
     "2027-04", "2027-04-01T00:00:00-02:30", "2027-05-01T00:00:00-02:30"),
    # Kiritimati (UTC+14) starts each year first; in 1994 it moved from -10 to +14 and
    # skipped 31 December: that day has no window, and a rolling window over it is shorter.
    ("Pacific/Kiritimati", "month", None, "2026-12-31T09:59:59Z",
     "2026-12", "2026-12-01T00:00:00+14:00", "2027-01-01T00:00:00+14:00"),
    ("Pacific/Kiritimati", "week", None, "2026-12-31T10:00:00Z",
     "2026-12-28T00:00:00+14:00", "2026-12-28T00:00:00+14:00", "2027-01-04T00:00:00+14:00"),
    ("Pacific/Kiritimati", "day", None, "2026-12-31T10:00:00Z",
     "2027-01-01T00:00:00+14:00", "2027-01-01T00:00:00+14:00", "2027-01-02T00:00:00+14:00"),
    ("Pacific/Kiritimati", "hour", None, "2026-12-31T10:00:00Z",
     "2027-01-01T00:00:00+14:00", "2027-01-01T00:00:00+14:00", "2027-01-01T01:00:00+14:00"),
    ("Pacific/Kiritimati", "day", None, "1994-12-31T09:59:59Z",
     "1994-12-30T00:00:00-10:00", "1994-12-30T00:00:00-10:00", "1995-01-01T00:00:00+14:00"),
    ("Pacific/Kiritimati", "rolling", 3, "1995-01-01T10:00:00Z",
     "1995-01-02T00:00:00+14:00", "1995-01-01T00:00:00+14:00", "1995-01-03T00:00:00+14:00"),
    # Lord Howe Island changes by half an hour: hours of 30 minutes beside each change.
    ("Australia/Lord_Howe", "hour", None, "2027-04-03T14:59:59Z",
     "2027-04-04T01:00:00+11:00", "2027-04-04T01:00:00+11:00", "2027-04-04T01:30:00+10:30"),
    ("Australia/Lord_Howe", "hour", None, "2027-04-03T15:00:00Z",
     "2027-04-04T01:30:00+10:30", "2027-04-04T01:30:00+10:30", "2027-04-04T02:00:00+10:30"),
    ("Australia/Lord_Howe", "hour", None, "2027-10-02T15:29:59Z",
     "2027-10-03T01:00:00+10:30", "2027-10-03T01:00:00+10:30", "2027-10-03T02:30:00+11:00"),
    ("Australia/Lord_Howe", "hour", None, "2027-10-02T15:30:00Z",
     "2027-10-03T02:30:00+11:00", "2027-10-03T02:30:00+11:00", "2027-10-03T03:00:00+11:00"),
    # Santiago skips midnight (00:00 to 01:00 on 2027-09-05): the day starts at 01:00.
    ("America/Santiago", "day", None, "2027-09-05T04:00:00Z",
     "2027-09-05T01:00:00-03:00", "2027-09-05T01:00:00-03:00", "2027-09-06T00:00:00-03:00"),
    ("America/Santiago", "week", None, "2027-09-05T04:00:00Z",
     "2027-08-30T00:00:00-04:00", "2027-08-30T00:00:00-04:00", "2027-09-06T00:00:00-03:00"),
    # Sao Paulo went back from midnight to 23:00 on 2018-02-18: 17 February had 25 hours.
    ("America/Sao_Paulo", "day", None, "2018-02-18T02:30:00Z",
     "2018-02-17T00:00:00-02:00", "2018-02-17T00:00:00-02:00", "2018-02-18T00:00:00-03:00"),
    # Caracas moved from -04:30 to -04:00 at 02:30 on 2016-05-01: that hour ends at the change.
    ("America/Caracas", "hour", None, "2016-05-01T06:59:59Z",
     "2016-05-01T02:00:00-04:30", "2016-05-01T02:00:00-04:30", "2016-05-01T03:00:00-04:00"),
    ("America/Caracas", "hour", None, "2016-05-01T07:00:00Z",
     "2016-05-01T03:00:00-04:00", "2016-05-01T03:00:00-04:00", "2016-05-01T04:00:00-04:00"),
    # Goose Bay went back from 00:01 to 23:01 the day before (1987-10-25): once 25 October
    # has begun, the repeated minutes of the 24th count in the 25th.
    ("America/Goose_Bay", "day", None, "1987-10-25T02:59:59Z",
     "1987-10-24T00:00:00-03:00", "1987-10-24T00:00:00-03:00", "1987-10-25T00:00:00-03:00"),
    ("America/Goose_Bay", "day", None, "1987-10-25T03:30:00Z",
     "1987-10-25T00:00:00-03:00", "1987-10-25T00:00:00-03:00", "1987-10-26T00:00:00-04:00"),
    ("America/Goose_Bay", "rolling", 1, "1987-10-25T03:30:00Z",
     "1987-10-25T00:00:00-03:00", "1987-10-25T00:00:00-03:00", "1987-10-26T00:00:00-04:00"),
    ("America/Goose_Bay", "hour", None, "1987-10-25T03:00:30Z",
     "1987-10-25T00:00:00-03:00", "1987-10-25T00:00:00-03:00", "1987-10-24T23:01:00-04:00"),
    ("America/Goose_Bay", "hour", None, "1987-10-25T03:30:00Z",
     "1987-10-24T23:01:00-04:00", "1987-10-24T23:01:00-04:00", "1987-10-25T00:00:00-04:00"),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "kind", "days", "instant", "key", "start", "end"), CASES)
def test_window_bounds_follow_the_local_clock(zone, kind, days, instant, key, start, end):
    # when
    found = window(kind, instant, zone, days)

    # then
    assert bounds(found) == (key, start, end)
    assert found.contains(at(instant))
    assert found.start.tzinfo is UTC and found.end.tzinfo is UTC
    assert found.kind == kind and found.days == days
    assert window_from_key(kind=kind, key=key, zone=ZoneInfo(zone), days=days) == found


@pytest.mark.parametrize(
    ("zone", "kind", "instant", "hours"),
    [
        ("Europe/Paris", "day", "2027-03-28T12:00:00Z", 23),
        ("Europe/Paris", "day", "2027-10-31T12:00:00Z", 25),
        ("Europe/Paris", "week", "2027-03-28T12:00:00Z", 7 * 24 - 1),
        ("Europe/Paris", "month", "2027-10-31T12:00:00Z", 31 * 24 + 1),
        ("Europe/Paris", "month", "2028-02-29T12:00:00Z", 29 * 24),
        ("America/St_Johns", "day", "2027-11-07T12:00:00Z", 25),
        ("Asia/Kathmandu", "day", "2027-03-28T12:00:00Z", 24),
        ("Pacific/Kiritimati", "month", "1994-12-15T12:00:00Z", 30 * 24),
    ],
)
def test_days_of_23_or_25_hours_are_whole_windows(zone, kind, instant, hours):
    assert window(kind, instant, zone).duration == timedelta(hours=hours)


def test_a_repeated_hour_is_two_windows_of_sixty_minutes_and_a_skipped_one_none():
    # given
    paris = ZoneInfo("Europe/Paris")
    autumn = window("day", "2027-10-31T12:00:00Z", "Europe/Paris")
    spring = window("day", "2027-03-28T12:00:00Z", "Europe/Paris")

    # when
    autumn_hours = list(cover(autumn, kind="hour"))
    spring_hours = list(cover(spring, kind="hour"))

    # then
    assert [h.key for h in autumn_hours[:5]] == [
        "2027-10-31T00:00:00+02:00",
        "2027-10-31T01:00:00+02:00",
        "2027-10-31T02:00:00+02:00",
        "2027-10-31T02:00:00+01:00",
        "2027-10-31T03:00:00+01:00",
    ]
    assert len(autumn_hours) == 25
    assert {h.duration for h in autumn_hours} == {timedelta(hours=1)}
    assert [h.local_start.hour for h in spring_hours[:4]] == [0, 1, 3, 4]
    assert len(spring_hours) == 23
    # 02:00+01:00 never showed on the clock; as an instant it is 03:00+02:00.
    found = window_from_key(kind="hour", key="2027-03-28T02:00:00+01:00", zone=paris)
    assert found.key == "2027-03-28T03:00:00+02:00"


def test_cover_lists_the_windows_that_make_up_a_longer_one():
    # given
    month = window("month", "2027-10-15T12:00:00Z", "Europe/Paris")
    week = window("week", "2027-03-28T12:00:00Z", "Asia/Kathmandu")
    rolling = window("rolling", "2027-03-28T12:00:00Z", "America/St_Johns", days=30)
    hour = window("hour", "2027-03-28T12:00:00Z", "Asia/Kathmandu")

    # then
    assert len(list(cover(month, kind="day"))) == 31
    assert len(list(cover(month, kind="hour"))) == 31 * 24 + 1
    assert len(list(cover(week, kind="day"))) == 7
    assert len(list(cover(rolling, kind="day"))) == 30
    assert len(list(cover(rolling, kind="hour"))) == 30 * 24 - 1  # 2027-03-14 had 23 hours
    minutes = list(cover(hour, kind="minute"))
    assert len(minutes) == 60
    assert minutes[0].key == "2027-03-28T17:00:00+05:45"
    assert list(cover(month, kind="month")) == [month]


@pytest.mark.parametrize(("kind", "part"), [("week", "month"), ("day", "week"), ("minute", "hour")])
def test_cover_refuses_windows_that_do_not_tile(kind, part):
    with pytest.raises(ValueError):
        list(cover(window(kind, "2027-03-28T12:00:00Z", "Europe/Paris"), kind=part))


def test_rolling_windows_move_at_local_midnight():
    # given: 23:59:59 and 00:00 in Paris
    before = window("rolling", "2027-06-30T21:59:59Z", "Europe/Paris", days=30)
    after = window("rolling", "2027-06-30T22:00:00Z", "Europe/Paris", days=30)

    # then
    assert before.local_start.isoformat() == "2027-06-01T00:00:00+02:00"
    assert after.local_start.isoformat() == "2027-06-02T00:00:00+02:00"
    assert before.next() == after and after.previous() == before
    assert after.last_day == window("day", "2027-06-30T22:00:00Z", "Europe/Paris")
    assert window("rolling", "2027-06-30T12:00:00Z", "Europe/Paris", days=1) == Window(
        kind=PeriodKind.ROLLING,
        start=at("2027-06-29T22:00:00+00:00"),
        end=at("2027-06-30T22:00:00+00:00"),
        key="2027-06-30T00:00:00+02:00",
        zone=ZoneInfo("Europe/Paris"),
        days=1,
    )


def test_next_and_previous_are_the_adjacent_windows():
    hour = window("hour", "2027-10-31T00:30:00Z", "Europe/Paris")
    assert hour.next().key == "2027-10-31T02:00:00+01:00"
    assert hour.previous().key == "2027-10-31T01:00:00+02:00"
    month = window("month", "2027-12-31T23:00:00Z", "Europe/Paris")
    assert (month.previous().key, month.key, month.next().key) == ("2027-12", "2028-01", "2028-02")


def test_keys_name_instants_in_any_offset_and_read_back_canonically():
    paris = ZoneInfo("Europe/Paris")
    # 01:00 UTC is the second 02:00 of 2027-10-31 in Paris.
    found = window_from_key(kind="hour", key="2027-10-31T01:00:00Z", zone=paris)
    assert found.key == "2027-10-31T02:00:00+01:00"
    rolling = window_from_key(kind="rolling", key="2027-10-31T00:00:00+02:00", zone=paris, days=3)
    assert rolling.local_start.isoformat() == "2027-10-29T00:00:00+02:00"


@pytest.mark.parametrize(
    ("kind", "key", "days", "message"),
    [
        ("month", "2027-3", None, "is not a month: use YYYY-MM"),
        ("month", "2027-13", None, "is not a month"),
        ("month", "2027-03-01T00:00:00+01:00", None, "is not a month"),
        ("day", "2027-03-01", None, "is not an ISO 8601 instant with a UTC offset"),
        ("day", "2027-03-01T00:00:00", None, "is not an ISO 8601 instant with a UTC offset"),
        ("day", "yesterday", None, "is not an ISO 8601 instant"),
        ("day", "2027-03-01T00:00:00+02:00", None, "did you mean “2027-02-28T00:00:00+01:00”"),
        ("hour", "2027-03-01T10:30:00+01:00", None, "did you mean “2027-03-01T10:00:00+01:00”"),
        ("week", "2027-03-02T00:00:00+01:00", None, "did you mean “2027-03-01T00:00:00+01:00”"),
        # A rolling key names the window's last day, not its first.
        ("rolling", "2027-03-01T00:00:01+01:00", 3, "did you mean “2027-03-01T00:00:00+01:00”"),
    ],
)
def test_bad_keys_are_refused_with_a_message(kind, key, days, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        window_from_key(kind=kind, key=key, zone=ZoneInfo("Europe/Paris"), days=days)


@pytest.mark.parametrize(
    ("kind", "days", "message"),
    [
        ("rolling", None, "A rolling period needs a number of days."),
        ("rolling", 0, "A rolling window is from 1 to 366 days."),
        ("rolling", 367, "A rolling window is from 1 to 366 days."),
        ("rolling", True, "A valid integer is required."),
        ("rolling", "7", "A valid integer is required."),
        ("day", 7, "Only a rolling period takes a number of days."),
        ("month", 1, "Only a rolling period takes a number of days."),
        ("fortnight", None, "“fortnight” is not a valid period. Expected one of: month, week"),
    ],
)
def test_window_days_go_with_rolling_only(kind, days, message):
    with pytest.raises(ValueError) as refused:
        window_containing(kind=kind, instant=timezone.now(), zone=ZoneInfo("UTC"), days=days)
    assert message in str(refused.value)


def test_messages_are_translated():
    with override("fr"), pytest.raises(ValueError) as refused:
        window_days_check("rolling", 400)
    assert str(refused.value) == "Une fenêtre glissante compte de 1 à 366 jours."


def test_naive_instants_are_refused():
    with pytest.raises(ValueError, match="no UTC offset"):
        window_containing(kind="day", instant=datetime(2027, 3, 28), zone=ZoneInfo("UTC"))


@pytest.mark.parametrize("kind", [k for k in PeriodKind.values if k != "rolling"])
def test_the_window_of_now_contains_now(kind):
    # given
    zone = ZoneInfo("Pacific/Kiritimati")
    now = timezone.now()

    # when
    found = window_containing(kind=kind, instant=now, zone=zone)

    # then
    assert found.contains(now)
    assert found.local_start <= now.astimezone(zone) < found.local_end


# Property tests: every zone of the system's database, any instant from 1900 to 2100.

ZONES = st.sampled_from(sorted(available_timezones())).map(ZoneInfo)
INSTANTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
TILING = st.sampled_from(["month", "week", "day", "hour", "minute"])


@settings(max_examples=400, deadline=None)
@given(kind=TILING, instant=INSTANTS, zone=ZONES)
def test_windows_tile_time_and_contain_their_instant(kind, instant, zone):
    # when
    found = window_containing(kind=kind, instant=instant, zone=zone)

    # then: not empty, contains the instant, and its neighbours meet it without gap or overlap
    assert found.start <= instant < found.end
    assert window_containing(kind=kind, instant=found.end, zone=zone).start == found.end
    assert window_containing(kind=kind, instant=found.start - TICK, zone=zone).end == found.start
    assert window_containing(kind=kind, instant=found.end - TICK, zone=zone) == found
    assert window_from_key(kind=kind, key=found.key, zone=zone) == found


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["hour", "minute"]), instant=INSTANTS, zone=ZONES)
def test_hours_and_minutes_are_read_on_one_offset_from_a_full_hour_or_minute(kind, instant, zone):
    found = window_containing(kind=kind, instant=instant, zone=zone)
    offset = found.local_start.utcoffset()
    length = timedelta(hours=1) if kind == "hour" else timedelta(minutes=1)
    assert (found.end - TICK).astimezone(zone).utcoffset() == offset
    assert found.duration <= length
    starts_on_the_clock = found.local_start.second == 0 and (
        kind == "minute" or found.local_start.minute == 0
    )
    offset_changed = (found.start - TICK).astimezone(zone).utcoffset() != offset
    assert starts_on_the_clock or offset_changed
    if not offset_changed and (found.end).astimezone(zone).utcoffset() == offset:
        assert found.duration == length


@settings(max_examples=150, deadline=None)
@given(
    pair=st.sampled_from([("month", "day"), ("week", "day"), ("day", "hour"), ("hour", "minute")]),
    instant=INSTANTS,
    zone=ZONES,
)
def test_smaller_windows_add_up_to_a_larger_one(pair, instant, zone):
    kind, part = pair
    found = window_containing(kind=kind, instant=instant, zone=zone)
    parts = list(cover(found, kind=part))
    assert parts[0].start == found.start and parts[-1].end == found.end
    assert all(a.end == b.start for a, b in pairwise(parts))
    assert all(p.kind == part for p in parts)


@settings(max_examples=300, deadline=None)
@given(days=st.integers(min_value=1, max_value=366), instant=INSTANTS, zone=ZONES)
def test_a_rolling_window_is_its_local_day_and_the_days_before(days, instant, zone):
    # when
    found = window_containing(kind="rolling", instant=instant, zone=zone, days=days)
    today = window_containing(kind="day", instant=instant, zone=zone)
    parts = list(cover(found, kind="day"))

    # then: it ends with today and holds the local days since today - (days - 1), no more
    assert found.contains(instant)
    assert parts[-1] == today and found.key == today.key
    first_date = today.local_start.date() - timedelta(days=days - 1)
    assert parts[0].local_start.date() >= first_date
    assert parts[0].previous().local_start.date() < first_date
    assert len(parts) <= days
    assert window_from_key(kind="rolling", key=found.key, zone=zone, days=days) == found


@settings(max_examples=300, deadline=None)
@given(instant=INSTANTS, zone=ZONES)
def test_month_windows_are_the_billing_periods(instant, zone):
    period = period_containing(instant, zone)
    found = window_containing(kind="month", instant=instant, zone=zone)
    assert found.key == period.code
    assert (found.start, found.end) == (period.start.astimezone(UTC), period.end.astimezone(UTC))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([*PeriodKind.values]),
    days=st.integers(min_value=1, max_value=30),
    instant=INSTANTS,
    steps=st.lists(st.integers(min_value=-3 * 86400, max_value=3 * 86400), max_size=6),
    zone=ZONES,
)
def test_the_remembered_current_window_is_the_one_containing_the_instant(
    kind, days, instant, steps, zone
):
    # given: the window remembered at one instant, then asked again at instants around it
    days = days if kind == PeriodKind.ROLLING else None
    for offset in [0, *steps]:
        moment = instant + timedelta(seconds=offset)
        # then: always the window computed afresh
        assert window_current(kind=kind, instant=moment, zone=zone, days=days) == (
            window_containing(kind=kind, instant=moment, zone=zone, days=days)
        )


def test_a_remembered_rolling_window_is_not_the_current_one_of_its_earlier_days():
    # given: a 7-day window remembered on 3 December in Paris
    zone = ZoneInfo("Europe/Paris")
    later = window_current(
        kind="rolling", instant=at("2026-12-03T09:00:00+01:00"), zone=zone, days=7
    )
    # when: asked on the evening before, an instant the remembered window also contains
    earlier = window_current(
        kind="rolling", instant=at("2026-12-02T22:00:00+01:00"), zone=zone, days=7
    )
    # then: the window of 2 December, one day earlier
    assert later.contains(at("2026-12-02T22:00:00+01:00"))
    assert (earlier.local_start_text, earlier.local_end_text) == (
        "2026-11-26T00:00:00+01:00",
        "2026-12-03T00:00:00+01:00",
    )
