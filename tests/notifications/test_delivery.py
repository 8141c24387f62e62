"""Sending a delivery exactly once, whatever races the worker (SPEC section 6).

A delivery is sent under a lease: the claim records a token, a heartbeat renews it while the
provider is called, and only the holder of the token may record the outcome. Tracking
events that arrive before the outcome is recorded wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection, transaction
from django.template import TemplateSyntaxError
from django.test import Client, override_settings
from django.utils import timezone

from notifications.models import Delivery, EarlyTrackingEvent
from notifications.services import (
    _delivery_record_sent,
    deliveries_recover,
    delivery_track,
    early_tracking_events_purge,
    notification_deliver,
)
from notifications.tasks import deliver_notification, sweep_notifications
from tests.notifications.backends import SlowBackend, TrackedBeforeReturningBackend
from tests.notifications.factories import DeliveryFactory
from tests.notifications.test_webhook import POSTMARK, SECRET, bounced, delivered, post_event

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _anymail(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET}


def post_tracking(event: dict):
    """The provider's webhook, as Postmark posts it (its URL is served for Postmark only)."""
    with override_settings(EMAIL_BACKEND=POSTMARK):
        return post_event(Client(), event)


def queued_delivery(**fields) -> Delivery:
    return DeliveryFactory(
        status=Delivery.Status.QUEUED, attempts=0, esp_message_id="", sent_at=None, **fields
    )


@pytest.fixture
def tracked_before_returning(settings):
    """The provider's webhook reaches the back-office before the worker records the send."""
    settings.EMAIL_BACKEND = "tests.notifications.backends.TrackedBeforeReturningBackend"
    mail.EmailMessage("warm-up", "", to=["someone@example.com"]).send()  # ids start at 1
    yield TrackedBeforeReturningBackend
    TrackedBeforeReturningBackend.ON_ACCEPTED = None


# --- Tracking events racing the "sent" update ---


def test_a_delivered_event_arriving_before_the_send_is_recorded_marks_it_delivered(
    tracked_before_returning,
):
    # given: the provider's "delivered" webhook arrives before send() returns
    delivery = queued_delivery(email="pm@example.com")
    answers = []
    tracked_before_returning.ON_ACCEPTED = lambda message_id: answers.append(
        post_tracking(delivered(message_id, "pm@example.com")).status_code
    )
    # when
    outcome = notification_deliver(notification_id=delivery.notification_id)
    # then
    assert answers == [200]
    assert (outcome.sent, outcome.failed, outcome.retry) == (1, 0, 0)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.esp_message_id, delivery.attempts) == ("delivered", "1", 1)
    assert delivery.sent_at is not None
    assert [m.to for m in mail.outbox[1:]] == [["pm@example.com"]]


def test_early_events_apply_in_the_order_of_the_status_machine(tracked_before_returning):
    # given: a bounce, then a late "delivered", both before the send is recorded
    delivery = queued_delivery(email="pm@example.com")

    def provider_webhooks(message_id: str) -> None:
        post_tracking(bounced(message_id, "pm@example.com"))
        post_tracking(delivered(message_id, "pm@example.com"))

    tracked_before_returning.ON_ACCEPTED = provider_webhooks
    # when
    notification_deliver(notification_id=delivery.notification_id)
    # then: the bounce stands, with its reason, as it would had both come after
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.BOUNCED
    assert delivery.last_error == (
        "The server was unable to deliver your message (ex: unknown user, mailbox not found)."
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_event_arriving_while_the_send_is_being_recorded_waits_for_it_and_applies():
    # given: a worker is recording its send (its transaction not yet committed)
    token = uuid.uuid4()
    delivery = DeliveryFactory(
        status=Delivery.Status.SENDING, esp_message_id="", lease_token=token, attempts=1
    )
    answered = threading.Event()

    def webhook() -> None:
        try:
            delivery_track(esp_message_id="pm-42", event_type="delivered", description="")
            answered.set()
        finally:
            connection.close()

    webhook_thread = threading.Thread(target=webhook)
    with transaction.atomic():
        assert _delivery_record_sent(delivery_id=delivery.pk, token=token, esp_message_id="pm-42")
        # when: the provider's "delivered" comes in meanwhile
        webhook_thread.start()
        answered.wait(timeout=1.0)  # it waits for the recording to commit
    webhook_thread.join(timeout=30)
    # then
    assert answered.is_set()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.esp_message_id) == ("delivered", "pm-42")
    assert not EarlyTrackingEvent.objects.exists()


def test_an_event_of_a_message_no_delivery_claims_is_kept_a_day_then_purged():
    # given
    DeliveryFactory(status=Delivery.Status.SENT, esp_message_id="ours")
    delivery_track(esp_message_id="not-ours", event_type="bounced", description="no mailbox")
    [kept] = EarlyTrackingEvent.objects.all()
    assert (kept.esp_message_id, kept.event_type, kept.description) == (
        "not-ours",
        "bounced",
        "no mailbox",
    )
    # when / then: the sweep keeps it a day, then deletes it
    assert early_tracking_events_purge(now=kept.received_at + timedelta(hours=23)) == 0
    assert early_tracking_events_purge(now=kept.received_at + timedelta(hours=25)) == 1
    assert not EarlyTrackingEvent.objects.exists()


# --- A lease, not a timer ---


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_send_slower_than_the_stuck_delay_goes_out_once_while_recovery_runs(settings):
    # given: the stuck delay is 1 s and the provider takes 2.5 s to accept a message
    settings.NOTIFICATIONS_STUCK_AFTER = 1.0
    settings.EMAIL_BACKEND = "tests.notifications.backends.SlowBackend"
    SlowBackend.DELAY = 2.5
    delivery = queued_delivery(email="pm@example.com")
    sending = threading.Thread(
        target=lambda: (
            deliver_notification.apply(args=[delivery.notification_id]),
            connection.close(),
        )
    )
    recovered: list[int] = []
    # when: a worker sends it while another runs the sweep's recovery and the task again
    sending.start()
    try:
        deadline = time.monotonic() + 10
        while not Delivery.objects.filter(status="sending").exists():
            assert time.monotonic() < deadline, "the first worker never claimed the delivery"
            time.sleep(0.05)
        while sending.is_alive():
            recovered += deliveries_recover()
            deliver_notification.apply(args=[delivery.notification_id])
            time.sleep(0.2)
    finally:
        sending.join(timeout=30)
    # then: the slow send kept its lease; one message went out
    assert recovered == []
    assert [m.to for m in mail.outbox] == [["pm@example.com"]]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)


def test_a_second_task_of_the_notification_while_the_first_sends_sends_each_message_once(
    tracked_before_returning,
):
    # given: two recipients; while the first task is at the provider with the first
    # message, a second task of the same notification runs (a redelivered or duplicated
    # task) and sends the second recipient's message
    first = queued_delivery(email="pm@example.com")
    second = queued_delivery(notification=first.notification, email="ops@example.com")

    def duplicate_task_meanwhile(message_id: str) -> None:
        tracked_before_returning.ON_ACCEPTED = None
        notification_deliver(notification_id=first.notification_id)

    tracked_before_returning.ON_ACCEPTED = duplicate_task_meanwhile
    # when: the first task goes on to the second delivery, which it read as queued
    outcome = notification_deliver(notification_id=first.notification_id)
    # then: its claim finds the delivery no longer queued and leaves it alone
    assert (outcome.sent, outcome.failed, outcome.retry) == (1, 0, 0)
    assert sorted(m.to[0] for m in mail.outbox[1:]) == ["ops@example.com", "pm@example.com"]
    for delivery in (first, second):
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("sent", 1)


def test_recovery_takes_over_only_a_lease_that_expired(settings):
    settings.NOTIFICATIONS_STUCK_AFTER = 600
    claimed_at = timezone.now() - timedelta(minutes=5)
    live = DeliveryFactory(status=Delivery.Status.SENDING, attempts=1, claimed_at=claimed_at)

    assert deliveries_recover(now=claimed_at + timedelta(seconds=599)) == []
    live.refresh_from_db()
    assert live.status == Delivery.Status.SENDING

    deliveries_recover(now=claimed_at + timedelta(seconds=601))
    live.refresh_from_db()
    assert live.status != Delivery.Status.SENDING


def test_a_worker_that_lost_its_lease_does_not_overwrite_the_new_owner(
    settings, tracked_before_returning
):
    # given: while the first worker waits for the provider, its lease expires, recovery
    # hands the delivery to a second worker, which sends it and records its message id
    settings.NOTIFICATIONS_STUCK_AFTER = 600
    delivery = queued_delivery(email="pm@example.com")

    def lease_lost_meanwhile(message_id: str) -> None:
        tracked_before_returning.ON_ACCEPTED = None
        deliveries_recover(now=timezone.now() + timedelta(seconds=601))
        notification_deliver(notification_id=delivery.notification_id)

    tracked_before_returning.ON_ACCEPTED = lease_lost_meanwhile
    # when
    outcome = notification_deliver(notification_id=delivery.notification_id)
    # then: the first worker's late answer does not replace the second's record
    assert outcome.sent == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert delivery.esp_message_id == "2"  # the second worker's message: the last one sent
    assert [m.to for m in mail.outbox[1:]] == [["pm@example.com"], ["pm@example.com"]]


# --- Provider errors and programming errors ---


@pytest.fixture
def template_bug(monkeypatch):
    def broken(*args, **kwargs):
        raise TemplateSyntaxError("Invalid block tag on line 3: 'endfi'.")

    monkeypatch.setattr("notifications.emails.render_to_string", broken)


def test_a_programming_error_is_logged_with_its_traceback_leaves_the_delivery_queued_and_raises(
    template_bug, caplog
):
    delivery = queued_delivery(email="pm@example.com")

    with (
        caplog.at_level(logging.ERROR, logger="notifications.services"),
        pytest.raises(TemplateSyntaxError),
    ):
        notification_deliver(notification_id=delivery.notification_id)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("queued", 1)
    assert delivery.last_error == (
        "TemplateSyntaxError: Invalid block tag on line 3: 'endfi'. (attempt 1 of 8)"
    )
    [record] = [r for r in caplog.records if r.name == "notifications.services"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is TemplateSyntaxError
    assert mail.outbox == []


def test_the_task_of_a_programming_error_fails(template_bug):
    delivery = queued_delivery()

    result = deliver_notification.apply(args=[delivery.notification_id])

    assert result.failed()
    assert isinstance(result.result, TemplateSyntaxError)


def test_a_programming_error_retried_by_the_sweep_fails_after_the_last_attempt(
    settings, template_bug
):
    # given: two attempts at most, and the sweep re-enqueues at once
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 2
    settings.NOTIFICATIONS_LOST_AFTER = 0
    settings.NOTIFICATIONS_MAX_RETRY_DELAY = 0
    delivery = queued_delivery()
    # when
    deliver_notification.apply(args=[delivery.notification_id])
    assert deliveries_recover(now=timezone.now() + timedelta(seconds=1)) == [
        delivery.notification_id
    ]
    # then
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert delivery.last_error == (
        "Gave up after 2 attempts: TemplateSyntaxError: Invalid block tag on line 3: 'endfi'."
    )
    assert mail.outbox == []


# --- Nothing stuck: what a dead worker left "sending" ---


# These tests leave a row as a dead worker leaves it; the real death (a worker and its pool
# get SIGKILL while the provider stalls, on Redis and PostgreSQL) is in
# tests/integration/test_worker.py.


def abandoned(settings, attempts: int = 1) -> Delivery:
    """A delivery whose worker died while sending it: its lease expired a second ago.

    Its notification was handed to the broker (that is how a worker got it), so only the
    recovery of the expired lease can enqueue it again.
    """
    claimed_at = timezone.now() - timedelta(seconds=settings.NOTIFICATIONS_STUCK_AFTER + 1)
    return DeliveryFactory(
        notification__published_at=claimed_at,
        status=Delivery.Status.SENDING,
        attempts=attempts,
        claimed_at=claimed_at,
        lease_token=uuid.uuid4(),
        esp_message_id="",
        sent_at=None,
        email="pm@example.com",
    )


def test_a_delivery_left_sending_by_a_dead_worker_is_sent_again_by_the_next_sweep(settings):
    # given
    delivery = abandoned(settings)
    # when
    sweep_notifications()
    # then: enqueued again at once, not only put back to queued
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 2, "")
    assert [m.to for m in mail.outbox] == [["pm@example.com"]]


def test_a_delivery_whose_workers_keep_dying_fails_after_the_last_attempt(settings):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 3
    delivery = abandoned(settings, attempts=3)

    assert deliveries_recover() == []

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.last_error == (
        "Gave up after 3 attempts: its worker stopped before recording whether the provider "
        "accepted it."
    )
    assert mail.outbox == []
