"""Webhook endpoints and their deliveries in the admin (SPEC 12.4): add, secret shown once,
address checks, deliveries beside the e-mails, resend."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse

from notifications import hooks
from notifications.models import WebhookDelivery, WebhookEndpoint
from tests.factories import AccountFactory
from tests.notifications.factories import DeliveryFactory, NotificationFactory
from tests.notifications.receiver import SECRET

pytestmark = pytest.mark.django_db

ENDPOINTS_URL = reverse("admin:notifications_webhookendpoint_changelist")
ADD_URL = reverse("admin:notifications_webhookendpoint_add")
WEBHOOK_DELIVERIES_URL = reverse("admin:notifications_webhookdelivery_changelist")


@pytest.fixture(autouse=True)
def _settings(settings, monkeypatch) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.WEBHOOKS_ALLOW_LOOPBACK = True

    def resolve(host: str, port: int) -> list[str]:
        return {"127.0.0.1": ["127.0.0.1"], "vault.internal": ["10.0.0.5"]}.get(
            host, ["93.184.215.14"]
        )

    monkeypatch.setattr(hooks, "_resolve", resolve)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def endpoint_form(account, **fields) -> dict:
    return {
        "account": str(account.pk),
        "url": "https://crm.example.com/hooks",
        "levels": ["warning", "blocked"],
        "is_active": "on",
        **fields,
    }


@pytest.mark.parametrize("language", ["en", "fr"])
def test_an_endpoint_added_in_the_admin_shows_its_secret_once(admin_client, language):
    # given
    account = AccountFactory()
    # when
    response = admin_client.post(
        ADD_URL, endpoint_form(account), follow=True, HTTP_ACCEPT_LANGUAGE=language
    )
    # then
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.account, endpoint.url, endpoint.levels, endpoint.is_active) == (
        account,
        "https://crm.example.com/hooks",
        ["warning", "blocked"],
        True,
    )
    assert endpoint.secret.startswith("whsec_")
    shown = {
        "en": f"The signing secret of https://crm.example.com/hooks is {endpoint.secret}. "
        "Copy it now: it will not be shown again.",
        "fr": f"Le secret de signature de https://crm.example.com/hooks est {endpoint.secret}. "
        "Copiez-le maintenant : il ne sera plus jamais montré.",
    }[language]
    assert shown in messages_of(response)
    change = admin_client.get(
        reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk])
    )
    assert change.status_code == 200
    assert endpoint.secret not in change.content.decode()


def test_changing_levels_keeps_the_secret_and_shows_nothing(admin_client):
    account = AccountFactory()
    endpoint = WebhookEndpoint.objects.create(
        account=account, url="https://crm.example.com/hooks", levels=["warning"], secret=SECRET
    )

    response = admin_client.post(
        reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk]),
        endpoint_form(account, levels=["blocked", "forecast"]),
        follow=True,
    )

    endpoint.refresh_from_db()
    assert (endpoint.levels, endpoint.secret) == (["blocked", "forecast"], SECRET)
    assert not any("secret" in message for message in messages_of(response))


def test_a_private_address_is_refused_with_the_rule_and_nothing_is_saved(admin_client):
    account = AccountFactory()

    response = admin_client.post(ADD_URL, endpoint_form(account, url="https://vault.internal/"))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "url": [
            "vault.internal resolves to 10.0.0.5, which is not a public address: only public "
            "addresses are accepted."
        ]
    }
    assert not WebhookEndpoint.objects.exists()


def test_a_url_the_account_already_has_is_refused_once(admin_client):
    account = AccountFactory()
    WebhookEndpoint.objects.create(account=account, url="https://crm.example.com/hooks")

    response = admin_client.post(ADD_URL, endpoint_form(account))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "url": ["This account already has an endpoint with this URL."]
    }
    assert WebhookEndpoint.objects.count() == 1


def test_an_eleventh_endpoint_is_refused(admin_client):
    account = AccountFactory()
    for i in range(10):
        WebhookEndpoint.objects.create(account=account, url=f"https://a.example.com/{i}")

    response = admin_client.post(ADD_URL, endpoint_form(account))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "__all__": ["At most 10 webhook endpoints per account."]
    }
    assert WebhookEndpoint.objects.count() == 10


def test_the_notification_page_shows_its_webhook_deliveries_beside_its_emails(admin_client):
    notification = NotificationFactory()
    DeliveryFactory(notification=notification, email="pm@example.com")
    WebhookDelivery.objects.create(
        notification=notification,
        url="https://crm.example.com/hooks",
        webhook_id="msg_2f1c",
        status=WebhookDelivery.Status.FAILED,
        attempts=8,
        http_status=503,
        last_error="The endpoint answered HTTP 503.",
    )

    response = admin_client.get(
        reverse("admin:notifications_notification_change", args=[notification.pk])
    )

    content = response.content.decode()
    assert response.status_code == 200
    for shown in (
        "pm@example.com",
        "Webhook deliveries",
        "https://crm.example.com/hooks",
        "msg_2f1c",
        "503",
        "The endpoint answered HTTP 503.",
    ):
        assert shown in content


def test_resend_sends_a_failed_webhook_delivery_again_with_its_webhook_id(
    admin_client, receiver, django_capture_on_commit_callbacks
):
    # given
    account = AccountFactory()
    endpoint = WebhookEndpoint.objects.create(
        account=account, url=receiver.url, levels=["warning"], secret=SECRET
    )
    failed = WebhookDelivery.objects.create(
        notification=NotificationFactory(account=account),
        endpoint=endpoint,
        url=receiver.url,
        webhook_id="msg_2f1c",
        status=WebhookDelivery.Status.FAILED,
        attempts=8,
        last_error="The endpoint answered HTTP 503.",
    )
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            WEBHOOK_DELIVERIES_URL,
            {"action": "resend_failed_deliveries", ACTION_CHECKBOX_NAME: [failed.pk]},
            follow=True,
        )
    # then
    failed.refresh_from_db()
    assert messages_of(response) == ["1 failed delivery was queued to be sent again."]
    assert (failed.status, failed.attempts, failed.http_status, failed.last_error) == (
        "sent",
        9,
        200,
        "",
    )
    [request] = receiver.requests()
    assert (request.headers["webhook-id"], request.verified) == ("msg_2f1c", True)


def test_resend_of_a_webhook_delivery_that_did_not_fail_says_so(admin_client):
    sent = WebhookDelivery.objects.create(
        notification=NotificationFactory(),
        url="https://crm.example.com/hooks",
        webhook_id="msg_2f1c",
        status=WebhookDelivery.Status.SENT,
    )

    response = admin_client.post(
        WEBHOOK_DELIVERIES_URL,
        {"action": "resend_failed_deliveries", ACTION_CHECKBOX_NAME: [sent.pk]},
        follow=True,
    )

    assert messages_of(response) == ["Nothing to resend: none of the selected deliveries failed."]


ENDPOINTS_SHOWN = {
    "en": ("Webhook endpoints:", "Warning, Blocked · active", "Restored · inactive"),
    "fr": ("Webhooks du compte\u00a0:", "Avertissement, Bloqué · actif", "Rétablie · inactif"),
}


@pytest.mark.parametrize("language", ["en", "fr"])
def test_the_account_page_lists_its_webhook_endpoints_and_links_to_add_one(admin_client, language):
    # given: two endpoints of the account (one inactive) and one of another account
    account = AccountFactory()
    first = WebhookEndpoint.objects.create(
        account=account, url="https://crm.example.com/hooks", levels=["warning", "blocked"]
    )
    second = WebhookEndpoint.objects.create(
        account=account, url="https://ops.example.com/in", levels=["restored"], is_active=False
    )
    WebhookEndpoint.objects.create(
        account=AccountFactory(), url="https://other.example.com/hooks", levels=["warning"]
    )
    # when
    page = admin_client.get(
        reverse("admin:accounts_account_change", args=[account.pk]), HTTP_ACCEPT_LANGUAGE=language
    )
    # then: each endpoint links to its page, and the link to add one names the account
    label, first_text, second_text = ENDPOINTS_SHOWN[language]
    first_url = reverse("admin:notifications_webhookendpoint_change", args=[first.pk])
    second_url = reverse("admin:notifications_webhookendpoint_change", args=[second.pk])
    add_text = {"en": "Add a webhook endpoint", "fr": "Ajouter un webhook"}
    assert page.status_code == 200
    html = page.content.decode()
    assert f"<label>{label}</label>" in html
    assert (
        '<div class="readonly"><ul class="webhook-endpoints">'
        f'<li><a href="{first_url}">https://crm.example.com/hooks</a> · {first_text}</li>'
        f'<li><a href="{second_url}">https://ops.example.com/in</a> · {second_text}</li>'
        f'</ul><p><a class="addlink" href="{ADD_URL}?account={account.pk}">'
        f"{add_text[language]}</a></p></div>"
    ) in html
    assert "other.example.com" not in html
    # and the add page it links to has the account chosen
    add_page = admin_client.get(f"{ADD_URL}?account={account.pk}")
    assert add_page.context["adminform"].form.initial["account"] == str(account.pk)


def test_an_account_without_endpoints_says_so(admin_client):
    account = AccountFactory()
    page = admin_client.get(reverse("admin:accounts_account_change", args=[account.pk]))
    assert '<div class="readonly"><p>No webhook endpoint.</p><p><a class="addlink"' in (
        page.content.decode()
    )


def test_who_may_only_view_endpoints_gets_no_link_to_add_one_and_who_may_not_sees_none(
    client, django_user_model
):
    # given: a user who may view accounts and endpoints, and one who may view accounts only
    account = AccountFactory()
    WebhookEndpoint.objects.create(account=account, url="https://crm.example.com/hooks")
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_account"),
        Permission.objects.get(codename="view_webhookendpoint"),
    )
    blind = django_user_model.objects.create_user("blind", password="x", is_staff=True)
    blind.user_permissions.add(Permission.objects.get(codename="view_account"))
    page_url = reverse("admin:accounts_account_change", args=[account.pk])
    # when
    client.force_login(viewer)
    seen = client.get(page_url).content.decode()
    client.force_login(blind)
    unseen = client.get(page_url).content.decode()
    # then
    assert "https://crm.example.com/hooks</a> · " in seen
    assert "addlink" not in seen.split('class="webhook-endpoints"')[1].split("</div>")[0]
    assert "crm.example.com" not in unseen
    assert "Webhook endpoints" not in unseen
