"""Signed webhooks through a real Celery worker on Redis and PostgreSQL (SPEC 12.4).

Two receivers on 127.0.0.1 verify every request with the ``standardwebhooks`` library and
the secret the API answered when each endpoint was created; one fails twice, then accepts.
Everything between the usage posted and the receiver is the production path: the API, the
ledger, the task on the broker, its retries with backoff, the address checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings

from backoffice.services import limits_replace
from config.celery_app import app as celery_app
from notifications.models import Notification, WebhookDelivery
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


@pytest.fixture
def worker(settings) -> Iterator[None]:
    """A worker that admits loopback endpoints, with the e-mail provider faked as usual."""
    import redis

    settings.WEBHOOKS_ALLOW_LOOPBACK = True  # this process checks the URLs the API is given
    url = django_settings.CELERY_BROKER_URL
    redis.Redis.from_url(url).flushdb()
    previous = celery_app.conf.broker_url
    use_broker(url)
    provider = FakeProvider()
    process = start_worker(url, provider, env={"WEBHOOKS_ALLOW_LOOPBACK": "1"})
    yield
    stop(process)
    provider.server.shutdown()
    use_broker(previous)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    flaky, steady = Receiver(path="/flaky"), Receiver(path="/steady")
    yield flaky, steady
    flaky.close()
    steady.close()


def test_each_endpoint_gets_one_signed_delivery_per_notification_despite_failures(
    worker, receivers, manager_client, service_user
):
    # given: two endpoints created through the API, their secrets taken from its answer
    flaky, steady = receivers
    account = AccountFactory(name="Acme Speech")
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": 100, "blocked": 1000}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
        },
    )
    created = manager_client.put(
        f"/api/v1/accounts/{account.pk}/webhooks/",
        [
            {"url": flaky.url, "levels": ["warning", "blocked"]},
            {"url": steady.url, "levels": ["warning", "blocked"]},
        ],
        format="json",
    )
    assert created.status_code == 200
    flaky.secret, steady.secret = (endpoint["secret"] for endpoint in created.json())
    flaky.answers = [503, 503]  # fails twice, then accepts
    # when: one batch crosses both thresholds, so two notifications
    response = post_events(token_for(service_user), account, "hooks", 2, 600)
    assert response.status_code == 201
    # then: 2 notifications x 2 endpoints; the flaky receiver also saw 2 failed attempts
    at_flaky = flaky.wait_for(4, within=WAIT)
    at_steady = steady.wait_for(2, within=WAIT)
    assert Notification.objects.count() == 2
    deliveries = list(
        WebhookDelivery.objects.order_by("url", "notification_id").values_list(
            "notification_id", "url", "status", "webhook_id", "attempts", "http_status"
        )
    )
    assert len(deliveries) == 4
    assert {(notification, url) for notification, url, *_rest in deliveries} == {
        (n, u)
        for n in Notification.objects.values_list("pk", flat=True)
        for u in (flaky.url, steady.url)
    }
    assert {(status, http) for _n, _u, status, _id, _a, http in deliveries} == {("sent", 200)}
    assert all(request.verified for request in at_flaky + at_steady), [
        request.error for request in at_flaky + at_steady
    ]
    for received, receiver in ((at_flaky, flaky), (at_steady, steady)):
        mine = [d for d in deliveries if d[1] == receiver.url]
        # one webhook-id per delivery, the same on every attempt of it
        assert sorted({r.headers["webhook-id"] for r in received}) == sorted(d[3] for d in mine)
        for _n, _u, _status, webhook_id, attempts, _http in mine:
            tries = [r for r in received if r.headers["webhook-id"] == webhook_id]
            assert len(tries) == attempts
            assert len({r.body for r in tries}) == 1
    assert len(at_flaky) == 4 and len(at_steady) == 2
    assert sum(d[4] for d in deliveries if d[1] == flaky.url) == 4
    levels = sorted(r.payload["type"] for r in at_steady)
    assert levels == ["usage.blocked", "usage.warning"]
