"""Racing reservations never pass a cap, on PostgreSQL with real threads (SPEC 12.1).

Threads are released together by a barrier, each with its own connection. Reads of the
lines are slowed down a little (``slow_line_reads``), which widens the window between a
reservation's read of what is left and its insert, so that the interleavings that would
pass the cap happen in every run when the code lets them (without the usage lock, more
than the room left is held).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

import usage.services
from backoffice.services import usage_events_record
from tests.factories import AccountFactory, LimitFactory
from usage.models import Reservation
from usage.periods import period_containing
from usage.selectors import account_lines_with_reservations

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

WAIT = 60.0
THREADS = 20
ZONES = ("UTC", "Etc/GMT+12", "Etc/GMT-12")


@pytest.fixture(autouse=True)
def slow_line_reads(monkeypatch) -> None:
    """Every read of lines by a reservation waits 20 ms first."""
    read = usage.services.account_lines_with_reservations

    def slow_read(**kwargs):
        time.sleep(0.02)
        return read(**kwargs)

    monkeypatch.setattr(usage.services, "account_lines_with_reservations", slow_read)
    # The read a reservation makes after the lock, in one statement with the id looked for.
    current = usage.services.account_lines_current

    def slow_current(**kwargs):
        time.sleep(0.02)
        return current(**kwargs)

    monkeypatch.setattr(usage.services, "account_lines_current", slow_current)


def zone_with_an_hour_left() -> str:
    """A zone whose current month ends more than an hour from now: the test's usage stays
    in one period whatever the instant it runs at."""
    now = timezone.now()
    for name in ZONES:
        if period_containing(now, ZoneInfo(name)).end - now > timedelta(hours=1):
            return name
    raise AssertionError(f"no zone in {ZONES} fits {now.isoformat()}")


def run_together(actions: list[Callable[[], object]]) -> list[object]:
    """Run every action in its own thread, released at once; returns their results."""
    start = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(index: int, action: Callable[[], object]) -> None:
        try:
            start.wait()
            results[index] = action()
        except Exception as error:  # a deadlock or a 500 surfaces as the result
            results[index] = repr(error)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(index, action)) for index, action in enumerate(actions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting"
    return results


def token_client(user) -> APIClient:
    _, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def reserver(client: APIClient, account, reservation_id: str, quantity: int):
    def reserve() -> int:
        response = client.post(
            f"/api/v1/accounts/{account.pk}/usage/reservations/",
            {"reservation_id": reservation_id, "metric": "text_tokens", "quantity": quantity},
            format="json",
        )
        assert response.status_code in (201, 409), response.content
        return response.status_code

    return reserve


def settler(client: APIClient, account, reservation_id: str, quantity: int):
    def settle() -> int:
        response = client.post(
            "/api/v1/usage/events/",
            {
                "event_id": f"usage-of-{reservation_id}",
                "account": str(account.pk),
                "metric": "text_tokens",
                "quantity": quantity,
                "reservation_id": reservation_id,
            },
            format="json",
        )
        assert response.status_code == 201, response.content
        return response.status_code

    return settle


def used_and_reserved(account) -> tuple[int, int]:
    (line,) = account_lines_with_reservations(account=account, metric="text_tokens")
    return line.usage.used_milli // 1000, line.reserved_milli // 1000


def capped_account(used: int):
    account = AccountFactory(timezone=zone_with_an_hour_left())
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    usage_events_record(
        payload={
            "event_id": "before",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": used,
        }
    )
    return account


def test_of_twenty_racing_reservations_exactly_those_that_fit_are_held(service_user):
    # given: 300 of 1000 used, 700 left
    account = capped_account(used=300)
    client = token_client(service_user)
    # when: 20 services race to reserve 100 each
    codes = run_together([reserver(client, account, f"job-{i}", 100) for i in range(THREADS)])
    # then: exactly seven are held, the rest refused, and the cap is never passed
    assert sorted(codes) == [201] * 7 + [409] * 13
    assert Reservation.objects.filter(account=account, status="active").count() == 7
    assert used_and_reserved(account) == (300, 700)


def test_settlements_racing_reservations_never_free_room_twice(service_user):
    # given: 300 used and five reservations of 100: 200 left
    account = capped_account(used=300)
    client = token_client(service_user)
    for i in range(5):
        assert reserver(client, account, f"held-{i}", 100)() == 201
    # when: the five are settled with their exact usage while 15 others race for 50 each
    codes = run_together(
        [settler(client, account, f"held-{i}", 100) for i in range(5)]
        + [reserver(client, account, f"job-{i}", 50) for i in range(15)]
    )
    # then: a settlement moves capacity from reserved to used at once, so the room
    # left stays 200 whatever the interleaving: exactly four more are held
    assert sorted(codes[5:]) == [201] * 4 + [409] * 11
    assert codes[:5] == [201] * 5
    assert used_and_reserved(account) == (800, 200)
