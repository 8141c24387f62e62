"""Dates and times for people: in the account's time zone, named, "1er" in French."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from django.utils.translation import override

from config.dates import date_text, datetime_text, day_text, month_text
from notifications.lines import period_text


@pytest.mark.parametrize(
    ("instant", "zone", "english", "french"),
    [
        # 23:30 UTC on 30 November is already 1 December in Paris.
        (
            datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
            "Europe/Paris",
            "Dec. 1, 2026, 12:30 a.m. (Europe/Paris)",
            "1er décembre 2026 00:30 (Europe/Paris)",
        ),
        (
            datetime(2026, 12, 11, 9, 0, tzinfo=UTC),
            "America/New_York",
            "Dec. 11, 2026, 4 a.m. (America/New_York)",
            "11 décembre 2026 04:00 (America/New_York)",
        ),
        (None, "UTC", "—", "—"),
    ],
)
def test_instants_are_written_in_the_zone_named(instant, zone, english, french):
    with override("en"):
        assert datetime_text(instant, zone) == english
    with override("fr"):
        assert datetime_text(instant, zone) == french


def test_the_first_of_a_month_is_1er_in_french_only_on_the_first():
    with override("fr"):
        assert date_text(date(2027, 1, 1)) == "1er janvier 2027"
        assert date_text(date(2027, 1, 11)) == "11 janvier 2027"
        assert date_text(date(2027, 1, 21)) == "21 janvier 2027"
        assert month_text(date(2027, 1, 1)) == "janvier 2027"
    with override("en"):
        assert date_text(date(2027, 1, 1)) == "Jan. 1, 2027"
        assert month_text(date(2027, 1, 1)) == "January 2027"


def test_a_day_written_out_names_its_month_whole_and_the_first_as_1er():
    with override("fr"):
        assert day_text(date(2027, 3, 1)) == "1er mars 2027"
        assert day_text(date(2027, 3, 21)) == "21 mars 2027"
    with override("en"):
        assert day_text(date(2027, 3, 1)) == "1 March 2027"


def test_a_notice_names_a_period_starting_on_the_first_of_a_month_with_1er():
    # given: a week line whose week starts on Monday 1 March 2027 in Paris
    start = datetime(2027, 2, 28, 23, 0, tzinfo=UTC)
    zone = ZoneInfo("Europe/Paris")
    # when
    with override("fr"):
        french = period_text(
            kind="week", window_days=None, day=date(2027, 3, 1), start=start, zone=zone
        )
    with override("en"):
        english = period_text(
            kind="week", window_days=None, day=date(2027, 3, 1), start=start, zone=zone
        )
    # then
    assert french == "semaine du 1er mars 2027"
    assert english == "week of 1 March 2027"
