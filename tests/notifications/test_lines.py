"""Notifications per limit line (SPEC 11.5): the line and its period in the ledger, the
rolling re-arm rule, one e-mail a day for hour and minute lines, and limit changes.

Usage is recorded through the service at fixed instants (``now``) around the DST changes
of Europe/Paris, as in production; e-mails go through the eager task after commit.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backoffice.services import (
    limits_replace,
    scoped_limit_set,
    usage_events_record,
)
from notifications.models import Delivery, Notification
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory
from tests.notifications.factories import usage_already_counted

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PARIS = ZoneInfo("Europe/Paris")
TOKENS = "text_tokens"
RECIPIENTS = {
    "warning": [{"email": "pm@example.com", "language": "en"}],
    "blocked": [{"email": "ops@example.com", "language": "fr"}],
}


@pytest.fixture(autouse=True)
def _anymail_test_backend(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"


def paris(text: str) -> datetime:
    """A wall-clock reading in Paris (``2027-03-28 10:00``, the first one where it repeats)."""
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


def account_with_line(*, period, warning=None, blocked=None, window_days=None, labels=None):
    account = AccountFactory(timezone="Europe/Paris", name="Acme", external_id="acme")
    limits_replace(
        account=account,
        data={
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {
                    "metric": TOKENS,
                    "period": period,
                    "window_days": window_days,
                    "labels": labels or {},
                    "warning": warning,
                    "blocked": blocked,
                }
            ],
        },
    )
    return account


def event_of(account, event_id, quantity, at: datetime, labels=None) -> dict:
    """An event of text tokens occurring at ``at``, as the API takes it."""
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": TOKENS,
        "quantity": quantity,
        "occurred_at": at.isoformat(),
        "labels": labels or {},
    }


def record(account, event_id, quantity, at: datetime, labels=None):
    """One event occurring at ``at``, received at that instant."""
    usage_events_record(
        payload=event_of(account, event_id, quantity, at, labels), now=at.astimezone(UTC)
    )


def ledger(account):
    """Each notification: kind, days, labels, level, period start (local), threshold,
    recorded only, number of deliveries."""
    return [
        (
            n.period_kind,
            n.window_days,
            n.labels_key,
            n.level,
            n.period_start.astimezone(PARIS).isoformat(),
            n.threshold,
            n.recorded_only,
            Delivery.objects.filter(notification=n).count(),
        )
        for n in Notification.objects.filter(account=account, is_test=False).order_by(
            "period_start", "level", "pk"
        )
    ]


# --- The line in the ledger, exactly once ---


def test_a_daily_line_notifies_once_per_day_for_the_events_it_counts():
    # given: 100 tokens a day on the large model
    account = account_with_line(period="day", warning=100, labels={"model": "large"})
    # when: small-model usage (not counted), then large-model usage reaching 100, then more
    record(account, "s", 500, paris("2027-03-27 09:00"), {"model": "small"})
    record(account, "a", 60, paris("2027-03-27 10:00"), {"model": "large", "vendor": "x"})
    record(account, "b", 40, paris("2027-03-27 11:00"), {"model": "large"})
    record(account, "c", 40, paris("2027-03-27 12:00"), {"model": "large"})
    # the next day, the 23-hour day of the spring change, reaches it again
    record(account, "d", 100, paris("2027-03-28 03:30"), {"model": "large"})
    # then
    assert ledger(account) == [
        ("day", None, "model=large", "warning", "2027-03-27T00:00:00+01:00", 100, False, 1),
        ("day", None, "model=large", "warning", "2027-03-28T00:00:00+01:00", 100, False, 1),
    ]
    assert [m.to for m in mail.outbox] == [["pm@example.com"], ["pm@example.com"]]
    # and the sweep finds nothing more to record
    assert thresholds_evaluate(now=paris("2027-03-28 04:00")) == []


def test_a_batch_past_both_thresholds_of_a_line_and_the_monthly_line_notifies_each():
    # given: a weekly line and the monthly line on the same metric
    account = AccountFactory(timezone="Europe/Paris")
    limits_replace(
        account=account,
        data={
            "limits": {TOKENS: {"warning": 150, "blocked": 300}},
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {
                    "metric": TOKENS,
                    "period": "week",
                    "window_days": None,
                    "labels": {},
                    "warning": 50,
                    "blocked": 100,
                }
            ],
        },
    )
    # when: one batch of 320 tokens, on Wednesday 31 March 2027
    at = paris("2027-03-31 10:00")
    usage_events_record(
        payload={
            "events": [
                {
                    "event_id": str(n),
                    "account": str(account.pk),
                    "metric": TOKENS,
                    "quantity": 80,
                    "occurred_at": at.isoformat(),
                }
                for n in range(4)
            ]
        },
        now=at.astimezone(UTC),
    )
    # then: the week starts on Monday 29 March, the month on the 1st (before the change)
    assert ledger(account) == [
        ("month", None, "", "blocked", "2027-03-01T00:00:00+01:00", 300, False, 1),
        ("month", None, "", "warning", "2027-03-01T00:00:00+01:00", 150, False, 1),
        ("week", None, "", "blocked", "2027-03-29T00:00:00+02:00", 100, False, 1),
        ("week", None, "", "warning", "2027-03-29T00:00:00+02:00", 50, False, 1),
    ]


# --- Rolling windows: the period start and the re-arm at local midnight ---


def test_a_rolling_line_re_arms_only_after_a_day_whose_window_ended_below():
    # given: a 2-day rolling window, warning at 100, across the spring change in Paris
    account = account_with_line(period="rolling", window_days=2, warning=100)
    # when: the window reaches 100 on Saturday 27 March
    record(account, "a", 100, paris("2027-03-27 10:00"))
    # Sunday (23 hours): 110, still above; Saturday's window ended at 100, not below
    record(account, "b", 10, paris("2027-03-28 10:00"))
    # Monday: the window slid at midnight to 10 (Sunday) + 5; then back to 105
    record(account, "c", 5, paris("2027-03-29 10:00"))
    record(account, "d", 90, paris("2027-03-29 20:00"))
    # then: one notification, for the run that started on Saturday
    assert ledger(account) == [
        ("rolling", 2, "", "warning", "2027-03-27T00:00:00+01:00", 100, False, 1)
    ]
    # when: Tuesday's window ends at 95 (Monday's 95 + nothing): below, so it re-arms
    assert thresholds_evaluate(now=paris("2027-03-30 23:59")) == []
    record(account, "e", 5, paris("2027-03-31 00:00"))  # 0 + 5: the window slid at midnight
    record(account, "f", 95, paris("2027-03-31 09:00"))
    # then: a second notification, its period starting at Wednesday's local midnight
    assert ledger(account) == [
        ("rolling", 2, "", "warning", "2027-03-27T00:00:00+01:00", 100, False, 1),
        ("rolling", 2, "", "warning", "2027-03-31T00:00:00+02:00", 100, False, 1),
    ]
    assert len(mail.outbox) == 2
    assert mail.outbox[1].extra_headers["X-Usage-Period"] == "2027-03-31T00:00:00+02:00"
    assert mail.outbox[1].extra_headers["X-Usage-Period-Kind"] == "rolling"
    assert "X-Usage-Labels" not in mail.outbox[1].extra_headers


def test_a_rolling_window_that_stays_above_sends_nothing_more_across_the_autumn_change():
    # given: a 3-day window at 100, reached on Friday 29 October 2027
    account = account_with_line(period="rolling", window_days=3, warning=100)
    record(account, "a", 100, paris("2027-10-29 22:00"))
    # when: every day's window ends at or above 100 through the 25-hour Sunday
    record(account, "b", 50, paris("2027-10-31 02:30"))  # the first 02:30 (summer time)
    record(account, "c", 60, paris("2027-11-01 12:00"))  # 0 + 50 + 60 = 110
    created = thresholds_evaluate(now=paris("2027-11-01 23:00"))
    # then
    assert created == []
    assert ledger(account) == [
        ("rolling", 3, "", "warning", "2027-10-29T00:00:00+02:00", 100, False, 1)
    ]


# --- Hour and minute lines: one e-mail a day and level ---


def test_an_hour_line_e_mails_once_a_day_and_records_the_later_crossings():
    # given: 10 tokens an hour
    account = account_with_line(period="hour", warning=10, blocked=20)
    # when: the warning is reached in three hours of the 23-hour Sunday, the blocked once
    record(account, "a", 10, paris("2027-03-28 01:10"))
    record(account, "b", 10, paris("2027-03-28 03:05"))  # the hour after the jump
    record(account, "c", 25, paris("2027-03-28 23:30"))  # warning and blocked
    # and on Monday again
    record(account, "d", 10, paris("2027-03-29 00:15"))
    # then: the first crossing of each level on each day is e-mailed, the others recorded
    assert ledger(account) == [
        ("hour", None, "", "warning", "2027-03-28T01:00:00+01:00", 10, False, 1),
        ("hour", None, "", "warning", "2027-03-28T03:00:00+02:00", 10, True, 0),
        ("hour", None, "", "blocked", "2027-03-28T23:00:00+02:00", 20, False, 1),
        ("hour", None, "", "warning", "2027-03-28T23:00:00+02:00", 10, True, 0),
        ("hour", None, "", "warning", "2027-03-29T00:00:00+02:00", 10, False, 1),
    ]
    assert [(m.to, m.extra_headers["X-Usage-Period"]) for m in mail.outbox] == [
        (["pm@example.com"], "2027-03-28T01:00:00+01:00"),
        (["ops@example.com"], "2027-03-28T23:00:00+02:00"),
        (["pm@example.com"], "2027-03-29T00:00:00+02:00"),
    ]


def test_a_minute_line_with_a_lowered_threshold_records_without_e_mailing_again():
    # given: a minute line reached once
    account = account_with_line(period="minute", warning=10)
    record(account, "a", 10, paris("2027-03-27 10:00:05"))
    # when: later the same day, the threshold is lowered (a new threshold) and reached
    record(account, "b", 6, paris("2027-03-27 18:30:00"))
    scoped_limit_set(account=account, metric=TOKENS, period="minute", warning=5)
    thresholds_evaluate(now=paris("2027-03-27 18:30:20"))
    # then: one e-mail that day; the lowered threshold's crossing is recorded only
    assert ledger(account) == [
        ("minute", None, "", "warning", "2027-03-27T10:00:00+01:00", 10, False, 1),
        ("minute", None, "", "warning", "2027-03-27T18:30:00+01:00", 5, True, 0),
    ]
    assert len(mail.outbox) == 1


# --- Changing limits evaluates the scoped lines ---


def test_setting_a_scoped_limit_already_passed_notifies_at_once():
    # given: usage already counted today, then a daily limit below it (set_limits --period)
    account = AccountFactory(timezone="Europe/Paris")
    limits_replace(account=account, data={"recipients": RECIPIENTS})
    usage_already_counted(account, 500)
    # when
    scoped_limit_set(account=account, metric=TOKENS, period="day", warning=400, blocked=450)
    # then
    today = timezone.now().astimezone(account.zone).date()
    assert sorted(
        Notification.objects.filter(account=account).values_list(
            "period_kind", "level", "period", "threshold"
        )
    ) == [("day", "blocked", today, 450), ("day", "warning", today, 400)]
    assert sorted(m.to[0] for m in mail.outbox) == ["ops@example.com", "pm@example.com"]


def test_the_sweep_records_a_scoped_crossing_nothing_recorded():
    # given: usage counted without its crossings (as if the request's evaluation was lost)
    account = account_with_line(period="week", warning=100)
    usage_already_counted(account, 150)
    # when
    created = thresholds_evaluate()
    # then
    assert [Notification.objects.get(pk=pk).period_kind for pk in created] == ["week"]
    assert thresholds_evaluate() == []


# --- The ledger row in words ---


def test_a_notification_names_its_line_in_words():
    account = account_with_line(period="day", warning=100, labels={"model": "large"})
    record(account, "a", 100, paris("2027-03-28 10:00"), {"model": "large"})
    notification = Notification.objects.get(account=account)
    assert str(notification) == (
        "Text tokens, warning at 100 tokens, day of 28 March 2027, Model: large"
    )


def test_a_notification_before_lines_keeps_its_monthly_meaning():
    # given: a row as the ledger held them (the month's first day, no line)
    account = AccountFactory(timezone="America/St_Johns")
    notification = Notification.objects.create(
        account=account,
        metric=TOKENS,
        level="blocked",
        period=date(2027, 3, 1),
        period_start=datetime(2027, 3, 1, tzinfo=account.zone),
        threshold=1000,
        used_milli=1_000_000,
    )
    assert notification.period_code == "2027-03"
    assert str(notification) == "Text tokens, blocked at 1,000 tokens, March 2027"
    assert notification.period_start == datetime(2027, 3, 1, 3, 30, tzinfo=UTC) + timedelta(0)


def test_a_limits_patch_adding_a_passed_rolling_line_notifies_at_once(manager_client):
    # given: usage already counted today
    account = AccountFactory(timezone="Asia/Kathmandu")
    limits_replace(account=account, data={"recipients": RECIPIENTS})
    usage_already_counted(account, 500)
    # when: the API adds a 7-day rolling line already passed, for every label
    response = manager_client.patch(
        f"/api/v1/accounts/{account.pk}/limits/",
        {
            "scoped_limits": [
                {
                    "metric": TOKENS,
                    "period": "rolling",
                    "window_days": 7,
                    "labels": {},
                    "warning": None,
                    "blocked": 300,
                }
            ]
        },
        format="json",
    )
    # then: the period starts at today's local midnight, the blocked recipient is told
    assert response.status_code == 200, response.content
    local_today = timezone.now().astimezone(account.zone).date()
    assert list(
        Notification.objects.filter(account=account).values_list(
            "period_kind", "window_days", "level", "period", "threshold"
        )
    ) == [("rolling", 7, "blocked", local_today, 300)]
    assert [m.to for m in mail.outbox] == [["ops@example.com"]]
    assert mail.outbox[0].extra_headers["X-Usage-Period"] == (
        datetime.combine(local_today, datetime.min.time(), tzinfo=account.zone).isoformat()
    )


@pytest.mark.parametrize("period", ["minute", "hour", "day", "month", "week"])
def test_a_batch_reaching_a_line_exactly_with_all_of_its_month_notifies_it(period):
    # given: a line of 100 tokens, labelled, and nothing used yet this month
    account = account_with_line(period=period, warning=100, labels={"model": "large"})
    at = paris("2027-03-17 10:00")

    # when: a batch whose labelled events make the whole month's usage, exactly 100
    events = [
        {"event_id": f"e{i}", "account": str(account.pk), "metric": TOKENS, "quantity": 25}
        | {"occurred_at": at.isoformat(), "labels": {"model": "large"}}
        for i in range(4)
    ]
    usage_events_record(payload={"events": events}, now=at.astimezone(UTC))

    # then: the line, at its threshold exactly (the month's whole usage), is recorded once
    assert [
        (kind, level, threshold) for kind, _d, _l, level, _s, threshold, *_ in ledger(account)
    ] == [(period, "warning", 100)]


def test_a_line_far_from_the_months_usage_is_not_read_when_a_batch_is_recorded():
    # given: two day lines of large-model usage, one far above what the month has used, the
    # other below it (the month's usage is of the small model)
    at = paris("2027-03-17 10:00")
    far = account_with_line(period="day", warning=10**9, labels={"model": "large"})
    near = AccountFactory(timezone="Europe/Paris")
    limits_replace(
        account=near,
        data={
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {"metric": TOKENS, "period": "day", "window_days": None}
                | {"labels": {"model": "large"}, "warning": 100, "blocked": None}
            ],
        },
    )
    for account in (far, near):
        record(account, "warm-up", 200, at, {"model": "small"})

    # when: the same event recorded for each, in a batch (a single event on PostgreSQL reads
    # all of its account's lines in the one statement that reads the account)
    counts = []
    for account in (far, near):
        event = event_of(account, "e", 5, at, {"model": "large"})
        with CaptureQueriesContext(connection) as captured:
            usage_events_record(payload={"events": [event]}, now=at.astimezone(UTC))
        counts.append(len(captured.captured_queries))

    # then: the far line's figures are not read, one query fewer; neither line is reached
    assert counts[0] == counts[1] - 1
    assert ledger(far) == ledger(near) == []
