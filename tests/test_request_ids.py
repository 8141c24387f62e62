"""X-Request-Id and X-Correlation-Id: taken or made, echoed, logged, carried by tasks, stored."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from backoffice.services import limits_replace
from config.celery_app import app as celery_app
from config.request_ids import RequestIdLogFilter, ids_bound
from notifications.models import Notification
from notifications.tasks import deliver_notification
from tests.factories import AccountFactory, UserFactory
from tests.notifications.factories import NotificationFactory
from usage.models import UsageEvent

EVENTS = "/api/v1/usage/events/"
HEX = re.compile(r"[0-9a-f]{32}")
IDS = {"HTTP_X_REQUEST_ID": "req-2026-12-02.001", "HTTP_X_CORRELATION_ID": "job:42/part=1"}


def account_with_a_warning_at(threshold: int):
    account = AccountFactory(name="Acme Speech")
    limits_replace(
        account=account,
        data={
            "limits": {"text_tokens": {"warning": threshold}},
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
        },
    )
    return account


def event(account, event_id: str = "e-1", quantity: int = 10) -> dict:
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": "text_tokens",
        "quantity": quantity,
    }


@pytest.fixture
def console_log() -> Iterator[io.StringIO]:
    """What the configured console handler writes, as the lines of a production log."""
    handler = next(
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, RequestIdLogFilter) for f in h.filters)
    )
    written = io.StringIO()
    previous = handler.setStream(written)
    yield written
    handler.setStream(previous)


# --- Headers ---


@pytest.mark.django_db
def test_a_request_without_ids_gets_fresh_ones_in_its_response(service_client):
    first = service_client.get("/api/v1/accounts/")
    second = service_client.get("/api/v1/accounts/")

    ids = [
        first["X-Request-Id"],
        first["X-Correlation-Id"],
        second["X-Request-Id"],
        second["X-Correlation-Id"],
    ]
    assert all(HEX.fullmatch(value) for value in ids)
    assert len(set(ids)) == 4


@pytest.mark.django_db
def test_valid_ids_are_echoed(service_client):
    response = service_client.get("/api/v1/accounts/", **IDS)

    assert response.status_code == 200
    assert response["X-Request-Id"] == "req-2026-12-02.001"
    assert response["X-Correlation-Id"] == "job:42/part=1"


@pytest.mark.parametrize(
    "given", ["", "a" * 129, "two words", "semi;colon", "<script>", "caf\u00e9", "tab\there"]
)
@pytest.mark.django_db
def test_an_invalid_id_is_replaced_by_a_fresh_one(service_client, given):
    response = service_client.get(
        "/api/v1/accounts/", HTTP_X_REQUEST_ID=given, HTTP_X_CORRELATION_ID=given
    )

    assert response.status_code == 200
    assert HEX.fullmatch(response["X-Request-Id"])
    assert HEX.fullmatch(response["X-Correlation-Id"])


@pytest.mark.django_db
def test_the_longest_valid_id_is_kept(service_client):
    longest = "a" * 128

    response = service_client.get("/api/v1/accounts/", HTTP_X_REQUEST_ID=longest)

    assert response["X-Request-Id"] == longest


@pytest.mark.django_db
def test_errors_and_pages_outside_the_api_carry_the_ids_too(client):
    not_found = client.get("/no-such-page/", **IDS)
    unauthenticated = client.get("/api/v1/accounts/", **IDS)

    assert (not_found.status_code, unauthenticated.status_code) == (404, 401)
    for response in (not_found, unauthenticated):
        assert response["X-Request-Id"] == "req-2026-12-02.001"
        assert response["X-Correlation-Id"] == "job:42/part=1"


# --- Rows ---


@pytest.mark.django_db
def test_the_events_and_the_notification_a_request_creates_carry_its_ids(service_client):
    # given
    account = account_with_a_warning_at(15)
    batch = {"events": [event(account, "e-1"), event(account, "e-2")]}
    # when
    response = service_client.post(EVENTS, batch, format="json", **IDS)
    # then
    assert response.status_code == 201
    assert sorted(UsageEvent.objects.values_list("event_id", "request_id", "correlation_id")) == [
        ("e-1", "req-2026-12-02.001", "job:42/part=1"),
        ("e-2", "req-2026-12-02.001", "job:42/part=1"),
    ]
    notification = Notification.objects.get()
    assert (notification.level, notification.request_id, notification.correlation_id) == (
        "warning",
        "req-2026-12-02.001",
        "job:42/part=1",
    )


@pytest.mark.django_db
def test_generated_ids_are_the_ones_stored(service_client):
    response = service_client.post(EVENTS, event(AccountFactory()), format="json")

    stored = UsageEvent.objects.get()
    assert (stored.request_id, stored.correlation_id) == (
        response["X-Request-Id"],
        response["X-Correlation-Id"],
    )


@pytest.mark.django_db
def test_rows_recorded_outside_a_request_have_no_ids():
    from backoffice.services import usage_events_record

    account = account_with_a_warning_at(5)

    usage_events_record(payload=event(account))

    assert list(UsageEvent.objects.values_list("request_id", "correlation_id")) == [("", "")]
    assert list(Notification.objects.values_list("request_id", "correlation_id")) == [("", "")]


@pytest.mark.django_db
def test_recording_with_ids_costs_no_extra_query(service_client, django_assert_num_queries):
    account = AccountFactory()
    service_client.post(EVENTS, event(account, "warm-up"), format="json")
    batch = {"events": [event(account, f"e-{i}") for i in range(50)]}

    # token, permissions, accounts, events, day and hour counters (one statement on
    # PostgreSQL), usage read and the savepoint pair of the test's transaction, plus the
    # usage locks and the two SET CONSTRAINTS around the insert on PostgreSQL: as many as
    # without ids
    with django_assert_num_queries(11 if connection.vendor == "postgresql" else 9):
        response = service_client.post(EVENTS, batch, format="json", **IDS)

    assert response.status_code == 201
    assert UsageEvent.objects.filter(request_id="req-2026-12-02.001").count() == 50


# --- Logs ---


@pytest.mark.django_db
def test_log_lines_of_a_request_show_its_ids(service_client, console_log):
    account = account_with_a_warning_at(10)

    service_client.post(EVENTS, event(account), format="json", **IDS)

    notification = Notification.objects.get()
    line = next(
        line
        for line in console_log.getvalue().splitlines()
        if f"notification {notification.pk}: account" in line
    )
    assert (
        f" INFO notifications.services [request_id=req-2026-12-02.001 "
        f"correlation_id=job:42/part=1] notification {notification.pk}: account {account.pk} "
        "reached warning 10 of text_tokens"
    ) in line


def test_log_lines_outside_a_request_show_dashes(console_log):
    logging.getLogger("tests.request_ids").warning("nothing to follow")

    assert (
        " WARNING tests.request_ids [request_id=- correlation_id=-] nothing to follow"
        in console_log.getvalue()
    )


# --- Tasks ---


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_task_a_request_enqueues_logs_with_its_ids(console_log):
    # given: as in production, the task is enqueued when the request's transaction commits
    account = account_with_a_warning_at(10)
    _, key = AuthToken.objects.create(user=UserFactory(is_superuser=True), expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    # when
    response = client.post(EVENTS, event(account), format="json", **IDS)
    # then: the task ran (eagerly) and its lines carry the request's ids
    assert response.status_code == 201
    assert [m.to for m in mail.outbox] == [["pm@example.com"]]
    notification = Notification.objects.get()
    assert (
        f" INFO notifications.tasks [request_id=req-2026-12-02.001 correlation_id=job:42/part=1] "
        f"notification {notification.pk}: 1 sent, 0 failed, 0 to retry"
    ) in console_log.getvalue()


@pytest.fixture
def memory_broker() -> Iterator:
    """Publishing for real, to an in-memory broker, instead of running tasks in-process."""
    celery_app.conf.task_always_eager = False
    with celery_app.connection_for_write("memory://") as connection:
        yield connection
    # the autouse fixture of tests/conftest.py restores eager mode


def test_a_task_published_while_serving_a_request_carries_its_ids(memory_broker):
    # when
    with ids_bound("req-1", "corr-1"):
        deliver_notification.apply_async(args=[123], connection=memory_broker)
    deliver_notification.apply_async(args=[456], connection=memory_broker)
    # then
    queue = memory_broker.SimpleQueue("celery")
    inside, outside = queue.get(timeout=1), queue.get(timeout=1)
    queue.close()
    assert (inside.headers["x_request_id"], inside.headers["x_correlation_id"]) == (
        "req-1",
        "corr-1",
    )
    assert "x_request_id" not in outside.headers
    assert "x_correlation_id" not in outside.headers


@pytest.mark.django_db
def test_a_task_run_with_the_headers_logs_and_records_with_those_ids(console_log):
    # given: no request here, as in a worker
    notification = NotificationFactory()
    # when
    deliver_notification.apply(
        args=[notification.pk], headers={"x_request_id": "req-9", "x_correlation_id": "corr-9"}
    )
    logging.getLogger("tests.request_ids").warning("after the task")
    # then
    log = console_log.getvalue()
    assert f"[request_id=req-9 correlation_id=corr-9] notification {notification.pk}: 0 sent" in log
    assert "[request_id=- correlation_id=-] after the task" in log


# --- Admin ---


@pytest.mark.django_db
def test_the_admin_shows_the_ids_on_the_event_and_notification_pages(admin_client):
    account = account_with_a_warning_at(10)
    with ids_bound("req-admin-1", "corr-admin-1"):
        from backoffice.services import usage_events_record

        usage_events_record(payload=event(account))
    stored = UsageEvent.objects.get()
    notification = Notification.objects.get()

    pages = [
        admin_client.get(reverse("admin:usage_usageevent_change", args=[stored.pk])),
        admin_client.get(
            reverse("admin:notifications_notification_change", args=[notification.pk])
        ),
    ]

    for page in pages:
        assert page.status_code == 200
        assert '<div class="readonly">req-admin-1</div>' in page.text
        assert '<div class="readonly">corr-admin-1</div>' in page.text
        assert "Request id:" in page.text
        assert "Correlation id:" in page.text


@pytest.mark.django_db
def test_the_notifications_of_a_request_are_found_by_its_id_in_the_admin(admin_client):
    caused = NotificationFactory(request_id="req-found", correlation_id="corr-found")
    NotificationFactory(request_id="req-other", correlation_id="corr-other")
    url = reverse("admin:notifications_notification_changelist")

    by_request = admin_client.get(url, {"q": "req-found"})
    by_correlation = admin_client.get(url, {"q": "corr-found"})

    assert list(by_request.context["cl"].result_list) == [caused]
    assert list(by_correlation.context["cl"].result_list) == [caused]
