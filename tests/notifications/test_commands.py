"""The ops commands of notifications (SPEC section 8): evaluate_thresholds,
send_test_notification, resend_deliveries."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import translation

from accounts.models import Account, Level
from notifications import hooks
from notifications.models import Delivery, Notification, WebhookDelivery, WebhookEndpoint
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.notifications.factories import (
    DeliveryFactory,
    NotificationFactory,
    usage_already_counted,
)
from tests.notifications.receiver import SECRET, Receiver

pytestmark = pytest.mark.django_db(
    transaction=True, serialized_rollback=True
)  # the e-mails are sent at commit


@pytest.fixture(autouse=True)
def _anymail_test_backend(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"


def run(*args: str) -> list[str]:
    """The lines a command writes on stdout."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().splitlines()


def account_past_its_warning(
    external_id: str, used: int = 900_000, blocked: int = 10_000_000
) -> Account:
    """An account whose usage passed the warning threshold (800,000) before any sweep.

    Usage under a tenth of the blocked threshold is never projected to reach it within the
    period (SPEC 12.3), whatever the day: no forecast joins the notifications counted here.
    """
    account = AccountFactory(external_id=external_id)
    LimitFactory(account=account, metric="text_tokens", warning=800_000, blocked=blocked)
    RecipientFactory(account=account, level=Level.WARNING, email=f"warn@{external_id}.example")
    RecipientFactory(account=account, level=Level.BLOCKED, email=f"block@{external_id}.example")
    usage_already_counted(account, used)
    return account


# --- evaluate_thresholds ---


def test_evaluate_thresholds_prints_each_notification_created_and_sends_its_emails():
    # given
    account_past_its_warning("acme", used=1_000_000, blocked=1_000_000)
    account_past_its_warning("globex")
    AccountFactory(external_id="initech")  # no limits: nothing to notify
    # when
    lines = run("evaluate_thresholds")
    # then
    assert lines == [
        "acme    text_tokens  blocked  1000000",
        "acme    text_tokens  warning   800000",
        "globex  text_tokens  warning   800000",
        "3 notification(s) created.",
    ]
    assert Notification.objects.count() == 3
    assert sorted(message.to[0] for message in mail.outbox) == [
        "block@acme.example",
        "warn@acme.example",
        "warn@globex.example",
    ]


def test_evaluate_thresholds_again_creates_nothing():
    account_past_its_warning("acme")
    run("evaluate_thresholds")

    lines = run("evaluate_thresholds")

    assert lines == ["0 notification(s) created."]
    assert Notification.objects.count() == 1
    assert len(mail.outbox) == 1


@pytest.mark.parametrize("reference", ["id", "external id"])
def test_evaluate_thresholds_of_one_account_leaves_the_others_alone(reference):
    acme = account_past_its_warning("acme")
    account_past_its_warning("globex")

    lines = run("evaluate_thresholds", "--account", str(acme.pk) if reference == "id" else "acme")

    assert lines == ["acme  text_tokens  warning  800000", "1 notification(s) created."]
    assert list(Notification.objects.values_list("account__external_id", flat=True)) == ["acme"]


def test_evaluate_thresholds_refuses_an_unknown_account_in_one_line_and_creates_nothing():
    account_past_its_warning("acme")

    with pytest.raises(CommandError) as refused:
        run("evaluate_thresholds", "--account", "nope")

    assert str(refused.value) == "Unknown account “nope” (give its id or external id)."
    assert not Notification.objects.exists()
    assert mail.outbox == []


def test_the_commands_speak_the_site_language(settings):
    # given: French as the site's language, which the commands speak
    settings.LANGUAGE_CODE = "fr"
    account_past_its_warning("acme")
    # when
    evaluated = run("evaluate_thresholds")
    sent = run(
        "send_test_notification",
        "acme",
        "--level",
        "warning",
        "--language",
        "en",
        "--to",
        "ops@example.com",
    )
    with pytest.raises(CommandError) as refused:
        run("evaluate_thresholds", "--account", "nope")
    # then
    delivery = Delivery.objects.get(notification__is_test=True)
    assert evaluated == ["acme  text_tokens  warning  800000", "1 notification(s) créée(s)."]
    assert sent == [
        f"Notification de test mise en file pour ops@example.com (envoi nº {delivery.pk}).",
        "Statut de l’envoi : sent.",
    ]
    assert str(refused.value) == (
        "Compte « nope » inconnu (indiquez son identifiant ou son identifiant externe)."
    )


# --- send_test_notification ---


def test_send_test_notification_sends_a_sample_and_prints_the_delivery_and_its_status():
    # given
    account = account_past_its_warning("acme")
    # when
    lines = run(
        "send_test_notification",
        "acme",
        "--level",
        "warning",
        "--language",
        "en",
        "--to",
        "ops@example.com",
    )
    # then
    delivery = Delivery.objects.get()
    assert lines == [
        f"Test notification queued for ops@example.com (delivery #{delivery.pk}).",
        "Delivery status: sent.",
    ]
    assert delivery.notification.is_test
    assert delivery.notification.account == account
    [message] = mail.outbox
    assert message.to == ["ops@example.com"]
    assert message.subject == f"[Test] Warning: {account.name} is approaching its Text tokens limit"
    assert message.body.startswith("This is a test message: no threshold was actually reached.")
    assert message.extra_headers["X-Usage-Account-External-Id"] == "acme"
    assert message.extra_headers["X-Usage-Level"] == "warning"


def test_send_test_notification_takes_the_account_id_and_the_recipient_language():
    account = AccountFactory(external_id="acme")

    lines = run(
        "send_test_notification",
        str(account.pk),
        "--level",
        "blocked",
        "--language",
        "fr",
        "--to",
        "ops@example.com",
    )

    assert lines[-1] == "Delivery status: sent."
    delivery = Delivery.objects.get()
    assert (delivery.notification.account, delivery.notification.level) == (account, "blocked")
    assert delivery.language == "fr"
    assert mail.outbox[0].extra_headers["X-Usage-Level"] == "blocked"


def test_send_test_notification_reports_a_failed_sending_and_exits_non_zero(monkeypatch):
    from anymail.backends.test import EmailBackend
    from anymail.exceptions import AnymailAPIError

    def refuse(self, payload, message):
        raise AnymailAPIError("Sender signature not confirmed")

    monkeypatch.setattr(EmailBackend, "post_to_esp", refuse)
    AccountFactory(external_id="acme")
    out = StringIO()

    with pytest.raises(CommandError) as refused:
        call_command(
            "send_test_notification",
            "acme",
            "--level=warning",
            "--language=en",
            "--to=ops@example.com",
            stdout=out,
        )

    assert out.getvalue().splitlines()[-1] == "Delivery status: failed."
    assert str(refused.value) == "Sending failed: Sender signature not confirmed"
    assert Delivery.objects.get().status == Delivery.Status.FAILED


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["nope", "--level=warning", "--language=en", "--to=ops@example.com"],
            "Unknown account “nope” (give its id or external id).",
        ),
        (
            ["acme", "--level=warning", "--language=en", "--to=not-an-address"],
            "Enter a valid email address.",
        ),
        (
            ["acme", "--level=critical", "--language=en", "--to=ops@example.com"],
            "Error: argument --level: invalid choice: 'critical'",
        ),
        (
            ["acme", "--level=warning", "--language=de", "--to=ops@example.com"],
            "Error: argument --language: invalid choice: 'de'",
        ),
        (
            ["acme", "--level=warning", "--language=en"],
            "Error: the following arguments are required: --to",
        ),
    ],
)
def test_send_test_notification_refuses_bad_input_in_one_line_and_changes_nothing(args, error):
    AccountFactory(external_id="acme")

    with pytest.raises(CommandError) as refused:
        run("send_test_notification", *args)

    # argparse words the list of choices differently across Python versions
    assert str(refused.value).startswith(error)
    assert "\n" not in str(refused.value)
    assert not Notification.objects.exists()
    assert mail.outbox == []


def test_a_test_notification_does_not_count_as_the_real_one():
    # given: a test notification of the very threshold the account has passed
    account = account_past_its_warning("acme")
    NotificationFactory(account=account, threshold=800_000, is_test=True)
    # when
    lines = run("evaluate_thresholds")
    # then
    assert lines[-1] == "1 notification(s) created."


# --- resend_deliveries ---


def deliveries_of(external_id: str, *statuses: str) -> list[Delivery]:
    """One notification of ``external_id`` per status, each with one delivery in it."""
    account = Account.objects.filter(external_id=external_id).first() or AccountFactory(
        external_id=external_id
    )
    return [
        DeliveryFactory(
            notification=NotificationFactory(account=account, threshold=1000 + number),
            email=f"{status}{number}@{external_id}.example",
            status=status,
            last_error="provider unavailable" if status == "failed" else "",
        )
        for number, status in enumerate(statuses)
    ]


def statuses() -> list[tuple[str, str]]:
    return sorted(Delivery.objects.values_list("email", "status"))


def test_resend_deliveries_queues_the_failed_ones_again_and_sends_them():
    # given
    deliveries_of("acme", "failed", "failed", "queued", "bounced", "sending")
    deliveries_of("globex", "failed")
    # when
    lines = run("resend_deliveries")
    # then
    assert lines == ["Failed deliveries queued again: 3 (notifications enqueued: 3)."]
    assert sorted(message.to[0] for message in mail.outbox) == [
        "failed0@acme.example",
        "failed0@globex.example",
        "failed1@acme.example",
    ]
    assert statuses() == [
        ("bounced3@acme.example", "bounced"),
        ("failed0@acme.example", "sent"),
        ("failed0@globex.example", "sent"),
        ("failed1@acme.example", "sent"),
        ("queued2@acme.example", "queued"),
        ("sending4@acme.example", "sending"),
    ]
    assert set(Delivery.objects.filter(status="sent").values_list("attempts", "last_error")) == {
        (2, "")
    }


@pytest.mark.parametrize("reference", ["id", "external id"])
def test_resend_deliveries_of_one_account_leaves_the_others_alone(reference):
    [acme_failed] = deliveries_of("acme", "failed")
    deliveries_of("globex", "failed")
    account = acme_failed.notification.account

    lines = run("resend_deliveries", "--account", str(account.pk) if reference == "id" else "acme")

    assert lines == ["Failed deliveries queued again: 1 (notifications enqueued: 1)."]
    assert [message.to for message in mail.outbox] == [["failed0@acme.example"]]
    assert statuses() == [
        ("failed0@acme.example", "sent"),
        ("failed0@globex.example", "failed"),
    ]


def test_resend_deliveries_of_queued_ones_enqueues_them_again_and_leaves_failed_ones():
    deliveries_of("acme", "queued", "failed", "queued")

    lines = run("resend_deliveries", "--status", "queued")

    assert lines == ["Queued deliveries enqueued again: 2 (notifications enqueued: 2)."]
    assert sorted(message.to[0] for message in mail.outbox) == [
        "queued0@acme.example",
        "queued2@acme.example",
    ]
    assert statuses() == [
        ("failed1@acme.example", "failed"),
        ("queued0@acme.example", "sent"),
        ("queued2@acme.example", "sent"),
    ]


@pytest.fixture
def receiver(receiver, settings, monkeypatch) -> Receiver:
    """The receiver on 127.0.0.1, which deliveries may reach: every host resolves to it."""
    settings.WEBHOOKS_ALLOW_LOOPBACK = True
    monkeypatch.setattr(hooks, "_resolve", lambda host, port: ["127.0.0.1"])
    return receiver


def failed_webhook_delivery(account: Account, url: str, webhook_id: str) -> WebhookDelivery:
    endpoint = WebhookEndpoint.objects.create(
        account=account, url=url, levels=["warning"], secret=SECRET
    )
    return WebhookDelivery.objects.create(
        notification=NotificationFactory(account=account, threshold=5000),
        endpoint=endpoint,
        url=url,
        webhook_id=webhook_id,
        status=WebhookDelivery.Status.FAILED,
        attempts=8,
        last_error="The endpoint answered HTTP 503.",
    )


def test_resend_deliveries_sends_failed_webhook_deliveries_again_with_their_webhook_id(receiver):
    # given: a failed e-mail and a failed webhook delivery of acme, and one of globex
    [failed_email] = deliveries_of("acme", "failed")
    acme = failed_email.notification.account
    failed = failed_webhook_delivery(acme, receiver.url, "msg_acme")
    untouched = failed_webhook_delivery(AccountFactory(external_id="globex"), receiver.url, "msg_g")
    # when
    lines = run("resend_deliveries", "--account", "acme")
    # then: both of acme's sent, the webhook with its id and its attempts kept
    assert lines == ["Failed deliveries queued again: 2 (notifications enqueued: 2)."]
    assert [message.to for message in mail.outbox] == [["failed0@acme.example"]]
    [request] = receiver.requests()
    assert (request.headers["webhook-id"], request.verified) == ("msg_acme", True)
    failed.refresh_from_db()
    untouched.refresh_from_db()
    assert (failed.status, failed.attempts, failed.http_status, failed.last_error) == (
        "sent",
        9,
        200,
        "",
    )
    assert (untouched.status, untouched.attempts) == ("failed", 8)


def test_resend_deliveries_with_nothing_to_resend_says_so():
    deliveries_of("acme", "sent", "delivered")

    assert run("resend_deliveries") == [
        "Failed deliveries queued again: 0 (notifications enqueued: 0)."
    ]
    assert mail.outbox == []


def test_resend_deliveries_speaks_the_language_of_the_installation(settings):
    settings.LANGUAGE_CODE = "fr"
    deliveries_of("acme", "failed")

    with translation.override("fr"):
        lines = run("resend_deliveries")

    assert lines == ["Envois en échec remis en file d’attente : 1 (notifications confiées : 1)."]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--account", "nope"], "Unknown account “nope” (give its id or external id)."),
        (["--status", "sent"], "Error: argument --status: invalid choice: 'sent'"),
        (["--status"], "Error: argument --status: expected one argument"),
        (["acme"], "Error: unrecognized arguments: acme"),
    ],
)
def test_resend_deliveries_refuses_bad_input_in_one_line_and_changes_nothing(args, error):
    deliveries_of("acme", "failed")

    with pytest.raises(CommandError) as refused:
        run("resend_deliveries", *args)

    assert str(refused.value).startswith(error)
    assert "\n" not in str(refused.value)
    assert statuses() == [("failed0@acme.example", "failed")]
    assert mail.outbox == []
