"""The admin of notifications and deliveries, and its actions on accounts (SPEC section 7)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Account, Level
from notifications.admin import (
    RECENT_NOTIFICATIONS,
    NotificationInline,
    evaluate_thresholds_now,
    send_test_notification,
)
from notifications.models import Delivery, Notification
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.notifications.factories import (
    DeliveryFactory,
    NotificationFactory,
    usage_already_counted,
)

pytestmark = pytest.mark.django_db

NOTIFICATIONS_URL = reverse("admin:notifications_notification_changelist")
DELIVERIES_URL = reverse("admin:notifications_delivery_changelist")
ACCOUNTS_URL = reverse("admin:accounts_account_changelist")


@pytest.fixture(autouse=True)
def _settings(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    # admin_client creates its superuser with a password; the default hasher is slow by design.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def account_admin(monkeypatch):
    """The account admin with the notifications inline and actions, as ``backoffice.admin`` wires them."""
    model_admin = admin.site._registry[Account]
    actions = list(model_admin.actions or [])
    for action in (evaluate_thresholds_now, send_test_notification):
        if action not in actions:
            actions.append(action)
    inlines = list(model_admin.inlines)
    if NotificationInline not in inlines:
        inlines.append(NotificationInline)
    monkeypatch.setattr(model_admin, "actions", actions)
    monkeypatch.setattr(model_admin, "inlines", inlines)
    return model_admin


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def queries_to_show(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def notification_with_deliveries(**kwargs) -> Notification:
    notification = NotificationFactory(**kwargs)
    DeliveryFactory(notification=notification, status=Delivery.Status.SENT)
    DeliveryFactory(notification=notification, status=Delivery.Status.DELIVERED)
    DeliveryFactory(notification=notification, status=Delivery.Status.FAILED)
    return notification


def failed_delivery(**kwargs) -> Delivery:
    return DeliveryFactory(
        status=Delivery.Status.FAILED, esp_message_id="", last_error="Connection reset", **kwargs
    )


# --- Notifications list and page ---


def test_notification_list_shows_each_notification_with_its_delivery_counts(admin_client):
    # given
    notification = notification_with_deliveries(
        account=AccountFactory(name="Acme", external_id="acme"), threshold=800_000
    )
    # when
    response = admin_client.get(NOTIFICATIONS_URL)
    # then
    assert response.status_code == 200
    content = response.content.decode()
    assert "Acme (acme)" in content
    assert f"{notification.period:%Y-%m}" in content
    assert "800,000" in content  # threshold
    assert "812,000" in content  # usage when reached
    assert '<td class="field-deliveries_total_display">3</td>' in content
    assert "Sent: 1, <strong>Failed: 1</strong>, Delivered: 1" in content


@pytest.mark.parametrize(
    "query",
    [
        "level=warning",
        "metric=text_tokens",
        "is_test__exact=0",
        "delivery_status=failed",
        "q=acme",
        "o=-9",  # by number of deliveries
    ],
)
def test_notification_list_filters_and_searches(admin_client, query):
    # given
    acme = notification_with_deliveries(account=AccountFactory(name="Acme", external_id="acme"))
    other = NotificationFactory(
        account=AccountFactory(name="Globex", external_id="globex"),
        level=Level.BLOCKED,
        metric="audio_transcribed_seconds",
        is_test=True,
    )
    DeliveryFactory(notification=other, status=Delivery.Status.DELIVERED)
    # when
    response = admin_client.get(f"{NOTIFICATIONS_URL}?{query}")
    # then
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    if query.startswith("o="):
        assert shown == [acme, other]
    else:
        assert shown == [acme]
        assert shown[0].deliveries_total == 3  # a filter never multiplies the counts


def test_notification_list_filters_by_period(admin_client):
    current = NotificationFactory()
    older = NotificationFactory(period=current.period.replace(year=current.period.year - 1))

    response = admin_client.get(f"{NOTIFICATIONS_URL}?period={older.period.isoformat()}")

    assert list(response.context["cl"].result_list) == [older]
    assert f"{older.period:%Y-%m}" in response.content.decode()  # as a filter choice


def test_notification_list_costs_the_same_queries_for_one_row_or_twenty(admin_client):
    notification_with_deliveries()
    one = queries_to_show(admin_client, NOTIFICATIONS_URL)
    for _ in range(19):
        notification_with_deliveries()

    twenty = queries_to_show(admin_client, NOTIFICATIONS_URL)

    assert twenty == one


def test_notification_page_is_read_only_and_lists_its_deliveries(admin_client):
    notification = notification_with_deliveries()
    url = reverse("admin:notifications_notification_change", args=[notification.pk])

    response = admin_client.get(url)

    assert response.status_code == 200
    content = response.content.decode()
    for delivery in notification.deliveries.all():
        assert delivery.email in content
    assert 'name="_save"' not in content
    assert admin_client.get(reverse("admin:notifications_notification_add")).status_code == 403


# --- Deliveries list ---


def test_delivery_list_shows_each_delivery_with_its_notification(admin_client):
    delivery = failed_delivery(
        notification=NotificationFactory(account=AccountFactory(name="Acme", external_id="acme"))
    )

    response = admin_client.get(DELIVERIES_URL)

    assert response.status_code == 200
    content = response.content.decode()
    for text in (delivery.email, "Failed", "Connection reset", "Acme (acme)", "Text tokens"):
        assert text in content


@pytest.mark.parametrize("query", ["status__exact=failed", "language__exact=fr", "q=pm@x.example"])
def test_delivery_list_filters_and_searches(admin_client, query):
    wanted = failed_delivery(email="pm@x.example", language="fr")
    DeliveryFactory(status=Delivery.Status.SENT, language="en")

    response = admin_client.get(f"{DELIVERIES_URL}?{query}")

    assert list(response.context["cl"].result_list) == [wanted]


def test_delivery_list_searches_the_exact_provider_message_id(admin_client):
    wanted = DeliveryFactory(esp_message_id="0a129aee-e1cd-480d-b08d-4f48548ff48d")
    DeliveryFactory()

    response = admin_client.get(f"{DELIVERIES_URL}?q=0a129aee-e1cd-480d-b08d-4f48548ff48d")

    assert list(response.context["cl"].result_list) == [wanted]


def test_delivery_list_costs_the_same_queries_for_one_row_or_twenty(admin_client):
    failed_delivery()
    one = queries_to_show(admin_client, DELIVERIES_URL)
    for _ in range(19):
        failed_delivery()

    twenty = queries_to_show(admin_client, DELIVERIES_URL)

    assert twenty == one


# --- Resending ---


def test_resend_action_on_deliveries_sends_the_failed_ones_again(
    admin_client, django_capture_on_commit_callbacks
):
    # given
    failed = failed_delivery(email="pm@acme.example")
    delivered = DeliveryFactory(status=Delivery.Status.DELIVERED)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            DELIVERIES_URL,
            {"action": "resend_failed_deliveries", ACTION_CHECKBOX_NAME: [failed.pk, delivered.pk]},
            follow=True,
        )
    # then
    assert messages_of(response) == ["1 failed delivery was queued to be sent again."]
    failed.refresh_from_db()
    delivered.refresh_from_db()
    assert failed.status == Delivery.Status.SENT
    assert failed.attempts == 2
    assert failed.last_error == ""
    assert delivered.status == Delivery.Status.DELIVERED
    [message] = mail.outbox
    assert message.to == ["pm@acme.example"]


def test_resend_action_without_failed_delivery_says_so(admin_client):
    delivered = DeliveryFactory(status=Delivery.Status.DELIVERED)

    response = admin_client.post(
        DELIVERIES_URL,
        {"action": "resend_failed_deliveries", ACTION_CHECKBOX_NAME: [delivered.pk]},
        follow=True,
    )

    assert messages_of(response) == [
        "Nothing to resend: none of the selected deliveries failed or bounced."
    ]
    assert mail.outbox == []


def test_resend_action_on_notifications_sends_their_failed_deliveries_again(
    admin_client, django_capture_on_commit_callbacks
):
    notification = notification_with_deliveries()
    failed = notification.deliveries.get(status=Delivery.Status.FAILED)
    untouched = failed_delivery()  # of a notification not selected

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            NOTIFICATIONS_URL,
            {"action": "resend_failed_deliveries", ACTION_CHECKBOX_NAME: [notification.pk]},
            follow=True,
        )

    assert messages_of(response) == ["1 failed delivery was queued to be sent again."]
    assert [message.to for message in mail.outbox] == [[failed.email]]
    failed.refresh_from_db()
    untouched.refresh_from_db()
    assert failed.status == Delivery.Status.SENT
    assert untouched.status == Delivery.Status.FAILED


# --- On the account admin ---


def test_account_page_lists_recent_notifications_with_a_link_to_each(admin_client, account_admin):
    account = AccountFactory()
    notification = notification_with_deliveries(account=account)
    NotificationFactory()  # another account's

    response = admin_client.get(reverse("admin:accounts_account_change", args=[account.pk]))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Recent notifications" in content
    assert reverse("admin:notifications_notification_change", args=[notification.pk]) in content
    assert "Sent: 1, <strong>Failed: 1</strong>, Delivered: 1" in content
    [inline] = [
        formset
        for formset in response.context["inline_admin_formsets"]
        if formset.formset.model is Notification
    ]
    assert [form.original for form in inline] == [notification]


def test_account_page_shows_only_the_most_recent_notifications_in_constant_queries(
    admin_client, account_admin
):
    account = AccountFactory()
    url = reverse("admin:accounts_account_change", args=[account.pk])
    NotificationFactory(account=account, threshold=1)
    one = queries_to_show(admin_client, url)
    for threshold in range(2, RECENT_NOTIFICATIONS + 6):
        NotificationFactory(account=account, threshold=threshold)

    many = queries_to_show(admin_client, url)

    assert many == one
    response = admin_client.get(url)
    [inline] = [
        formset
        for formset in response.context["inline_admin_formsets"]
        if formset.formset.model is Notification
    ]
    assert len(list(inline)) == RECENT_NOTIFICATIONS


def test_evaluate_thresholds_action_notifies_usage_that_already_passed_a_threshold(
    admin_client, account_admin, django_capture_on_commit_callbacks
):
    # given: usage counted before the limits were set, so no notification yet
    account = AccountFactory(external_id="acme")
    LimitFactory(account=account, warning=800_000, blocked=1_000_000)
    RecipientFactory(account=account, level=Level.WARNING, email="warn@acme.example")
    usage_already_counted(account, 900_000)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            ACCOUNTS_URL,
            {"action": "evaluate_thresholds_now", ACTION_CHECKBOX_NAME: [account.pk]},
            follow=True,
        )
    # then
    assert messages_of(response) == ["1 notification created; its e-mails are being sent."]
    notification = Notification.objects.get()
    assert (notification.account, notification.level, notification.threshold) == (
        account,
        Level.WARNING,
        800_000,
    )
    [message] = mail.outbox
    assert message.to == ["warn@acme.example"]


def test_evaluate_thresholds_action_twice_creates_nothing_more(
    admin_client, account_admin, django_capture_on_commit_callbacks
):
    account = AccountFactory()
    LimitFactory(account=account, warning=800_000, blocked=1_000_000)
    RecipientFactory(account=account, level=Level.WARNING)
    usage_already_counted(account, 900_000)
    data = {"action": "evaluate_thresholds_now", ACTION_CHECKBOX_NAME: [account.pk]}
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(ACCOUNTS_URL, data, follow=True)  # shows its message

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(ACCOUNTS_URL, data, follow=True)

    assert messages_of(response) == ["No notification created: no threshold newly reached."]
    assert Notification.objects.count() == 1
    assert len(mail.outbox) == 1


def test_send_test_notification_action_asks_for_the_address_metric_level_and_language(
    admin_client, account_admin
):
    # given
    account = AccountFactory(name="Acme", language="fr")
    # when
    response = admin_client.post(
        ACCOUNTS_URL, {"action": "send_test_notification", ACTION_CHECKBOX_NAME: [account.pk]}
    )
    # then
    assert response.status_code == 200
    assert response.templates[0].name == "admin/notifications/send_test_notification.html"
    content = response.content.decode()
    assert "Acme" in content
    assert f'name="{ACTION_CHECKBOX_NAME}" value="{account.pk}"' in content
    assert 'name="action" value="send_test_notification"' in content
    form = response.context["form"]
    # Nothing chosen for the person: the metric, the level and the language are theirs.
    assert form.initial == {"to": "admin@example.com"}  # the user's own address
    for name in ("metric", "level", "language"):
        assert f'<select name="{name}" required' in content
        assert '<option value="" selected>---------</option>' in content
    assert '<option value="audio_transcribed_seconds">Audio transcribed</option>' in content
    assert 'href="/static/admin/css/forms.css"' in content
    assert '<div class="submit-row">' in content
    assert not Notification.objects.exists()


def test_send_test_notification_action_refuses_a_form_without_metric_level_and_language(
    admin_client, account_admin
):
    account = AccountFactory()

    response = admin_client.post(
        ACCOUNTS_URL,
        {
            "action": "send_test_notification",
            ACTION_CHECKBOX_NAME: [account.pk],
            "apply": "yes",
            "to": "ops@example.com",
        },
    )

    assert response.status_code == 200
    required = ["This field is required."]
    assert response.context["form"].errors == {
        "metric": required,
        "level": required,
        "language": required,
    }
    assert "Please correct the errors below." in response.text
    assert not Notification.objects.exists()


def test_send_test_notification_uses_the_metric_chosen(
    admin_client, account_admin, django_capture_on_commit_callbacks
):
    # given: text tokens come first, the metric chosen is audio
    account = AccountFactory(name="Acme")
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=200)
    LimitFactory(account=account, metric="audio_analyzed_seconds", warning=36_000, blocked=72_000)
    RecipientFactory(account=account, level="warning", email="pm@example.com")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            ACCOUNTS_URL,
            {
                "action": "send_test_notification",
                ACTION_CHECKBOX_NAME: [account.pk],
                "apply": "yes",
                "to": "ops@example.com",
                "metric": "audio_analyzed_seconds",
                "level": "warning",
                "language": "fr",
            },
        )
    # then
    notification = Notification.objects.get()
    assert (notification.metric, notification.level, notification.threshold) == (
        "audio_analyzed_seconds",
        "warning",
        36_000,
    )
    assert notification.is_test
    assert Delivery.objects.get().language == "fr"


def test_send_test_notification_action_sends_one_sample_to_the_address_given(
    admin_client, account_admin, django_capture_on_commit_callbacks
):
    account = AccountFactory(name="Acme")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            ACCOUNTS_URL,
            {
                "action": "send_test_notification",
                ACTION_CHECKBOX_NAME: [account.pk],
                "apply": "yes",
                "to": "ops@example.com",
                "metric": "text_tokens",
                "level": "blocked",
                "language": "en",
            },
            follow=True,
        )

    assert messages_of(response) == ["1 test notification sent to ops@example.com."]
    [message] = mail.outbox
    assert message.to == ["ops@example.com"]
    assert message.subject == "[Test] Blocked: Acme reached its Text tokens limit"
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.notification.is_test


def test_send_test_notification_action_shows_the_form_again_with_a_bad_address(
    admin_client, account_admin
):
    account = AccountFactory()

    response = admin_client.post(
        ACCOUNTS_URL,
        {
            "action": "send_test_notification",
            ACTION_CHECKBOX_NAME: [account.pk],
            "apply": "yes",
            "to": "not-an-address",
            "metric": "text_tokens",
            "level": "warning",
            "language": "en",
        },
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {"to": ["Enter a valid email address."]}
    assert not Notification.objects.exists()
    assert mail.outbox == []
