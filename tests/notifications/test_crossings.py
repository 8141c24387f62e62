"""Crossing a threshold creates one notification and one e-mail per recipient (SPEC 6)."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import DatabaseError
from django.utils import timezone

import notifications.services
from backoffice.services import limits_patch, limits_replace, usage_events_record
from notifications.models import Delivery, Notification
from notifications.services import deliveries_recover, thresholds_evaluate
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.notifications.backends import FlakyBackend
from usage.models import Extension, UsageCounter, UsageEvent
from usage.periods import period_containing
from usage.selectors import account_usage

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

WARNING_TO = {"email": "pm@example.com", "language": "fr"}
BLOCKED_TO = {"email": "ops@example.com", "language": "en"}


@pytest.fixture(autouse=True)
def _anymail_test_backend(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def limited_account(warning=80, blocked=100, metric="text_tokens", recipients=None, **fields):
    account = AccountFactory(**fields)
    limits_replace(
        account=account,
        data={
            "limits": {metric: {"warning": warning, "blocked": blocked}},
            "recipients": recipients
            if recipients is not None
            else {"warning": [WARNING_TO], "blocked": [BLOCKED_TO]},
        },
    )
    return account


def record(account, event_id, quantity, metric="text_tokens", now=None, occurred_at=None):
    usage_events_record(
        payload={
            "event_id": event_id,
            "account": str(account.pk),
            "metric": metric,
            "quantity": quantity,
            **({"occurred_at": occurred_at} if occurred_at else {}),
        },
        now=now,
    )


def ledger(account):
    return sorted(
        Notification.objects.filter(account=account).values_list("level", "threshold", "period")
    )


def test_an_exact_hit_notifies_once_each_recipient():
    account = limited_account()
    record(account, "a", 79)
    assert not Notification.objects.exists()
    record(account, "b", 1)  # exactly 80
    assert [(level, threshold) for level, threshold, _ in ledger(account)] == [("warning", 80)]
    assert [m.to for m in mail.outbox] == [["pm@example.com"]]
    record(account, "c", 5)
    record(account, "d", 5)
    assert len(ledger(account)) == 1
    assert len(mail.outbox) == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.language) == ("sent", 1, "fr")
    assert delivery.esp_message_id


def test_seconds_reach_a_threshold_on_the_exact_thousandth_and_not_one_before():
    # given
    account = limited_account(warning=80, blocked=100, metric="audio_transcribed_seconds")

    def seconds(event_id, quantity):
        usage_events_record(
            payload={
                "event_id": event_id,
                "account": str(account.pk),
                "metric": "audio_transcribed_seconds",
                "quantity": Decimal(quantity),
            }
        )
        return account_usage(account=account)[0]

    # when / then: one thousandth below a threshold is below it, in the status and the ledger
    assert seconds("a", "79.999").status == "ok"
    assert ledger(account) == []
    # the exact value reaches it
    assert seconds("b", "0.001").status == "warning"
    assert [(level, threshold) for level, threshold, _ in ledger(account)] == [("warning", 80)]
    assert seconds("c", "19.999").status == "warning"
    assert len(ledger(account)) == 1
    assert seconds("d", "0.001").status == "blocked"
    assert [(level, threshold) for level, threshold, _ in ledger(account)] == [
        ("blocked", 100),
        ("warning", 80),
    ]
    assert list(Notification.objects.order_by("pk").values_list("used_milli", flat=True)) == [
        80_000,
        100_000,
    ]


def test_one_batch_past_both_thresholds_creates_both_notifications():
    account = limited_account()
    usage_events_record(
        payload={
            "events": [
                {
                    "event_id": f"e{i}",
                    "account": str(account.pk),
                    "metric": "text_tokens",
                    "quantity": 60,
                }
                for i in range(2)
            ]
        }
    )
    assert [(level, threshold) for level, threshold, _ in ledger(account)] == [
        ("blocked", 100),
        ("warning", 80),
    ]
    sent = sorted((m.to[0], m.extra_headers["X-Usage-Level"]) for m in mail.outbox)
    assert sent == [("ops@example.com", "blocked"), ("pm@example.com", "warning")]


def test_a_lowered_threshold_already_passed_notifies_when_saved():
    account = limited_account(warning=None, blocked=1000)
    record(account, "a", 500)
    assert not Notification.objects.exists()
    limits_patch(account=account, data={"limits": {"text_tokens": {"warning": 400}}})
    assert [(level, threshold) for level, threshold, _ in ledger(account)] == [("warning", 400)]
    assert len(mail.outbox) == 1


def test_a_raised_threshold_re_arms():
    account = limited_account(warning=10, blocked=None, recipients={"warning": [WARNING_TO]})
    record(account, "a", 10)
    limits_patch(account=account, data={"limits": {"text_tokens": {"warning": 20}}})
    record(account, "b", 5)
    assert [t for _, t, _ in ledger(account)] == [10]
    record(account, "c", 5)
    assert [t for _, t, _ in ledger(account)] == [10, 20]
    assert len(mail.outbox) == 2


def test_each_period_starts_afresh_and_late_events_do_not_email():
    account = limited_account(timezone="UTC")
    october = datetime.fromisoformat("2026-10-31T12:00:00+00:00")
    november = datetime.fromisoformat("2026-11-03T12:00:00+00:00")
    record(account, "oct", 85, now=october, occurred_at=october.isoformat())
    assert [(lv, str(p)) for lv, _, p in ledger(account)] == [("warning", "2026-10-01")]
    # a late event for October, recorded in November, counts there but e-mails nobody
    record(account, "late", 20, now=november, occurred_at=october.isoformat())
    assert len(ledger(account)) == 1
    record(account, "nov", 85, now=november, occurred_at=november.isoformat())
    assert [(lv, str(p)) for lv, _, p in ledger(account)] == [
        ("warning", "2026-10-01"),
        ("warning", "2026-11-01"),
    ]
    assert len(mail.outbox) == 2


def test_a_blocked_threshold_without_recipients_is_recorded_and_sends_nothing():
    account = limited_account(warning=None, blocked=10, recipients={})
    record(account, "a", 10)
    notification = Notification.objects.get()
    assert (notification.level, notification.threshold) == ("blocked", 10)
    assert not notification.deliveries.exists()
    assert mail.outbox == []


def test_the_blocked_notification_uses_the_effective_threshold():
    account = limited_account(warning=None, blocked=100)
    period = period_containing(timezone.now(), account.zone)
    Extension.objects.create(
        account=account, metric="text_tokens", period=period.first_day, amount=50, reason="deal"
    )
    record(account, "a", 120)
    assert not Notification.objects.exists()
    record(account, "b", 30)
    assert [(lv, t) for lv, t, _ in ledger(account)] == [("blocked", 150)]


def test_the_sweep_finds_crossings_no_task_recorded_and_never_twice():
    account = limited_account()
    record(account, "a", 90)
    Notification.objects.all().delete()  # as if the recording had been lost
    mail.outbox.clear()
    assert len(thresholds_evaluate()) == 1
    assert thresholds_evaluate() == []
    assert len(mail.outbox) == 1


def test_the_sweep_hands_over_at_once_a_notification_the_broker_never_took(settings):
    # given: a crossing whose task never reached the broker, recorded a moment ago
    settings.NOTIFICATIONS_LOST_AFTER = 3600
    account = limited_account(warning=80, blocked=None, recipients={"warning": [WARNING_TO]})
    record(account, "a", 90)
    Notification.objects.update(published_at=None)
    Delivery.objects.update(status=Delivery.Status.QUEUED)
    mail.outbox.clear()
    # when
    deliveries_recover()
    # then: sent now, without waiting for NOTIFICATIONS_LOST_AFTER, and handed over once
    assert [message.to for message in mail.outbox] == [[WARNING_TO["email"]]]
    assert not Notification.objects.filter(published_at__isnull=True).exists()
    deliveries_recover()
    assert len(mail.outbox) == 1


def test_a_provider_failing_twice_then_succeeding_sends_one_message_after_three_attempts(
    settings,
):
    settings.EMAIL_BACKEND = "tests.notifications.backends.FlakyBackend"
    settings.NOTIFICATIONS_RETRY_BASE_DELAY = 0
    FlakyBackend.calls, FlakyBackend.FAILURES, FlakyBackend.STATUS = 0, 2, 503
    account = limited_account(warning=10, blocked=None, recipients={"warning": [WARNING_TO]})
    record(account, "a", 10)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len(mail.outbox) == 1


def test_a_permanent_provider_error_fails_at_once_and_is_visible(settings):
    settings.EMAIL_BACKEND = "tests.notifications.backends.FlakyBackend"
    FlakyBackend.calls, FlakyBackend.FAILURES, FlakyBackend.STATUS = 0, 1, 400
    account = limited_account(warning=10, blocked=None, recipients={"warning": [WARNING_TO]})
    record(account, "a", 10)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "provider unavailable" in delivery.last_error
    assert mail.outbox == []


def test_a_crossing_is_recorded_with_its_usage_or_not_at_all(monkeypatch):
    # given: the ledger cannot be written
    account = limited_account(warning=None, blocked=10)

    def unavailable(*args, **kwargs):
        raise DatabaseError("ledger unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(notifications.services, "_insert_notifications", unavailable)
        # when
        with pytest.raises(DatabaseError):
            record(account, "a", 12)
    # then: the usage was refused with its crossing, so the client's retry records both
    assert not UsageEvent.objects.exists()
    assert not UsageCounter.objects.exists()
    record(account, "a", 12)
    period = period_containing(timezone.now(), account.zone).first_day
    assert ledger(account) == [("blocked", 10, period)]
    assert [message.to for message in mail.outbox] == [[BLOCKED_TO["email"]]]


def test_the_sweep_repairs_a_crossing_of_the_period_that_just_closed_never_a_late_one(
    settings,
):
    # given: in the period that just closed, one account passed 100 before the end and
    # another only with a late event; the cap was set without evaluating (a lost crossing)
    settings.NOTIFICATIONS_CLOSED_PERIOD_GRACE = 3600
    reached, late = AccountFactory(timezone="UTC"), AccountFactory(timezone="UTC")
    closed = period_containing(timezone.now(), reached.zone).previous
    before_end = closed.end - timedelta(minutes=1)
    occurred = (closed.start + timedelta(hours=1)).isoformat()
    record(reached, "a", 120, now=before_end, occurred_at=occurred)
    record(late, "a", 80, now=before_end, occurred_at=occurred)
    record(late, "late", 40, now=closed.end + timedelta(minutes=1), occurred_at=occurred)
    for account in (reached, late):
        LimitFactory(account=account, metric="text_tokens", warning=None, blocked=100)
        RecipientFactory(account=account, level="blocked", email=BLOCKED_TO["email"])
    # when / then: past the grace, nothing
    assert thresholds_evaluate(now=closed.end + timedelta(hours=2)) == []
    # within it, the crossing reached before the end, with the usage it had then, once
    created = thresholds_evaluate(now=closed.end + timedelta(minutes=10))
    assert [
        (n.account_id, n.level, n.threshold, n.period, n.used_milli)
        for n in Notification.objects.filter(pk__in=created).order_by("pk")
    ] == [
        (reached.pk, "blocked", 100, closed.first_day, 120_000),
        # the line ended its period blocked and the next one has begun (SPEC 12.2)
        (reached.pk, "restored", 100, closed.first_day, 0),
    ]
    assert thresholds_evaluate(now=closed.end + timedelta(minutes=20)) == []
    assert [(message.to, message.extra_headers["X-Usage-Level"]) for message in mail.outbox] == [
        ([BLOCKED_TO["email"]], "blocked"),
        ([BLOCKED_TO["email"]], "restored"),
    ]


def test_an_smtp_server_refusing_connections_is_retried_then_failed_not_taken_for_a_bug(
    settings,
):
    # given: SMTP to a port where nothing listens
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    settings.NOTIFICATIONS_RETRY_BASE_DELAY = 0
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 3
    account = limited_account(warning=10, blocked=None, recipients={"warning": [WARNING_TO]})
    # when
    record(account, "a", 10)
    # then
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "refused" in delivery.last_error.lower()
