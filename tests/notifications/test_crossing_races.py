"""Exactly one notification per crossing under real concurrency on PostgreSQL (SPEC 6).

Every test runs several rounds of threads released together by a barrier, each round on a
fresh account, and asserts the ledger of every round: one notification per level, one
delivery per recipient, no request failing. Reads of usage are slowed down a little
(``slow_usage_reads``), which widens the window between a writer's write and its read
so that the interleavings that lose or duplicate a crossing happen in every round when
the code lets them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

import backoffice.services
import notifications.services
from backoffice.services import limits_replace, usage_events_record
from notifications.models import Delivery, Notification
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from usage.periods import period_containing

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ROUNDS = 8
WAIT = 60.0
# Rounds of the lowered-threshold race, and how long its first reader waits for the other.
LOWERED_ROUNDS = 3
MEET = 2.0
# Whole-hour offsets around the globe; at any instant one of them is on day 2 or later of
# its month and more than an hour from the month's end (see ``zone_with_two_days``).
ZONES = ("Etc/GMT+12", "Etc/GMT+6", "UTC", "Etc/GMT-6", "Etc/GMT-12", "Pacific/Kiritimati")
RECIPIENTS = {
    "warning": [{"email": "pm@example.com", "language": "fr"}],
    "blocked": [{"email": "ops@example.com", "language": "en"}],
}


@pytest.fixture(autouse=True)
def slow_usage_reads(monkeypatch) -> None:
    """Every read of usage, by requests, sweeps and limit changes, waits 50 ms first."""
    read = backoffice.services.usage_for
    sweep_read = notifications.services.sweep_read

    def slow_read(**kwargs):
        time.sleep(0.05)
        return read(**kwargs)

    def slow_sweep_read(**kwargs):
        time.sleep(0.05)
        return sweep_read(**kwargs)

    monkeypatch.setattr(backoffice.services, "usage_for", slow_read)
    monkeypatch.setattr(notifications.services, "usage_for", slow_read)
    monkeypatch.setattr(notifications.services, "sweep_read", slow_sweep_read)
    # A single event on PostgreSQL reads its lines' usage before writing, in one statement.
    current = backoffice.services.account_lines_current

    def slow_current(**kwargs):
        time.sleep(0.05)
        return current(**kwargs)

    monkeypatch.setattr(backoffice.services, "account_lines_current", slow_current)


def zone_with_two_days(now: datetime) -> ZoneInfo:
    """A zone whose current month has a whole past day before today, and an hour left."""
    for name in ZONES:
        zone = ZoneInfo(name)
        period = period_containing(now, zone)
        if now.astimezone(zone).day >= 2 and period.end - now > timedelta(hours=1):
            return zone
    raise AssertionError(f"no zone in {ZONES} fits {now.isoformat()}")


def two_days(zone: ZoneInfo) -> tuple[str, str]:
    """``occurred_at`` on the first day of the current period, and now: two daily counters."""
    now = timezone.now()
    first_day = period_containing(now, zone).start + timedelta(hours=1)
    return first_day.isoformat(), now.isoformat()


def run_together(actions: list[Callable[[], None]]) -> list[str]:
    """Run every action in its own thread, released at once; returns the failures."""
    start = threading.Barrier(len(actions))
    failures: list[str] = []
    lock = threading.Lock()

    def run(action: Callable[[], None]) -> None:
        try:
            start.wait()
            action()
        except Exception as error:  # a deadlock, an IntegrityError or a 500 surfaces here
            with lock:
                failures.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting"
    return failures


def token_client(user) -> APIClient:
    _, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def poster(client: APIClient, account, event_id: str, quantity: int, occurred_at: str):
    def post() -> None:
        response = client.post(
            "/api/v1/usage/events/",
            {
                "event_id": event_id,
                "account": str(account.pk),
                "metric": "text_tokens",
                "quantity": quantity,
                "occurred_at": occurred_at,
            },
            format="json",
        )
        assert response.status_code == 201, response.content

    return post


def ledger(account) -> list[tuple[str, int, int]]:
    """``(level, threshold, deliveries)`` of every notification of ``account``."""
    return sorted(
        (n.level, n.threshold, Delivery.objects.filter(notification=n).count())
        for n in Notification.objects.filter(account=account, is_test=False)
    )


def test_threads_crossing_through_different_daily_counters_notify_once(service_user):
    # given: six requests of 20 tokens each on two days of the period, against 110 / 120
    zone = zone_with_two_days(timezone.now())
    client = token_client(service_user)
    accounts = []
    for round_number in range(ROUNDS):
        account = AccountFactory(timezone=zone.key)
        limits_replace(
            account=account,
            data={
                "limits": {"text_tokens": {"warning": 110, "blocked": 120}},
                "recipients": RECIPIENTS,
            },
        )
        days = two_days(zone)
        # when: no single request crosses; the last two make the sum reach both thresholds
        failures = run_together(
            [poster(client, account, f"r{round_number}-{i}", 20, days[i % 2]) for i in range(6)]
        )
        assert failures == []
        accounts.append(account)
    # then: each round recorded both crossings in the requests, none left to a sweep
    assert [ledger(account) for account in accounts] == [
        [("blocked", 120, 1), ("warning", 110, 1)]
    ] * ROUNDS


def test_concurrent_sweeps_and_requests_record_a_crossing_once(service_user):
    # given: usage already past both thresholds, set without evaluating (a crossing that
    # nothing recorded yet, as after a lost message)
    client = token_client(service_user)
    accounts = []
    for round_number in range(ROUNDS):
        account = AccountFactory(timezone="UTC")
        usage_events_record(
            payload={
                "event_id": f"base-{round_number}",
                "account": str(account.pk),
                "metric": "text_tokens",
                "quantity": 150,
            }
        )
        LimitFactory(account=account, metric="text_tokens", warning=60, blocked=100)
        RecipientFactory(account=account, level="warning", email="pm@example.com")
        RecipientFactory(account=account, level="blocked", email="ops@example.com")
        now = timezone.now().isoformat()

        def sweep(account=account) -> None:
            thresholds_evaluate(account_ids=[account.pk])

        # when: three sweeps and three requests all see the same crossings at once
        failures = run_together(
            [sweep, sweep, sweep]
            + [poster(client, account, f"r{round_number}-{i}", 1, now) for i in range(3)]
        )
        assert failures == []
        accounts.append(account)
    # then
    assert [ledger(account) for account in accounts] == [
        [("blocked", 100, 1), ("warning", 60, 1)]
    ] * ROUNDS


def test_a_threshold_lowered_while_usage_is_recorded_notifies_once(service_user, monkeypatch):
    # given: 400 of a 1000 cap used. The change of limits and the request each wait, right
    # after they read (the change the usage, the request its lines and their thresholds)
    # and before they write, for the other to have read too, at most MEET seconds: without
    # the usage lock both read what the other has not committed, and the crossing is lost;
    # with it, the first waits alone and commits before the other reads.
    client = token_client(service_user)
    meeting: dict[str, threading.Barrier] = {}
    arrived: list[str] = []

    def meet_after(read: Callable[..., object], name: str) -> Callable[..., object]:
        def read_then_wait(**kwargs):
            found = read(**kwargs)
            barrier = meeting.get("round")
            if barrier is not None and threading.current_thread().name != "MainThread":
                arrived.append(name)
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=MEET)
            return found

        return read_then_wait

    monkeypatch.setattr(
        notifications.services,
        "sweep_read",
        meet_after(notifications.services.sweep_read, "change"),
    )
    monkeypatch.setattr(
        backoffice.services,
        "account_lines_current",
        meet_after(backoffice.services.account_lines_current, "request"),
    )
    accounts = []
    for round_number in range(LOWERED_ROUNDS):
        account = AccountFactory(timezone="UTC")
        limits_replace(
            account=account,
            data={"limits": {"text_tokens": {"blocked": 1000}}, "recipients": RECIPIENTS},
        )
        usage_events_record(
            payload={
                "event_id": f"base-{round_number}",
                "account": str(account.pk),
                "metric": "text_tokens",
                "quantity": 400,
            }
        )
        now = timezone.now().isoformat()

        def lower(account=account) -> None:
            limits_replace(
                account=account,
                data={"limits": {"text_tokens": {"blocked": 500}}, "recipients": RECIPIENTS},
            )

        # when: the cap is lowered to 500 while a request adds 200
        meeting["round"] = threading.Barrier(2)
        failures = run_together([lower, poster(client, account, f"r{round_number}", 200, now)])
        del meeting["round"]
        assert failures == []
        accounts.append(account)
    # then: both reached their read in every round, and whichever read first, the crossing
    # of the new cap was seen, once
    assert sorted(arrived) == sorted(["change", "request"] * LOWERED_ROUNDS)
    assert [ledger(account) for account in accounts] == [[("blocked", 500, 1)]] * LOWERED_ROUNDS
