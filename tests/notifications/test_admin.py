"""The admin of notifications and deliveries, and its actions on accounts (SPEC section 7)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import formats
from django.utils.html import escape

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
    assert formats.date_format(notification.period, "YEAR_MONTH_FORMAT") in content
    assert '<td class="field-threshold_display">800,000 tokens</td>' in content
    assert '<td class="field-used_display">812,000 tokens</td>' in content
    assert '<td class="field-metric">Text tokens</td>' in content
    assert (
        '<td class="field-level_display"><span class="notification-level notification-level-warning">'
        "Warning</span></td>" in content
    )
    assert '<td class="field-deliveries_total_display">3</td>' in content
    assert 'Sent: 1, <strong class="delivery-problem">Failed: 1</strong>, Delivered: 1' in content
    assert '<td class="field-kind_display">Threshold reached</td>' in content
    assert "icon-no.svg" not in content  # no red cross on every real notification


@pytest.mark.parametrize(
    "query",
    [
        "level=warning",
        "metric=text_tokens",
        "kind=",
        "delivery_status=failed",
        "q=acme",
        "kind=all&o=-12",  # by number of deliveries
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
    if query.startswith("kind=all"):
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
    assert 'Sent: 1, <strong class="delivery-problem">Failed: 1</strong>, Delivered: 1' in content
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


# --- What a person reads: labels, units, local times, tests apart, nobody reached ---

# The first of a month, in the morning in Paris: "1er" in French, the zone named.
REACHED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _reached_at(notification: Notification, when: datetime = REACHED) -> None:
    Notification.objects.filter(pk=notification.pk).update(created_at=when)
    Delivery.objects.filter(notification=notification).update(created_at=when, updated_at=when)


@pytest.mark.parametrize(
    ("language", "real", "test", "default_choice"),
    [
        ("en", "Threshold reached", "Test", "Thresholds reached"),
        ("fr", "Seuil atteint", "Test", "Seuils atteints"),
    ],
)
def test_test_notifications_are_listed_apart_and_only_on_demand(
    admin_client, language, real, test, default_choice
):
    # given
    account = AccountFactory(name="Acme")
    reached = NotificationFactory(account=account)
    sample = NotificationFactory(account=account, is_test=True, level=Level.BLOCKED)
    # when
    by_default = admin_client.get(NOTIFICATIONS_URL, HTTP_ACCEPT_LANGUAGE=language)
    tests_only = admin_client.get(f"{NOTIFICATIONS_URL}?kind=test", HTTP_ACCEPT_LANGUAGE=language)
    everything = admin_client.get(f"{NOTIFICATIONS_URL}?kind=all", HTTP_ACCEPT_LANGUAGE=language)
    # then
    assert [r.status_code for r in (by_default, tests_only, everything)] == [200, 200, 200]
    assert list(by_default.context["cl"].result_list) == [reached]
    assert list(tests_only.context["cl"].result_list) == [sample]
    assert set(everything.context["cl"].result_list) == {reached, sample}
    assert f'<td class="field-kind_display">{real}</td>' in by_default.text
    assert f'<span class="notification-test">{test}</span>' in tests_only.text
    assert f'<li class="selected">\n    <a href="?">{default_choice}</a></li>' in by_default.text


def test_account_page_lists_no_test_notification(admin_client, account_admin):
    account = AccountFactory()
    reached = NotificationFactory(account=account)
    NotificationFactory(account=account, is_test=True)

    response = admin_client.get(reverse("admin:accounts_account_change", args=[account.pk]))

    [inline] = [
        formset
        for formset in response.context["inline_admin_formsets"]
        if formset.formset.model is Notification
    ]
    assert [form.original for form in inline] == [reached]


@pytest.mark.parametrize(
    ("language", "flag", "choice"),
    [
        ("en", "Reached nobody: no recipient at this level", "Reached nobody"),
        ("fr", "N’a atteint personne : aucun destinataire à ce niveau", "N’a atteint personne"),
    ],
)
def test_a_notification_that_reached_nobody_is_flagged_and_found(
    admin_client, account_admin, language, flag, choice
):
    # given: a blocked threshold without blocked recipient
    account = AccountFactory(name="Acme")
    told = notification_with_deliveries(account=account)
    nobody = NotificationFactory(account=account, level=Level.BLOCKED, threshold=1_000_000)
    # when
    listed = admin_client.get(NOTIFICATIONS_URL, HTTP_ACCEPT_LANGUAGE=language)
    found = admin_client.get(
        f"{NOTIFICATIONS_URL}?delivery_status=nobody", HTTP_ACCEPT_LANGUAGE=language
    )
    page = admin_client.get(
        reverse("admin:accounts_account_change", args=[account.pk]), HTTP_ACCEPT_LANGUAGE=language
    )
    # then
    marked = f'<span class="notification-nobody">{flag}</span>'
    assert listed.text.count(marked) == 1
    assert choice in listed.text
    assert list(found.context["cl"].result_list) == [nobody]
    assert told not in found.context["cl"].result_list
    assert page.text.count(marked) == 1


@pytest.mark.parametrize(
    ("language", "period", "reached", "threshold", "used"),
    [
        (
            "en",
            "December 2026",
            "Dec. 1, 2026, 10:30 a.m. (Europe/Paris)",
            "36,000 seconds (10 h)",
            "37,230.5 seconds (10 h 20 min)",
        ),
        (
            "fr",
            "décembre 2026",
            "1er décembre 2026 10:30 (Europe/Paris)",
            "36\xa0000 secondes (10 h)",
            "37\xa0230,5 secondes (10 h 20 min)",
        ),
    ],
)
def test_notification_page_shows_labels_units_and_the_local_time(
    admin_client, language, period, reached, threshold, used
):
    # given
    account = AccountFactory(name="Acme", timezone="Europe/Paris")
    notification = NotificationFactory(
        account=account,
        metric="audio_transcribed_seconds",
        period=REACHED.date(),
        threshold=36_000,
        used_milli=37_230_500,
    )
    _reached_at(notification)
    # when
    listed = admin_client.get(NOTIFICATIONS_URL, HTTP_ACCEPT_LANGUAGE=language)
    page = admin_client.get(
        reverse("admin:notifications_notification_change", args=[notification.pk]),
        HTTP_ACCEPT_LANGUAGE=language,
    )
    # then
    assert listed.status_code == page.status_code == 200
    for cell in (
        f'<td class="field-period_display">{period}</td>',
        f'<td class="field-created_at_display">{reached}</td>',
        f'<td class="field-threshold_display">{threshold}</td>',
        f'<td class="field-used_display">{used}</td>',
    ):
        assert cell in listed.text
    assert f'<div class="readonly">{reached}</div>' in page.text
    assert ">audio_transcribed_seconds<" not in listed.text
    assert ">2026-12<" not in listed.text  # the period filter names months too


@pytest.mark.parametrize(
    ("language", "title", "status", "when"),
    [
        (
            "en",
            "View delivery",
            "Failed",
            "queued Dec. 1, 2026, 10:30 a.m.<br>changed Dec. 1, 2026, 10:30 a.m.<br>(Europe/Paris)",
        ),
        (
            "fr",
            "Affichage : envoi",
            "Échec",
            "en file le 1er décembre 2026 10:30<br>modifié le 1er décembre 2026 10:30<br>"
            "(Europe/Paris)",
        ),
    ],
)
def test_delivery_list_highlights_failures_with_their_whole_error_and_dates(
    admin_client, language, title, status, when
):
    # given: an error longer than the former 80 characters, on several lines
    error = "SMTP 550 5.1.1 <cfo@acme.example>: Recipient address rejected:\n" + "x" * 120
    notification = NotificationFactory(account=AccountFactory(name="Acme", timezone="Europe/Paris"))
    failed = DeliveryFactory(
        notification=notification,
        email="cfo@acme.example",
        status=Delivery.Status.FAILED,
        last_error=error,
    )
    DeliveryFactory(notification=notification, status=Delivery.Status.DELIVERED)
    _reached_at(notification)
    # when
    listed = admin_client.get(DELIVERIES_URL, HTTP_ACCEPT_LANGUAGE=language)
    page = admin_client.get(
        reverse("admin:notifications_delivery_change", args=[failed.pk]),
        HTTP_ACCEPT_LANGUAGE=language,
    )
    # then
    assert listed.status_code == page.status_code == 200
    assert (
        f'<span class="delivery-status delivery-status-failed delivery-problem">{status}</span>'
    ) in listed.text
    assert listed.text.count("delivery-problem") == 1
    assert f'<span class="delivery-error">{escape(" ".join(error.split()))}</span>' in listed.text
    assert f'<td class="field-dates_display"><span class="delivery-dates">{when}</span></td>' in (
        listed.text
    )
    assert "notifications/admin.css" in listed.text
    # the page's title and breadcrumb: labels, no status code, no broken elision
    assert f"<h1>{title}</h1>" in page.text
    name = f"cfo@acme.example{' :' if language == 'fr' else ':'} {status}"
    assert f"<h2>{name}</h2>" in page.text
    assert f"&rsaquo; {name}\n</div>" in page.text  # the breadcrumb
    assert "cfo@acme.example: failed" not in page.text


@pytest.mark.parametrize(
    ("language", "texts"),
    [
        (
            "en",
            [
                "<h1>Send a test notification</h1>",
                '<label for="id_metric" class="required">Metric:</label>',
                '<label for="id_level" class="required">Level:</label>',
                '<label for="id_language" class="required">Language:</label>',
                "The language of the e-mail.",
                '<input type="submit" class="default" value="Send">',
            ],
        ),
        (
            "fr",
            [
                "<h1>Envoyer une notification de test</h1>",
                '<label for="id_metric" class="required">Métrique\xa0:</label>',
                '<label for="id_level" class="required">Niveau\xa0:</label>',
                '<label for="id_language" class="required">Langue\xa0:</label>',
                "La langue de l’e-mail.",
                '<option value="audio_transcribed_seconds">Audio transcrit</option>',
                '<input type="submit" class="default" value="Envoyer">',
            ],
        ),
    ],
)
def test_send_test_notification_form_is_an_admin_form_in_both_languages(
    admin_client, account_admin, language, texts
):
    account = AccountFactory(name="Acme")

    response = admin_client.post(
        ACCOUNTS_URL,
        {"action": "send_test_notification", ACTION_CHECKBOX_NAME: [account.pk]},
        HTTP_ACCEPT_LANGUAGE=language,
    )

    assert response.status_code == 200
    assert '<fieldset class="module aligned">' in response.text
    for text in texts:
        assert text in response.text, text
