"""Restored notices through a real Celery worker on Redis and PostgreSQL (SPEC 12.2).

An account blocked through the API has its blocked threshold raised through the API: each
blocked recipient gets one restored e-mail (the worker hands it to a fake Postmark on
127.0.0.1, which records it), in their language, and each webhook endpoint subscribed to
``restored`` gets one delivery, verified with ``standardwebhooks`` by a receiver on
127.0.0.1 with the secret the API answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings

from backoffice.services import limits_replace
from config.celery_app import app as celery_app
from notifications.models import Delivery, Notification, WebhookDelivery
from tests.factories import AccountFactory
from tests.integration.test_worker import (
    WAIT,
    FakeProvider,
    post_events,
    start_worker,
    stop,
    token_for,
    use_broker,
)
from tests.notifications.receiver import Receiver

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TOKENS = "text_tokens"
RECIPIENTS = {
    "warning": [],
    "blocked": [
        {"email": "ops@example.com", "language": "en"},
        {"email": "direction@example.fr", "language": "fr"},
    ],
}


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def worker(settings, provider) -> Iterator[None]:
    import redis

    settings.WEBHOOKS_ALLOW_LOOPBACK = True
    url = django_settings.CELERY_BROKER_URL
    redis.Redis.from_url(url).flushdb()
    previous = celery_app.conf.broker_url
    use_broker(url)
    process = start_worker(url, provider, env={"WEBHOOKS_ALLOW_LOOPBACK": "1"})
    yield
    stop(process)
    use_broker(previous)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    restored, blocked_only = Receiver(path="/restored"), Receiver(path="/blocked")
    yield restored, blocked_only
    restored.close()
    blocked_only.close()


def test_raising_a_limit_on_a_blocked_account_sends_one_restored_notice_per_recipient(
    worker, provider, receivers, manager_client, service_user
):
    # given: a blocked account with two endpoints, one subscribed to restored notices
    restored, blocked_only = receivers
    account = AccountFactory(name="Acme Speech")
    limits_replace(
        account=account,
        data={"limits": {TOKENS: {"warning": None, "blocked": 1000}}, "recipients": RECIPIENTS},
    )
    created = manager_client.put(
        f"/api/v1/accounts/{account.pk}/webhooks/",
        [
            {"url": restored.url, "levels": ["blocked", "restored"]},
            {"url": blocked_only.url, "levels": ["blocked"]},
        ],
        format="json",
    )
    assert created.status_code == 200
    restored.secret, blocked_only.secret = (endpoint["secret"] for endpoint in created.json())
    assert post_events(token_for(service_user), account, "use", 2, 600).status_code == 201
    assert len(provider.wait_for(2)) == 2  # the blocked e-mails
    restored.wait_for(1, within=WAIT)
    blocked_only.wait_for(1, within=WAIT)
    # when: the blocked threshold is raised through the API, twice
    for blocked in (5000, 6000):
        response = manager_client.put(
            f"/api/v1/accounts/{account.pk}/limits/",
            {"limits": {TOKENS: {"warning": None, "blocked": blocked}}, "recipients": RECIPIENTS},
            format="json",
        )
        assert response.status_code == 200
    # then: one restored e-mail per blocked recipient, in their language
    messages = provider.wait_for(4)
    notices = [
        m
        for m in messages
        if {h["Name"]: h["Value"] for h in m["Headers"]}["X-Usage-Level"] == "restored"
    ]
    assert sorted((m["To"], m["Subject"]) for m in notices) == [
        (
            "direction@example.fr",
            "Rétabli : Acme Speech peut de nouveau traiter « Jetons texte »",
        ),
        ("ops@example.com", "Restored: Acme Speech can process Text tokens again"),
    ]
    english = next(m for m in notices if m["To"] == "ops@example.com")
    assert "Remaining: 3,800 tokens" in english["TextBody"]
    assert "<td>3,800 tokens</td>" in english["HtmlBody"]
    notice = Notification.objects.get(level="restored")
    assert sorted(Delivery.objects.filter(notification=notice).values_list("email", "status")) == [
        ("direction@example.fr", "sent"),
        ("ops@example.com", "sent"),
    ]
    # and one signed delivery to the endpoint subscribed to restored notices, none to the other
    received = restored.wait_for(2, within=WAIT)
    assert [r.payload["type"] for r in received] == ["usage.blocked", "usage.restored"]
    assert all(r.verified for r in received), [r.error for r in received]
    assert received[1].payload["data"]["restores"] == notice.restores_id
    assert received[1].payload["data"]["remaining"] == 3800
    assert len(blocked_only.wait_for(1, within=1)) == 1
    assert list(
        WebhookDelivery.objects.filter(notification=notice).values_list("url", "status")
    ) == [(restored.url, "sent")]
