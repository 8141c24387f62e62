"""What a single event and a reservation cost in statements, and that the single event's
shortcuts answer and notify exactly as a read after it would (SPEC sections 5, 6, 10, 12).

On PostgreSQL a single event takes the usage lock, then reads the account with the lines it
counts on, their usage and the label keys counted (one statement once the process knows the
account's lines), then writes the event with its label set, counters and settlement (one);
a crossing adds its own statements. A reservation takes the lock, reads the lines with the
reservation id looked for (one statement), then inserts (one). Counted here without the
savepoints that the test's own transaction adds around each ``atomic`` block (production
runs them as the outermost transaction: no savepoint).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from backoffice.services import limits_replace
from notifications.models import Notification
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory
from tests.usage.test_read_queries import credentials

pytestmark = pytest.mark.django_db

# Wednesday 2 December 2026, 15:30:20 in Paris (UTC+01:00).
NOW = datetime(2026, 12, 2, 14, 30, 20, tzinfo=UTC)
EVENTS_URL = "/api/v1/usage/events/"

LIMITS = {
    "limits": {"text_tokens": {"warning": 100, "blocked": 200}},
    "recipients": {
        "warning": [{"email": "pm@example.com", "language": "en"}],
        "blocked": [{"email": "ops@example.com", "language": "fr"}],
    },
    "scoped_limits": [
        {"metric": "text_tokens", "period": "day", "window_days": None,
         "labels": {"model": "large"}, "warning": 30, "blocked": 50},
        {"metric": "text_tokens", "period": "rolling", "window_days": 7,
         "labels": {}, "warning": None, "blocked": 150},
        {"metric": "text_tokens", "period": "hour", "window_days": None,
         "labels": {"vendor": "acme"}, "warning": None, "blocked": 40},
        {"metric": "text_tokens", "period": "minute", "window_days": None,
         "labels": {}, "warning": None, "blocked": 60},
        {"metric": "audio_transcribed_seconds", "period": "week", "window_days": None,
         "labels": {}, "warning": None, "blocked": 3600},
    ],
}  # fmt: skip


@pytest.fixture
def account():
    account = AccountFactory(timezone="Europe/Paris")
    with time_machine.travel(NOW, tick=False):
        limits_replace(account=account, data=LIMITS)
    return account


def statements(request) -> list[str]:
    """The statements of ``request()`` beyond the credentials', savepoints left out."""
    with CaptureQueriesContext(connection) as captured:
        response = request()
    assert response.status_code in (200, 201), response.content
    return [
        query["sql"]
        for query in captured.captured_queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))
    ]


def event(account, event_id: str, quantity: int, labels=None, occurred_at: datetime = NOW):
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": "text_tokens",
        "quantity": quantity,
        "labels": labels or {},
        "occurred_at": occurred_at.isoformat(),
    }


def test_a_single_event_and_a_reservation_cost_their_statements(account, service_client):
    # given: the process has read the account's lines once, the credentials' cost measured
    url = f"/api/v1/accounts/{account.pk}/usage/reservations/"
    with time_machine.travel(NOW, tick=False):
        service_client.get(f"/api/v1/accounts/{account.pk}/capacities/")
        base = credentials(service_client)
        # when
        new = statements(
            lambda: service_client.post(
                EVENTS_URL, event(account, "new", 3, {"model": "large"}), format="json"
            )
        )
        again = statements(
            lambda: service_client.post(
                EVENTS_URL, event(account, "new", 3, {"model": "large"}), format="json"
            )
        )
        crossing = statements(
            lambda: service_client.post(
                EVENTS_URL, event(account, "crossing", 30, {"model": "large"}), format="json"
            )
        )
        past = statements(
            lambda: service_client.post(
                EVENTS_URL, event(account, "past", 1, {"model": "large"}), format="json"
            )
        )
        body = {"reservation_id": "job-1", "metric": "text_tokens", "quantity": 5}
        reserved = statements(lambda: service_client.post(url, body, format="json"))
        replayed = statements(lambda: service_client.post(url, body, format="json"))
    counts = [len(found) - base for found in (new, again, crossing, past, reserved, replayed)]
    # then
    if connection.vendor == "postgresql":
        # lock, read, write; the crossing of the day line's warning adds the notification,
        # its recipients and delivery and the webhooks' (five); a line past its threshold
        # already looks for nothing more; reservations: lock, read, insert (a replay reads
        # the reservation it answers instead of inserting)
        assert counts == [3, 3, 8, 3, 3, 3], (crossing, reserved)
    else:
        # SQLite records one event as it records a batch, and looks for crossings on every
        # line past a threshold; the database lock is the usage lock
        assert counts == [10, 5, 14, 10, 2, 2], (crossing, reserved)


def test_the_first_event_of_an_account_in_a_process_reads_its_lines_first(account, service_client):
    # given: this process has not read the account's lines
    from usage.selectors import _remembered

    with time_machine.travel(NOW, tick=False):
        base = credentials(service_client)
        _remembered.clear()
        # when
        first = statements(
            lambda: service_client.post(EVENTS_URL, event(account, "a", 1), format="json")
        )
        second = statements(
            lambda: service_client.post(EVENTS_URL, event(account, "b", 1), format="json")
        )
    # then: the account with its lines, then their usage; then both in one statement
    if connection.vendor == "postgresql":
        assert (len(first) - base, len(second) - base) == (4, 3)


# (event id, quantity, labels, occurred_at): late events, other hours, minutes and days
SEQUENCE = [
    ("a", 20, {"model": "large"}, NOW),
    ("b", 15, {"model": "large", "vendor": "acme"}, NOW - timedelta(minutes=31)),
    ("c", 25, {"vendor": "acme"}, NOW - timedelta(seconds=19)),
    ("d", 10, {"vendor": "acme"}, NOW - timedelta(days=1)),
    ("e", 30, {"model": "small"}, NOW - timedelta(days=8)),
    ("f", 35, {}, NOW - timedelta(seconds=20)),
    ("a", 20, {"model": "large"}, NOW),  # a duplicate
    ("g", 40, {"model": "large"}, NOW - timedelta(hours=2)),
    ("h", 15, {"vendor": "acme"}, NOW),
    ("i", 60, {}, NOW),
]


def test_each_event_answers_the_usage_read_after_it_and_records_every_crossing_it_makes(
    account, service_client
):
    answers, reads, missed = [], [], []
    with time_machine.travel(NOW, tick=False):
        for event_id, quantity, labels, occurred_at in SEQUENCE:
            # when
            response = service_client.post(
                EVENTS_URL, event(account, event_id, quantity, labels, occurred_at), format="json"
            )
            assert response.status_code in (200, 201), response.content
            answers.append(response.json()["usage"])
            # then: the usage a read finds after it, and nothing a sweep would add
            usage = service_client.get(f"/api/v1/accounts/{account.pk}/usage/").json()
            (tokens,) = [m for m in usage["metrics"] if m["metric"] == "text_tokens"]
            reads.append(
                [
                    {
                        "account": str(account.pk),
                        "metric": "text_tokens",
                        "used": tokens["used"],
                        "status": tokens["status"],
                        "remaining": tokens["remaining"],
                        "is_within_budget": tokens["is_within_budget"],
                    }
                ]
            )
            missed.append(thresholds_evaluate(account_ids=[account.pk], now=NOW))
    assert answers == reads
    assert missed == [[]] * len(SEQUENCE)
    assert sorted(
        Notification.objects.filter(account=account).values_list(
            "period_kind", "labels_key", "level", "threshold"
        )
    ) == [
        ("day", "model=large", "blocked", 50),
        ("day", "model=large", "warning", 30),
        ("hour", "vendor=acme", "blocked", 40),
        ("minute", "", "blocked", 60),
        ("month", "", "blocked", 200),
        ("month", "", "warning", 100),
        ("rolling", "", "blocked", 150),
    ]


def test_an_event_ahead_of_its_time_crosses_when_its_minute_comes(account, service_client):
    # given: at 15:30:20, an event for 15:33:10 takes that minute's line past its cap (60)
    ahead = NOW + timedelta(minutes=2, seconds=50)
    with time_machine.travel(NOW, tick=False):
        response = service_client.post(
            EVENTS_URL, event(account, "ahead", 61, occurred_at=ahead), format="json"
        )
        assert response.status_code == 201, response.content
    assert not Notification.objects.filter(account=account, period_kind="minute").exists()
    # when: in that minute, an event of 1 token
    with time_machine.travel(ahead, tick=False):
        response = service_client.post(
            EVENTS_URL, event(account, "then", 1, occurred_at=ahead), format="json"
        )
        assert response.status_code == 201, response.content
    # then: the minute's crossing is recorded, once
    assert list(
        Notification.objects.filter(account=account, period_kind="minute").values_list(
            "level", "threshold", "used_milli"
        )
    ) == [("blocked", 60, 62000)]
