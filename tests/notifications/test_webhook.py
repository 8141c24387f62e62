"""Anymail's tracking webhook updates delivery statuses (SPEC section 6), through Postmark's URL.

Only the configured provider's tracking URL is served, and only with a webhook secret: an
unauthenticated event could otherwise mark any delivery bounced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from django.core import mail
from django.core.checks import run_checks

from accounts.models import Level
from notifications.models import Delivery, EarlyTrackingEvent
from notifications.services import delivery_track, notification_send_test
from tests.factories import AccountFactory
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

URL = "/anymail/postmark/tracking/"
SECRET = "anymail-user:s3cret-pass"


POSTMARK = "anymail.backends.postmark.EmailBackend"


@pytest.fixture(autouse=True)
def _anymail(settings) -> None:
    settings.EMAIL_BACKEND = POSTMARK
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token", "WEBHOOK_SECRET": SECRET}


def post_event(client, event: dict, secret: str | None = SECRET, url: str = URL):
    headers = {}
    if secret is not None:
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(secret.encode()).decode()
    return client.post(url, data=json.dumps(event), content_type="application/json", **headers)


def delivered(message_id: str, email: str) -> dict:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": message_id,
        "Recipient": email,
        "Tag": "usage-limits",
        "DeliveredAt": "2025-06-12T09:30:00Z",
        "Details": "Test delivery webhook details",
        "Metadata": {},
    }


def bounced(message_id: str, email: str) -> dict:
    return {
        "RecordType": "Bounce",
        "ID": 42,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "MessageID": message_id,
        "ServerID": 23,
        "MessageStream": "outbound",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "usage-limits@example.com",
        "BouncedAt": "2025-06-12T09:31:00Z",
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Warning",
        "Metadata": {},
    }


def complained(message_id: str, email: str) -> dict:
    return {**bounced(message_id, email), "RecordType": "SpamComplaint", "Type": "SpamComplaint"}


def opened(message_id: str, email: str) -> dict:
    return {
        "RecordType": "Open",
        "MessageID": message_id,
        "Recipient": email,
        "ReceivedAt": "2025-06-12T09:32:00Z",
        "Metadata": {},
    }


def test_delivered_event_marks_the_sent_delivery_delivered(client):
    # given
    delivery = DeliveryFactory(status=Delivery.Status.SENT)
    # when
    response = post_event(client, delivered(delivery.esp_message_id, delivery.email))
    # then
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    assert delivery.last_error == ""


def test_bounce_event_marks_the_delivery_bounced_with_the_reason_as_last_error(client):
    delivery = DeliveryFactory(status=Delivery.Status.DELIVERED)

    response = post_event(client, bounced(delivery.esp_message_id, delivery.email))

    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.BOUNCED
    assert delivery.last_error == (
        "The server was unable to deliver your message (ex: unknown user, mailbox not found)."
    )


def test_complaint_event_marks_the_delivery_complained(client):
    delivery = DeliveryFactory(status=Delivery.Status.DELIVERED)

    post_event(client, complained(delivery.esp_message_id, delivery.email))

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.COMPLAINED


@pytest.mark.parametrize("secret", ["anymail-user:wrong", None])
def test_webhook_with_a_wrong_or_missing_secret_is_refused_and_changes_nothing(client, secret):
    # given
    delivery = DeliveryFactory(status=Delivery.Status.SENT)
    # when
    response = post_event(client, bounced(delivery.esp_message_id, delivery.email), secret=secret)
    # then: Anymail refuses credentials that do not match as a suspicious request
    assert response.status_code == 400
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.last_error == ""


@pytest.mark.parametrize("anymail", [{}, {"WEBHOOK_SECRET": ""}])
def test_without_a_webhook_secret_a_forged_event_is_not_found_and_changes_nothing(
    client, settings, anymail
):
    # given: no secret, so nothing could tell the provider from anyone else
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token", **anymail}
    delivery = DeliveryFactory(status=Delivery.Status.SENT)
    # when
    response = post_event(client, bounced(delivery.esp_message_id, delivery.email), secret=None)
    # then
    assert response.status_code == 404
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.last_error == ""


@pytest.mark.parametrize(
    "url",
    [
        "/anymail/mailgun/tracking/",
        "/anymail/sendgrid/tracking/",
        "/anymail/mandrill/",
        "/anymail/mandrill/tracking/",
        "/anymail/amazon_ses/tracking/",
        "/anymail/postmark/inbound/",
        "/anymail/test/tracking/",
    ],
)
def test_other_providers_urls_are_not_served_even_with_the_secret(client, url):
    delivery = DeliveryFactory(status=Delivery.Status.SENT)

    response = post_event(client, bounced(delivery.esp_message_id, delivery.email), url=url)

    assert response.status_code == 404
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.mail.backends.console.EmailBackend",
        "django.core.mail.backends.smtp.EmailBackend",
        "anymail.backends.test.EmailBackend",
    ],
)
def test_a_backend_without_tracking_serves_no_tracking_url(client, settings, backend):
    settings.EMAIL_BACKEND = backend
    delivery = DeliveryFactory(status=Delivery.Status.SENT)

    response = post_event(client, bounced(delivery.esp_message_id, delivery.email))

    assert response.status_code == 404
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT


def test_the_configured_providers_url_is_served_for_that_provider(client, settings):
    # given: Mailgun, authenticated by the same basic-auth secret and its own signature
    settings.EMAIL_BACKEND = "anymail.backends.mailgun.EmailBackend"
    settings.ANYMAIL = {"MAILGUN_API_KEY": "key", "WEBHOOK_SECRET": SECRET}
    delivery = DeliveryFactory(
        status=Delivery.Status.SENT, esp_message_id="<20250612093000.1@mg.example.com>"
    )
    timestamp, token = "1749720600", "a-random-token"
    signature = hmac.new(b"key", f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    event = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": "delivered",
            "timestamp": 1749720600.0,
            "id": "event-1",
            "recipient": delivery.email,
            "message": {"headers": {"message-id": delivery.esp_message_id}},
        },
    }
    # when
    postmark = post_event(client, delivered(delivery.esp_message_id, delivery.email))
    mailgun = post_event(client, event, url="/anymail/mailgun/tracking/")
    # then
    assert (postmark.status_code, mailgun.status_code) == (404, 200)
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED


def _deploy_warnings() -> list[str]:
    return [
        f"{m.id}: {m.msg}"
        for m in run_checks(include_deployment_checks=True)
        if m.id == "notifications.W001"
    ]


def test_deploy_check_warns_of_an_anymail_provider_without_webhook_secret(settings):
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token"}

    assert _deploy_warnings() == [
        "notifications.W001: EMAIL_BACKEND is Anymail's postmark backend but "
        "ANYMAIL_WEBHOOK_SECRET is not set: its tracking webhook is not served, so delivery "
        "statuses stay at sent."
    ]


@pytest.mark.parametrize(
    ("backend", "anymail"),
    [
        (POSTMARK, {"WEBHOOK_SECRET": SECRET}),
        ("django.core.mail.backends.console.EmailBackend", {}),
        ("django.core.mail.backends.smtp.EmailBackend", {}),
    ],
)
def test_deploy_check_is_silent_with_a_secret_or_without_anymail(settings, backend, anymail):
    settings.EMAIL_BACKEND = backend
    settings.ANYMAIL = anymail

    assert _deploy_warnings() == []


def test_the_check_is_a_deployment_check_only(settings):
    settings.ANYMAIL = {}

    assert [m.id for m in run_checks() if m.id == "notifications.W001"] == []


def test_late_delivered_event_does_not_hide_a_bounce(client):
    delivery = DeliveryFactory(status=Delivery.Status.SENT)

    post_event(client, bounced(delivery.esp_message_id, delivery.email))
    response = post_event(client, delivered(delivery.esp_message_id, delivery.email))

    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.BOUNCED


def test_open_event_and_unknown_message_id_are_accepted_and_change_no_delivery(client):
    delivery = DeliveryFactory(status=Delivery.Status.SENT)

    opened_response = post_event(client, opened(delivery.esp_message_id, delivery.email))
    unknown_response = post_event(client, delivered("no-such-message", delivery.email))

    assert opened_response.status_code == unknown_response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    # the unknown one waits (a day at most) for a delivery to record that message id
    assert list(EarlyTrackingEvent.objects.values_list("esp_message_id", "event_type")) == [
        ("no-such-message", "delivered")
    ]


def test_message_sent_through_the_real_path_is_tracked_by_its_esp_message_id(
    client, settings, django_capture_on_commit_callbacks
):
    # given: Anymail's test backend numbers messages from 0 (its index in the outbox), and
    # the service stores a falsy id as "": one message goes out first so the tracked one
    # has a real id, as every ESP gives. Postmark's webhook then reports on it.
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    mail.EmailMessage("warm-up", "", to=["someone@example.com"]).send()
    with django_capture_on_commit_callbacks(execute=True):
        delivery = notification_send_test(
            account=AccountFactory(), level=Level.WARNING, language="en", to="ops@example.com"
        )
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.esp_message_id == "1"
    settings.EMAIL_BACKEND = POSTMARK
    # when
    response = post_event(client, delivered(delivery.esp_message_id, "ops@example.com"))
    # then
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED


# --- The rules of delivery_track, event by event ---


@pytest.mark.parametrize(
    ("before", "event_type", "after"),
    [
        (Delivery.Status.SENT, "delivered", Delivery.Status.DELIVERED),
        (Delivery.Status.SENT, "bounced", Delivery.Status.BOUNCED),
        (Delivery.Status.SENT, "rejected", Delivery.Status.BOUNCED),
        (Delivery.Status.SENT, "complained", Delivery.Status.COMPLAINED),
        (Delivery.Status.SENT, "failed", Delivery.Status.FAILED),
        (Delivery.Status.DELIVERED, "bounced", Delivery.Status.BOUNCED),
        (Delivery.Status.DELIVERED, "complained", Delivery.Status.COMPLAINED),
        (Delivery.Status.BOUNCED, "complained", Delivery.Status.COMPLAINED),
        # never backwards
        (Delivery.Status.DELIVERED, "delivered", Delivery.Status.DELIVERED),
        (Delivery.Status.DELIVERED, "failed", Delivery.Status.DELIVERED),
        (Delivery.Status.BOUNCED, "delivered", Delivery.Status.BOUNCED),
        (Delivery.Status.COMPLAINED, "delivered", Delivery.Status.COMPLAINED),
        (Delivery.Status.COMPLAINED, "bounced", Delivery.Status.COMPLAINED),
        # a delivery resent since: the event is about the previous attempt
        (Delivery.Status.QUEUED, "delivered", Delivery.Status.QUEUED),
        (Delivery.Status.SENDING, "bounced", Delivery.Status.SENDING),
        (Delivery.Status.FAILED, "delivered", Delivery.Status.FAILED),
        # not a delivery status
        (Delivery.Status.SENT, "opened", Delivery.Status.SENT),
        (Delivery.Status.SENT, "deferred", Delivery.Status.SENT),
    ],
)
def test_delivery_track_moves_a_status_only_forward(before, event_type, after):
    delivery = DeliveryFactory(status=before)

    changed = delivery_track(
        esp_message_id=delivery.esp_message_id, event_type=event_type, description="why"
    )

    delivery.refresh_from_db()
    assert delivery.status == after
    assert changed == (1 if before != after else 0)


def test_delivery_track_ignores_an_empty_message_id():
    delivery = DeliveryFactory(status=Delivery.Status.SENT, esp_message_id="")

    assert delivery_track(esp_message_id="", event_type="bounced", description="x") == 0

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
