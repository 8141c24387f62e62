"""Periods are calendar months in the account's time zone, daylight saving included."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from backoffice.services import usage_events_record
from tests.factories import AccountFactory
from usage.models import UsageCounter
from usage.periods import period_containing, period_from_code

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("zone", "code", "start", "end"),
    [
        # Paris goes to summer time on 2026-03-29 and back on 2026-10-25.
        ("Europe/Paris", "2026-03", "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00"),
        ("Europe/Paris", "2026-10", "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00"),
        # Los Angeles: 2026-03-08 and 2026-11-01 (the change is on the period's first day).
        (
            "America/Los_Angeles",
            "2026-11",
            "2026-11-01T00:00:00-07:00",
            "2026-12-01T00:00:00-08:00",
        ),
        # Auckland is in summer time from September to April (southern hemisphere).
        ("Pacific/Auckland", "2026-04", "2026-04-01T00:00:00+13:00", "2026-05-01T00:00:00+12:00"),
        ("Pacific/Auckland", "2026-12", "2026-12-01T00:00:00+13:00", "2027-01-01T00:00:00+13:00"),
    ],
)
def test_period_bounds_follow_the_local_calendar(zone, code, start, end):
    period = period_from_code(code, ZoneInfo(zone))
    assert period.start.isoformat() == start
    assert period.end.isoformat() == end


@pytest.mark.parametrize(
    ("moment", "zone", "code"),
    [
        ("2026-10-31T23:30:00+00:00", "Europe/Paris", "2026-11"),  # 00:30 in Paris
        ("2026-10-31T22:59:59+00:00", "Europe/Paris", "2026-10"),
        ("2026-11-01T06:59:59+00:00", "America/Los_Angeles", "2026-10"),
        ("2026-11-01T07:00:00+00:00", "America/Los_Angeles", "2026-11"),
        ("2026-03-31T11:00:00+00:00", "Pacific/Auckland", "2026-04"),  # 00:00 NZDT
        ("2026-03-31T10:59:59+00:00", "Pacific/Auckland", "2026-03"),
    ],
)
def test_a_moment_counts_in_the_period_that_contains_it_locally(moment, zone, code):
    assert period_containing(datetime.fromisoformat(moment), ZoneInfo(zone)).code == code


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-01", "", "2026-00", "2026-01-01"])
def test_period_codes_are_strict(bad):
    with pytest.raises(ValueError):
        period_from_code(bad, PARIS)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("zone", "occurred", "day"),
    [
        ("Europe/Paris", "2026-03-29T01:30:00+00:00", date(2026, 3, 29)),  # 03:30 CEST
        ("Europe/Paris", "2026-03-28T23:30:00+00:00", date(2026, 3, 29)),  # 00:30 CET
        ("Europe/Paris", "2026-10-25T00:30:00+00:00", date(2026, 10, 25)),  # 02:30 CEST
        ("Europe/Paris", "2026-10-25T01:30:00+00:00", date(2026, 10, 25)),  # 02:30 CET again
        ("America/Los_Angeles", "2026-03-08T07:59:00+00:00", date(2026, 3, 7)),
        ("Pacific/Auckland", "2026-09-26T12:30:00+00:00", date(2026, 9, 27)),
    ],
)
def test_events_count_on_their_local_day(zone, occurred, day):
    account = AccountFactory(timezone=zone)
    usage_events_record(
        payload={
            "event_id": "e",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": 7,
            "occurred_at": occurred,
        }
    )
    assert list(UsageCounter.objects.values_list("day", "quantity_milli")) == [(day, 7000)]
