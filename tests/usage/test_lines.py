"""What each limit line has used in its current window (SPEC 11.2, 11.3), read from counters.

Events are recorded through the service, as in production; each test reads lines at a fixed
instant (``now``) at the edges of their windows in zones whose clocks jump or are not on
the hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from accounts.labels import labels_match
from accounts.windows import window_containing
from backoffice.services import usage_events_record
from tests.factories import AccountFactory
from tests.usage.factories import lines_saved
from usage.models import UsageCounter, UsageHourCounter
from usage.selectors import lines_used_milli

pytestmark = pytest.mark.django_db

TOKENS = "text_tokens"


@dataclass(frozen=True)
class Line:
    """A limit line as ``accounts.selectors.LimitLine`` holds it."""

    period: str
    labels: dict[str, str] = field(default_factory=dict)
    window_days: int | None = None
    metric: str = TOKENS
    warning: int | None = None
    blocked: int | None = None
    scoped_limit_id: int | None = None


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


_ids = iter(range(10**9))


def record(account, *events: tuple[str, int], labels: dict[str, str] | None = None) -> None:
    """Record events ``(occurred_at, tokens)``, each at its own instant."""
    for occurred_at, tokens in events:
        moment = utc(occurred_at)
        usage_events_record(
            payload={
                "event_id": f"e-{next(_ids)}",
                "account": str(account.pk),
                "metric": TOKENS,
                "quantity": tokens,
                "occurred_at": moment.isoformat(),
                "labels": labels,
            },
            now=moment,
        )


def used(account, now: str, *lines: Line) -> list[int]:
    """Whole tokens used by each line at ``now``."""
    return [milli // 1000 for milli in lines_used_milli(account=account, lines=lines, now=utc(now))]


HOUR, DAY, MINUTE = Line("hour"), Line("day"), Line("minute")
WEEK, MONTH = Line("week"), Line("month")


def test_paris_spring_forward_hour_day_and_minute():
    # given: 2027-03-28, the clock goes from 02:00 to 03:00 (01:00 UTC)
    account = AccountFactory(timezone="Europe/Paris")
    record(
        account,
        ("2027-03-27T23:59:59+01:00", 1),  # the day before
        ("2027-03-28T00:00:00+01:00", 10),
        ("2027-03-28T01:59:59+01:00", 100),  # the last instant before the jump
        ("2027-03-28T03:00:00+02:00", 1000),  # the first after it
    )
    # then: the hour from 03:00+02:00, the day of 23 hours, the minute from 03:00; a
    # window is read whole, whatever instant of it "now" is
    assert used(account, "2027-03-28T03:00:30+02:00", HOUR, DAY, MINUTE) == [1000, 1110, 1000]
    assert used(account, "2027-03-28T01:59:59.5+01:00", HOUR, DAY, MINUTE) == [100, 1110, 100]
    assert used(account, "2027-03-27T23:59:59.9+01:00", HOUR, DAY, MINUTE) == [1, 1, 1]


def test_paris_fall_back_the_repeated_hour_is_two_hours_and_the_day_25():
    # given: 2027-10-31, the clock goes from 03:00 back to 02:00 (01:00 UTC)
    account = AccountFactory(timezone="Europe/Paris")
    record(
        account,
        ("2027-10-30T23:59:59+02:00", 1),
        ("2027-10-31T00:00:00+02:00", 10),
        ("2027-10-31T02:30:00+02:00", 100),  # the first 02:30
        ("2027-10-31T02:30:00+01:00", 1000),  # the second 02:30
        ("2027-10-31T23:59:59+01:00", 10000),
    )
    # then
    assert used(account, "2027-10-31T02:59:59+02:00", HOUR, DAY) == [100, 11110]
    assert used(account, "2027-10-31T02:00:00+01:00", HOUR, DAY) == [1000, 11110]
    assert used(account, "2027-10-31T02:30:00+01:00", MINUTE) == [1000]
    assert used(account, "2027-10-31T23:59:59.5+01:00", HOUR, DAY, MINUTE) == [10000, 11110, 10000]
    assert used(account, "2027-11-01T00:00:00+01:00", HOUR, DAY, MINUTE) == [0, 0, 0]


def test_kathmandu_hours_start_at_a_quarter_past_in_utc():
    # given: +05:45
    account = AccountFactory(timezone="Asia/Kathmandu")
    record(
        account,
        ("2027-01-09T23:59:59+05:45", 1),
        ("2027-01-10T00:00:00+05:45", 10),
        ("2027-01-10T09:59:59+05:45", 100),
        ("2027-01-10T10:00:00+05:45", 1000),
    )
    # then
    assert used(account, "2027-01-10T04:20:00+00:00", HOUR, DAY) == [1000, 1110]
    assert used(account, "2027-01-10T04:14:59.5+00:00", HOUR, MINUTE) == [100, 100]
    assert used(account, "2027-01-09T18:14:59.5+00:00", DAY, HOUR) == [1, 1]


def test_st_johns_days_and_hours_start_at_half_past_in_utc():
    # given: -03:30 in winter, -02:30 in summer
    account = AccountFactory(timezone="America/St_Johns")
    record(
        account,
        ("2027-01-09T23:59:59-03:30", 1),
        ("2027-01-10T00:00:00-03:30", 10),
        ("2027-07-10T00:00:00-02:30", 100),
        ("2027-07-10T00:59:59-02:30", 1000),
    )
    # then
    assert used(account, "2027-01-10T03:30:00+00:00", DAY, HOUR) == [10, 10]
    assert used(account, "2027-01-10T03:29:59+00:00", DAY, HOUR) == [1, 1]
    assert used(account, "2027-07-10T03:15:00+00:00", DAY, HOUR, MONTH) == [1100, 1100, 1100]
    assert used(account, "2027-01-31T12:00:00+00:00", MONTH) == [11]


def test_weeks_start_on_monday_and_months_on_the_first_in_local_time():
    # given: Sunday 2027-03-28 and Monday 2027-03-29 in Paris; the end of March
    account = AccountFactory(timezone="Europe/Paris")
    record(
        account,
        ("2027-03-28T23:59:59+02:00", 1),
        ("2027-03-29T00:00:00+02:00", 10),
        ("2027-03-31T23:59:59+02:00", 100),
        ("2027-04-01T00:00:00+02:00", 1000),
    )
    # then
    assert used(account, "2027-03-28T23:59:59.5+02:00", WEEK, MONTH) == [1, 111]
    assert used(account, "2027-03-29T00:00:00+02:00", WEEK, MONTH) == [1110, 111]
    assert used(account, "2027-04-01T00:00:00+02:00", WEEK, MONTH) == [1110, 1000]


def test_a_rolling_window_slides_at_local_midnight():
    # given: one event on each of four local days in Paris, across the spring change
    account = AccountFactory(timezone="Europe/Paris")
    record(
        account,
        ("2027-03-26T00:00:00+01:00", 1),
        ("2027-03-27T12:00:00+01:00", 10),
        ("2027-03-28T12:00:00+02:00", 100),
        ("2027-03-29T00:00:00+02:00", 1000),
    )
    rolling = Line("rolling", window_days=3)
    year_long = Line("rolling", window_days=366)
    # then: the window is the local day and the 2 before it, whatever the hour
    assert used(account, "2027-03-28T23:59:59.9+02:00", rolling, year_long) == [111, 111]
    assert used(account, "2027-03-29T00:00:00+02:00", rolling, year_long) == [1110, 1111]
    assert used(account, "2027-03-28T00:00:00+01:00", rolling) == [111]
    assert used(account, "2027-03-27T23:59:59+01:00", rolling) == [11]


def test_lines_count_the_events_whose_labels_hold_every_pair_of_theirs():
    # given
    account = AccountFactory(timezone="Europe/Paris")
    record(account, ("2027-05-03T10:00:00+02:00", 1), labels={"model": "large", "vendor": "acme"})
    record(account, ("2027-05-03T10:00:10+02:00", 10), labels={"model": "small", "vendor": "acme"})
    record(account, ("2027-05-03T10:00:20+02:00", 100))
    lines = [
        {},
        {"model": "large"},
        {"vendor": "acme"},
        {"vendor": "acme", "model": "large"},
        {"model": "large", "vendor": "acme", "technology": "llm"},
        {"model": "medium"},
        {"technology": "llm"},
    ]
    expected = [111, 1, 11, 1, 0, 0, 0]
    shapes = [
        [Line(period, scope) for scope in lines]
        for period in ("month", "week", "day", "hour", "minute")
    ]
    shapes.append([Line("rolling", scope, window_days=7) for scope in lines])
    # when: the lines are saved after the events (their keys' counters filled from them)
    lines_saved(
        account, [line for shape in shapes for line in shape], utc("2027-05-03T10:00:30+02:00")
    )
    # then: the same for every kind of line, counters or events
    for shape in shapes:
        assert used(account, "2027-05-03T10:00:30+02:00", *shape) == expected, shape[0].period


def test_every_line_of_an_account_is_read_in_one_query(django_assert_num_queries):
    # given
    account = AccountFactory(timezone="Europe/Paris")
    lines = [
        MONTH,
        WEEK,
        DAY,
        HOUR,
        MINUTE,
        Line("rolling", window_days=30),
        Line("minute", {"model": "large"}),
        Line("day", {"model": "large"}),
        Line("hour", metric="audio_analyzed_seconds"),
    ]
    lines_saved(account, lines, utc("2027-05-03T10:00:00+02:00"))
    record(account, ("2027-05-03T10:00:00+02:00", 5), labels={"model": "large"})
    # when / then
    with django_assert_num_queries(1):
        figures = lines_used_milli(
            account=account, lines=lines, now=utc("2027-05-03T10:00:30+02:00")
        )
    assert figures == [5000] * 8 + [0]


def test_no_line_reads_nothing(django_assert_num_queries):
    account = AccountFactory()
    with django_assert_num_queries(0):
        assert (
            lines_used_milli(account=account, lines=[], now=utc("2027-05-03T10:00:30+02:00")) == []
        )


# --- Property: any events, any lines --------------------------------------------------------

NOW = utc("2027-10-31T02:30:00+01:00")  # in the repeated hour of Paris
# Few keys and values, so that lines and events often match, partly or wholly.
labels = st.dictionaries(
    st.sampled_from(["model", "vendor", "technology"]), st.sampled_from(["a", "b"]), max_size=3
)
events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=9 * 24 * 3600),  # seconds before NOW
        st.integers(min_value=1, max_value=10**6),  # tokens
        labels,
    ),
    min_size=1,
    max_size=30,
)
lines = st.lists(
    st.one_of(
        st.builds(
            Line,
            period=st.sampled_from(["month", "week", "day", "hour", "minute"]),
            labels=labels,
        ),
        st.builds(
            Line,
            period=st.just("rolling"),
            labels=labels,
            window_days=st.integers(min_value=1, max_value=8),
        ),
    ),
    min_size=1,
    max_size=8,
)
# Events land at most 9 days back, and often in the current hour and minute.
recent = st.sampled_from([0, 1, 29, 30, 59, 61, 1799, 1800, 3599, 3601, 7201])


class LinesProperty(TestCase):
    @settings(max_examples=40, deadline=None)
    @given(
        zone=st.sampled_from(["Europe/Paris", "Asia/Kathmandu", "America/St_Johns"]),
        events=events,
        near=st.lists(st.tuples(recent, st.integers(1, 1000), labels), max_size=10),
        lines=lines,
        shift=st.integers(min_value=-3600 * 30, max_value=3600 * 30),
    )
    def test_each_line_uses_the_sum_of_its_matching_events_in_its_window(
        self, zone, events, near, lines, shift
    ):
        now = NOW + timedelta(seconds=shift)
        account = AccountFactory(timezone=zone)
        recorded = [
            (now - timedelta(seconds=seconds), tokens, event_labels)
            for seconds, tokens, event_labels in [*events, *near]
        ]
        usage_events_record(
            payload={
                "events": [
                    {
                        "event_id": f"e{index}",
                        "account": str(account.pk),
                        "metric": TOKENS,
                        "quantity": tokens,
                        "occurred_at": moment.isoformat(),
                        "labels": event_labels,
                    }
                    for index, (moment, tokens, event_labels) in enumerate(recorded)
                ]
            },
            now=now,
        )
        # The lines saved after the events: their keys' counters are filled from them.
        lines_saved(account, lines, now)
        expected = []
        for line in lines:
            window = window_containing(
                kind=line.period, instant=now, zone=ZoneInfo(zone), days=line.window_days
            )
            expected.append(
                sum(
                    tokens * 1000
                    for moment, tokens, event_labels in recorded
                    if window.contains(moment)
                    and labels_match(line=line.labels, event=event_labels)
                )
            )
        assert lines_used_milli(account=account, lines=lines, now=now) == expected


def test_a_batch_over_a_thousand_hours_with_four_labels_is_counted_whole():
    # given: two lines scoped to labels, then 1000 events, each in its own hour, each with
    # four labels (16 subsets) that both lines' labels are part of
    account = AccountFactory(timezone="Europe/Paris")
    now = utc("2027-05-03T10:00:30+02:00")
    four = {"model": "large", "vendor": "acme", "operation": "chat", "technology": "llm"}
    lines = [Line("hour", {"vendor": "acme"}), Line("rolling", four, window_days=366)]
    lines_saved(account, lines, now)
    payload = {
        "events": [
            {
                "event_id": f"e{i}",
                "account": str(account.pk),
                "metric": TOKENS,
                "quantity": i + 1,
                "occurred_at": (now - timedelta(hours=i)).isoformat(),
                "labels": four,
            }
            for i in range(1000)
        ]
    }
    # when
    usage_events_record(payload=payload, now=now)
    # then: each event added to the whole metric and the two lines' keys, no other subset
    assert UsageHourCounter.objects.filter(account=account).count() == 3 * 1000
    assert set(UsageCounter.objects.filter(account=account).values_list("labels", flat=True)) == {
        "",
        "vendor=acme",
        "model=large;operation=chat;technology=llm;vendor=acme",
    }
    assert used(account, "2027-05-03T10:00:30+02:00", *lines) == [1, 1000 * 1001 // 2]
