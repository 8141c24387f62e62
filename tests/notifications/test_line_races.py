"""Exactly one notification per line, level, period and threshold under real concurrency on
PostgreSQL (SPEC 11.5), with the monthly and a daily line crossed at once.

As in ``test_crossing_races``: rounds of threads released together by a barrier, reads of
usage slowed down a little so that the interleavings that duplicate a crossing happen when
the code lets them, and sweeps (which take no usage lock) racing with the requests.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

import backoffice.services
import notifications.services
from accounts.models import ScopedLimit
from backoffice.services import limits_replace, usage_events_record
from notifications.models import Delivery, Notification
from notifications.services import thresholds_evaluate
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.notifications.test_crossing_races import RECIPIENTS, poster, run_together, token_client
from tests.notifications.test_lines import event_of

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ROUNDS = 6


@pytest.fixture(autouse=True)
def slow_usage_reads(monkeypatch) -> None:
    """Every read of the monthly lines and of the scoped lines waits 50 ms first: the
    requests' (``usage_for``, ``accounts_scoped_lines_usage``) and the sweeps'
    (``sweep_read``, every line at once)."""
    usage_for = backoffice.services.usage_for
    lines_usage = notifications.services.accounts_scoped_lines_usage
    sweep_read = notifications.services.sweep_read

    def slow_usage_for(**kwargs):
        time.sleep(0.05)
        return usage_for(**kwargs)

    def slow_lines_usage(**kwargs):
        time.sleep(0.05)
        return lines_usage(**kwargs)

    def slow_sweep_read(**kwargs):
        time.sleep(0.05)
        return sweep_read(**kwargs)

    monkeypatch.setattr(backoffice.services, "usage_for", slow_usage_for)
    monkeypatch.setattr(notifications.services, "usage_for", slow_usage_for)
    monkeypatch.setattr(notifications.services, "accounts_scoped_lines_usage", slow_lines_usage)
    monkeypatch.setattr(notifications.services, "sweep_read", slow_sweep_read)
    # A single event on PostgreSQL reads its lines' usage before writing, in one statement.
    current = backoffice.services.account_lines_current

    def slow_current(**kwargs):
        time.sleep(0.05)
        return current(**kwargs)

    monkeypatch.setattr(backoffice.services, "account_lines_current", slow_current)


def account_with_monthly_and_daily_lines():
    """Monthly 110 / 120 and daily 55 / 60 on text tokens, a recipient per level."""
    account = AccountFactory(timezone="Europe/Paris")
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 110, "blocked": 120}},
            "recipients": RECIPIENTS,
            "scoped_limits": [
                {
                    "metric": "text_tokens",
                    "period": "day",
                    "window_days": None,
                    "labels": {},
                    "warning": 55,
                    "blocked": 60,
                }
            ],
        },
    )
    return account


def ledger(account) -> list[tuple[str, str, int, int]]:
    """``(period kind, level, threshold, deliveries)`` of every notification of ``account``."""
    return sorted(
        (n.period_kind, n.level, n.threshold, Delivery.objects.filter(notification=n).count())
        for n in Notification.objects.filter(account=account, is_test=False)
    )


BOTH_LINES = [
    ("day", "blocked", 60, 1),
    ("day", "warning", 55, 1),
    ("month", "blocked", 120, 1),
    ("month", "warning", 110, 1),
]


def test_concurrent_requests_crossing_a_daily_and_the_monthly_line_notify_once_each(
    service_user,
):
    # given
    client = token_client(service_user)
    accounts = []
    for round_number in range(ROUNDS):
        account = account_with_monthly_and_daily_lines()
        now = timezone.now().isoformat()
        # when: six requests of 20 tokens at once: 120, both levels of both lines
        failures = run_together(
            [poster(client, account, f"r{round_number}-{i}", 20, now) for i in range(6)]
        )
        assert failures == []
        accounts.append(account)
    # then: one notification per line and level, one delivery per recipient
    assert [ledger(account) for account in accounts] == [BOTH_LINES] * ROUNDS


def test_concurrent_sweeps_and_requests_record_a_line_crossing_once(service_user):
    # given: usage already past both levels of a daily and the monthly line, with limits
    # stored without evaluating them (crossings nothing recorded yet, as after a lost one)
    client = token_client(service_user)
    accounts = []
    for round_number in range(ROUNDS):
        account = AccountFactory(timezone="Europe/Paris")
        usage_events_record(
            payload={
                "event_id": f"base-{round_number}",
                "account": str(account.pk),
                "metric": "text_tokens",
                "quantity": 150,
            }
        )
        LimitFactory(account=account, metric="text_tokens", warning=110, blocked=120)
        ScopedLimit.objects.create(
            account=account, metric="text_tokens", period="day", warning=55, blocked=60
        )
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
    assert [ledger(account) for account in accounts] == [BOTH_LINES] * ROUNDS


def test_concurrent_requests_on_different_accounts_notify_once_each(service_user):
    # given: three accounts, each with a monthly and a daily line
    client = token_client(service_user)
    accounts = [account_with_monthly_and_daily_lines() for _ in range(3)]
    now = timezone.now().isoformat()
    # when: four requests of 30 tokens per account, all at once
    failures = run_together(
        [
            poster(client, account, f"{index}-{i}", 30, now)
            for index, account in enumerate(accounts)
            for i in range(4)
        ]
    )
    # then
    assert failures == []
    assert [ledger(account) for account in accounts] == [BOTH_LINES] * 3


def test_a_batch_records_the_crossing_of_a_scoped_limit_added_just_before_it_locks(monkeypatch):
    # given: an account with no scoped limit, 50 tokens used today
    account = AccountFactory(timezone="Europe/Paris")
    document = {
        "limits": {"text_tokens": {"warning": 1000, "blocked": None}},
        "recipients": RECIPIENTS,
    }
    limits_replace(account=account, data=document)
    now = timezone.now()
    usage_events_record(payload={"events": [event_of(account, "base", 50, now)]}, now=now)
    # and: a change that adds a daily line with a warning at 60, committed by another
    # connection after the batch below was read and before it takes its locks
    real_lock = backoffice.services.usage_lock

    def change_then_lock(**kwargs):
        def change():
            try:
                limits_replace(
                    account=account,
                    data=document
                    | {
                        "scoped_limits": [
                            {
                                "metric": "text_tokens",
                                "period": "day",
                                "window_days": None,
                                "labels": {},
                                "warning": 60,
                                "blocked": None,
                            }
                        ]
                    },
                )
            finally:
                connection.close()

        worker = threading.Thread(target=change)
        worker.start()
        worker.join()
        monkeypatch.setattr(backoffice.services, "usage_lock", real_lock)
        return real_lock(**kwargs)

    monkeypatch.setattr(backoffice.services, "usage_lock", change_then_lock)

    # when: the batch of 20 tokens takes the day to 70
    usage_events_record(payload={"events": [event_of(account, "batch", 20, now)]}, now=now)

    # then: the batch itself recorded the new line's crossing (no sweep ran), once
    assert ledger(account) == [("day", "warning", 60, 1)]
