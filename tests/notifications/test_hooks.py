"""Outgoing webhooks (SPEC 12.4): address checks, signed deliveries, retries, resend.

Deliveries are sent to a receiver on 127.0.0.1 (``WEBHOOKS_ALLOW_LOOPBACK``) that verifies
each request with the ``standardwebhooks`` library, as a customer's receiver would. Other
hosts are never called: their resolution is replaced (``hooks._resolve``).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from accounts.models import Level
from notifications import hooks
from notifications.hooks import (
    AddressRefused,
    address_is_allowed,
    webhook_deliveries_create,
    webhook_deliveries_resend,
    webhook_endpoint_problems,
    webhook_payload,
    webhook_target,
)
from notifications.models import Notification, WebhookDelivery, WebhookEndpoint
from notifications.services import deliveries_recover, thresholds_evaluate
from tests.factories import AccountFactory, LimitFactory, RecipientFactory
from tests.notifications.factories import NotificationFactory, usage_already_counted
from tests.notifications.receiver import SECRET, Receiver

pytestmark = pytest.mark.django_db

PUBLIC = "93.184.215.14"
ONLY_HTTPS = "Only https:// URLs are accepted."


@pytest.fixture(autouse=True)
def _settings(settings) -> None:
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.WEBHOOKS_ALLOW_LOOPBACK = True
    settings.WEBHOOKS_TIMEOUT = 5.0


@pytest.fixture
def resolves_to(monkeypatch):
    """Make every host name resolve to the addresses given (none: it does not resolve)."""

    def patch(*addresses: str) -> None:
        def resolve(host: str, port: int) -> list[str]:
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return list(addresses)

        monkeypatch.setattr(hooks, "_resolve", resolve)

    return patch


def endpoint_for(account, url: str, **fields) -> WebhookEndpoint:
    fields.setdefault("levels", ["warning", "blocked", "restored", "forecast"])
    return WebhookEndpoint.objects.create(account=account, url=url, secret=SECRET, **fields)


def account_past_its_warning(**fields):
    account = AccountFactory(name="Acme Speech", external_id="crm-00042", **fields)
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=1000)
    RecipientFactory(account=account, level=Level.WARNING, email="pm@example.com")
    usage_already_counted(account, 150)
    return account


@pytest.fixture
def reach_warning(django_capture_on_commit_callbacks):
    """Record the account's crossing as the sweep would; once committed, tasks running
    eagerly, it is sent (retries included)."""

    def reach(account) -> Notification:
        with django_capture_on_commit_callbacks(execute=True):
            (notification_id,) = thresholds_evaluate(account_ids=[account.pk])
        return Notification.objects.get(pk=notification_id)

    return reach


# --- Address checks ---


def test_an_https_url_whose_host_resolves_to_public_addresses_is_accepted(resolves_to):
    resolves_to(PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c")

    target = webhook_target("https://crm.example.com:8443/hooks/usage?tenant=7")

    assert target == hooks.Target(
        "https",
        "crm.example.com",
        8443,
        "/hooks/usage?tenant=7",
        (PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    )
    assert target.host_header == "crm.example.com:8443"


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",  # private
        "172.16.3.4",
        "192.168.1.10",
        "127.0.0.1",  # loopback
        "169.254.169.254",  # link-local: the cloud's metadata service
        "100.64.0.1",  # shared (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "::1",
        "fe80::1",
        "fd00::1",  # unique local
        "::ffff:10.0.0.5",  # IPv4-mapped: reaches 10.0.0.5
    ],
)
def test_a_host_resolving_to_a_non_public_address_is_refused(settings, resolves_to, address):
    settings.WEBHOOKS_ALLOW_LOOPBACK = False
    resolves_to(address)

    assert webhook_endpoint_problems(url="https://crm.example.com/", levels=["warning"]) == {
        "url": [
            f"crm.example.com resolves to {address}, which is not a public address: only "
            "public addresses are accepted."
        ]
    }


def test_one_private_address_among_public_ones_is_enough_to_refuse(resolves_to):
    resolves_to(PUBLIC, "10.1.2.3")

    with pytest.raises(AddressRefused) as refused:
        webhook_target("https://crm.example.com/")

    assert str(refused.value) == (
        "crm.example.com resolves to 10.1.2.3, which is not a public address: only public "
        "addresses are accepted."
    )


def test_a_host_that_does_not_resolve_is_refused(resolves_to):
    resolves_to()

    assert webhook_endpoint_problems(url="https://crm.example.invalid/", levels=["blocked"]) == {
        "url": ["The host name crm.example.invalid does not resolve."]
    }


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://crm.example.com/hooks", ONLY_HTTPS),
        ("http://127.0.0.1:8080/hooks", ONLY_HTTPS),
        ("ftp://crm.example.com/", "Enter a valid URL."),
        ("crm.example.com/hooks", "Enter a valid URL."),
        ("https://crm.example.com/a b", "Enter a valid URL."),
        ("https://user:pass@crm.example.com/", "The URL may not carry a user name or password."),
    ],
)
def test_urls_other_than_https_are_refused_without_the_loopback_setting(
    settings, resolves_to, url, message
):
    settings.WEBHOOKS_ALLOW_LOOPBACK = False
    resolves_to(PUBLIC)

    assert webhook_endpoint_problems(url=url, levels=["warning"]) == {"url": [message]}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hooks", "http://localhost:8080/"])
def test_the_loopback_setting_admits_http_on_loopback_with_a_port(url):
    assert webhook_endpoint_problems(url=url, levels=["warning"]) == {}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hooks", "http://10.0.0.5:8080/", "http://crm.example.com:80/"]
)
def test_the_loopback_setting_admits_nothing_else_over_http(url):
    assert webhook_endpoint_problems(url=url, levels=["warning"]) == {
        "url": [
            "Only https:// URLs are accepted (and, for local runs, http://127.0.0.1:PORT and "
            "http://localhost:PORT)."
        ]
    }


def test_the_loopback_setting_still_refuses_private_addresses(resolves_to):
    resolves_to("192.168.1.10")

    with pytest.raises(AddressRefused):
        webhook_target("https://printer.example.com/")
    assert address_is_allowed("127.0.0.1", allow_loopback=True)
    assert not address_is_allowed("127.0.0.1", allow_loopback=False)


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([], "Choose at least one level."),
        (["warning", "paused"], "Expected levels among: warning, blocked, restored, forecast."),
        (["warning", "warning"], "A level is listed twice."),
    ],
)
def test_levels_are_checked(levels, message):
    assert webhook_endpoint_problems(url="http://127.0.0.1:9/", levels=levels) == {
        "levels": [message]
    }


# --- Deliveries recorded ---


def test_a_notification_gets_one_delivery_per_active_endpoint_of_its_level(reach_warning):
    # given
    account = account_past_its_warning()
    both = endpoint_for(account, "http://127.0.0.1:9/both")
    endpoint_for(account, "http://127.0.0.1:9/blocked-only", levels=["blocked"])
    endpoint_for(account, "http://127.0.0.1:9/inactive", is_active=False)
    endpoint_for(AccountFactory(), "http://127.0.0.1:9/another-account")
    # when
    notification = reach_warning(account)
    webhook_deliveries_create(notification_ids=[notification.pk])  # a second call adds none
    # then
    deliveries = list(WebhookDelivery.objects.values_list("notification_id", "endpoint_id", "url"))
    assert deliveries == [(notification.pk, both.pk, "http://127.0.0.1:9/both")]
    assert WebhookDelivery.objects.get().webhook_id.startswith("msg_")


def test_a_test_notification_is_posted_to_no_endpoint():
    account = AccountFactory()
    endpoint_for(account, "http://127.0.0.1:9/")
    notification = NotificationFactory(account=account, is_test=True)

    assert webhook_deliveries_create(notification_ids=[notification.pk]) == 0


def test_the_payload_names_the_notification_and_its_account():
    account = AccountFactory(name="Acme Speech", external_id="crm-00042")
    notification = NotificationFactory(
        account=account,
        metric="audio_transcribed_seconds",
        level=Level.BLOCKED,
        threshold=72000,
        used_milli=72_000_500,
    )

    assert webhook_payload(notification) == {
        "type": "usage.blocked",
        "timestamp": notification.created_at.isoformat(),
        "data": {
            "notification_id": notification.pk,
            "account": {"id": str(account.pk), "external_id": "crm-00042", "name": "Acme Speech"},
            "metric": "audio_transcribed_seconds",
            "level": "blocked",
            "period_kind": "month",
            "period": notification.period_code,
            "labels": {},
            "threshold": 72000,
            "used": Decimal("72000.5"),
        },
    }


def test_the_payload_of_a_scoped_line_names_its_period_and_labels():
    # given: a daily line on one model, Paris time
    account = AccountFactory(timezone="Europe/Paris")
    start = datetime(2026, 12, 2, tzinfo=ZoneInfo("Europe/Paris"))
    notification = NotificationFactory(
        account=account,
        period_kind="day",
        labels_key="model=large",
        period=start.date(),
        period_start=start,
        threshold=40000,
        used_milli=40_000_000,
    )
    # when
    data = webhook_payload(notification)["data"]
    # then
    assert (data["period_kind"], data["period"], data["labels"], data["used"]) == (
        "day",
        "2026-12-02T00:00:00+01:00",
        {"model": "large"},
        40000,
    )


# --- Sending ---


def test_a_delivery_is_posted_signed_as_standard_webhooks_says(receiver, reach_warning):
    # given
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    # when
    notification = reach_warning(account)
    # then
    (request,) = receiver.requests()
    delivery = WebhookDelivery.objects.get()
    assert request.verified, request.error
    assert request.path == "/hooks/usage"
    assert request.headers["webhook-id"] == delivery.webhook_id
    assert request.headers["content-type"] == "application/json"
    assert request.payload == {
        "type": "usage.warning",
        "timestamp": notification.created_at.isoformat(),
        "data": {
            "notification_id": notification.pk,
            "account": {"id": str(account.pk), "external_id": "crm-00042", "name": "Acme Speech"},
            "metric": "text_tokens",
            "level": "warning",
            "period_kind": "month",
            "period": notification.period_code,
            "labels": {},
            "threshold": 100,
            "used": 150,
        },
    }
    assert (delivery.status, delivery.attempts, delivery.http_status, delivery.last_error) == (
        "sent",
        1,
        200,
        "",
    )
    assert delivery.sent_at is not None


def test_a_receiver_failing_twice_gets_three_attempts_with_the_same_webhook_id(
    receiver, reach_warning
):
    # given: on the embedded default the retries run at once, one after another
    receiver.answers = [503, 429]
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    # when
    reach_warning(account)
    # then
    requests = receiver.requests()
    delivery = WebhookDelivery.objects.get()
    assert [r.headers["webhook-id"] for r in requests] == [delivery.webhook_id] * 3
    assert all(r.verified for r in requests)
    assert len({r.body for r in requests}) == 1
    assert (delivery.status, delivery.attempts, delivery.http_status) == ("sent", 3, 200)


def test_a_receiver_failing_every_time_fails_after_the_last_attempt(
    settings, receiver, reach_warning
):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 3
    receiver.answers = [500] * 10
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)

    reach_warning(account)

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.requests()) == 3
    assert (delivery.status, delivery.attempts, delivery.http_status, delivery.last_error) == (
        "failed",
        3,
        500,
        "The endpoint answered HTTP 500.",
    )


def test_a_client_error_fails_at_once(receiver, reach_warning):
    receiver.answers = [410]
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)

    reach_warning(account)

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.requests()) == 1
    assert (delivery.status, delivery.attempts, delivery.http_status, delivery.last_error) == (
        "failed",
        1,
        410,
        "The endpoint answered HTTP 410.",
    )


def test_a_redirect_is_not_followed(receiver, reach_warning):
    # given: a redirect to another path of the same server, which would accept it
    receiver.answers = [307]
    receiver.location = receiver.url.replace("/hooks/usage", "/elsewhere")
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    # when
    reach_warning(account)
    # then
    delivery = WebhookDelivery.objects.get()
    assert [r.path for r in receiver.requests()] == ["/hooks/usage"]
    assert (delivery.status, delivery.http_status, delivery.last_error) == (
        "failed",
        307,
        "The endpoint answered HTTP 307, a redirect: not followed.",
    )


def test_the_address_is_checked_again_when_sending(settings, receiver, reach_warning):
    # given: an endpoint saved while loopback was admitted, sent once it no longer is
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    settings.WEBHOOKS_ALLOW_LOOPBACK = False
    # when
    reach_warning(account)
    # then
    delivery = WebhookDelivery.objects.get()
    assert receiver.requests() == []
    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        "failed",
        1,
        f"Not sent: {ONLY_HTTPS}",
    )


def test_a_receiver_that_never_answers_times_out_and_is_retried(settings, reach_warning):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 2
    settings.WEBHOOKS_TIMEOUT = 0.2
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        account = account_past_its_warning()
        endpoint_for(account, f"http://127.0.0.1:{silent.getsockname()[1]}/")

        reach_warning(account)

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.http_status) == ("failed", 2, None)
    assert "timed out" in delivery.last_error


def test_a_removed_endpoint_is_sent_nothing_and_its_delivery_stays():
    account = account_past_its_warning()
    endpoint = endpoint_for(account, "http://127.0.0.1:9/")
    notification = NotificationFactory(account=account)
    webhook_deliveries_create(notification_ids=[notification.pk])
    endpoint.delete()

    deliveries_recover(now=timezone.now())

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.url, delivery.last_error) == (
        "failed",
        "http://127.0.0.1:9/",
        "The endpoint was removed.",
    )


# --- Resend and recovery ---


def test_a_failed_delivery_resent_is_sent_with_its_webhook_id(
    receiver, reach_warning, django_capture_on_commit_callbacks
):
    # given
    receiver.answers = [400]
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    reach_warning(account)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    # when
    with django_capture_on_commit_callbacks(execute=True):
        resent = webhook_deliveries_resend(delivery_ids=[delivery.pk])
    # then
    delivery.refresh_from_db()
    assert resent == 1
    assert [r.headers["webhook-id"] for r in receiver.requests()] == [delivery.webhook_id] * 2
    assert (delivery.status, delivery.attempts, delivery.http_status) == ("sent", 2, 200)


def test_only_failed_deliveries_are_resent(receiver, reach_warning):
    account = account_past_its_warning()
    endpoint_for(account, receiver.url)
    reach_warning(account)

    assert webhook_deliveries_resend(delivery_ids=[WebhookDelivery.objects.get().pk]) == 0
    assert len(receiver.requests()) == 1


def test_a_delivery_left_sending_by_a_dead_worker_is_sent_by_the_sweep(settings, receiver):
    # given
    account = account_past_its_warning()
    endpoint = endpoint_for(account, receiver.url)
    notification = NotificationFactory(account=account, published_at=timezone.now())
    webhook_deliveries_create(notification_ids=[notification.pk])
    long_ago = timezone.now() - timedelta(seconds=settings.NOTIFICATIONS_STUCK_AFTER + 1)
    WebhookDelivery.objects.update(status="sending", attempts=1, claimed_at=long_ago)
    # when
    recovered = deliveries_recover()
    # then
    delivery = WebhookDelivery.objects.get()
    assert recovered == [notification.pk]
    assert [r.headers["webhook-id"] for r in receiver.requests()] == [delivery.webhook_id]
    assert (delivery.status, delivery.attempts, delivery.endpoint) == ("sent", 2, endpoint)


# --- HTTPS to the checked address ---


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for crm.example.com (made by the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=crm.example.com", "-addext", "subjectAltName=DNS:crm.example.com",
            "-keyout", key, "-out", cert,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_receiver(certificate) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = Receiver(tls=context)
    server.secret = SECRET
    yield server
    server.close()


@pytest.mark.parametrize(
    ("host", "trusted", "error"),
    [
        ("crm.example.com", True, ""),
        ("crm.example.com", False, "CERTIFICATE_VERIFY_FAILED"),
        ("other.example.com", True, "hostname 'other.example.com' doesn't match"),
    ],
)
def test_https_goes_to_the_checked_address_and_checks_the_certificate_against_the_name(
    settings,
    monkeypatch,
    resolves_to,
    reach_warning,
    certificate,
    tls_receiver,
    host,
    trusted,
    error,
):
    # given: the name resolves to 127.0.0.1 (admitted in tests), where the receiver listens
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 1
    resolves_to("127.0.0.1")
    if trusted:  # as if its authority were in the system's store
        monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    account = account_past_its_warning()
    endpoint_for(account, f"https://{host}:{tls_receiver.port}/hooks/usage")
    # when
    reach_warning(account)
    # then
    delivery = WebhookDelivery.objects.get()
    if not error:
        (request,) = tls_receiver.requests()
        assert request.verified
        assert request.headers["host"] == f"crm.example.com:{tls_receiver.port}"
        assert (delivery.status, delivery.http_status) == ("sent", 200)
    else:
        assert tls_receiver.requests() == []
        assert delivery.status == "failed"
        assert error in delivery.last_error
