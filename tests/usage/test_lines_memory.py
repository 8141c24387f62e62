"""Capacities, the pre-flight and the usage read answer from each process's memory while
nothing changed.

With a shared cache (Redis, as in production) a process remembers an account's lines,
tagged with the account's generation (``accounts.generations``); every change committed
anywhere announces itself by deleting that generation, so the next read, in any process,
reads the database again. These tests change the account through each writer the API,
the services and the commands have, and assert that the next answer is the one the
database gives (read with nothing remembered), and that it moved. They need Redis; on the
embedded default (process memory) nothing is remembered.
"""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import time_machine
from django.core.cache import cache
from django.core.management import call_command

from accounts.generations import KEY_FORMAT
from accounts.models import Account, ScopedLimit
from backoffice.services import account_upsert, extensions_grant
from config import authentication
from tests.usage.test_api_capacities import account_with_lines
from tests.usage.test_reservations import post_event
from usage import selectors
from usage.models import UsageCounter

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True), pytest.mark.redis]

# Wednesday 2 December 2026, 15:30:10 in Paris (UTC+01:00).
NOW = datetime(2026, 12, 2, 14, 30, 10, tzinfo=UTC)
CHECK = {"metric": "text_tokens", "quantity": 100, "labels": {"model": "large", "vendor": "acme"}}


@pytest.fixture(autouse=True)
def shared_cache(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.CELERY_BROKER_URL,
            "KEY_PREFIX": f"test-lines-{uuid.uuid4().hex}",
        }
    }
    settings.LINES_MEMORY_SECONDS = 60
    selectors._known.clear()
    authentication._verified.clear()
    yield
    selectors._known.clear()
    authentication._verified.clear()


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def account(clock, manager_client, service_client):
    return account_with_lines(manager_client, service_client)


def answers(client, account) -> tuple:
    """Capacities, the pre-flight and the usage read: status and body of each."""
    capacities = client.get(f"/api/v1/accounts/{account.pk}/capacities/")
    check = client.post(f"/api/v1/accounts/{account.pk}/usage/check/", CHECK, format="json")
    usage = client.get(f"/api/v1/accounts/{account.pk}/usage/")
    return (
        capacities.status_code,
        capacities.json(),
        check.status_code,
        check.json(),
        usage.status_code,
        usage.json(),
    )


def from_database(client, account, settings) -> tuple[int, object, int, object]:
    """The answers with nothing remembered: what the database says now."""
    settings.LINES_MEMORY_SECONDS = 0
    try:
        return answers(client, account)
    finally:
        settings.LINES_MEMORY_SECONDS = 60


def queries(client, account, django_assert_num_queries, count: int) -> tuple:
    with django_assert_num_queries(count):
        return answers(client, account)


def test_a_second_read_makes_no_query_and_answers_the_same(
    account, service_client, settings, django_assert_num_queries
):
    # given: the token and the lines read once
    first = answers(service_client, account)
    assert first[0] == first[2] == 200
    # when: the same two requests again
    again = queries(service_client, account, django_assert_num_queries, 0)
    # then: the same answers, which are the database's
    assert again == first == from_database(service_client, account, settings)


def test_without_a_shared_cache_every_read_reads_the_database(
    account, service_client, settings, django_assert_num_queries
):
    # given: the embedded default's process memory, which no other process can reach
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    answers(service_client, account)
    # then: each request reads its token and what it answers again (token, permissions, and
    # the lines or the usage)
    with django_assert_num_queries(9):
        answers(service_client, account)
    assert selectors._known == {}


def change_event(account, manager_client, service_client):
    post_event(
        service_client, account, "one-more", 500, labels={"model": "large", "vendor": "acme"}
    )


def change_batch(account, manager_client, service_client):
    events = [
        {"event_id": f"batch-{n}", "account": str(account.pk), "metric": "text_tokens",
         "quantity": 100, "labels": {"vendor": "acme"}}
        for n in range(3)
    ]  # fmt: skip
    response = service_client.post("/api/v1/usage/events/", {"events": events}, format="json")
    assert response.status_code == 201, response.json()


def change_limits(account, manager_client, service_client):
    response = manager_client.patch(
        f"/api/v1/accounts/{account.pk}/limits/",
        {"limits": {"text_tokens": {"warning": 10000, "blocked": 20000}}},
        format="json",
    )
    assert response.status_code == 200, response.json()


def change_scoped_limit(account, manager_client, service_client):
    call_command(
        "set_limits", account.external_id, "--metric", "text_tokens", "--period", "minute",
        "--label", "model=large", "--blocked", "2000",
    )  # fmt: skip


def change_extension(account, manager_client, service_client):
    extensions_grant(
        account=account,
        rows=[{"metric": "text_tokens", "amount": 5000, "reason": "Launch week"}],
        actor=None,
    )


def change_reservation(account, manager_client, service_client):
    response = service_client.post(
        f"/api/v1/accounts/{account.pk}/usage/reservations/",
        {"reservation_id": "job-1", "metric": "text_tokens", "quantity": 300,
         "labels": {"model": "large"}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.json()


def change_release(account, manager_client, service_client):
    response = service_client.delete(f"/api/v1/accounts/{account.pk}/usage/reservations/job-1/")
    assert response.status_code == 200, response.json()


def change_time_zone(account, manager_client, service_client):
    account_upsert(external_id=account.external_id, name=account.name, timezone_name="Asia/Tokyo")


def change_plan(account, manager_client, service_client):
    account_upsert(external_id=account.external_id, name=account.name, plan="pro")


def drift(account, manager_client, service_client):
    # A counter drifted by a hand-made write that announces nothing (as a bug would).
    UsageCounter.objects.filter(account=account, metric="text_tokens", labels="").update(
        quantity_milli=1
    )


def change_counter_repaired(account, manager_client, service_client):
    call_command("rebuild_usage", "--account", str(account.pk), stdout=io.StringIO())


def change_account_deleted(account, manager_client, service_client):
    Account.objects.filter(pk=account.pk).delete()


# Each change, after what it needs done first (``None``: nothing).
CHANGES = [
    (None, change_event),
    (None, change_batch),
    (None, change_limits),
    (None, change_scoped_limit),
    (None, change_extension),
    (None, change_reservation),
    (change_reservation, change_release),
    (None, change_time_zone),
    (None, change_plan),
    (drift, change_counter_repaired),
    (None, change_account_deleted),
]


@pytest.mark.parametrize(
    ("prepare", "change"), CHANGES, ids=[c.__name__.removeprefix("change_") for _p, c in CHANGES]
)
def test_every_change_is_seen_by_the_next_read(
    prepare, change, account, manager_client, service_client, settings, django_assert_num_queries
):
    # given: the answers remembered
    if prepare is not None:
        prepare(account, manager_client, service_client)
    before = answers(service_client, account)
    queries(service_client, account, django_assert_num_queries, 0)
    # when: a change, through the writer a user has for it
    change(account, manager_client, service_client)
    # then: the next answers are the database's, which moved
    after = answers(service_client, account)
    assert after == from_database(service_client, account, settings)
    assert after != before
    # and: those are remembered in turn (an account that is no more, not)
    if after[0] == 200:
        assert queries(service_client, account, django_assert_num_queries, 0) == after


def test_a_change_committed_while_a_read_reads_the_database_is_not_remembered(
    account, service_client, settings, monkeypatch
):
    # given: a read that finds nothing remembered, during which an event is recorded and
    # committed, after the read's statement and before it remembers what it read
    read = selectors.account_lines_current
    recorded = []

    def read_then_record(**kwargs):
        found = read(**kwargs)
        if not recorded:
            recorded.append(True)
            post_event(service_client, account, "during", 700, labels={"model": "large"})
        return found

    monkeypatch.setattr(selectors, "account_lines_current", read_then_record)
    during = answers(service_client, account)
    assert recorded == [True]
    # then: the next read does not answer what the first read saw
    monkeypatch.setattr(selectors, "account_lines_current", read)
    after = answers(service_client, account)
    assert after == from_database(service_client, account, settings)
    assert after[1] != during[1]


def test_a_window_that_ends_is_read_again_without_any_change(
    clock, manager_client, service_client, settings
):
    # given: a minute line with usage in the current minute, remembered
    account = account_with_lines(manager_client, service_client)
    change_scoped_limit(account, manager_client, service_client)
    post_event(service_client, account, "this-minute", 400, labels={"model": "large"})
    before = answers(service_client, account)
    minute = next(i for i in before[1]["items"] if i["current_period"]["period"] == "minute")
    assert minute["used"] == 400
    # when: the minute ends, nothing written
    clock.move_to(NOW.replace(second=0) + timedelta(minutes=1))
    # then: the line starts its next minute at zero
    after = answers(service_client, account)
    minute = next(i for i in after[1]["items"] if i["current_period"]["period"] == "minute")
    assert (minute["used"], minute["current_period"]["start_time"]) == (
        0,
        "2026-12-02T15:31:00+01:00",
    )
    assert after == from_database(service_client, account, settings)


def test_a_reservation_that_expires_is_read_again_without_any_change(
    account, clock, manager_client, service_client, settings
):
    # given: a reservation held until 15:45:10 Paris, remembered
    change_reservation(account, manager_client, service_client)
    held = answers(service_client, account)
    assert held[3]["lines"][1]["used"] == 42000
    assert {item["reserved"] for item in held[1]["items"]} == {0, 300}
    # when: its expiry passes, nothing written
    clock.move_to(NOW + timedelta(minutes=15))
    # then: it holds nothing any more
    after = answers(service_client, account)
    assert {item["reserved"] for item in after[1]["items"]} == {0}
    assert after == from_database(service_client, account, settings)


def test_a_generation_lost_by_redis_is_a_new_one(account, service_client, settings):
    # given: the answers remembered, then Redis emptied (restarted without its data)
    before = answers(service_client, account)
    key = KEY_FORMAT % account.pk.hex
    assert cache._cache.get_client(write=True).delete(cache.make_key(key)) == 1
    post_event(service_client, account, "after-restart", 900, labels={"model": "large"})
    # then: the next read is the database's
    after = answers(service_client, account)
    assert after == from_database(service_client, account, settings)
    assert after != before


def test_when_redis_is_down_the_answers_are_the_databases(account, service_client, settings):
    # given: the answers remembered, then a cache that does not answer
    answers(service_client, account)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    # when: an event is recorded meanwhile (its announcement is lost)
    post_event(service_client, account, "while-down", 800, labels={"model": "large"})
    # then: the reads go to the database, and answer it
    during = answers(service_client, account)
    assert during == from_database(service_client, account, settings)
    assert during[3]["lines"][1]["used"] == 42800


def test_a_change_behind_the_signals_shows_after_lines_memory_seconds(
    account, service_client, settings, monkeypatch
):
    # given: the answers remembered, then a threshold changed by a queryset update, which
    # announces nothing (as a change made by hand in SQL)
    before = answers(service_client, account)
    ScopedLimit.objects.filter(account=account, period="day").update(blocked=60000)
    assert answers(service_client, account) == before
    # when: LINES_MEMORY_SECONDS pass
    later = time.monotonic() + settings.LINES_MEMORY_SECONDS
    monkeypatch.setattr(selectors, "time", SimpleNamespace(monotonic=lambda: later))
    # then: the answers are the database's
    after = answers(service_client, account)
    assert after == from_database(service_client, account, settings)
    assert after != before
